"""Multi-objective searches (a second objective beside the metric, the Pareto front), Optuna's plots
of a finished search, the leaderboard order and grid searches over spaces with float dimensions.

The searches here are real: local Ray, real trials on synthetic faces, a real MLflow server on
127.0.0.1. One multi-objective search (module-scoped) serves several tests.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time

import pytest
import yaml

from conftest import search_runs
from runners.cli import main
from runners.search.pareto import dominates, pareto_front, pareto_rows
from runners.search.driver import grid_settings, sort_leaderboard
from _space_helpers import search_test_space

SPACE = search_test_space(name="mo-search", second_objective="params", seed=3)
METRIC = "val_balanced_accuracy"


# --- the Pareto front, alone ------------------------------------------------------------------------

def _row(tid, acc, params, status="finished"):
    return {"trial_id": tid, "status": status, METRIC: acc, "params": params}


def test_pareto_front_keeps_exactly_the_non_dominated_trials():
    rows = [_row("a", 0.9, 10), _row("b", 0.8, 5), _row("c", 0.7, 20),  # c: beaten by a and b
            _row("d", 0.9, 12),  # d: as accurate as a but larger
            _row("e", 0.6, 5)]  # e: as small as b but less accurate
    assert pareto_front(rows, METRIC, "max", "params") == [0, 1]
    assert [r["trial_id"] for r in pareto_rows(rows, METRIC, "max", "params")] == ["a", "b"]
    assert dominates((1, 1), (1, 2)) and not dominates((1, 1), (1, 1)) and not dominates((0, 2), (1, 1))


def test_pareto_front_ties_single_trial_and_failed_trials():
    tied = [_row("a", 0.9, 10), _row("b", 0.9, 10), _row("c", 0.5, 10)]
    assert pareto_front(tied, METRIC, "max", "params") == [0, 1]  # equal points are both on the front
    assert pareto_front([_row("a", 0.1, 99)], METRIC, "max", "params") == [0]
    rows = [_row("ok", 0.5, 10), _row("boom", 0.99, 1, status="failed"),  # failed: excluded, dominates nothing
            _row("none", None, 1), _row("nan", float("nan"), 1), _row("early", 0.4, 8, status="stopped_early")]
    assert pareto_front(rows, METRIC, "max", "params") == [0, 4]
    assert pareto_front([_row("x", 0.9, 1, status="failed")], METRIC, "max", "params") == []
    assert pareto_front([], METRIC, "max", "params") == []


def test_pareto_front_follows_the_mode_of_the_metric():
    rows = [{"status": "finished", "val_loss": 0.2, "macs": 100}, {"status": "finished", "val_loss": 0.1, "macs": 100},
            {"status": "finished", "val_loss": 0.3, "macs": 50}]
    assert pareto_front(rows, "val_loss", "min", "macs") == [1, 2]


def test_leaderboard_order_best_first_then_no_value_then_failed():
    rows = [_row("f", None, None, status="failed"), _row("lo", 0.3, 1), _row("none", None, 1),
            _row("hi", 0.8, 1), _row("nan", float("nan"), 1), _row("f2", 0.99, 1, status="failed"),
            _row("hi2", 0.8, 2)]
    assert [r["trial_id"] for r in sort_leaderboard(rows, METRIC, "max")] == ["hi", "hi2", "lo", "none", "nan", "f2", "f"]
    assert [r["trial_id"] for r in sort_leaderboard(rows, METRIC, "min")][:3] == ["lo", "hi", "hi2"]


# --- costs, plots, grid settings, alone -------------------------------------------------------------

def test_costs_of_a_model_and_the_rng_left_alone():
    import torch

    from fer_models.cost import cost, count_macs, count_params

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    model(torch.zeros(1, 3, 16, 16))
    assert cost(model, "params", 16) == count_params(model) == 4 * 27 + 4 + 14 * 14 * 4 * 2 + 2
    assert cost(model, "macs", 16) == count_macs(model, 16) > 0
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    model.train()
    assert cost(model, "latency", 16, device="cpu", repeats=3) > 0
    assert model.training and torch.equal(torch.rand(3), expected)
    with pytest.raises(ValueError, match="unknown cost 'flops'"):
        cost(model, "flops", 16)


def test_plots_of_one_trial_and_of_conditional_and_failed_trials(tmp_path):
    from runners.search.plots import rebuild_study, write_plots
    from search_spaces import load_space, sample

    space = load_space("quickstart")
    pts = sample(space, 5, seed=0)
    one = [{"trial_id": "t0", "status": "finished", "point": pts[0], METRIC: 0.4, "params": 1e6}]
    study, notes = rebuild_study(one, space, METRIC, "max", "params")
    files, notes = write_plots(study, tmp_path / "one", METRIC, "params")
    assert sorted(f.name for f in files) == ["optimization_history.html", "parallel_coordinate.html",
                                             "param_importances.txt", "pareto_front.html"]
    assert "at least 3 completed trials" in (tmp_path / "one" / "param_importances.txt").read_text()
    assert notes and notes[0].startswith("param_importances: not drawn")

    rows = [{"trial_id": f"t{i}", "status": "failed" if i == 1 else "finished", "point": p,
             METRIC: None if i == 1 else 0.2 + i / 10} for i, p in enumerate(pts)]
    assert {n for p in pts for n in p} > set.intersection(*(set(p) for p in pts))  # conditional dims vary
    study, notes = rebuild_study(rows, space, METRIC, "max")
    assert not notes
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert all(t.params == p for t, p in zip(study.trials, pts))
    files, notes = write_plots(study, tmp_path / "many", METRIC)
    assert sorted(f.name for f in files) == ["optimization_history.html", "parallel_coordinate.html",
                                             "param_importances.html"], notes
    assert "plotly" in (tmp_path / "many" / "optimization_history.html").read_text()[:20000].lower()


def test_grid_fixes_float_dimensions_at_their_midpoint_and_takes_listed_values():
    from search_spaces import SpaceError, grid_points, load_space

    space = load_space("quickstart")
    spec = space.search.model_copy(update={"algorithm": "grid"})
    values, fixed, note = grid_settings(space, spec)
    assert values == {} and fixed == {"local_weight": 0.6, "lr": pytest.approx(math.sqrt(1e-3 * 1e-2), rel=1e-2)}
    assert "local_weight=0.6" in note and "lr=0.00316" in note and "search.grid" in note
    assert len(grid_points(space, fixed=fixed, values=values)) == 96
    spec = spec.model_copy(update={"grid": {"lr": [0.001, 0.01], "attention": ["none", "se"]}})
    values, fixed, note = grid_settings(space, spec)
    assert fixed == {"local_weight": 0.6} and "lr" not in note
    pts = grid_points(space, fixed=fixed, values=values)
    assert len(pts) == 2 * 2 * (2 + 2 * 2) * 2 * 2
    assert {p["lr"] for p in pts} == {0.001, 0.01} and {p["attention"] for p in pts} == {"none", "se"}

    def load(grid, algorithm="grid"):
        d = yaml.safe_load((space.path).read_text())
        d["search"].update(algorithm=algorithm, grid=grid)
        return load_space(d, name="qs.yaml")

    with pytest.raises(SpaceError, match=r"qs.yaml: search.grid.nope: unknown dimension 'nope'"):
        load({"nope": [1]})
    with pytest.raises(SpaceError, match=r"qs.yaml: search.grid.lr\[1\]: dimension 'lr': 0.5 is outside"):
        load({"lr": [0.01, 0.5]})
    with pytest.raises(SpaceError, match="apply to algorithm: grid only"):
        load({"lr": [0.01]}, algorithm="tpe")


# --- one real multi-objective search ----------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_for_module():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def mo_search(module_tmp, mlflow_server, ray_for_module):
    import contextlib
    import os

    tmp = module_tmp("mo")
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(tmp)
    t0 = time.time()
    try:
        with contextlib.redirect_stdout(out):
            rc = main(["search", str(space), "--tracking-uri", mlflow_server.uri, "--storage-path", str(tmp / "ray")])
    finally:
        os.chdir(cwd)
    print(f"multi-objective search: {time.time() - t0:.1f} s")
    client, _, parents, children = search_runs(mlflow_server.uri, "mo-search")
    parent = parents[0]
    return {"rc": rc, "out": out.getvalue(), "client": client, "parent": parent, "children": children, "tmp": tmp}


def _csv(client, run_id, path, tmp):
    local = client.download_artifacts(run_id, path, str(tmp))
    with open(local, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_multi_objective_search_reports_the_second_objective(mo_search):
    assert mo_search["rc"] == 0, mo_search["out"][-3000:]
    assert "search mo-search: 4 trials, 0 failed" in mo_search["out"]
    children = mo_search["children"]
    assert len(children) == 4
    client = mo_search["client"]
    for r in children:
        assert 5e5 < r.data.metrics["params"] < 2e6  # a MobileNetV3-small (~0.93 M) and its heads
        history = client.get_metric_history(r.info.run_id, "params")
        assert len(history) == len(client.get_metric_history(r.info.run_id, METRIC))  # with every report
        assert len({m.value for m in history}) == 1  # measured once
    assert mo_search["parent"].data.params["second_objective"] == "params"


@pytest.mark.slow
def test_multi_objective_search_pareto_front(mo_search):
    client, parent, tmp = mo_search["client"], mo_search["parent"], mo_search["tmp"]
    pid = parent.info.run_id
    board = _csv(client, pid, "leaderboard.csv", tmp / "a")
    front = _csv(client, pid, "pareto_front.csv", tmp / "b")
    assert [r["trial_id"] for r in board] and "params" in board[0] and "pareto" in board[0]
    # the leaderboard is sorted by the metric, best first
    accs = [float(r[METRIC]) for r in board if r["status"] != "failed"]
    assert accs == sorted(accs, reverse=True)
    # the front, recomputed here by brute force from the leaderboard
    ok = [r for r in board if r["status"] != "failed"]
    expected = {a["trial_id"] for a in ok
                if not any(float(b[METRIC]) >= float(a[METRIC]) and float(b["params"]) <= float(a["params"])
                           and (float(b[METRIC]) > float(a[METRIC]) or float(b["params"]) < float(a["params"]))
                           for b in ok)}
    assert expected and {r["trial_id"] for r in front} == expected
    assert {r["trial_id"] for r in board if r["pareto"] == "True"} == expected
    for r in front:  # the front's rows carry the leaderboard's values and points
        same = next(b for b in board if b["trial_id"] == r["trial_id"])
        assert r[METRIC] == same[METRIC] and r["params"] == same["params"] and json.loads(r["point"])
    tags = {r.data.tags["fer_automl.trial_id"]: r.data.tags.get("fer_automl.pareto") for r in mo_search["children"]}
    assert tags == {t: ("true" if t in expected else "false") for t in tags}
    assert parent.data.tags["fer_automl.pareto_size"] == str(len(expected))
    out = mo_search["out"]
    assert out.index("Pareto front (") > out.index("| pareto")  # printed after the leaderboard
    for t in expected:
        assert t in out[out.index("Pareto front ("):]


@pytest.mark.slow
def test_multi_objective_search_logs_optuna_plots(mo_search):
    client, pid = mo_search["client"], mo_search["parent"].info.run_id
    plots = {a.path for a in client.list_artifacts(pid, "plots")}
    assert {"plots/optimization_history.html", "plots/parallel_coordinate.html", "plots/pareto_front.html"} <= plots
    assert "plots/param_importances.html" in plots or "plots/param_importances.txt" in plots
    assert "leaderboard.csv" in {a.path for a in client.list_artifacts(pid)}
    html = open(client.download_artifacts(pid, "plots/pareto_front.html", str(mo_search["tmp"] / "c"))).read()
    assert "params" in html and METRIC in html


# --- a grid search over the quick-start space (its float dimensions fixed) --------------------------

@pytest.mark.slow
def test_grid_search_over_quickstart_runs(tmp_path, mlflow_server, ray_for_module, capsys, monkeypatch):
    from search_spaces import load_space

    monkeypatch.chdir(tmp_path)
    d = yaml.safe_load(load_space("quickstart").path.read_text())
    d["constants"]["train.epochs"] = 1
    d["search"].update(name="qs-grid", presets=[], algorithm="grid", num_samples=1, max_concurrent=2,
                       scheduler="fifo", dataset={"format": "synthetic", "n": 140, "image_size": 40},
                       # a 2-point grid: every choice narrowed but the attention
                       grid={"attention": ["none", "se"], "num_scales": [1], "num_patches": [4],
                             "local_aggregation": ["mean"], "loss_weighting": ["fixed"], "image_size": [40]})
    space = tmp_path / "quickstart_grid.yaml"
    space.write_text(yaml.safe_dump(d))
    uri = mlflow_server.uri
    # a relative space path (trials run in their own directories: they must get it absolute)
    rc = main(["search", space.name, "--storage-path", str(tmp_path / "ray"), "--tracking-uri", uri])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    assert "grid: float dimensions fixed at the middle of their range: local_weight=0.6, lr=0.00316" in out
    assert "search qs-grid: 2 trials, 0 failed" in out

    client, exp, _, children = search_runs(uri, "qs-grid")
    assert sorted(r.data.params["attention"] for r in children) == ["none", "se"]
    assert {(r.data.params["lr"], r.data.params["local_weight"]) for r in children} == {("0.00316", "0.6")}
