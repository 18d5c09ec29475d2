"""Optuna's plots of a finished search, as self-contained HTML files.

Ray Tune drives the search, so there is no Optuna study to plot for a random or grid search,
and the one inside `OptunaSearch` lives in the searcher. Instead `rebuild_study` makes an
in-memory `optuna.Study` from the finished Tune trials (whatever the algorithm): one
`optuna.trial.create_trial` per trial, its point as params with the distributions of the space's
dimensions (`search_spaces.optuna_distributions`, the same ones the define-by-run function
suggests from). A conditional dimension is simply absent from the trials where it is inactive.
`write_plots` then writes the optimisation history, parallel coordinates, parameter importances
and, for a multi-objective search, the Pareto front; a plot that cannot be drawn (too few
trials for importances, say) is replaced by a short `.txt` note saying why. No MLflow here: the
caller logs the folder.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

MIN_TRIALS_FOR_IMPORTANCE = 3


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def rebuild_study(rows: Sequence[Mapping[str, Any]], space, metric: str, mode: str,
                  second: Optional[str] = None):
    """An in-memory Optuna study of the trials in `rows` (leaderboard rows in the order the trials
    ran: `trial_id`, `status`, `point` and the metric values). Directions: `mode` for `metric`,
    minimise `second` when given. Failed trials become FAIL trials; trials without a finite value
    of every objective become PRUNED ones (Optuna's state for a trial stopped before it reported);
    the others COMPLETE. Returns (study, notes), notes naming any trial that could not be added."""
    import optuna
    from optuna.trial import TrialState, create_trial

    from search_spaces import optuna_distributions

    dists = optuna_distributions(space)
    objectives = [metric] + ([second] if second else [])
    directions = ["maximize" if mode == "max" else "minimize"] + (["minimize"] if second else [])
    old = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(directions=directions, sampler=optuna.samplers.RandomSampler(seed=0))
    finally:
        optuna.logging.set_verbosity(old)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # set_metric_names is marked experimental
        study.set_metric_names(objectives)
    notes: List[str] = []
    for r in rows:
        point = r.get("point") or {}
        params = {k: v for k, v in point.items() if k in dists}
        values = [r.get(m) for m in objectives]
        if r.get("status") == "failed":
            state, vals = TrialState.FAIL, None
        elif all(_finite(v) for v in values):
            state, vals = TrialState.COMPLETE, [float(v) for v in values]
        else:
            state, vals = TrialState.PRUNED, None
        try:
            study.add_trial(create_trial(state=state, values=vals, params=params,
                                         distributions={k: dists[k] for k in params},
                                         user_attrs={"trial_id": str(r.get("trial_id")), "status": r.get("status")}))
        except (ValueError, TypeError) as exc:  # a point outside the space (the file changed since)
            notes.append(f"trial {r.get('trial_id')} left out of the plots: {exc}")
    return study, notes


def _figures(study, metric: str, second: Optional[str]):
    """(file stem, maker) for every plot of this study, in the order they are written."""
    from optuna import visualization as vis

    multi = second is not None
    target = (lambda t: t.values[0]) if multi else None  # noqa: E731 - the primary objective
    kw: Dict[str, Any] = {"target": target, "target_name": metric} if multi else {}
    plots = [("optimization_history", lambda: vis.plot_optimization_history(study, **kw)),
             ("parallel_coordinate", lambda: vis.plot_parallel_coordinate(study, **kw)),
             # multi-objective: one bar group per objective
             ("param_importances", lambda: vis.plot_param_importances(study))]
    if multi:
        plots.append(("pareto_front", lambda: vis.plot_pareto_front(study, target_names=[metric, second])))
    return plots


def _importance_problem(study) -> Optional[str]:
    """Why parameter importances cannot be computed for this study, or None."""
    from optuna.search_space import intersection_search_space
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < MIN_TRIALS_FOR_IMPORTANCE:
        return (f"parameter importances need at least {MIN_TRIALS_FOR_IMPORTANCE} completed trials; "
                f"this search has {len(done)}")
    shared = intersection_search_space(done)
    varied = [n for n in shared if len({repr(t.params[n]) for t in done}) > 1]
    if not varied:
        return ("parameter importances need a dimension that every completed trial has and that takes "
                "more than one value; there is none here")
    return None


def write_plots(study, out_dir: Path, metric: str, second: Optional[str] = None) -> Tuple[List[Path], List[str]]:
    """Write each plot as `out_dir/NAME.html` (plotly.js embedded: it opens offline, in the MLflow
    UI too); a plot that cannot be drawn becomes `out_dir/NAME.txt` with the reason. Returns
    (files written, notes)."""
    from optuna.trial import TrialState

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: List[Path] = []
    notes: List[str] = []
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    def skip(stem: str, why: str) -> None:
        path = out_dir / f"{stem}.txt"
        path.write_text(f"{stem}: not drawn: {why}\n")
        files.append(path)
        notes.append(f"{stem}: not drawn: {why}")

    for stem, make in _figures(study, metric, second):
        if not done:
            skip(stem, "no trial completed with a value of every objective")
            continue
        if stem == "param_importances":
            why = _importance_problem(study)
            if why:
                skip(stem, why)
                continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's experimental-feature and few-trial warnings
                fig = make()
            path = out_dir / f"{stem}.html"
            fig.write_html(str(path), include_plotlyjs=True, full_html=True)
            files.append(path)
        except Exception as exc:  # noqa: BLE001 - a plot must never fail the search it summarises
            skip(stem, f"{type(exc).__name__}: {exc}")
    return files, notes
