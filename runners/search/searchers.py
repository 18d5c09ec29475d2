"""Searchers on Ray Tune: the unified space as Ray Tune param spaces (random search's one-point
sampler, grid search). Here, not in `search_spaces`, so that `search_spaces` imports neither Ray
nor MLflow (the define-by-run Optuna space stays there: it is plain Optuna)."""
from __future__ import annotations

import random
from typing import Any, Dict, List, Mapping, Optional, Sequence

from search_spaces import POINT_KEY, SearchSpace, grid_points, sample_point


def to_ray_param_space(space: SearchSpace, seed: Optional[int] = None) -> Dict[str, Any]:
    """Param space for Ray Tune's random search (the default BasicVariantGenerator):
    `{"point": tune.sample_from(...)}`; each trial gets one whole point drawn by `sample_point`
    (seeded: the driver draws the points in order). Read it back with `point_from_config`."""
    from ray import tune

    rng = random.Random(seed)

    def draw(_config=None) -> Dict[str, Any]:
        return sample_point(space, rng)

    return {POINT_KEY: tune.sample_from(draw)}


def to_ray_grid(space: SearchSpace, fixed: Optional[Mapping[str, Any]] = None,
                max_points: int = 10_000, values: Optional[Mapping[str, Sequence[Any]]] = None) -> Dict[str, Any]:
    """Param space for a Ray Tune grid search: `{"point": tune.grid_search([...every point...])}`."""
    from ray import tune

    return {POINT_KEY: tune.grid_search(grid_points(space, fixed=fixed, max_points=max_points, values=values))}


# --- the search algorithms (registered by name in search_spaces.spec.ALGORITHMS) ----------------------
# Each: (space, spec, presets, *, grid_param_space, warm) -> (Tune search algorithm, Tune param space).
# Every algorithm evaluates the presets first and runs at most `max_concurrent` trials at once.

def _optuna_search(space, spec, presets, sampler, warm):
    """Ray's OptunaSearch over the space's define-by-run function, with `sampler`."""
    from ray.tune.search.optuna import OptunaSearch

    from search_spaces import to_optuna

    # multi-objective: Optuna optimises both (the study gets two directions); the scheduler
    # (ASHA) still stops trials on the primary metric alone, given to TuneConfig
    metric, mode = ((spec.metric, spec.mode) if not spec.second_metric
                    else ([spec.metric, spec.second_metric], [spec.mode, "min"]))
    # warm start (runners.search.warm_start): the study OptunaSearch loads already holds earlier trials
    seeded = warm.searcher_kwargs(space, mode if isinstance(mode, list) else [mode], sampler) if warm else {}
    return OptunaSearch(space=to_optuna(space), metric=metric, mode=mode, sampler=sampler,
                        points_to_evaluate=presets or None, **seeded), {}


def population_param_space(space, spec, presets: List[Dict[str, Any]]):
    """(generator, param space) of a pbt/pb2 search with algorithm random: Ray's BasicVariantGenerator
    draws the initial population from the space (seeded), the presets first."""
    from ray.tune.search import BasicVariantGenerator

    gen = BasicVariantGenerator(max_concurrent=spec.max_concurrent or 0,
                                points_to_evaluate=[{POINT_KEY: p} for p in presets] or None)
    return gen, to_ray_param_space(space, seed=spec.seed)


def tpe_search(space, spec, presets, *, grid_param_space=None, warm=None):
    """Optuna's TPE sampler (search.tpe settings) behind Ray's OptunaSearch."""
    import optuna

    tpe_kw = spec.tpe.sampler_kwargs() if spec.tpe is not None else {}
    return _optuna_search(space, spec, presets, optuna.samplers.TPESampler(seed=spec.seed, **tpe_kw), warm)


def random_search(space, spec, presets, *, grid_param_space=None, warm=None):
    """Optuna's RandomSampler; beside pbt/pb2 (Tune refuses an Optuna searcher there) Ray's own
    generator draws the initial population."""
    import optuna

    from runners.search.schedulers import is_population

    if is_population(spec):
        return population_param_space(space, spec, presets)
    return _optuna_search(space, spec, presets, optuna.samplers.RandomSampler(seed=spec.seed), warm)


def grid_search(space, spec, presets, *, grid_param_space=None, warm=None):
    """Ray's BasicVariantGenerator over the points the driver enumerated, the presets first (a preset
    already in the grid moves to the front, it is not run twice); the concurrency limit goes to the
    generator (Tune's `max_concurrent_trials` takes a Searcher only)."""
    from ray.tune.search import BasicVariantGenerator

    points = grid_param_space[POINT_KEY]["grid_search"]
    first: List[Dict[str, Any]] = []
    for p in presets:
        if p not in first:
            first.append(p)
    ordered = first + [p for p in points if p not in first]
    return BasicVariantGenerator(max_concurrent=spec.max_concurrent or 0), {POINT_KEY: {"grid_search": ordered}}
