"""Converters: Optuna define-by-run (and Ray Tune's OptunaSearch on it), Ray Tune random and grid param
spaces, grid enumeration, the architecture count: all draw from the same support."""
from __future__ import annotations

import itertools
import logging
import warnings

import pytest

from search_spaces import (POINT_KEY, SpaceError, architecture_count, architecture_key, grid_midpoints, grid_points,
                           grid_size, load_space, optuna_distributions, point_from_config, sample, sample_point,
                           to_optuna)
from runners.search.searchers import to_ray_grid, to_ray_param_space
from search_spaces.samplers import _components, _enumerate
from search_spaces.schema import FloatDim
from search_spaces.space import SearchSpace

optuna = pytest.importorskip("optuna")
optuna.logging.set_verbosity(optuna.logging.WARNING)
logging.getLogger("ray").setLevel(logging.ERROR)

UNIFIED = load_space("unified")
QUICK = load_space("quickstart")


def _assert_valid_point(space, p):
    assert space.check_point(p) == p  # exactly the active dimensions, each inside its dimension


# ---- exhaustive drivers: every path a sampler can take ------------------------------------------------------------
class _Odometer:
    """Drives a sampler through every combination of its discrete decisions (depth first)."""

    def __init__(self):
        self.path, self.radix, self.k = [], [], 0

    def pick(self, n: int) -> int:
        if self.k == len(self.path):
            self.path.append(0)
            self.radix.append(n)
        i = self.path[self.k]
        self.k += 1
        return i

    def runs(self, fn):
        while True:
            self.k = 0
            yield fn()
            del self.path[self.k:], self.radix[self.k:]
            while self.path and self.path[-1] + 1 >= self.radix[-1]:
                self.path.pop(), self.radix.pop()
            if not self.path:
                return
            self.path[-1] += 1


class _EnumTrial:
    """Stands in for optuna.Trial: choices and ints enumerated, floats at their low end."""

    def __init__(self, odo):
        self.odo = odo

    def suggest_categorical(self, name, choices):
        return choices[self.odo.pick(len(choices))]

    def suggest_int(self, name, low, high, step=1, log=False):
        vals = list(range(low, high + 1, step))
        return vals[self.odo.pick(len(vals))]

    def suggest_float(self, name, low, high, log=False, step=None):
        return low


class _EnumRng:
    """Stands in for random.Random inside `sample_point` (the Ray random param space's sampler)."""

    def __init__(self, odo):
        self.odo = odo

    def randrange(self, a, b=None, step=1):
        vals = list(range(a)) if b is None else list(range(a, b, step))
        return vals[self.odo.pick(len(vals))]

    def uniform(self, a, b):
        return a


def _subspace(space: SearchSpace, names):
    """The dimensions `names` of `space` as a space of their own (choice/int only)."""
    dims = {n: space.raw.dimensions[n].model_dump(exclude_none=True) for n in space.order if n in names}
    return load_space({"dimensions": dims}, name=f"{space.where}[part]")


def test_optuna_and_ray_samplers_have_the_same_support_as_the_enumeration_unified():
    """Per group of linked model dimensions of unified.yaml, every architecture the Optuna
    define-by-run function can produce, every one the Ray param space's sampler can produce and
    the enumeration are the same set; their product is `architecture_count`."""
    model_choices = [n for n in UNIFIED.choice_dims() if UNIFIED.section_of(n) == "model"]
    total = 1
    for comp in _components(UNIFIED, model_choices):
        sub = _subspace(UNIFIED, comp)
        odo = _Odometer()
        f, trial = to_optuna(sub), _EnumTrial(odo)
        via_optuna = {architecture_key(UNIFIED, p) for p in odo.runs(lambda: f(trial))}
        odo = _Odometer()
        rng = _EnumRng(odo)
        via_ray = {architecture_key(UNIFIED, p) for p in odo.runs(lambda: sample_point(sub, rng))}
        values = {n: d.support() for n, d in sub.dimensions.items()}
        enumerated = {architecture_key(UNIFIED, p) for p in _enumerate(sub, sub.order, values)}
        assert via_optuna == via_ray == enumerated, comp
        total *= len(enumerated)
    assert total == architecture_count(UNIFIED)


