"""Constraints of a search (`search.constraints`): limits on a trial's model, checked before it
trains.

At the start of a trial (`runners.training.trial.run_trial`), once its model is built, each limit given is
measured on it: `max_params` (trainable parameters), `max_macs` (multiply-accumulates of one image at
the trial's image size), `max_latency_ms` (batch-1 latency on the device the trial runs on, as
`fer_models.cost` measures it). A point that breaks one is *infeasible*: the trial reports once and
returns without training an epoch.

What it reports: `infeasible: 1`, the figures it measured and the limits, `epoch: 0`, and every
metric a search may optimise at its worst value (0 for the accuracies, F1 and throughput;
`WORST_LOSS` for the losses). The worst value, rather than no value, is what the searcher and the
scheduler learn from: Optuna's TPE ranks the point below every trained one and samples less around
it, ASHA and PBT rank it last. The tracker (`runners.search.tracking`) logs none of those stand-in values:
the child run holds the measured figures and the limits, its status tag is `infeasible` and it
ends FINISHED (an infeasible point is an answer, not a failure); the leaderboard ranks it after the
feasible trials, before the failed ones.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

INFEASIBLE_KEY = "infeasible"  # 1.0 in the one result of an infeasible trial
REASON_KEY = "infeasible_reason"  # e.g. "params 2,540,042 > max_params 1,000,000"
TAG_INFEASIBLE = "fer_automl.infeasible_reason"
STATUS_INFEASIBLE = "infeasible"
# a validation loss no trained model reports: the loss metrics' stand-in in an infeasible result
# (finite: Optuna refuses NaN and the summaries keep finite numbers only)
WORST_LOSS = 1e9

# limit -> (the cost `fer_models.cost.cost` measures, the metric it is reported as)
LIMITS = {"max_params": ("params", "params"), "max_macs": ("macs", "macs"), "max_latency_ms": ("latency", "latency_ms")}


def measure(model, limits: Mapping[str, float], image_size: int, costs: Dict[str, float], *, device: str,
            bf16: bool = False, channels_last: bool = False) -> Dict[str, float]:
    """Measure what `limits` need on `model` into `costs` (metric name -> value; a figure already
    there, e.g. a second objective's, is not measured twice). Returns `costs`."""
    from fer_models.cost import cost

    for limit in limits:
        kind, name = LIMITS[limit]
        if name not in costs:
            costs[name] = cost(model, kind, image_size, device=device, bf16=bf16, channels_last=channels_last)
    return costs


def broken(limits: Mapping[str, float], costs: Mapping[str, float]) -> List[Tuple[str, str, float, float]]:
    """(limit, metric, measured, limit value) for every limit the measured costs break."""
    out = []
    for limit, value in limits.items():
        name = LIMITS[limit][1]
        if costs[name] > float(value):
            out.append((limit, name, float(costs[name]), float(value)))
    return out


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 1000 or float(x).is_integer() else f"{x:.3g}"


def reason(breaks: List[Tuple[str, str, float, float]]) -> str:
    return "; ".join(f"{name} {_num(v)} > {limit} {_num(lim)}" for limit, name, v, lim in breaks)


def infeasible_result(limits: Mapping[str, float], costs: Mapping[str, float],
                      breaks: List[Tuple[str, str, float, float]]) -> Dict[str, Any]:
    """The one report of an infeasible trial (see the module's docstring)."""
    from search_spaces.spec import REPORTED_METRICS

    worst = {m: (WORST_LOSS if m.endswith(("loss", "objective")) else 0.0) for m in REPORTED_METRICS}
    return {**worst, "epoch": 0, INFEASIBLE_KEY: 1.0, REASON_KEY: reason(breaks), **dict(costs),
            **{k: float(v) for k, v in limits.items()}}


def is_infeasible(result: Optional[Mapping[str, Any]]) -> bool:
    return bool(result) and bool(result.get(INFEASIBLE_KEY))


def run_fields(result: Mapping[str, Any]) -> Tuple[Dict[str, float], Dict[str, str]]:
    """What an infeasible trial's MLflow run gets: (metrics: the measured figures and the limits,
    tags: the reason; the tracker adds the status STATUS_INFEASIBLE). None of the stand-in worst values."""
    keep = {name for _, name in LIMITS.values()} | set(LIMITS) | {INFEASIBLE_KEY}
    metrics = {k: float(v) for k, v in result.items()
               if k in keep and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return metrics, {TAG_INFEASIBLE: str(result.get(REASON_KEY, ""))[:5000]}
