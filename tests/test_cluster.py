"""A real two-node Ray cluster on loopback, and a search run against it by address.

Both nodes live on this machine, each started by `ray start` in its own session, with its own temp
dir and one CPU, token authentication on (with the test's own token, never ~/.ray/auth_token),
nothing bound beyond 127.0.0.1. The cluster is stopped by killing what the test started: the
process groups of its `ray start` commands and their descendants (never `ray stop`: that ends
every Ray on the machine, other tests' too).

What a second node on one machine needs (Ray 2.60):
- RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 everywhere, or Ray turns 127.0.0.1 (the node address, and
  the cluster address a joining node or a driver is given) into the machine's routable address;
- but with that variable at 0 the `ray start --address` command refuses to start a joining node
  ("Multi-node Ray clusters are not supported on Windows and OSX"), a check of the CLI alone. The
  joining node is therefore started by Ray's own CLI code with that one check passed (JOIN below).
  (The alternative, leaving the variable unset on the joining node with `--node-ip-address
  127.0.0.2` and `--address [::ffff:127.0.0.1]:PORT` so Ray does not rewrite them, also works,
  but that node's raylet then listens on every interface.)
- its own --temp-dir works (the session name is the head's); both nodes then announce 127.0.0.1,
  so the nodes are told apart by node id (and the joining node carries a marker resource).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from _space_helpers import SEARCH_TEST_BACKBONE
from tests.conftest import REPO, free_port, search_runs

RAY_CLI = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
WORKER_MARK = "fer_test_joined_node"  # a custom resource only the joining node has; no trial asks for it

# `ray start` for a joining node, with the CLI's "no multi-node clusters on Windows/OSX" refusal
# (triggered by RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) passed; everything else is Ray's own code.
JOIN = """
import sys, types
import ray._private.ray_constants as rc
import ray.scripts.scripts as cli
cli.ray_constants = types.SimpleNamespace(**{**vars(rc), "ENABLE_RAY_CLUSTER": True})
sys.argv[0] = "ray"
sys.exit(cli.main())
"""

NODES = """
import json, ray
ray.init(address="{address}", log_to_driver=False)
print(json.dumps([{{"id": n["NodeID"], "resources": n["Resources"]}} for n in ray.nodes() if n["Alive"]]))
"""


def _procs() -> dict:
    """pid -> (state, ppid, pgrp) of every process."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        out[int(d.name)] = (fields[0], int(fields[1]), int(fields[2]))
    return out


def _tree(pgids) -> set:
    """Live (not zombie) processes of the process groups `pgids`, and their descendants (Ray's
    worker processes, forked by a raylet, put themselves in process groups of their own)."""
    procs = _procs()
    found = {p for p, (_, _, g) in procs.items() if g in pgids}
    while True:
        more = {p for p, (_, pp, _) in procs.items() if pp in found} - found
        if not more:
            break
        found |= more
    return {p for p in found if procs[p][0] != "Z"}


def _alive(pids) -> set:
    procs = _procs()
    return {p for p in pids if p in procs and procs[p][0] != "Z"}


def _cmdline_mentions(text: str) -> list:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if text in (d / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(d.name))
            except OSError:
                pass
    return out


