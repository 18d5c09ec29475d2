"""Shared test fixtures and paths."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 300, env: dict | None = None):
    """Run `fer-automl` as a user would (a child process of this interpreter)."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO), full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, "-m", "runners.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO), env=full_env)


def finish_search(proc, timeout: float):
    """(returncode, stdout, stderr) of a search started with `start_new_session=True`; past `timeout`
    its process group (only what the test started) is killed and the test fails with its stderr."""
    import signal
    import subprocess

    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the search did not end in {timeout:g} s:\n{err[-3000:]}")
    return proc.returncode, out, err


def search_runs(tracking_uri: str, name: str):
    """A search's MLflow runs: (client, experiment, parent runs, child runs), told apart by the
    `fer_automl.kind` tag."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(name)
    assert exp is not None, f"no experiment {name!r} at {tracking_uri}"
    runs = client.search_runs([exp.experiment_id])
    return (client, exp, [r for r in runs if r.data.tags.get("fer_automl.kind") == "search"],
            [r for r in runs if r.data.tags.get("fer_automl.kind") == "trial"])


@pytest.fixture
def cli():
    return run_cli


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` (through mlflow/server.sh) on 127.0.0.1, SQLite backend unless `env` names
    another (BACKEND=..., AUTH=1: see mlflow/server.sh); `log`: a file for its stderr (else a pipe, read
    if it fails to start). `startup_s`: script start to first /health. `port`: the port to listen on (a
    restarted server takes its predecessor's: `MlflowServer(dir, port=old.port)`)."""

    def __init__(self, data_dir: Path, env: dict | None = None, log: Path | None = None, port: int | None = None):
        import subprocess
        import time
        import urllib.request

        self.data_dir = data_dir
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "DATA_DIR": str(data_dir), "PORT": str(self.port), "WORKERS": "1",
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
        started = time.monotonic()
        self.log = log
        err = open(log, "wb") if log is not None else subprocess.PIPE
        self.proc = subprocess.Popen(["bash", str(REPO / "mlflow" / "server.sh")], env=env,
                                     stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        if log is not None:
            err.close()
        deadline = time.time() + 300  # a loaded 2-core machine has needed > 120 s
        while True:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        self.startup_s = time.monotonic() - started
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                text = log.read_bytes() if log is not None else self.proc.stderr.read()
                raise RuntimeError("mlflow server exited: " + text.decode(errors="replace")[-2000:])
            if time.time() > deadline:
                self.stop()
                raise RuntimeError("mlflow server did not answer /health in 300 s")
            time.sleep(0.5)

    def stop(self) -> None:
        import signal
        import subprocess

        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # only the process group this fixture started
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def module_tmp(request, tmp_path_factory):
    """`module_tmp(name)`: a temporary folder for a module's fixtures, removed when the module ends
    if none of its tests failed (searches leave checkpoints and weights: hundreds of MB a module,
    which pytest's own retention would keep until the session ends)."""
    import shutil

    made = []
    failed_before = request.session.testsfailed

    def make(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    if request.session.testsfailed == failed_before:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()
