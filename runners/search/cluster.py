"""Connecting to Ray: a local Ray sized to the machine, or a cluster by address.

Kept apart from the search so that tests and the CLI can check an address or a resource
request in seconds, before a Tuner is built.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import uuid
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlparse

from fer_models.errors import UserError

# FER_AUTOML_SHARED_STORAGE=1: the user vouches that a local-looking storage path is shared by
# every node (skips the visibility probe of check_storage).
SHARED_STORAGE_ENV = "FER_AUTOML_SHARED_STORAGE"
STORAGE_PROBE_TIMEOUT_S = 120.0


def _split_address(address: str) -> Tuple[str, int]:
    if address.startswith("ray://"):
        u = urlparse(address)
        return u.hostname or "", u.port or 10001
    host, _, p = address.rpartition(":")
    if not host or not p.isdigit():
        raise UserError(f"Ray address {address!r}: expected 'auto', 'HOST:PORT' or 'ray://HOST:PORT'")
    return host.strip("[]"), int(p)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_env(address: Optional[str]) -> None:
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
    # Ray turns 127.0.0.1 into the machine's routable address (for the node it starts, and for a
    # cluster address it connects to) unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; with it, Ray binds
    # and announces 127.0.0.1 (see shared/PLATFORM_NOTES.md). Only for a local Ray or a cluster on
    # loopback: a driver of a real cluster must keep its routable address, or it finds no raylet.
    if address is None or (address not in ("auto",) and not address.startswith("ray://")
                            and _is_loopback(_split_address(address)[0])):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def check_address(address: str, timeout: float = 3.0) -> None:
    """Fail fast (seconds, not Ray's long retry loop) when a cluster address does not answer."""
    if address == "auto":
        return
    host, port = _split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(f"Ray address {address!r} is unreachable ({exc}); is `ray start --head` running there?") from None


def _code_runtime_env() -> Optional[dict]:
    """Ship this project's packages to every node of a cluster (Ray's `py_modules`), so that trials
    on nodes where fer-automl is not installed (or is another version) import the driver's code.

    Left to the job when the driver runs inside a Ray Job that already brings code (`ray job submit
    --working-dir .` or its own py_modules): Ray refuses to merge the same runtime_env field twice."""
    import json

    job = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if job:
        try:
            job_env = (json.loads(job).get("runtime_env") or {})
        except ValueError:
            job_env = {}
        if "working_dir" in job_env or "py_modules" in job_env:
            return None
    import fer_models
    import search_spaces

    import runners

    return {"py_modules": [search_spaces, fer_models, runners]}


def _connect_error(address: str, exc: BaseException) -> UserError:
    chain, e = [], exc
    while e is not None:
        chain.append(str(e))
        e = e.__cause__ or e.__context__
    text = " ".join(chain)
    if "auth" in text.lower() or "token" in text.lower():
        mode = os.environ.get("RAY_AUTH_MODE")
        return UserError(
            f"Ray cluster {address!r} refused the connection: authentication token missing or wrong "
            f"(RAY_AUTH_MODE={mode or 'unset'}). A cluster with token authentication needs RAY_AUTH_MODE=token "
            "and the cluster's token in RAY_AUTH_TOKEN, in a file named by RAY_AUTH_TOKEN_PATH, or in ~/.ray/auth_token "
            "(`ray get-auth-token` prints it on the head node)")
    return UserError(f"could not connect to the Ray cluster at {address!r}: {str(exc).strip() or type(exc).__name__}")


def init_ray(address: Optional[str], num_cpus: Optional[int] = None, num_gpus: Optional[int] = None,
             temp_dir: Optional[str] = None) -> Dict[str, float]:
    """Start or join Ray; returns the cluster's total resources."""
    import ray

    _loopback_env(address)
    if ray.is_initialized():
        return ray.cluster_resources()
    if address:
        check_address(address)
        kw = dict(address=address, log_to_driver=True)
        code = _code_runtime_env()
        if code:
            kw["runtime_env"] = code
        try:
            ray.init(**kw)
        except (ConnectionError, RuntimeError, ray.exceptions.AuthenticationError) as exc:
            raise _connect_error(address, exc) from None
    else:
        # workers import runners/fer_models/search_spaces from where this driver found them, whatever
        # their working directory (an editable install, a checkout on PYTHONPATH, site-packages)
        root = str(Path(__file__).resolve().parents[1])
        paths = [root] + [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        kw = dict(include_dashboard=False, log_to_driver=True, num_cpus=num_cpus or os.cpu_count(),
                  _node_ip_address="127.0.0.1",
                  runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}})
        if num_gpus is not None:
            kw["num_gpus"] = num_gpus
        if temp_dir:
            kw["_temp_dir"] = temp_dir
        ray.init(**kw)
    return ray.cluster_resources()