class LoopbackCluster:
    """A head and one joining node, one CPU each, on 127.0.0.1."""

    def __init__(self):
        # short path: Ray's socket paths (TEMP/session_.../sockets/...) must stay under ~107 bytes
        self.root = Path(tempfile.mkdtemp(prefix="fer-ray-", dir="/tmp"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.token = secrets.token_hex(32)
        self.pgids: list = []
        # the test's own token: Ray reads RAY_AUTH_TOKEN before ~/.ray/auth_token and writes no file
        self.client_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
        self.env.update(self.client_env)
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats",
                  "--min-worker-port=0", "--max-worker-port=0"]  # workers on OS-chosen ports: no clash with others
        try:
            self._start([RAY_CLI, "start", "--head", f"--port={self.port}", f"--temp-dir={self.root / 'head'}",
                         "--include-dashboard=false", f"--dashboard-port={free_port()}", *common], "head")
            self._start([sys.executable, "-c", JOIN, "start", f"--address={self.address}",
                         f"--temp-dir={self.root / 'worker'}", f"--resources={json.dumps({WORKER_MARK: 1})}",
                         *common], "worker")
            self.nodes = self._wait_for_nodes(2)
        except BaseException:
            self.stop()
            raise
        self.head_id = next(n["id"] for n in self.nodes if WORKER_MARK not in n["resources"])
        self.worker_id = next(n["id"] for n in self.nodes if WORKER_MARK in n["resources"])

    def _start(self, cmd, name: str) -> None:
        log = self.root / f"{name}.log"
        with open(log, "wb") as out:
            # its own session: every daemon `ray start` leaves behind stays in this process group
            proc = subprocess.Popen(cmd, env=self.env, cwd=self.root, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.pgids.append(proc.pid)
        try:
            rc = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            rc = "timeout (120 s)"
        if rc != 0:
            raise RuntimeError(f"ray start ({name}) failed: {rc}\n" + log.read_text(errors="replace")[-3000:])

    def _wait_for_nodes(self, n: int) -> list:
        deadline = time.time() + 60
        while True:
            res = subprocess.run([sys.executable, "-c", NODES.format(address=self.address)], env=self.env,
                                 cwd=self.root, capture_output=True, text=True, timeout=120)
            nodes = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else []
            if len(nodes) >= n:
                return nodes
            if time.time() > deadline:
                raise RuntimeError(f"{len(nodes)} of {n} Ray nodes alive after 60 s: {res.stderr[-2000:]}")
            time.sleep(1)

    def stop(self) -> None:
        """End only what this cluster started: its process groups, then anything still naming its temp dir."""
        pgids = set(self.pgids)
        victims: set = set()
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 5)):
            # collected while the raylets live: once one dies its workers are re-parented to init
            victims |= _tree(pgids)
            for pid in victims:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + wait
            while _alive(victims) and time.time() < deadline:
                time.sleep(0.2)
        for pid in _cmdline_mentions(str(self.root)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def loopback_cluster():
    if RAY_CLI is None:
        pytest.skip("the `ray` command is not installed (pip install 'ray[default]')")
    cluster = LoopbackCluster()
    try:
        yield cluster
    finally:
        cluster.stop()


SPACE = {
    "dimensions": {
        "attention": {"type": "choice", "values": ["none", "se"]},
        "lr": {"type": "float", "low": 1e-3, "high": 2e-2, "log": True},
    },
    "constants": {"model.backbone": SEARCH_TEST_BACKBONE, "train.epochs": 1, "train.batch_size": 32,
                  "data.image_size": 32, "train.optimizer": "adamw"},
    "search": {
        "name": "cluster-it", "dataset": {"format": "synthetic", "n": 140, "image_size": 32},
        "algorithm": "random", "scheduler": {"type": "fifo"},
        "num_samples": 2, "max_concurrent": 2, "resources": {"cpu": 1, "gpu": 0}, "max_failures": 0, "seed": 3,
    },
}


def search_cli(args, cwd: Path, env: dict, timeout: float = 400):
    """`fer-automl search` as a user would run it, from a folder that is not the checkout: the trials
    on the cluster can only import this project from the code the driver ships to the nodes."""
    full = {**os.environ, **env, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "runners.cli", "search", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_search_by_address_uses_both_nodes(tmp_path, mlflow_server, loopback_cluster):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    # The storage folder is local, but both nodes are on this machine, so every node sees it: the
    # search's storage check (a marker file each node must read) accepts it with no opt-in flag.
    t0 = time.time()
    res = search_cli([str(space), "--address", loopback_cluster.address, "--tracking-uri", mlflow_server.uri,
                      "--storage-path", str(tmp_path / "ray")], cwd=tmp_path, env=loopback_cluster.client_env)
    took = time.time() - t0
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    assert "search cluster-it: 2 trials, 0 failed" in res.stdout, res.stdout[-3000:]

    client, exp, parents, children = search_runs(mlflow_server.uri, "cluster-it")
    assert len(parents) == 1 and len(children) == 2
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert all(r.data.tags["fer_automl.status"] == "finished" and r.info.status == "FINISHED" for r in children)
    # each trial tags the node its own process ran on (ray.get_runtime_context().get_node_id()); one
    # CPU per node, one per trial, two trials at once: one trial ran on each node. (Two trials are
    # enough to prove it; each more costs a trial's start-up, seconds on this machine.)
    ran_on = {r.data.tags["fer_automl.node_id"] for r in children}
    assert ran_on == {loopback_cluster.head_id, loopback_cluster.worker_id}, (ran_on, loopback_cluster.nodes)
    print(f"search on the 2-node cluster took {took:.1f} s")


@pytest.mark.slow
def test_wrong_token_fails_with_a_clear_error(tmp_path, loopback_cluster):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    env = {**loopback_cluster.client_env, "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_NUM_REDIS_GET_RETRIES": "2"}  # Ray's connect retries (20 x 1 s by default)
    res = search_cli([str(space), "--address", loopback_cluster.address, "--tracking-uri",
                      f"sqlite:///{tmp_path}/mlflow.db", "--storage-path", str(tmp_path / "ray")],
                     cwd=tmp_path, env=env, timeout=120)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-3000:]
    assert "authentication token missing or wrong" in res.stderr and "RAY_AUTH_TOKEN" in res.stderr, res.stderr[-3000:]


# --- the connection rules, without a cluster ---------------------------------------------------------

@pytest.mark.parametrize("address,loopback", [
    (None, True), ("127.0.0.1:6379", True), ("localhost:6379", True), ("[::1]:6379", True),
    ("10.0.0.5:6379", False), ("head.internal:6379", False), ("auto", False), ("ray://127.0.0.1:10001", False),
])
def test_loopback_setting_only_for_a_local_ray_or_a_loopback_cluster(monkeypatch, address, loopback):
    from runners.search.cluster import _loopback_env

    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    _loopback_env(address)
    # on a real cluster the driver must keep its routable address, or Ray finds no raylet for it
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == ("0" if loopback else None)


def test_a_trial_bigger_than_every_node_fails_now():
    from runners.search.cluster import check_resources

    cluster, nodes = {"CPU": 8.0, "GPU": 2.0}, [{"CPU": 4.0, "GPU": 1.0}, {"CPU": 4.0, "GPU": 1.0}]
    check_resources({"cpu": 4, "gpu": 1}, cluster, nodes)
    with pytest.raises(ValueError, match=r"asks for 2 GPUs but no node .*\(the biggest has 1; 2 in total over 2 nodes\)"):
        check_resources({"cpu": 1, "gpu": 2}, cluster, nodes)
    with pytest.raises(ValueError, match="asks for 9 cpu units but the Ray cluster has 8 in total"):
        check_resources({"cpu": 9, "gpu": 0}, cluster, nodes)


def test_code_is_shipped_to_the_nodes_unless_the_job_brings_it(monkeypatch):
    import fer_models
    import search_spaces

    import runners
    from runners.search.cluster import _code_runtime_env

    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert _code_runtime_env() == {"py_modules": [search_spaces, fer_models, runners]}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"}}))
    assert _code_runtime_env() is None  # `ray job submit --working-dir .` already ships it (Ray refuses both)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"env_vars": {"A": "1"}}}))
    assert _code_runtime_env() is not None


def test_remote_storage_needs_no_probe():
    from runners.search.cluster import check_storage

    check_storage("s3://bucket/fer")  # returns before asking Ray anything (no Ray is running here)
