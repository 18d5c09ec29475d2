"""Warm start (issue 11, item 3): a search's Optuna study seeded with an earlier search's trials,
read back from MLflow (a real SQLite store), fitted to the new space; and end to end on a real
local Ray: search A, then search B `--warm-start A` over a space one of A's points does not fit."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from _space_helpers import search_test_space
from conftest import search_runs
from fer_models.errors import UserError
from runners.search.warm_start import fit_errors, load_warm_start, read_source, recover_point
from search_spaces import SearchSpec, load_space

METRIC = "val_balanced_accuracy"


def _space(**search):
    d = search_test_space(**search)
    return load_space(d)


def _spec(**kw) -> SearchSpec:
    return SearchSpec.model_validate({"dataset": {"format": "synthetic"}, **kw})


# the earlier search `a` of the crafted store: (trial id, status, params, per-epoch figures)
OLD_DIMS = ["attention", "num_patches", "local_aggregation", "lr", "dropout"]
TRIALS = [
    ("t1", "finished", {"attention": "se", "num_patches": "0", "lr": "0.005"}, [0.3, 0.5]),
    ("t2", "stopped_early", {"attention": "none", "num_patches": "4", "local_aggregation": "max", "lr": "0.01"}, [0.2]),
    ("t3", "finished", {"attention": "eca", "num_patches": "0", "lr": "0.005"}, [0.4, 0.6]),
    ("t4", "finished", {"attention": "se", "num_patches": "0", "lr": "0.5"}, [0.4, 0.45]),
    ("t5", "finished", {"attention": "se", "num_patches": "0", "local_aggregation": "mean", "lr": "0.002"}, [0.1, 0.2]),
    ("t6", "finished", {"attention": "cbam", "num_patches": "0"}, [0.3, 0.3]),
    ("t7", "finished", {"attention": "cbam", "num_patches": "0", "lr": "0.003", "dropout": "0.1"}, [0.3, 0.35]),
    ("t8", "failed", {"attention": "se", "num_patches": "4", "local_aggregation": "mean", "lr": "0.004"}, []),
    # `stage` is not a dimension of the old space (its space.yaml says so): not part of the point
    ("t9", "finished", {"attention": "cbam", "num_patches": "4", "local_aggregation": "mean", "lr": "0.0125",
                        "stage": "search"}, [0.5, 0.7]),
]


def _search(client, name: str, trials, tmp: Path, metric: str = METRIC, mode: str = "max",
            second: str = "None", second_values=None):
    from runners.search.tracking import TAG_KIND, TAG_SEARCH, TAG_STATUS, TAG_TRIAL_ID

    exp = client.create_experiment(name, artifact_location=str(tmp / "art" / name))
    parent = client.create_run(exp, tags={TAG_KIND: "search", TAG_SEARCH: name})
    pid = parent.info.run_id
    for k, v in {"metric": metric, "mode": mode, "second_objective": second}.items():
        client.log_param(pid, k, v)
    client.log_text(pid, yaml.safe_dump({"dimensions": {d: {} for d in OLD_DIMS}}), "space.yaml")
    for tid, status, params, figures in trials:
        run = client.create_run(exp, tags={TAG_KIND: "trial", TAG_SEARCH: name, TAG_STATUS: status,
                                           TAG_TRIAL_ID: tid, "mlflow.parentRunId": pid})
        for k, v in params.items():
            client.log_param(run.info.run_id, k, v)
        for step, value in enumerate(figures, 1):
            client.log_metric(run.info.run_id, metric, value, step=step)
            if second_values is not None:
                client.log_metric(run.info.run_id, "params", second_values[tid], step=step)
        client.set_terminated(run.info.run_id, "FAILED" if status == "failed" else "FINISHED")
    client.set_terminated(pid, "FINISHED")


@pytest.fixture(scope="module")
def store(module_tmp):
    """A SQLite store with search `a` (TRIALS), `loss` (optimised val_loss), `none-finished` (one
    stopped, one failed trial) and `mo` (multi-objective with params, one finished, one stopped)."""
    import mlflow

    tmp = module_tmp("warm-store")
    uri = f"sqlite:///{tmp}/m.db"
    client = mlflow.MlflowClient(uri)
    _search(client, "a", TRIALS, tmp)
    _search(client, "loss", TRIALS[:1], tmp, metric="val_loss", mode="min")
    _search(client, "none-finished", [TRIALS[1], TRIALS[7]], tmp)
    _search(client, "mo", [TRIALS[0], TRIALS[1]], tmp, second="params", second_values={"t1": 1.5e6, "t2": 2e6})
    return uri


def test_recover_point_types_the_params_by_the_new_space():
    space = load_space({"dimensions": {
        "attention": {"type": "choice", "values": ["none", "se"]},
        "num_patches": {"type": "choice", "values": [0, 4]},
        "pose": {"type": "choice", "values": [True, False], "maps_to": "model.pose_head"},
        "epochs": {"type": "int", "low": 1, "high": 3, "maps_to": "train.epochs"},
        "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
        "constants": {"model.backbone": "mobilenetv3_small_100"}})
    params = {"attention": "se", "num_patches": "4", "pose": "False", "epochs": "2", "lr": "1e-05", "stage": "x"}
    point = recover_point(params, space, ["attention", "num_patches", "pose", "epochs", "lr"])
    assert point == {"attention": "se", "num_patches": 4, "pose": False, "epochs": 2, "lr": 1e-05}
    assert type(point["num_patches"]) is int and type(point["epochs"]) is int and point["pose"] is False
    # not a value of the new space: kept as it is, and the fit check names it
    bad = recover_point({"attention": "cbam", "lr": "0.01", "epochs": "5"}, space, None)
    errors = fit_errors(space, {**bad, "num_patches": 0, "pose": True})
    assert any("attention" in e and "'cbam'" in e and "not one of" in e for e in errors), errors
    assert any("epochs" in e and "outside [1, 3]" in e for e in errors), errors
    assert not any(e.startswith(str(space.where)) for e in errors)


def test_read_source_keeps_what_fits_and_says_why_each_other_trial_is_skipped(store):
    space = _space()
    trials, rep = read_source("a", space, _spec(), store)
    by_id = {t.trial_id: t for t in trials}
    assert sorted(by_id) == ["t1", "t2", "t9"]
    # finished: COMPLETE with the last reported value and the per-epoch history
    assert by_id["t1"].state == "COMPLETE" and by_id["t1"].values == [0.5]
    assert by_id["t1"].intermediate == {1: 0.3, 2: 0.5}
    assert by_id["t1"].point == {"attention": "se", "num_patches": 0, "lr": 0.005}
    # stopped early: PRUNED, its history only
    assert by_id["t2"].state == "PRUNED" and by_id["t2"].values is None and by_id["t2"].intermediate == {1: 0.2}
    assert by_id["t9"].point == {"attention": "cbam", "num_patches": 4, "local_aggregation": "mean", "lr": 0.0125}
    assert rep.used == 3 and rep.skipped_trials == 6
    text = "\n".join(rep.skipped)
    for tid, words in {"t3": ["attention", "'eca'", "not one of"], "t4": ["lr", "0.5", "outside"],
                       "t5": ["local_aggregation", "'mean'", "inactive"], "t6": ["missing dimension 'lr'"],
                       "t7": ["unknown dimension 'dropout'"], "t8": ["status failed"]}.items():
        line = next((ln for ln in rep.skipped if ln.startswith(f"trial {tid} ")), None)
        assert line is not None, f"{tid} not reported:\n{text}"
        assert all(w in line for w in words), line
    assert len(rep.skipped) == 6  # one line each here (one problem per trial)


def test_the_seeded_study_holds_the_trials_before_the_search_asks(store):
    """What Ray's OptunaSearch gets: a study whose first trials are the earlier search's, with
    their figures, so the search's first own trial is number 3 and TPE has seen them."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from search_spaces import to_optuna

    space = _space()
    warm = load_warm_start(["a"], space, _spec(seed=3), store)
    assert warm.summary_lines() == ["warm start: 3 points from a (6 skipped)"]
    sampler = optuna.samplers.TPESampler(seed=3)
    searcher = OptunaSearch(space=to_optuna(space), metric=METRIC, mode="max", sampler=sampler,
                            **warm.searcher_kwargs(space, ["max"], sampler))
    seen = searcher._ot_study.get_trials(deepcopy=False)
    assert [(t.state.name, t.values, t.user_attrs["warm_start.trial_id"]) for t in seen] == [
        ("COMPLETE", [0.5], "t1"), ("PRUNED", None, "t2"), ("COMPLETE", [0.7], "t9")]
    assert seen[0].params == {"attention": "se", "num_patches": 0, "lr": 0.005}
    config = searcher.suggest("own-1")
    assert set(config) >= {"attention", "num_patches", "lr"}
    assert searcher._ot_trials["own-1"].number == 3
    searcher.on_trial_complete("own-1", {METRIC: 0.4, "training_iteration": 1})
    rows = warm.study_trials()
    assert [r["source"] for r in rows] == ["a", "a", "a", None] and rows[3]["values"] == [0.4]


