"""Every combination of search settings the schema accepts runs: algorithm (tpe, random, grid) x
scheduler (asha, hyperband, fifo) x presets (with, without) x second objective (none, params).

Each combination is a real search on one local Ray (started by the first, reused by the rest),
tracked in one SQLite store, of trials of two epochs at 32 px on 56 synthetic faces (what costs is
starting each trial's worker, ~5-13 s, not training). With presets: the preset and one more trial,
one at a time (`max_concurrent: 1`); it checks that the preset ran first and that the two trials
did not overlap (max_concurrent honoured: with 2 CPUs and 1 CPU per trial, Ray alone would run both
at once). Without presets: one trial. Every search must finish with no failed trial, and report the
second objective when it has one.

The suite runs a pairwise cover of the 36 combinations (9 searches, 14 trials: every pair of values
of any two factors appears in one of them; measured on 2 cores: 100 s at load ~2, 225 s at load
~8); FER_AUTOML_FULL_MATRIX=1 runs all 36 (58 trials, 9 min at load 3-7).
"""
from __future__ import annotations

import contextlib
import io
import itertools
import logging
import logging.handlers
import os
import time

import pytest
import yaml

from conftest import search_runs
from _space_helpers import search_test_space

ALGORITHMS = ("tpe", "random", "grid")
SCHEDULERS = ("asha", "hyperband", "fifo")
PRESETS = (True, False)
SECOND = (None, "params")
FACTORS = (ALGORITHMS, SCHEDULERS, PRESETS, SECOND)

FULL = list(itertools.product(*FACTORS))
# every pair of values of any two factors, in 9 searches (checked by test_the_pairwise_cover_covers_every_pair)
PAIRWISE = [("tpe", "asha", True, None), ("tpe", "hyperband", True, None), ("tpe", "fifo", False, "params"),
            ("random", "asha", True, None), ("random", "hyperband", True, "params"), ("random", "fifo", False, None),
            ("grid", "asha", False, "params"), ("grid", "hyperband", False, None), ("grid", "fifo", True, None)]
FULL_MATRIX = os.environ.get("FER_AUTOML_FULL_MATRIX") == "1"
COMBOS = FULL if FULL_MATRIX else PAIRWISE
PRESET = {"attention": "none", "num_patches": 0, "lr": 0.005}  # SEARCH_TEST_SPACE's preset `plain`


def combo_id(c) -> str:
    alg, sched, presets, second = c
    return f"{alg}-{sched}-{'presets' if presets else 'nopresets'}-{second or 'single'}"


def combo_space(alg: str, sched: str, presets: bool, second) -> dict:
    scheduler = {"fifo": {"type": "fifo"},
                 "asha": {"type": "asha", "grace_period": 1, "max_t": 2, "reduction_factor": 2},
                 "hyperband": {"type": "hyperband", "max_t": 2, "reduction_factor": 2}}[sched]
    d = search_test_space(name=combo_id((alg, sched, presets, second)), algorithm=alg, scheduler=scheduler,
                          presets=["plain"] if presets else [], num_samples=trials(presets), max_concurrent=1,
                          dataset={"format": "synthetic", "n": 56, "image_size": 32})
    if second:
        d["search"]["second_objective"] = second
    if alg == "grid":
        # with presets two points, one of them the preset (run once, first); else one point
        d["search"].update(num_samples=1, grid={"attention": ["se", "none"] if presets else ["se"],
                                                "num_patches": [0], "lr": [0.005]})
    return d


def trials(presets: bool) -> int:
    return 2 if presets else 1


def test_the_pairwise_cover_covers_every_pair():
    for (i, fi), (j, fj) in itertools.combinations(enumerate(FACTORS), 2):
        assert {(c[i], c[j]) for c in PAIRWISE} == set(itertools.product(fi, fj)), (i, j)
    assert len(set(PAIRWISE)) == len(PAIRWISE) and set(PAIRWISE) <= set(FULL)