def alive_nodes() -> List[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def node_resources() -> List[Dict[str, float]]:
    """The resources of each alive node (a trial runs on one node, so no trial can ask for more)."""
    return [dict(n.get("Resources") or {}) for n in alive_nodes()]


def check_resources(per_trial: Dict[str, float], cluster: Dict[str, float],
                    nodes: Optional[List[Dict[str, float]]] = None) -> None:
    """A request that the cluster can never satisfy fails now instead of pending forever: more than the
    cluster has in total, or (given the nodes) more than the biggest node has, since a trial is one process."""
    for key, want in per_trial.items():
        if not want or want <= 0:
            continue
        name = key.upper() if key.lower() in ("cpu", "gpu") else key   # Ray names them CPU, GPU, memory ...
        have = float(cluster.get(name, cluster.get(key, 0.0)))
        what = "GPUs" if key == "gpu" else f"{key} units"
        if have < want:
            raise UserError(f"each trial asks for {want:g} {what} but the Ray cluster has {have:g} in total"
                             + ("; set resources.gpu: 0 (CPU trials) or connect to a GPU cluster with --address"
                                if key == "gpu" else ""))
        if nodes:
            biggest = max(float(n.get(name, n.get(key, 0.0))) for n in nodes)
            if biggest < want:
                raise UserError(f"each trial asks for {want:g} {what} but no node of the Ray cluster has that many "
                                 f"(the biggest has {biggest:g}; {have:g} in total over {len(nodes)} nodes): a trial runs "
                                 "on one node, so ask for at most what one node has")


def is_multi_node() -> bool:
    return len(alive_nodes()) > 1


def _local_path(storage_path: str) -> Optional[str]:
    if storage_path.startswith("file://"):
        return urlparse(storage_path).path
    if "://" in storage_path:
        return None
    return storage_path


def check_storage(storage_path: str, timeout: float = STORAGE_PROBE_TIMEOUT_S) -> None:
    """Multi-node clusters need storage every node reaches (S3/GCS or a shared filesystem).

    A local-looking path is not refused outright: an NFS mount looks local too, and so does any
    folder when all the nodes are on one machine. Instead the driver writes a marker file there and
    a task pinned to each node must read it back; a node that cannot see it fails the search now,
    before anything is tracked, rather than its trials failing one by one later.
    FER_AUTOML_SHARED_STORAGE=1 skips the probe (the user vouches that the path is shared)."""
    path = _local_path(storage_path)
    if path is None or not is_multi_node() or os.environ.get(SHARED_STORAGE_ENV) == "1":
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        marker = folder / f".fer-automl-storage-probe-{token}"
        marker.write_text(token)
    except OSError as exc:
        raise UserError(f"storage path {storage_path!r} is not writable here ({exc})") from None

    def sees_marker(p: str, expected: str) -> bool:  # runs on each node; pickled by value, imports nothing of ours
        try:
            with open(p) as f:
                return f.read() == expected
        except OSError:
            return False

    probe = ray.remote(num_cpus=0, max_retries=0)(sees_marker)
    nodes = alive_nodes()
    refs = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(str(marker), token): n for n in nodes}
    try:
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
        blind = [refs[r] for r in ready if not ray.get(r)]
        silent = [refs[r] for r in pending]
        for r in pending:
            ray.cancel(r, force=True)
    finally:
        marker.unlink(missing_ok=True)
    hint = (f"Use s3://bucket/path (or gs://...), or a folder on a filesystem every node mounts at the same path "
            f"(NFS); {SHARED_STORAGE_ENV}=1 skips this check")
    if blind:
        names = ", ".join(f"{n.get('NodeManagerAddress')} ({n['NodeID'][:8]})" for n in blind)
        raise UserError(f"storage path {storage_path!r} is a folder that {len(blind)} of the {len(nodes)} nodes of the "
                         f"Ray cluster cannot see ({names}): trials there could not write their checkpoints. " + hint)
    if silent:
        names = ", ".join(f"{n.get('NodeManagerAddress')} ({n['NodeID'][:8]})" for n in silent)
        raise UserError(f"storage path {storage_path!r}: could not check that every node sees it; no answer in "
                         f"{timeout:g} s from {names}. " + hint)
