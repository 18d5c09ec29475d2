"""A tracking server that restarts mid-search (issue 13, item 3): the search keeps training, keeps
its MLflow writes in memory while the server is away and flushes them in order when it is back,
nothing lost or duplicated; a server away past --outage-timeout stops the search with exit code 7
and one message, and --resume completes it.

Real components: a real `mlflow server` (mlflow/server.sh, SQLite) on 127.0.0.1, stopped (its
process group) and started again on the same port and database; a real `fer-automl search` (local
Ray, the tiny space of tests/_space_helpers, synthetic data) in a child process.
"""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from _space_helpers import search_test_space
from conftest import REPO, finish_search, MlflowServer, search_runs

pytestmark = pytest.mark.slow

EPOCHS = 4
TRIALS = 3


def write_space(tmp: Path, name: str) -> Path:
    d = search_test_space(name=name, presets=[], num_samples=TRIALS, max_concurrent=1, scheduler={"type": "fifo"})
    d["presets"] = {}
    d["constants"]["train.epochs"] = EPOCHS
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def metric_rows(db: Path, experiment: str) -> int:
    """Epoch metrics of `experiment` the server has stored so far (read from its SQLite file)."""
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return con.execute(
                "select count(*) from metrics m join runs r on m.run_uuid = r.run_uuid join experiments e "
                "on r.experiment_id = e.experiment_id where e.name = ? and m.key = 'val_balanced_accuracy'",
                (experiment,)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def start_search(tmp: Path, space: Path, uri: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.Popen([sys.executable, "-m", "runners.cli", "search", str(space), "--storage-path",
                             str(tmp / "ray"), "--tracking-uri", uri, *extra],
                            cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for_metrics(db: Path, name: str, proc: subprocess.Popen, timeout: float = 400) -> None:
    deadline = time.time() + timeout
    while metric_rows(db, name) < 1:
        assert proc.poll() is None, "the search ended before its first metrics reached the server:\n" + \
            proc.stderr.read()[-3000:]
        assert time.time() < deadline, f"no metrics reached the server in {timeout:g} s"
        time.sleep(0.2)


def finish(proc: subprocess.Popen, timeout: float = 900):
    return finish_search(proc, timeout)


def assert_complete(uri: str, name: str) -> None:
    """Every trial has its one child run, FINISHED, every epoch once per metric; the parent FINISHED."""
    client, exp, parents, children = search_runs(uri, name)
    assert [p.info.status for p in parents] == ["FINISHED"]
    trial_ids = Counter(c.data.tags["fer_automl.trial_id"] for c in children)
    assert len(trial_ids) == TRIALS and set(trial_ids.values()) == {1}, trial_ids
    for c in children:
        assert c.info.status == "FINISHED" and c.data.tags["fer_automl.status"] == "finished", c.data.tags
        assert c.data.params, "the child run lost its params"
        for key in ("val_balanced_accuracy", "train_loss", "training_iteration"):
            steps = [m.step for m in client.get_metric_history(c.info.run_id, key)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (c.data.tags["fer_automl.trial_id"], key, steps)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    box = {"server": MlflowServer(tmp_path_factory.mktemp("outage-server"))}
    yield box
    box["server"].stop()


def test_a_server_restarted_mid_search_loses_nothing(server, tmp_path):
    srv = server["server"]
    name = "outage-restart"
    space = write_space(tmp_path, name)
    proc = start_search(tmp_path, space, srv.uri, "--outage-timeout", "900")
    wait_for_metrics(srv.data_dir / "mlflow.db", name, proc)
    srv.stop()  # its process group: the server is gone, port closed
    time.sleep(8)  # the search trains on meanwhile
    assert proc.poll() is None, "the search ended while the server was away"
    server["server"] = srv = MlflowServer(srv.data_dir, port=srv.port)  # same database, same port
    rc, out, err = finish(proc)
    assert rc == 0, err[-3000:]
    assert f"tracking server {srv.uri} unreachable" in err and f"tracking server {srv.uri} is back" in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert_complete(srv.uri, name)


def test_a_server_away_past_the_timeout_stops_the_search_and_resume_completes_it(server, tmp_path):
    srv = server["server"]
    name = "outage-lost"
    space = write_space(tmp_path, name)
    proc = start_search(tmp_path, space, srv.uri, "--outage-timeout", "5")
    wait_for_metrics(srv.data_dir / "mlflow.db", name, proc)
    srv.stop()
    rc, out, err = finish(proc)
    assert rc == 7, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("fer-automl: error:")]
    assert len(errors) == 2, err[-3000:]  # the message and the --resume command on its own line
    assert srv.uri in errors[0] and "unreachable for" in errors[0] and "outage timeout 5 s" in errors[0]
    assert errors[1].split("error:", 1)[1].strip() == (
        f"fer-automl search {space} --storage-path {tmp_path / 'ray'} --tracking-uri {srv.uri} "
        "--outage-timeout 5 --resume")
    assert "Traceback" not in err and "tracking paused" not in err, err[-3000:]
    assert (tmp_path / "ray" / name).is_dir()  # Tune's state and the trials' checkpoints

    server["server"] = srv = MlflowServer(srv.data_dir, port=srv.port)
    proc = start_search(tmp_path, space, srv.uri, "--outage-timeout", "5", "--resume")
    rc, out, err = finish(proc)
    assert rc == 0, err[-3000:]
    assert_complete(srv.uri, name)