def test_grid_puts_the_presets_first_and_runs_each_point_once(tmp_path):
    """No Ray: the grid's list of points, as BasicVariantGenerator enumerates it."""
    from runners.search.driver import _merge_spec, _searcher, is_searcher
    from runners.search.searchers import to_ray_grid
    from search_spaces import POINT_KEY, load_space

    d = combo_space("grid", "fifo", True, None)
    d["presets"]["fast"] = {"attention": "cbam", "num_patches": 0, "lr": 0.01}
    d["search"]["presets"] = ["fast", "plain", "fast"]
    space = load_space(d, name="grid.yaml")
    spec = _merge_spec(space, {})
    values = dict(spec.grid)
    alg, param_space = _searcher(space, spec, 2, to_ray_grid(space, values=values))
    points = param_space[POINT_KEY]["grid_search"]
    # the presets in their order, once each; then the grid without the point `plain` already ran
    assert points == [{"attention": "cbam", "num_patches": 0, "lr": 0.01}, PRESET,
                      {"attention": "se", "num_patches": 0, "lr": 0.005}]
    assert not is_searcher(alg) and alg.max_concurrent == 1  # the limit goes to the generator itself
    for algorithm in ("tpe", "random"):  # Searchers: Tune's max_concurrent_trials limits them
        d = combo_space(algorithm, "fifo", True, None)
        space = load_space(d, name="s.yaml")
        assert is_searcher(_searcher(space, _merge_spec(space, {}), 2)[0])


@pytest.fixture(scope="module")
def matrix_env(module_tmp):
    """One working folder, SQLite store and Ray for every search of the module."""
    import ray

    tmp = module_tmp("matrix")
    cwd = os.getcwd()
    os.chdir(tmp)  # a SQLite store's artifacts go under the working folder
    times = {}
    yield {"tmp": tmp, "uri": f"sqlite:///{tmp}/mlflow.db", "times": times}
    os.chdir(cwd)
    if ray.is_initialized():
        ray.shutdown()
    print(f"\nsearch matrix: {len(times)} searches, {sum(times.values()):.0f} s: "
          + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))


@pytest.mark.slow
@pytest.mark.parametrize("combo", COMBOS, ids=combo_id)
def test_every_accepted_combination_runs(combo, matrix_env):
    from runners.search.driver import run_search

    alg, sched, presets, second = combo
    name = combo_id(combo)
    tmp = matrix_env["tmp"]
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(combo_space(*combo)))
    warnings = logging.handlers.BufferingHandler(10_000)
    tune_log = logging.getLogger("ray.tune.tune")  # where Tune says it ignores max_concurrent_trials
    tune_log.addHandler(warnings)
    t0 = time.time()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            res = run_search(str(path), storage_path=str(tmp / "ray"), tracking_uri=matrix_env["uri"], verbose=0)
    finally:
        tune_log.removeHandler(warnings)
    matrix_env["times"][name] = time.time() - t0
    # Ray warned (and ignored max_concurrent_trials) when the search algorithm was not a Searcher
    assert not [r.getMessage() for r in warnings.buffer if "will be ignored" in r.getMessage()]

    n = trials(presets)
    assert res.num_failed == 0, res.failures
    assert len(res.leaderboard) == n
    _, _, parents, children = search_runs(matrix_env["uri"], name)
    assert len(parents) == 1 and len(children) == n
    assert all(r.info.status == "FINISHED" for r in children)
    runs = sorted(children, key=lambda r: r.info.start_time)
    points = [{k: yaml.safe_load(r.data.params[k]) for k in ("attention", "num_patches", "lr")} for r in runs]
    if presets:  # the preset ran, and first
        assert points[0] == PRESET and points[1] != PRESET, points
        # max_concurrent: 1 honoured: the second trial started after the first ended
        assert runs[1].info.start_time >= runs[0].info.end_time, [(r.info.start_time, r.info.end_time) for r in runs]
    if second:
        assert all(second in r.data.metrics for r in runs)
        assert res.second_metric == second
