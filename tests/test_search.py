"""A real search: local Ray, real trials on synthetic faces, a real MLflow server on 127.0.0.1."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest
import yaml

from conftest import search_runs
from runners.cli import main
from _space_helpers import SEARCH_TEST_BACKBONE, first_conv_key, search_test_space



def write_space(tmp_path, **search):
    d = search_test_space(**search)
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.fixture
def ray_shutdown():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.mark.slow
def test_search_tracks_every_trial_in_mlflow(tmp_path, mlflow_server, ray_shutdown, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path)
    scratch = Path(tempfile.gettempdir())
    before = set(scratch.glob("fer-trial-*")) | set(scratch.glob("fer-search-*"))
    rc = main(["search", str(space), "--tracking-uri", mlflow_server.uri, "--storage-path", str(tmp_path / "ray")])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert "search it-search: 4 trials, 0 failed" in out
    assert "| epoch | best_val_balanced_accuracy | best_epoch" in out  # the leaderboard says which weights are kept

    client, exp, parents, children = search_runs(mlflow_server.uri, "it-search")
    assert len(parents) == 1 and len(children) == 4
    # the trials' and the summary's scratch folders are gone (their checkpoints live in the storage
    # path); only folders of this search count (another search on the machine may be running)
    ours = {r.data.tags["fer_automl.trial_id"] for r in children}
    left = [d for d in (set(scratch.glob("fer-trial-*")) | set(scratch.glob("fer-search-*"))) - before
            if any(SEARCH_TEST_BACKBONE in f.read_text() for f in d.glob("checkpoint_*/trial_config.json"))
            or any(t in f.read_text() for f in d.glob("leaderboard.csv") for t in ours)]
    assert not left, left
    pid = parents[0].info.run_id
    assert all(r.data.tags["mlflow.parentRunId"] == pid for r in children)
    parent_params = parents[0].data.params
    assert parent_params["algorithm"] == "tpe" and parent_params["dataset.fingerprint"]
    assert {a.path for a in client.list_artifacts(pid)} >= {"leaderboard.csv", "best_point.yaml", "space.yaml",
                                                              "search_spec.yaml"}
    statuses = {r.data.tags["fer_automl.status"] for r in children}
    assert statuses <= {"finished", "stopped_early"} and "finished" in statuses
    for r in children:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_balanced_accuracy")]
        expected = 2 if r.data.tags["fer_automl.status"] == "finished" else len(steps)
        assert steps == list(range(1, expected + 1))
        assert "attention" in r.data.params  # the trial's point
        if r.data.tags["fer_automl.status"] == "finished":
            arts = {a.path for a in client.list_artifacts(r.info.run_id, "trial")}
            assert {"trial/confusion_matrix.png", "trial/attention.png", "trial/model.pt"} <= arts
            assert "test_accuracy" in r.data.metrics
    # the preset point was evaluated (TPE alone would not draw lr = 0.005 exactly)
    assert any(r.data.params["attention"] == "none" and r.data.params["num_patches"] == "0"
               and float(r.data.params["lr"]) == 0.005 for r in children)
    best = yaml.safe_load((tmp_path / "ray" / "it-search" / "best_point.yaml").read_text())
    assert set(best) >= {"attention", "num_patches", "lr"}


@pytest.mark.parametrize("case,expect", [
    (dict(algorithm="bayes"), "algorithm"),
    (dict(scheduler={"type": "pbt"}), "scheduler"),
    (dict(metric="val_auc"), "metric 'val_auc' is not reported"),
    (dict(resources={"cpu": 1, "gpu": 1}), "asks for 1 GPUs but the Ray cluster has 0"),
    (dict(tracking_uri="http://127.0.0.1:9"), "tracking server http://127.0.0.1:9 is unreachable"),
    (dict(address="127.0.0.1:9"), "Ray address '127.0.0.1:9' is unreachable"),
])
def test_bad_search_input_fails_fast_and_writes_nothing(tmp_path, case, expect, ray_shutdown, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, **case)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    t0 = time.time()
    args = ["search", str(space), "--storage-path", str(tmp_path / "ray")]
    if "tracking_uri" not in case:
        args += ["--tracking-uri", uri]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2 and expect in err, err
    assert time.time() - t0 < 60
    if (tmp_path / "mlflow.db").exists():
        import mlflow

        client = mlflow.MlflowClient(uri)
        exp = client.get_experiment_by_name("it-search")
        assert exp is None or not client.search_runs([exp.experiment_id])


def test_missing_space_file(tmp_path, capsys):
    assert main(["search", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(tmp_path, cli):
    import os
    import signal
    import sqlite3
    import subprocess
    import sys

    from tests.conftest import REPO

    space = write_space(tmp_path, name="resume-it", num_samples=3, max_concurrent=1,
                        scheduler={"type": "fifo"})
    db = tmp_path / "mlflow.db"
    args = [sys.executable, "-m", "runners.cli", "search", str(space), "--storage-path", str(tmp_path / "ray"),
            "--tracking-uri", f"sqlite:///{db}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)

    def reported_epochs() -> int:
        if not db.exists():
            return 0
        with sqlite3.connect(db) as con:
            try:
                return con.execute("select count(*) from metrics where key = 'val_balanced_accuracy'").fetchone()[0]
            except sqlite3.OperationalError:
                return 0

    deadline = time.time() + 240
    while reported_epochs() < 1:  # the first trial is mid-way (1 of 2 epochs reported)
        assert proc.poll() is None, "search ended before it could be killed"
        assert time.time() < deadline, "no trial reported in 240 s"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started: only this test's processes
    proc.wait(timeout=30)

    res = cli("search", str(space), "--storage-path", str(tmp_path / "ray"), "--tracking-uri", f"sqlite:///{db}",
              "--resume", timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "search resume-it: 3 trials, 0 failed" in res.stdout

    client, exp, parents, children = search_runs(f"sqlite:///{db}", "resume-it")
    assert len(parents) == 1
    ids = [r.data.tags["fer_automl.trial_id"] for r in children]
    assert len(ids) == len(set(ids)) == 3, ids  # no trial lost, none tracked twice
    for r in children:
        assert r.data.tags["fer_automl.status"] == "finished" and r.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "val_balanced_accuracy")]
        assert sorted(set(steps)) == [1, 2], steps


@pytest.mark.slow
def test_failing_trials_end_as_failed_runs_with_their_reasons(tmp_path, ray_shutdown, capsys, monkeypatch):
    import torch

    from fer_models import ModelConfig, build_model

    monkeypatch.chdir(tmp_path)
    good = build_model(ModelConfig(num_classes=7, backbone=SEARCH_TEST_BACKBONE))
    torch.save(good.state_dict(), tmp_path / "good.pt")
    sd = good.state_dict()
    key = first_conv_key(sd)
    sd[key] = torch.full_like(sd[key], float("nan"))
    torch.save(sd, tmp_path / "nan.pt")
    d = search_test_space()
    d["dimensions"] = {"weights": {"type": "choice", "maps_to": "model.pretrained_path",
                                   "values": [str(tmp_path / "good.pt"), str(tmp_path / "nan.pt"),
                                              str(tmp_path / "missing.pt")]}}
    d["presets"] = {}
    d["search"].update(name="fail-it", presets=[], algorithm="grid", num_samples=1, max_failures=1,
                       scheduler={"type": "fifo"})
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(d))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rc = main(["search", str(space), "--storage-path", str(tmp_path / "ray"), "--tracking-uri", uri])
    out, err = capsys.readouterr()
    assert rc == 4, out[-3000:]  # finished, but trials failed for good: not a success
    assert "search fail-it: 3 trials, 2 failed" in out
    assert "| trial | status |" in out  # the leaderboard is still printed
    assert "search fail-it finished, but 2 of 3 trials failed" in err

    client, exp, parents, children = search_runs(uri, "fail-it")
    assert [p.info.status for p in parents] == ["FINISHED"]  # the search itself ran to its end
    assert "leaderboard.csv" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    by_weights = {Path(r.data.params["weights"]).name: r for r in children}
    assert by_weights["good.pt"].info.status == "FINISHED"
    for name, expect in [("nan.pt", "non-finite loss nan"), ("missing.pt", "missing.pt': no such file")]:
        run = by_weights[name]
        assert run.info.status == "FAILED" and run.data.tags["fer_automl.status"] == "failed"
        assert expect in run.data.tags["fer_automl.failure_reason"], run.data.tags["fer_automl.failure_reason"]
