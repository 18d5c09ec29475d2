"""Connecting to Ray: a local Ray sized to the machine, or a cluster by address.

Kept apart from the search so that tests and the CLI can check an address or a resource
request in seconds, before a Tuner is built.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Dict, Optional
from urllib.parse import urlparse


def _loopback_env() -> None:
    # Ray announces the machine's routable address even for a local head; with this it keeps
    # everything on 127.0.0.1 (see shared/PLATFORM_NOTES.md).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")


def check_address(address: str, timeout: float = 3.0) -> None:
    """Fail fast (seconds, not Ray's long retry loop) when a cluster address does not answer."""
    if address == "auto":
        return
    if address.startswith("ray://"):
        u = urlparse(address)
        host, port = u.hostname, u.port or 10001
    else:
        host, _, p = address.rpartition(":")
        if not host or not p.isdigit():
            raise ValueError(f"Ray address {address!r}: expected 'auto', 'HOST:PORT' or 'ray://HOST:PORT'")
        port = int(p)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise ValueError(f"Ray address {address!r} is unreachable ({exc}); is `ray start --head` running there?") from None


def init_ray(address: Optional[str], num_cpus: Optional[int] = None, num_gpus: Optional[int] = None,
             temp_dir: Optional[str] = None) -> Dict[str, float]:
    """Start or join Ray; returns the cluster's total resources."""
    import ray

    _loopback_env()
    if ray.is_initialized():
        return ray.cluster_resources()
    if address:
        check_address(address)
        ray.init(address=address, log_to_driver=True)
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


def check_resources(per_trial: Dict[str, float], cluster: Dict[str, float]) -> None:
    """A request that the cluster can never satisfy fails now instead of pending forever."""
    for key, want in per_trial.items():
        have = float(cluster.get(key.upper(), cluster.get(key, 0.0)))  # Ray names them CPU, GPU, memory ...
        if want > 0 and have < want:
            what = "GPUs" if key == "gpu" else f"{key} units"
            raise ValueError(f"each trial asks for {want:g} {what} but the Ray cluster has {have:g} in total"
                             + ("; set resources.gpu: 0 (CPU trials) or connect to a GPU cluster with --address"
                                if key == "gpu" else ""))


def is_multi_node() -> bool:
    import ray

    return len([n for n in ray.nodes() if n.get("Alive")]) > 1


def check_storage(storage_path: str) -> None:
    """Multi-node clusters need storage every node reaches (S3/GCS or a shared filesystem)."""
    if "://" in storage_path and not storage_path.startswith("file://"):
        return
    if is_multi_node():
        marker = os.environ.get("FER_AUTOML_SHARED_STORAGE")
        if marker != "1":
            raise ValueError(
                f"storage path {storage_path!r} is a local folder but the Ray cluster has several nodes: trials on "
                "other nodes cannot write their checkpoints there. Use s3://bucket/path (or gs://...), or a folder "
                "on a filesystem every node mounts (NFS) and set FER_AUTOML_SHARED_STORAGE=1 to confirm it is shared")