def test_architecture_count_by_brute_force_on_quickstart():
    pts = grid_points(QUICK, fixed={"lr": 0.01, "local_weight": 0.5})
    assert len({architecture_key(QUICK, p) for p in pts}) == architecture_count(QUICK) == 24


def test_real_optuna_and_ray_reach_the_same_architectures_on_quickstart():
    n = 300
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    f = to_optuna(QUICK)
    via_optuna = set()
    for _ in range(n):
        trial = study.ask()
        p = f(trial)
        assert p == trial.params  # only active dimensions are suggested
        _assert_valid_point(QUICK, p)
        via_optuna.add(architecture_key(QUICK, p))
        study.tell(trial, 0.0)
    from ray.tune.search.variant_generator import generate_variants

    ps = to_ray_param_space(QUICK, seed=0)
    via_ray = set()
    for _ in range(n):
        for _, cfg in generate_variants(ps):
            p = point_from_config(cfg)
            _assert_valid_point(QUICK, p)
            via_ray.add(architecture_key(QUICK, p))
    grid = {architecture_key(QUICK, p) for p in grid_points(QUICK, fixed={"lr": 0.01, "local_weight": 0.5})}
    assert via_optuna == via_ray == grid and len(grid) == 24


def test_optuna_define_by_run_multi_objective_and_ray_optuna_search():
    from ray.tune.search.optuna import OptunaSearch

    f = to_optuna(UNIFIED)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.TPESampler(seed=0))
    for i in range(12):
        trial = study.ask()
        p = f(trial)
        assert set(p) == set(trial.params)
        UNIFIED.validate(p)
        study.tell(trial, [0.5 + i / 100, float(i % 5)])
    assert len(study.best_trials) >= 1

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        searcher = OptunaSearch(space=f, metric=["val_balanced_accuracy", "params"], mode=["max", "min"], seed=0,
                                points_to_evaluate=[UNIFIED.presets["ma_net"], UNIFIED.presets["phanet"]])
        configs = []
        for i in range(8):
            cfg = searcher.suggest(f"t{i}")
            configs.append(cfg)
            searcher.on_trial_complete(f"t{i}", {"val_balanced_accuracy": 0.5, "params": 1e6 * i})
    points = [point_from_config(c, UNIFIED) for c in configs]
    assert points[0] == UNIFIED.presets["ma_net"] and points[1] == UNIFIED.presets["phanet"]
    for p in points:
        UNIFIED.validate(p)
        _assert_valid_point(UNIFIED, p)


def test_optuna_never_suggests_inactive_dimensions():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    f = to_optuna(UNIFIED)
    for _ in range(200):
        trial = study.ask()
        p = f(trial)
        assert set(trial.params) == set(p)
        _assert_valid_point(UNIFIED, p)
        study.tell(trial, 0.0)


def test_ray_random_param_space_is_seeded_and_valid():
    from ray.tune.search.variant_generator import generate_variants

    def draw(seed, n):
        ps = to_ray_param_space(UNIFIED, seed=seed)
        return [cfg for _ in range(n) for _, cfg in generate_variants(ps)]

    a, b = draw(3, 40), draw(3, 40)
    assert a == b and a != draw(4, 40)
    assert [point_from_config(c) for c in a] == sample(UNIFIED, 40, seed=3)
    for c in a:
        assert set(c) == {POINT_KEY}
        UNIFIED.validate(point_from_config(c))


