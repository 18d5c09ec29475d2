"""Warm start: seed a search's Optuna study with the trials of earlier searches, read from MLflow.

`fer-automl search SPACE --warm-start SEARCH` (or `search.warm_start: [SEARCH, ...]`): before the
first trial runs, every trial of SEARCH's latest parent run is read back from its MLflow child run
(the point from the run's params, the figures from its metrics and its `fer_automl.status` tag),
fitted to the new space, and added to the Optuna study that Ray's `OptunaSearch` then asks. A
search in another MLflow store is named `URI#SEARCH` (`sqlite:///other.db#faces-a`).

What each trial contributes, and why:
- `finished` (ran its own epochs): a COMPLETE trial with the metric's last reported value (what the
  earlier search's OptunaSearch was told), and its per-epoch history as intermediate values; a
  multi-objective search gets both values (the metric and the second objective).
- `stopped_early` (the scheduler stopped it at a lower fidelity): a PRUNED trial with its per-epoch
  history. Optuna's TPE ranks pruned trials below every complete one, those that got further and
  scored better first: the judgement ASHA made, without passing a low-epoch figure off as a final
  one. A multi-objective study has no pruned ranking in Optuna's TPE (it reads the single
  `study.direction`), so there they are skipped.
- `failed`, still `running`, or without the metric: skipped.
Points that do not fit the new space (a dimension missing or extra, a value outside its range or
choices, a broken condition, a model the space's constants cannot build) are skipped, one line each.

Why not `OptunaSearch(points_to_evaluate=..., evaluated_rewards=...)`: Ray refuses evaluated
rewards with a define-by-run space (ours, for conditional dimensions), and the search already uses
`points_to_evaluate` for the presets it must RUN first. The trials go in with Optuna's own
`create_trial` + `add_trials` into an in-memory study handed to OptunaSearch through its `storage`
and `study_name` (it loads an existing study: `load_if_exists=True`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from fer_models.errors import UserError

from runners.search.tracking import (TAG_KIND, TAG_SEARCH, TAG_STATUS, TAG_TRIAL_ID, _store_errors, _store_reason,
                                     resolve_tracking_uri, sqlite_db_path)

STUDY_NAME = "fer-automl"
# the user attributes a seeded Optuna trial carries (where it came from)
ATTR_SOURCE, ATTR_TRIAL, ATTR_RUN = "warm_start.source", "warm_start.trial_id", "warm_start.run_id"


@dataclass
class WarmTrial:
    """One earlier trial as the new study gets it."""
    source: str              # the --warm-start value it came from
    trial_id: str
    run_id: str
    point: Dict[str, Any]    # a point of the NEW space
    state: str               # COMPLETE | PRUNED
    values: Optional[List[float]]  # COMPLETE: [metric] or [metric, second metric]
    intermediate: Dict[int, float] = field(default_factory=dict)  # epoch -> metric


@dataclass
class SourceReport:
    source: str
    uri: str
    name: str
    parent_run_id: str
    used: int = 0
    skipped_trials: int = 0
    skipped: List[str] = field(default_factory=list)  # why, one line per problem of a trial not used

    def skip(self, lines: List[str]) -> None:
        self.skipped_trials += 1
        self.skipped += lines


@dataclass
class WarmStart:
    trials: List[WarmTrial]
    sources: List[SourceReport]

    @property
    def used(self) -> int:
        return len(self.trials)

    @property
    def skipped(self) -> int:
        return sum(s.skipped_trials for s in self.sources)

    def summary_lines(self) -> List[str]:
        """One line per source, what `fer-automl search` prints."""
        return [f"warm start: {s.used} point{'s' if s.used != 1 else ''} from {s.source} ({s.skipped_trials} skipped)"
                for s in self.sources]

    def report_text(self) -> str:
        """The parent run's `warm_start.txt`: per source, where it was read, the counts and every skipped line."""
        out = []
        for s in self.sources:
            out.append(f"{s.source}: search {s.name!r} on {s.uri}, parent run {s.parent_run_id}: "
                       f"{s.used} used, {s.skipped_trials} skipped")
            out += [f"  skipped {line}" for line in s.skipped]
        return "\n".join(out) + "\n"

    def searcher_kwargs(self, space, directions: List[str], sampler) -> Dict[str, Any]:
        """`storage` and `study_name` for Ray's OptunaSearch: an in-memory study that holds the
        warm trials, in the order they were read, before the search's own."""
        import optuna

        from search_spaces import optuna_distributions

        dists = optuna_distributions(space)
        storage = optuna.storages.InMemoryStorage()
        study = optuna.create_study(storage=storage, study_name=STUDY_NAME, sampler=sampler,
                                    directions=["minimize" if d == "min" else "maximize" for d in directions])
        study.add_trials([optuna.trial.create_trial(
            state=optuna.trial.TrialState[t.state], values=t.values, params=t.point,
            distributions={k: dists[k] for k in t.point}, intermediate_values=t.intermediate or None,
            user_attrs={ATTR_SOURCE: t.source, ATTR_TRIAL: t.trial_id, ATTR_RUN: t.run_id}) for t in self.trials])
        self.storage = storage
        return {"storage": storage, "study_name": STUDY_NAME}

    def record(self, client, parent_run_id: str) -> None:
        """The parent run's params (sources, counts) and its `warm_start.txt`."""
        from runners.search.tracking import RunWriter

        RunWriter(client).params(parent_run_id, {
            "warm_start.sources": ", ".join(s.source for s in self.sources)[:6000],
            "warm_start.used": str(self.used), "warm_start.skipped": str(self.skipped)})
        client.log_text(parent_run_id, self.report_text(), "warm_start.txt")

    def study_trials(self) -> List[Dict[str, Any]]:
        """The study's trials after the search, in Optuna's order: the seeded ones (with their
        source) and then the search's own (as OptunaSearch told them)."""
        import optuna

        storage = getattr(self, "storage", None)
        if storage is None:
            return []
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
        return [{"number": t.number, "state": t.state.name, "values": t.values, "params": t.params,
                 "source": t.user_attrs.get(ATTR_SOURCE), "trial_id": t.user_attrs.get(ATTR_TRIAL)}
                for t in study.get_trials(deepcopy=False)]

    def record_study(self, client, parent_run_id: str) -> None:
        """After the search: the study as it ended, seeded trials first (`warm_start_study.json`),
        and a tag with how many came from where."""
        import json

        rows = self.study_trials()
        seeded = sum(1 for r in rows if r["source"] is not None)
        client.set_tag(parent_run_id, "fer_automl.warm_start.study",
                       f"{seeded} seeded trials, then {len(rows) - seeded} of this search")
        client.log_text(parent_run_id, json.dumps(rows, indent=1, default=str), "warm_start_study.json")


