"""mlflow/server.sh starts a real tracking server on loopback that takes runs."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_server_script_serves_runs_on_loopback(tmp_path):
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(tmp_path / "srv"), "PORT": str(port),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(["bash", str(REPO / "mlflow" / "server.sh")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "server did not answer /health in 90 s"
            time.sleep(0.5)
        import mlflow

        client = mlflow.MlflowClient(f"http://127.0.0.1:{port}")
        exp = client.create_experiment("server-test")
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "val_accuracy", 0.5)
        client.log_text(run.info.run_id, "hello", "note.txt")
        assert client.get_run(run.info.run_id).data.metrics["val_accuracy"] == 0.5
        assert (tmp_path / "srv" / "mlflow.db").is_file()
        assert list((tmp_path / "srv" / "artifacts").rglob("note.txt"))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # only the process group this test started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