def test_two_sources_and_another_store(store, tmp_path):
    import shutil

    import mlflow

    from runners.search.tracking import sqlite_db_path

    shutil.copy(sqlite_db_path(store), tmp_path / "other.db")  # a store of its own (copied: no migrations)
    other = f"sqlite:///{tmp_path}/other.db"
    _search(mlflow.MlflowClient(other), "b", TRIALS[:1], tmp_path)
    warm = load_warm_start(["a", f"{other}#b"], _space(), _spec(), store)
    assert warm.summary_lines() == ["warm start: 3 points from a (6 skipped)",
                                    f"warm start: 1 point from {other}#b (0 skipped)"]
    assert warm.used == 4 and warm.skipped == 6
    assert f"search 'b' on {other}" in warm.report_text()


def test_an_unreachable_other_store_is_a_clear_error(store):
    with pytest.raises(UserError, match=r"tracking server http://127.0.0.1:9 is unreachable"):
        load_warm_start(["http://127.0.0.1:9#a"], _space(), _spec(), store)


def test_multi_objective_needs_both_figures_and_skips_stopped_trials(store):
    spec = _spec(second_objective="params")
    trials, rep = read_source("mo", _space(), spec, store)
    assert [(t.trial_id, t.state, t.values, t.intermediate) for t in trials] == [("t1", "COMPLETE", [0.5, 1.5e6], {})]
    assert rep.skipped == ["trial t2 (run " + rep.skipped[0].split("(run ")[1].split(")")[0]
                           + "): stopped early: Optuna's TPE cannot rank a stopped trial in a multi-objective study"]
    # the study gets both values, and the searcher asks with two objectives
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from search_spaces import to_optuna

    warm = load_warm_start(["mo"], _space(), spec, store)
    sampler = optuna.samplers.TPESampler(seed=0)
    searcher = OptunaSearch(space=to_optuna(_space()), metric=[METRIC, "params"], mode=["max", "min"],
                            sampler=sampler, **warm.searcher_kwargs(_space(), ["max", "min"], sampler))
    assert [t.values for t in searcher._ot_study.get_trials()] == [[0.5, 1.5e6]]
    searcher.suggest("own")
    searcher.on_trial_complete("own", {METRIC: 0.4, "params": 1e6})
    assert [r["values"] for r in warm.study_trials()] == [[0.5, 1.5e6], [0.4, 1e6]]
    with pytest.raises(UserError, match=r"'a'.*multi-objective.*second objective was None"):
        read_source("a", _space(), spec, store)