def test_grid():
    fixed = {"lr": 0.01, "local_weight": 0.5}
    pts = grid_points(QUICK, fixed=fixed)
    assert len(pts) == grid_size(QUICK, fixed=fixed) == 4 * 2 * (2 + 2 * 2) * 2
    assert len({tuple(sorted(p.items())) for p in pts}) == len(pts)
    for p in pts:
        _assert_valid_point(QUICK, p)
        QUICK.validate(p)
    # every combination of the choice dimensions, conditions respected
    for att, sc, img in itertools.product(["none", "se", "cbam", "spatio_channel"], [1, 2], [40, 48]):
        assert {"attention": att, "num_scales": sc, "num_patches": 0, "loss_weighting": "uncertainty", "lr": 0.01,
                "image_size": img} in pts
    from ray.tune.search.variant_generator import generate_variants

    ps = to_ray_grid(QUICK, fixed=fixed)
    assert [point_from_config(c) for _, c in generate_variants(ps)] == pts


def test_grid_errors():
    with pytest.raises(SpaceError, match=r"dimensions.local_weight: a grid needs every float dimension fixed"):
        grid_points(QUICK)
    with pytest.raises(SpaceError, match="unknown dimension 'nope'"):
        grid_points(QUICK, fixed={"nope": 1})
    with pytest.raises(SpaceError, match="fixed dimension 'lr'"):
        grid_points(QUICK, fixed={"lr": 5.0, "local_weight": 0.5})
    fixed = {n: d.low for n, d in UNIFIED.dimensions.items() if isinstance(d, FloatDim)}
    assert grid_size(UNIFIED, fixed=fixed) > 10 ** 9
    with pytest.raises(SpaceError, match="more than max_points"):
        grid_points(UNIFIED, fixed=fixed)


def test_grid_values_and_midpoints():
    mid = grid_midpoints(QUICK)
    assert mid == {"local_weight": 0.6, "lr": 0.00316}  # linear and geometric middles, 3 significant digits
    assert grid_midpoints(QUICK, values={"lr": [0.01]}, fixed={"local_weight": 0.5}) == {}
    values = {"lr": [0.001, 0.01, 0.01], "attention": ["none"]}  # a repeated value counts once
    pts = grid_points(QUICK, fixed={"local_weight": 0.5}, values=values)
    assert len(pts) == grid_size(QUICK, fixed={"local_weight": 0.5}, values=values) == 2 * 2 * (2 + 2 * 2) * 2
    for p in pts:
        QUICK.validate(p)
    with pytest.raises(SpaceError, match="grid: values of dimension 'lr'"):
        grid_points(QUICK, fixed={"local_weight": 0.5}, values={"lr": [1.0]})
    with pytest.raises(SpaceError, match="both fixed and given grid values"):
        grid_points(QUICK, fixed={"local_weight": 0.5, "lr": 0.01}, values={"lr": [0.01]})
    stepped = load_space({"dimensions": {"label_smoothing": {"type": "float", "low": 0.0, "high": 0.3, "step": 0.2}}})
    assert grid_midpoints(stepped) == {"label_smoothing": 0.2}  # on the step


def test_optuna_distributions_are_the_ones_define_by_run_suggests_from():
    dists = optuna_distributions(UNIFIED)
    assert set(dists) == set(UNIFIED.dimensions)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    f = to_optuna(UNIFIED)
    for _ in range(30):
        trial = study.ask()
        f(trial)
        assert trial.distributions == {n: dists[n] for n in trial.params}
        study.tell(trial, 0.0)


def test_point_from_config():
    p = QUICK.presets["baseline"]
    assert point_from_config({POINT_KEY: p}) == p
    assert point_from_config({**p, "trial_extra": 1}, QUICK) == p


def test_search_spaces_imports_no_runners_ray_or_mlflow():
    import subprocess
    import sys

    code = ("import sys, search_spaces, search_spaces.samplers; "
            "bad = [m for m in ('runners', 'ray', 'mlflow', 'optuna') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    from conftest import REPO

    r = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True,
                       env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stdout + r.stderr
