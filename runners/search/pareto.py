"""The Pareto front of a multi-objective search: the trials no other trial beats on both objectives.

Pure Python (no Ray, MLflow or Optuna): `pareto_front(rows, ...)` takes leaderboard rows (dicts
with `status` and the two metrics) and returns the indices of the non-dominated ones.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Sequence, Tuple


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool): a value that can be ranked."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """`a` dominates `b` (both as minimised objectives): no worse in any, better in at least one.
    Equal points do not dominate each other (both stay on a front)."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def pareto_front(rows: Sequence[Mapping[str, Any]], metric: str, mode: str, second: str,
                 second_mode: str = "min") -> List[int]:
    """Indices (in `rows` order) of the rows on the Pareto front of `metric` (optimised in `mode`)
    and `second` (optimised in `second_mode`, minimised by default). Rows whose status is
    `failed`, or that lack either value (or hold a non-finite one), take no part: they are never
    on the front and never push another row off it. Rows tied on both values are all on it."""
    signs = (-1.0 if mode == "max" else 1.0, -1.0 if second_mode == "max" else 1.0)
    cands: List[Tuple[int, Tuple[float, float]]] = []
    for i, r in enumerate(rows):
        if r.get("status") == "failed" or not (is_number(r.get(metric)) and is_number(r.get(second))):
            continue
        cands.append((i, (signs[0] * float(r[metric]), signs[1] * float(r[second]))))
    return [i for i, p in cands if not any(dominates(q, p) for j, q in cands if j != i)]


def pareto_rows(rows: Sequence[Mapping[str, Any]], metric: str, mode: str, second: str) -> List[Dict[str, Any]]:
    """The rows on the front, best `metric` first (ties: smaller `second` first)."""
    sign = -1.0 if mode == "max" else 1.0
    front = [dict(rows[i]) for i in pareto_front(rows, metric, mode, second)]
    front.sort(key=lambda r: (sign * float(r[metric]), float(r[second])))
    return front
