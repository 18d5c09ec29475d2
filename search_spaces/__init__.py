"""Search spaces: the YAML schema, points and their validation into a `TrialConfig`, samplers
(seeded, grid, Optuna define-by-run) and the shipped spaces (`unified.yaml`, `quickstart.yaml`).
Imports nothing from `runners`, Ray or MLflow (tests/test_imports.py checks it); Optuna only
inside the converters that need it. The Ray Tune param spaces are in `runners.search.searchers`.
"""
from .config import DataConfig, TrainConfig, TrialConfig
from .fit import fit_errors, smallest_image_size
from .samplers import (POINT_KEY, architecture_count, architecture_key, grid_midpoints, grid_points, grid_size,
                       optuna_distributions, point_from_config, sample, sample_point, to_optuna)
from .schema import PACKAGE_DIR, SHIPPED, SpaceError, resolve_space_path
from .space import SearchSpace, load_space
from .spec import SECOND_OBJECTIVE_METRICS, SearchSpec


def validate(point, space="unified") -> TrialConfig:
    """Validate a point of `space` (a SearchSpace, a file, or a shipped name) into a TrialConfig."""
    sp = space if isinstance(space, SearchSpace) else load_space(space)
    return sp.validate(point)


__all__ = ["DataConfig", "PACKAGE_DIR", "POINT_KEY", "SECOND_OBJECTIVE_METRICS", "SHIPPED", "SearchSpace",
           "SearchSpec", "SpaceError", "TrainConfig", "TrialConfig", "architecture_count", "architecture_key",
           "fit_errors", "grid_midpoints", "grid_points", "grid_size", "load_space", "optuna_distributions",
           "point_from_config", "resolve_space_path", "sample", "sample_point", "smallest_image_size", "to_optuna",
           "validate"]