@pytest.mark.parametrize("source, spec, words", [
    ("nope", {}, ["--warm-start 'nope'", "no search of that name", "m.db", "searches there: a, loss, mo, none-finished"]),
    ("none-finished", {}, ["'none-finished'", "no finished trial", "1 failed, 1 stopped_early"]),
    ("loss", {}, ["'loss'", "optimised val_loss (min)", "val_balanced_accuracy (max)"]),
    ("a", {"algorithm": "random", "warm_start": []}, ["algorithm 'random'", "tpe"]),
])
def test_bad_sources_are_clear_errors(store, source, spec, words):
    with pytest.raises(UserError) as err:
        load_warm_start([source], _space(), _spec().model_copy(update=spec), store)
    for w in words:
        assert w in str(err.value), str(err.value)


def test_no_trial_fits_is_an_error_listing_why(store):
    space = load_space({**search_test_space(presets=[]), "presets": {},
                        "dimensions": {"attention": {"type": "choice", "values": ["eca"]},
                                       "lr": {"type": "float", "low": 1e-3, "high": 2e-2, "log": True}}})
    with pytest.raises(UserError, match=r"(?s)none of the 9 trials of search 'a' can seed.*unknown dimension 'num_patches'"):
        read_source("a", space, _spec(), store)


def test_the_spec_refuses_warm_start_with_random_and_grid_and_bad_names():
    from pydantic import ValidationError

    assert _spec(warm_start=["a", "sqlite:///x.db#b"]).warm_start == ["a", "sqlite:///x.db#b"]
    for algorithm in ("random", "grid"):
        with pytest.raises(ValidationError, match=f"algorithm '{algorithm}' does not learn"):
            _spec(algorithm=algorithm, warm_start=["a"])
    with pytest.raises(ValidationError, match="one folder name"):
        _spec(warm_start=["sqlite:///x.db#a/b"])


