"""Ways to draw points from a space: seeded random sampling, an Optuna define-by-run function (for
Ray Tune's OptunaSearch), grid enumeration, and the count of distinct architectures.

Every sampler walks the dimensions in decision order and decides only the active ones, so an
inactive dimension is never suggested, sampled or emitted. Optuna is imported inside the
converters only.
"""
from __future__ import annotations

import itertools
import math
import random
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

from fer_models.errors import UserError

from .schema import ChoiceDim, FloatDim, IntDim, SpaceError, same_value
from .space import SearchSpace, log_uniform

# Ray param spaces (random, grid) put the whole point under this key: one sample decides every
# dimension together, so conditions hold and inactive dimensions are absent.
POINT_KEY = "point"


def _draw(dim, rng: random.Random) -> Any:
    if isinstance(dim, ChoiceDim):
        return dim.values[rng.randrange(len(dim.values))]
    if isinstance(dim, IntDim):
        if dim.log:
            return min(dim.high, max(dim.low, int(round(log_uniform(rng, dim.low, dim.high)))))
        return rng.randrange(dim.low, dim.high + 1, dim.step)
    if dim.log:
        return log_uniform(rng, dim.low, dim.high)
    if dim.step is not None:
        k = rng.randrange(int(math.floor((dim.high - dim.low) / dim.step + 1e-9)) + 1)
        return dim.low + k * dim.step
    return rng.uniform(dim.low, dim.high)


def sample_point(space: SearchSpace, rng: random.Random) -> Dict[str, Any]:
    point: Dict[str, Any] = {}
    for n in space.order:
        if space.is_active(n, point):
            point[n] = _draw(space.dimensions[n], rng)
    return point


def sample(space: SearchSpace, n: int, seed: int = 0) -> List[Dict[str, Any]]:
    """`n` points, the same for the same seed. Every point validates (the shipped spaces are
    designed so; tests check it)."""
    if n < 0:
        raise UserError(f"number of points must be >= 0, got {n}")
    rng = random.Random(seed)
    return [sample_point(space, rng) for _ in range(n)]


# ---------------------------------------------------------------------------------------------
# Optuna
class OptunaDefineByRun:
    """Define-by-run function `f(trial) -> point` for Optuna or Ray Tune's
    `OptunaSearch(space=f, metric=..., mode=...)` (single- or multi-objective): it suggests the
    active dimensions only, each under its own name. A module-level class, not a closure: Ray Tune
    pickles the searcher (and this function with it) whenever it saves the experiment state."""

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, trial) -> Dict[str, Any]:
        space = self.space
        point: Dict[str, Any] = {}
        for n in space.order:
            if not space.is_active(n, point):
                continue
            dim = space.dimensions[n]
            if isinstance(dim, ChoiceDim):
                point[n] = trial.suggest_categorical(n, dim.values)
            elif isinstance(dim, IntDim):
                point[n] = trial.suggest_int(n, dim.low, dim.high, step=dim.step, log=dim.log)
            else:
                point[n] = trial.suggest_float(n, dim.low, dim.high, log=dim.log, step=dim.step)
        return point


def to_optuna(space: SearchSpace) -> OptunaDefineByRun:
    """The space as an Optuna define-by-run function (see `OptunaDefineByRun`)."""
    return OptunaDefineByRun(space)


