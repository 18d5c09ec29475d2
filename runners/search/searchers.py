"""Searchers on Ray Tune: the unified space as Ray Tune param spaces (random search's one-point
sampler, grid search). Here, not in `search_spaces`, so that `search_spaces` imports neither Ray
nor MLflow (the define-by-run Optuna space stays there: it is plain Optuna)."""
from __future__ import annotations

import random
from typing import Any, Dict, Mapping, Optional, Sequence

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