# --- end to end ---------------------------------------------------------------------------------

def _e2e_space(tmp: Path, name: str, attention, presets, **search) -> Path:
    d = search_test_space(name=name, presets=list(presets), num_samples=max(1, len(presets)),
                          scheduler={"type": "fifo"}, max_concurrent=2, **search)
    d["dimensions"]["attention"]["values"] = attention
    d["presets"] = presets
    d["constants"]["train.epochs"] = 1
    d["search"]["dataset"]["n"] = 70
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.mark.slow
def test_search_b_starts_from_search_a(tmp_path, monkeypatch, capsys):
    """A runs two presets (one with attention cbam); B's space has no cbam: B's study starts with
    A's other trial, its point and figure, before B's own; the cbam one is reported and skipped."""
    import ray

    from runners.cli import main
    from runners.search.driver import run_search

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FER_AUTOML_CACHE_DIR", str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    presets = {"plain": {"attention": "none", "num_patches": 0, "lr": 0.005},
               "cbam4": {"attention": "cbam", "num_patches": 4, "local_aggregation": "mean", "lr": 0.01}}
    try:
        a = run_search(str(_e2e_space(tmp_path, "warm-a", ["none", "se", "cbam"], presets)),
                       storage_path=str(tmp_path / "ray"), tracking_uri=uri, verbose=0)
        assert a.num_failed == 0 and {r["status"] for r in a.leaderboard} == {"finished"}
        space_b = _e2e_space(tmp_path, "warm-b", ["none", "se"], {}, seed=5)
        rc = main(["search", str(space_b), "--warm-start", "warm-a", "--tracking-uri", uri,
                   "--storage-path", str(tmp_path / "ray")])
        out = capsys.readouterr().out
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert rc == 0, out[-3000:]
    assert "warm start: 1 point from warm-a (1 skipped)" in out
    client, _, _, a_children = search_runs(uri, "warm-a")
    plain = next(r for r in a_children if r.data.params["attention"] == "none")
    cbam = next(r for r in a_children if r.data.params["attention"] == "cbam")
    _, _, parents, b_children = search_runs(uri, "warm-b")
    assert len(parents) == 1 and len(b_children) == 1
    pid = parents[0].info.run_id
    params = parents[0].data.params
    assert (params["warm_start.sources"], params["warm_start.used"], params["warm_start.skipped"]) == ("warm-a", "1", "1")
    report = Path(client.download_artifacts(pid, "warm_start.txt", str(tmp_path))).read_text()
    tid = cbam.data.tags["fer_automl.trial_id"]
    assert f"skipped trial {tid}" in report and "attention" in report and "'cbam' is not one of" in report, report
    # the study B's searcher asked: A's trial first, with its point and figure, then B's own
    study = json.loads(Path(client.download_artifacts(pid, "warm_start_study.json", str(tmp_path))).read_text())
    assert [(r["number"], r["source"]) for r in study] == [(0, "warm-a"), (1, None)], study
    assert study[0]["state"] == "COMPLETE" and study[0]["params"] == {"attention": "none", "num_patches": 0, "lr": 0.005}
    assert study[0]["values"] == [pytest.approx(plain.data.metrics[METRIC])]
    assert study[0]["trial_id"] == plain.data.tags["fer_automl.trial_id"]
    own = b_children[0]
    assert study[1]["state"] == "COMPLETE" and study[1]["values"] == [pytest.approx(own.data.metrics[METRIC])]
    assert parents[0].data.tags["fer_automl.warm_start.study"] == "1 seeded trials, then 1 of this search"