# --- reading an earlier search ------------------------------------------------------------------

def parse_source(text: str, default_uri: str) -> Tuple[str, str]:
    """`NAME` (the new search's own store) or `URI#NAME` -> (tracking URI, search name)."""
    if "#" in text and "://" in text.split("#", 1)[0]:
        uri, name = text.rsplit("#", 1)
        return resolve_tracking_uri(uri), name
    return default_uri, text


def recover_point(params: Dict[str, str], space, dimensions: Optional[List[str]] = None) -> Dict[str, Any]:
    """A child run's params (MLflow keeps them as strings) back as a point, typed by the new space's
    dimensions: a choice is the value whose text matches, an int or float is parsed; a param the
    new space lacks, or a text that none of its values matches, is kept as it is (the fit check then
    names it). `dimensions`: the earlier space's dimension names (other params are not the point)."""
    from search_spaces.schema import ChoiceDim, IntDim

    point: Dict[str, Any] = {}
    for k, text in params.items():
        if dimensions is not None and k not in dimensions:
            continue
        dim = space.dimensions.get(k)
        value: Any = text
        if isinstance(dim, ChoiceDim):
            value = next((v for v in dim.values if str(v) == text), text)
        elif dim is not None:
            try:
                number = float(text)
                value = int(number) if isinstance(dim, IntDim) and number.is_integer() else number
            except ValueError:
                pass
        point[k] = value
    return point


