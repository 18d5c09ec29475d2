"""search.constraints (issue 11, item 4): a point whose model breaks a limit is rejected before any
epoch is trained, counted, and shown as infeasible in MLflow (not as a failure)."""
from __future__ import annotations

import os

import pytest
import yaml

from _space_helpers import SEARCH_TEST_BACKBONE, search_test_space
from conftest import search_runs
from fer_models import ModelConfig, build_model
from fer_models.cost import count_params
from runners.training.trial import DataSpec, run_trial
from search_spaces import DataConfig, TrainConfig, TrialConfig


def _params(**model) -> int:
    return count_params(build_model(ModelConfig(backbone=SEARCH_TEST_BACKBONE, num_classes=7, **model), image_size=32))


@pytest.fixture(scope="module")
def synth():
    return DataSpec(format="synthetic", options={"n": 70, "size": 32}, seed=2).load(32)


def _cfg(attention="none", epochs=1):
    return TrialConfig(model=ModelConfig(backbone=SEARCH_TEST_BACKBONE, attention=attention),
                       train=TrainConfig(epochs=epochs, batch_size=32, lr=3e-3),
                       data=DataConfig(image_size=32, aug_strength=0.2))


def test_an_infeasible_trial_reports_once_and_trains_nothing(synth, tmp_path):
    from runners.training.constraints import INFEASIBLE_KEY, REASON_KEY, WORST_LOSS

    limit = _params() - 1
    reports = []
    out = run_trial(_cfg(), synth, out_dir=tmp_path, report=lambda m, c: reports.append((m, c)),
                    constraints={"max_params": limit, "max_macs": 10**12})
    assert len(reports) == 1 and reports[0][1] is None  # one report, no checkpoint
    m = reports[0][0]
    assert m is out and m[INFEASIBLE_KEY] == 1.0 and m["epoch"] == 0
    assert m["params"] == _params() and m["max_params"] == limit and m["macs"] > 0 and m["max_macs"] == 10**12
    assert m[REASON_KEY] == f"params {_params():,} > max_params {limit:,}"  # only the limit it broke
    # the search metric at its worst: what Optuna and the schedulers learn from
    assert m["val_balanced_accuracy"] == 0.0 and m["val_loss"] == WORST_LOSS
    assert not list(tmp_path.glob("checkpoint_*")) and not (tmp_path / "best_model.pt").exists()


def test_a_feasible_trial_trains_and_reports_what_was_measured(synth, tmp_path):
    reports = []
    run_trial(_cfg(), synth, out_dir=tmp_path, report=lambda m, c: reports.append(m),
              constraints={"max_params": _params(), "max_latency_ms": 60_000.0})
    assert [m["epoch"] for m in reports] == [1]
    assert reports[0]["params"] == _params() and reports[0]["latency_ms"] > 0
    assert "infeasible" not in reports[0] and "val_balanced_accuracy" in reports[0]


def test_the_leaderboard_ranks_infeasible_trials_after_feasible_ones_and_before_failed_ones():
    from runners.search.driver import sort_leaderboard

    rows = [{"trial_id": "f", "status": "failed", "m": None}, {"trial_id": "i", "status": "infeasible", "m": None},
            {"trial_id": "s", "status": "stopped_early", "m": None}, {"trial_id": "a", "status": "finished", "m": 0.2},
            {"trial_id": "b", "status": "finished", "m": 0.5}]
    assert [r["trial_id"] for r in sort_leaderboard(rows, "m", "max")] == ["b", "a", "s", "i", "f"]


@pytest.mark.slow
def test_a_search_with_max_params_rejects_the_larger_points_before_they_train(module_tmp, capsys, monkeypatch):
    """A grid over attention {none, cbam} with max_params between the two models' sizes: the cbam
    trial is infeasible (counted, tagged, FINISHED, no val_* history), the other trains; exit code 0."""
    import ray

    from runners.cli import main

    small, large = _params(), _params(attention="cbam")
    assert small < large
    limit = (small + large) // 2
    tmp = module_tmp("constraints-search")
    d = search_test_space(name="limits-it", presets=[], algorithm="grid", num_samples=1, scheduler="fifo",
                          max_concurrent=2, constraints={"max_params": limit})
    d["dimensions"] = {"attention": {"type": "choice", "values": ["none", "cbam"]}}
    d["presets"] = {}
    d["constants"] = {**d["constants"], "train.epochs": 1, "train.lr": 0.005}
    space = tmp / "limits-it.yaml"
    space.write_text(yaml.safe_dump(d))
    uri = f"sqlite:///{tmp}/mlflow.db"
    monkeypatch.chdir(tmp)
    try:
        rc = main(["search", str(space), "--storage-path", str(tmp / "ray"), "--tracking-uri", uri])
    finally:
        if ray.is_initialized():
            ray.shutdown()
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert "search limits-it: 2 trials, 0 failed, 1 infeasible" in out
    assert f"params {large:,} > max_params {limit:,}" in out
    client, _, parents, children = search_runs(uri, "limits-it")
    assert parents[0].data.tags["fer_automl.num_infeasible"] == "1"
    assert parents[0].data.tags["fer_automl.num_failed"] == "0"
    assert parents[0].data.metrics["num_infeasible"] == 1.0
    by_attention = {r.data.params["attention"]: r for r in children}
    bad, good = by_attention["cbam"], by_attention["none"]
    assert bad.info.status == "FINISHED" and bad.data.tags["fer_automl.status"] == "infeasible"
    assert bad.data.tags["fer_automl.infeasible_reason"] == f"params {large:,} > max_params {limit:,}"
    assert bad.data.metrics["params"] == large and bad.data.metrics["max_params"] == limit
    assert not [k for k in bad.data.metrics if k.startswith(("val_", "train_", "test_"))], bad.data.metrics
    assert good.info.status == "FINISHED" and good.data.tags["fer_automl.status"] == "finished"
    assert [m.step for m in client.get_metric_history(good.info.run_id, "val_balanced_accuracy")] == [1]
    assert good.data.metrics["params"] == small
    # the leaderboard logged on the parent: the feasible trial first, the infeasible one after it
    import csv

    path = client.download_artifacts(parents[0].info.run_id, "leaderboard.csv", str(tmp))
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [(r["status"], json_point(r)["attention"]) for r in rows] == [("finished", "none"), ("infeasible", "cbam")]
    best = yaml.safe_load((tmp / "ray" / "limits-it" / "best_point.yaml").read_text())
    assert best["attention"] == "none"
    assert os.path.isdir(tmp / "ray" / "limits-it")


def json_point(row):
    import json

    return json.loads(row["point"])