def optuna_distributions(space: SearchSpace) -> Dict[str, Any]:
    """Every dimension as the Optuna distribution `OptunaDefineByRun` suggests it from (the same
    bounds, log and step): what `optuna.trial.create_trial` needs to rebuild a study from
    finished trials."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: Dict[str, Any] = {}
    for n in space.order:
        dim = space.dimensions[n]
        if isinstance(dim, ChoiceDim):
            out[n] = CategoricalDistribution(dim.values)
        elif isinstance(dim, IntDim):
            out[n] = IntDistribution(dim.low, dim.high, log=dim.log, step=dim.step)
        else:
            out[n] = FloatDistribution(dim.low, dim.high, log=dim.log, step=dim.step)
    return out


def point_from_config(config: Mapping[str, Any], space: Optional[SearchSpace] = None) -> Dict[str, Any]:
    """The point in a Ray Tune trial config: under "point" (random/grid param spaces), or the
    flat dimension keys OptunaSearch hands over. With `space`, other keys are dropped."""
    if isinstance(config.get(POINT_KEY), Mapping):
        return dict(config[POINT_KEY])
    if space is None:
        return dict(config)
    return {k: v for k, v in config.items() if k in space.dimensions}


# ---------------------------------------------------------------------------------------------
# grids and counts
def _components(space: SearchSpace, names: Sequence[str]) -> List[List[str]]:
    """Groups of dimensions linked by conditions (with every ancestor), in decision order."""
    keep = set(names)
    stack = list(names)
    while stack:  # add ancestors
        for p in space.dimensions[stack.pop()].condition:
            if p not in keep:
                keep.add(p)
                stack.append(p)
    parent = {n: n for n in keep}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for n in keep:
        for p in space.dimensions[n].condition:
            parent[find(n)] = find(p)
    groups: Dict[str, List[str]] = {}
    for n in space.order:
        if n in keep:
            groups.setdefault(find(n), []).append(n)
    return list(groups.values())


def _enumerate(space: SearchSpace, names: Sequence[str], values: Mapping[str, List[Any]]) -> Iterator[Dict[str, Any]]:
    """Every assignment of `names` (decision order) with conditions respected."""

    def rec(i: int, point: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
        if i == len(names):
            yield dict(point)
            return
        n = names[i]
        if not space.is_active(n, point):
            yield from rec(i + 1, point)
            return
        for v in values[n]:
            point[n] = v
            yield from rec(i + 1, point)
        del point[n]

    yield from rec(0, {})


def _grid_values(space: SearchSpace, fixed: Mapping[str, Any],
                 listed: Optional[Mapping[str, Sequence[Any]]] = None) -> Dict[str, List[Any]]:
    listed = listed or {}
    for k in list(fixed) + list(listed):
        if k not in space.dimensions:
            raise SpaceError(f"{space.where}: grid: fixed value for unknown dimension {k!r}")
        if k in fixed and k in listed:
            raise SpaceError(f"{space.where}: grid: dimension {k!r} is both fixed and given grid values")
    values: Dict[str, List[Any]] = {}
    for n in space.order:
        dim = space.dimensions[n]
        if n in listed:
            if not listed[n]:
                raise SpaceError(f"{space.where}: grid: dimension {n!r}: empty list of grid values")
            checked: List[Any] = []
            for i, v in enumerate(listed[n]):
                try:
                    v = dim.check(v)
                except ValueError as exc:
                    raise SpaceError(f"{space.where}: grid: values of dimension {n!r}[{i}]: {exc}") from None
                if not any(same_value(v, c) for c in checked):
                    checked.append(v)
            values[n] = checked
        elif n in fixed:
            try:
                values[n] = [dim.check(fixed[n])]
            except ValueError as exc:
                raise SpaceError(f"{space.where}: grid: fixed dimension {n!r}: {exc}") from None
        elif isinstance(dim, FloatDim):
            if dim.low != dim.high:
                raise SpaceError(
                    f"{space.where}: dimensions.{n}: a grid needs every float dimension fixed "
                    f"({dim.describe()}); give it a value (fixed={{'{n}': ...}}) or make it a choice")
            values[n] = [dim.low]
        else:
            values[n] = dim.support()
    return values


def _count(space: SearchSpace, names: Sequence[str], values: Mapping[str, List[Any]]) -> int:
    """Number of assignments of `names` (conditions respected), without listing them: only the
    dimensions that other dimensions depend on are enumerated; the rest multiply in."""
    inner = {p for n in names for p in space.dimensions[n].condition}
    branch = [n for n in names if n in inner]
    leaves = [n for n in names if n not in inner]
    total = 0
    for assignment in _enumerate(space, branch, values):
        total += math.prod(len(values[n]) for n in leaves if space.is_active(n, assignment))
    return total


def _grid_parts(space: SearchSpace, values: Mapping[str, List[Any]]) -> List[List[str]]:
    # single-valued dimensions never multiply the grid: leave them out of the groups
    return _components(space, [n for n in space.order if len(values[n]) > 1])


def grid_size(space: SearchSpace, fixed: Optional[Mapping[str, Any]] = None,
              values: Optional[Mapping[str, Sequence[Any]]] = None) -> int:
    values = _grid_values(space, fixed or {}, values)
    return math.prod(_count(space, comp, values) for comp in _grid_parts(space, values))


def grid_points(space: SearchSpace, fixed: Optional[Mapping[str, Any]] = None,
                max_points: int = 10_000, values: Optional[Mapping[str, Sequence[Any]]] = None) -> List[Dict[str, Any]]:
    """Every combination of the choice (and int) dimensions, conditions respected; float
    dimensions must be fixed (`fixed={name: value}`), be given a list of grid values
    (`values={name: [v1, v2]}`, which may also narrow a choice or int dimension) or be a single
    value. `grid_midpoints` gives fixed values for the floats left over."""
    values = _grid_values(space, fixed or {}, values)
    comps = _grid_parts(space, values)
    total = math.prod(_count(space, comp, values) for comp in comps)
    if total > max_points:
        raise SpaceError(f"{space.where}: the grid has {total} points, more than max_points={max_points}; "
                         "fix some dimensions or use random / tpe")
    per = [list(_enumerate(space, c, values)) for c in comps]
    out = []
    for combo in itertools.product(*per):
        merged: Dict[str, Any] = {}
        for part in combo:
            merged.update(part)
        point: Dict[str, Any] = {}
        for n in space.order:  # decision order; the single-valued dimensions where active
            if space.is_active(n, point):
                point[n] = merged[n] if n in merged else values[n][0]
        out.append(point)
    return out


def grid_midpoints(space: SearchSpace, values: Optional[Mapping[str, Sequence[Any]]] = None,
                   fixed: Optional[Mapping[str, Any]] = None) -> Dict[str, float]:
    """A value for every float dimension a grid would otherwise refuse (a range, neither listed in
    `values` nor in `fixed`): the middle of its range (geometric for log ranges), on its step where
    it has one, rounded to 3 significant digits (kept inside the range)."""
    values, fixed = values or {}, fixed or {}
    out: Dict[str, float] = {}
    for n in space.order:
        dim = space.dimensions[n]
        if not isinstance(dim, FloatDim) or dim.low == dim.high or n in values or n in fixed:
            continue
        mid = math.sqrt(dim.low * dim.high) if dim.log else (dim.low + dim.high) / 2
        if dim.step is not None:
            mid = dim.low + round((mid - dim.low) / dim.step) * dim.step
        else:
            mid = float(f"{mid:.3g}")
        out[n] = min(max(mid, dim.low), dim.high)
    return out


def architecture_key(space: SearchSpace, point: Mapping[str, Any]) -> tuple:
    """What of a point decides the model's architecture: its model-part choice dimensions."""
    return tuple((space.targets[n], point[n]) for n in space.order
                 if n in point and space.section_of(n) == "model" and isinstance(space.dimensions[n], ChoiceDim))


def architecture_count(space: SearchSpace) -> int:
    """Number of distinct model-part configurations over the choice dimensions (conditions
    respected): per group of linked dimensions, the distinct projections onto the model's choice
    dimensions, multiplied. Float/int dimensions (weights, rates) are not counted."""
    model_choices = [n for n in space.choice_dims() if space.section_of(n) == "model"]
    if not model_choices:
        return 1
    values = {n: (d.support() if not isinstance(d, FloatDim) else [None]) for n, d in space.dimensions.items()}
    total = 1
    for comp in _components(space, model_choices):
        keys = {architecture_key(space, p) for p in _enumerate(space, comp, values)}
        total *= len(keys)
    return total