def fit_errors(space, point: Dict[str, Any]) -> List[str]:
    """Why `point` is not a point of `space` (one line per problem; none: it fits)."""
    try:
        space.validate(point, where="point")
    except ValueError as exc:
        prefix = f"{space.where}: "
        return [ln.removeprefix(prefix) for ln in str(exc).splitlines() if ln.strip()]
    return []


def _where(from_flag: bool, space) -> str:
    return "--warm-start" if from_flag else f"search.warm_start in {space.where}"


def _find_parent(client, name: str, uri: str, origin: str):
    exp = client.get_experiment_by_name(name)
    runs = [] if exp is None or exp.lifecycle_stage == "deleted" else client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{TAG_KIND}` = 'search' and tags.`{TAG_SEARCH}` = '{name}'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        known = sorted(e.name for e in client.search_experiments(max_results=500) if e.name != "Default")
        raise UserError(f"{origin} {name!r}: no search of that name in the MLflow store {uri} "
                        f"(searches there: {', '.join(known) or 'none'})")
    return runs[0]


def _old_dimensions(client, parent) -> Optional[List[str]]:
    """The dimension names of the earlier search's space (its `space.yaml` artifact), or None."""
    import tempfile
    from pathlib import Path

    import yaml

    import os

    bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    try:
        if "space.yaml" not in {a.path for a in client.list_artifacts(parent.info.run_id)}:
            return None
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one small file: no bar on stderr
        with tempfile.TemporaryDirectory(prefix="fer-warm-") as d:
            path = client.download_artifacts(parent.info.run_id, "space.yaml", d)
            raw = yaml.safe_load(Path(path).read_text())
        return list((raw or {}).get("dimensions") or {})
    except Exception:  # noqa: BLE001 - no readable space: every param of a trial run is its point
        return None
    finally:
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar


def _check_objective(parent, spec, origin: str, source: str) -> None:
    """The earlier search must have optimised the same metric the same way (and, for a
    multi-objective search, the same second objective): other figures do not compare."""
    old = parent.data.params
    if "metric" in old and (old["metric"] != spec.metric or old.get("mode", spec.mode) != spec.mode):
        raise UserError(f"{origin} {source!r}: that search optimised {old['metric']} ({old.get('mode')}), this one "
                        f"optimises {spec.metric} ({spec.mode}): its figures do not compare; warm-start from a "
                        "search of the same metric and mode, or set search.metric/search.mode to match")
    if spec.second_objective and old.get("second_objective", "None") != spec.second_objective:
        raise UserError(f"{origin} {source!r}: this search is multi-objective ({spec.metric} and "
                        f"{spec.second_objective}); that one's second objective was "
                        f"{old.get('second_objective', 'None')}: Optuna needs both figures of every trial")


def read_source(source: str, space, spec, default_uri: str, from_flag: bool = True) -> Tuple[List[WarmTrial], SourceReport]:
    """The trials of one earlier search that fit `space`, and what was skipped (why, one line each)."""
    import mlflow

    origin = _where(from_flag, space)
    uri, name = parse_source(source, default_uri)
    db = sqlite_db_path(uri)
    if db is not None and not db.is_file():  # reading would create an empty store
        raise UserError(f"{origin} {source!r}: the MLflow store {uri} does not exist (no file {db})")
    if uri != default_uri:  # the search's own store was checked already
        from runners.search.tracking import check_tracking_server

        check_tracking_server(uri)
    try:
        return _read(mlflow.MlflowClient(uri), source, name, uri, origin, space, spec)
    except UserError:
        raise
    except _store_errors() as exc:
        raise UserError(f"{origin} {source!r}: could not read the MLflow store {uri}: {_store_reason(exc)}") from None


def _read(client, source: str, name: str, uri: str, origin: str, space, spec) -> Tuple[List[WarmTrial], SourceReport]:
    parent = _find_parent(client, name, uri, origin)
    _check_objective(parent, spec, origin, source)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  order_by=["attributes.start_time ASC"], max_results=5000)
    # a two-stage search's refit runs retrain points the search stage already has (other seeds, full
    # fidelity): the searcher learns from the search stage, as the old search's searcher did
    children = [r for r in children if r.data.tags.get("fer_automl.stage") != "refit"]
    statuses: Dict[str, int] = {}
    for r in children:
        s = r.data.tags.get(TAG_STATUS, "unknown")
        statuses[s] = statuses.get(s, 0) + 1
    if not statuses.get("finished"):
        raise UserError(f"{origin} {source!r}: search {name!r} on {uri} has no finished trial to learn from "
                        f"(trials: {', '.join(f'{n} {s}' for s, n in sorted(statuses.items())) or 'none'})")
    dims = _old_dimensions(client, parent)
    metric, second = spec.metric, spec.second_metric
    multi = second is not None
    report = SourceReport(source, uri, name, parent.info.run_id)
    out: List[WarmTrial] = []
    for r in children:
        tid = r.data.tags.get(TAG_TRIAL_ID, r.info.run_id)
        label = f"trial {tid} (run {r.info.run_id[:8]})"
        status = r.data.tags.get(TAG_STATUS)
        if status not in ("finished", "stopped_early"):
            report.skip([f"{label}: status {status or 'unknown'}: only finished and stopped-early trials "
                                  "have figures"])
            continue
        if status == "stopped_early" and multi:
            report.skip([f"{label}: stopped early: Optuna's TPE cannot rank a stopped trial in a "
                                  "multi-objective study"])
            continue
        needed = [metric] + ([second] if multi else [])
        missing = [m for m in needed if not _finite(r.data.metrics.get(m))]
        if missing:
            report.skip([f"{label}: {', '.join(missing)} not logged (or not finite)"])
            continue
        point = recover_point(r.data.params, space, dims)
        errors = fit_errors(space, point)
        if errors:
            report.skip([f"{label}: {e}" for e in errors])
            continue
        point = space.check_point(point)  # canonical values, decision order
        history = {} if multi else {int(m.step): float(m.value) for m in client.get_metric_history(r.info.run_id, metric)
                                    if _finite(m.value)}
        if status == "finished":
            values = [float(r.data.metrics[m]) for m in needed]
            out.append(WarmTrial(source, tid, r.info.run_id, point, "COMPLETE", values, history))
        else:
            out.append(WarmTrial(source, tid, r.info.run_id, point, "PRUNED", None, history))
    report.used = len(out)
    if not out:
        raise UserError(f"{origin} {source!r}: none of the {len(children)} trials of search {name!r} can seed this "
                        "search:\n" + "\n".join(f"  {ln}" for ln in report.skipped[:20]))
    return out, report


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def load_warm_start(sources: List[str], space, spec, default_uri: str, from_flag: bool = True) -> WarmStart:
    """Every source read and fitted (run before anything of the new search is written)."""
    if spec.algorithm != "tpe":  # the spec refuses it too; a caller building a spec by hand gets this
        raise UserError(f"{_where(from_flag, space)}: warm start seeds the tpe sampler; algorithm "
                        f"{spec.algorithm!r} does not learn from past trials")
    trials: List[WarmTrial] = []
    reports: List[SourceReport] = []
    for s in sources:
        got, rep = read_source(s, space, spec, default_uri, from_flag)
        trials += got
        reports.append(rep)
    return WarmStart(trials, reports)
