"""The search-quality benchmark (issue 11, item 9): its reduced form end to end (real local Ray,
MLflow in a temporary SQLite store, tiny synthetic faces), and its selection and compute rules."""
from __future__ import annotations

import json
import math

import pytest

from benchmarks import search_quality as sq


def _row(name, stage, val, test, point, image_epochs=100.0, seed=None):
    return {"name": name, "stage": stage, "val": val, "test": test, "point": point, "image_epochs": image_epochs,
            "seed": seed}


def test_the_refit_winner_is_chosen_on_mean_validation_over_its_seeds_not_on_test():
    """Configuration A has the single best validation seed; B the best mean over seeds: B ships
    (its best seed on validation), whatever the test figures say."""
    a, b = {"lr": "0.01", "seed": "1"}, {"lr": "0.02", "seed": "1"}
    rows = [_row("s1", "search", 0.99, 0.99, {"lr": "0.5"}),  # a search-stage row never ships when there is a refit
            _row("a1", "refit", 0.90, 0.10, a, seed=1), _row("a2", "refit", 0.40, 0.90, {**a, "seed": "2"}, seed=2),
            _row("b1", "refit", 0.70, 0.30, b, seed=1), _row("b2", "refit", 0.72, 0.20, {**b, "seed": "2"}, seed=2)]
    got = sq.shipped(rows)
    assert got["name"] == "b2" and got["test"] == 0.20 and got["seeds"] == 2
    assert math.isclose(got["seed_mean_test"], 0.25) and math.isclose(got["seed_mean_val"], 0.71)
    # without refit rows: the best validation among trials that have a test figure (ASHA-stopped ones have none)
    plain = [_row("x", "search", 0.95, None, {"lr": "1"}), _row("y", "search", 0.6, 0.5, {"lr": "2"}),
             _row("z", "search", 0.7, 0.4, {"lr": "3"})]
    got = sq.shipped(plain)
    assert got["name"] == "z" and got["test"] == 0.4 and got["skipped_unfinished"] == 1


def test_compute_and_the_best_so_far_curve():
    """image_epochs is the trial's own metric where reported, else epochs x the training split; the
    curve adds each report's compute in arrival order and reach() finds the first crossing."""
    assert sq.image_epochs_of({"epoch": 3, "image_epochs": 120.0}, 400) == 120.0
    assert sq.image_epochs_of({"epoch": 3}, 400) == 1200.0
    events = sorted([(3.0, 50.0, 0.7), (1.0, 100.0, 0.5), (2.0, 100.0, 0.4)])
    curve = sq.best_so_far(events)
    assert curve == [(100.0, 0.5), (200.0, 0.5), (250.0, 0.7)]
    assert sq.reach(curve, 0.5) == 100.0 and sq.reach(curve, 0.6) == 250.0 and sq.reach(curve, 0.8) is None


def test_the_space_has_the_six_presets_and_every_point_validates(tmp_path):
    import random

    import yaml

    from search_spaces import load_space
    from search_spaces.samplers import _draw

    d = sq.bench_space(backbone="mobilenetv3_small_100", image_size=32, epochs=2, seeds=[5, 6])
    assert sorted({n.split("__s")[0] for n in d["presets"]}) == sorted(sq.PRESETS) and len(d["presets"]) == 12
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(d))
    space = load_space(str(path))
    for point in space.presets.values():
        space.validate(point)
    rng = random.Random(0)
    for _ in range(100):  # what TPE or random search may draw, at the search stage's smaller size too
        point = {}
        for n in space.order:
            if space.is_active(n, point):
                point[n] = _draw(space.dimensions[n], rng)
        space.validate(point)
    with pytest.raises(SystemExit):
        sq.parse_args(["--presets", "baseline,nope"])


@pytest.mark.slow
def test_the_quick_benchmark_writes_a_table_and_spends_equal_compute_per_arm(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_AUTOML_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "quality.json"
    rc = sq.main(["--quick", "--out", str(out), "--keep", str(tmp_path / "work")])
    assert rc == 0
    doc = json.loads(out.read_text())
    table = out.with_suffix(".md").read_text()
    presets = ["baseline", "phanet"]
    assert doc["settings"]["quick"] and doc["settings"]["presets"] == presets
    assert list(doc["summary"]) == ["synthetic"]
    s = doc["summary"]["synthetic"]
    assert set(s["arms"]) == {"a", "b", *(f"c:{p}" for p in presets)}
    for arm, v in s["arms"].items():
        assert all(t is not None and 0.0 <= t <= 1.0 for t in v["test"]), (arm, v)
        assert all(c > 0 for c in v["compute"]), (arm, v)
    (rep,) = doc["repeats"]
    n, unit, budget = rep["n_train"], rep["unit"], rep["budget"]
    assert n > 0 and unit == doc["settings"]["epochs"] * n
    # (a)'s compute sets the budget; the others' are within the stated tolerance of it
    assert rep["arms"]["a"]["compute"] == budget > 0
    assert abs(rep["arms"]["b"]["compute"] - budget) <= unit / 2 + 1e-9
    k = len(rep["preset_arm"]["seeds"])
    for p in presets:
        c = rep["arms"]["c"][p]
        assert c["trials"] == k and abs(c["compute"] - budget) <= k * n / 2 + 1e-9, (p, c, budget)
    # (a) is two-stage: search-stage trials on a fraction of the training split (their own
    # image_epochs), then the refit at full fidelity; it ships what `promote --search` takes
    a = rep["arms"]["a"]
    search_rows = [r for r in a["rows"] if r["stage"] == "search"]
    refit_rows = [r for r in a["rows"] if r["stage"] == "refit"]
    assert search_rows and refit_rows and doc["fidelity_available"]
    assert all(0 < r["image_epochs"] < r["epoch"] * n for r in search_rows), search_rows
    assert all(r["image_epochs"] == r["epoch"] * n for r in refit_rows), (refit_rows, n)
    assert a["shipped"]["rule"].startswith("promote --search (refit") and a["promoted"] in {r["run_id"] for r in refit_rows}
    assert math.isclose(a["compute"], sum(r["image_epochs"] for r in a["rows"]))
    # the curves end at the arm's compute and never go down; reach is measured on (a)'s
    for arm in ("a", "b"):
        curve = rep["arms"][arm]["curve"]
        assert curve and math.isclose(curve[-1][0], rep["arms"][arm]["compute"])
        assert all(y2 >= y1 for (_, y1), (_, y2) in zip(curve, curve[1:]))
    r = rep["reach"]
    assert r["target_val"] == rep["arms"]["b"]["final_best_val"]
    assert r["a_compute"] is None or 0 < r["a_compute"] <= rep["arms"]["a"]["compute"]
    # the table: a header, a separator, one line per arm and preset, the goals
    lines = table.strip().splitlines()
    assert lines[0].startswith("| dataset | arm | test bal. acc.") and len([x for x in lines if x.startswith("| synthetic")]) == 4
    assert "goal (a) >= best preset alone" in table and doc["table"] == table.rstrip("\n")
