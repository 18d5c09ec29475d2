"""Promotion: a trial's selected weights become a registered model version, and an alias moves to it.

`promote(search=NAME | run_id=ID, ...)` is what `fer-automl promote` calls:

1. The candidate: the given trial run, or the best finished trial of the search's latest parent
   run. A trial keeps the weights of its best validation epoch (the first epoch with the highest
   `val_balanced_accuracy`, see runners/training/trial.py), so a run's figure for a metric is the one of
   those weights: a `val_*` metric (and `pose_accuracy`) at the selected epoch, a `test_*` metric
   as logged once for the selected weights. Higher is better, lower for metrics named `*loss*`.
   Ties go to the trial that started first, then to the smaller run id.
   A search with a refit stage (runners.search.fidelity) competes with its refit runs only: the
   configuration with the best mean figure over its seeds, then its best seed.
2. The version: the trial's `trial/model.pt` + `trial/model_config.json` are logged as an MLflow
   model (runners.registry.packaging: pt2, uint8 images in, class probabilities out) in the search's
   experiment, linked to the trial run, and registered as a new version of the model with tags
   (TAG_* below). A run already registered under the model is never logged twice: its version is
   reused.
3. The alias: it moves only when the version beats the current holder on the same metric
   (the figure recorded on the holder as `fer_automl.metric.<metric>`), on the same dataset
   (fingerprint). Otherwise the version stays registered — a real candidate — and the alias stays;
   `PromoteResult.refused` says why, and the CLI exits with EXIT_REFUSED. `force=True` moves it
   anyway and records the reason on the version.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from fer_models.errors import UserError


from runners.search.tracking import (TAG_KIND, TAG_SEARCH, TAG_STATUS, TAG_TRIAL_ID, check_tracking_server,
                                     resolve_tracking_uri, using_store)

DEFAULT_MODEL_NAME = "fer-expression"
DEFAULT_ALIAS = "champion"
DEFAULT_METRIC = "val_balanced_accuracy"
SELECTION_METRIC = "val_balanced_accuracy"  # what runners.training.trial selects the kept weights on
ARTIFACT_DIR = "trial"  # where runners.search.tracking logs a trial's artifacts
NEEDED_FILES = ("model.pt", "model_config.json")

# model-version tags
TAG_RUN_ID = "fer_automl.run_id"
TAG_TRIAL = "fer_automl.trial_id"
TAG_SEARCH_NAME = "fer_automl.search"
TAG_DATASET = "fer_automl.dataset_name"
TAG_FINGERPRINT = "fer_automl.dataset_fingerprint"
TAG_SPLIT = "fer_automl.split"
TAG_METRIC = "fer_automl.metric"
TAG_METRIC_VALUE = "fer_automl.metric_value"
TAG_METRIC_PREFIX = "fer_automl.metric."  # + name: every val_*/test_* figure of the selected weights
TAG_EPOCH = "fer_automl.selected_epoch"
TAG_CONFIG = "fer_automl.trial_config"
TAG_CLASSES = "fer_automl.classes"  # JSON list: the order of the output probabilities
TAG_IMAGE_SIZE = "fer_automl.image_size"  # S of the (N, S, S, 3) uint8 input
TAG_COMMIT = "fer_automl.git_commit"
TAG_SERIALIZATION = "fer_automl.serialization"
TAG_FORCE_REASON = "fer_automl.force_reason"
TAG_FORCED_OVER = "fer_automl.forced_over"


class PromoteError(UserError):
    """Bad input to promote (unknown search or run, no weights, metric not logged, ...): exit 2."""


def require_existing_store(uri: str, what: str) -> None:
    """A SQLite tracking store named for reading (a search to promote, a models:/ URI) must exist:
    MLflow would otherwise create an empty database there before saying it has nothing."""
    import re

    m = re.match(r"^sqlite:///(.+)$", uri)
    if m and not Path(m.group(1)).is_file():
        raise PromoteError(f"{what}: the tracking store {uri} does not exist (no such SQLite file; "
                           "give --tracking-uri, or run where the search's mlflow.db is)")


# --- metrics of the selected weights -------------------------------------------------------------

def metric_split(metric: str) -> str:
    """The split a metric is computed on: val_* -> validation, test_* -> test."""
    if metric.startswith("val_") or metric == "pose_accuracy":
        return "validation"
    if metric.startswith("test_"):
        return "test"
    raise PromoteError(f"--metric {metric!r}: promote ranks by a metric computed on a split, val_* or test_* "
                       f"(e.g. {DEFAULT_METRIC}, val_macro_f1, test_accuracy)")


def higher_is_better(metric: str) -> bool:
    return "loss" not in metric and not metric.endswith("objective")  # val_objective: the training objective


def _history(client, run_id: str, metric: str) -> List[Any]:
    # several values at one step (a resumed trial re-reports an epoch): the latest counts
    return sorted(client.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp))


def selected_epoch(client, run) -> int:
    """The epoch whose weights the trial kept: the first with the highest val_balanced_accuracy."""
    hist = _history(client, run.info.run_id, SELECTION_METRIC)
    if not hist:
        raise PromoteError(f"run {run.info.run_id}: no {SELECTION_METRIC} logged, so no selected epoch")
    per_step: Dict[int, float] = {}
    for m in hist:
        per_step[m.step] = m.value
    best_step, best = None, None
    for step in sorted(per_step):
        if best is None or per_step[step] > best:
            best_step, best = step, per_step[step]
    return int(best_step)


def selected_value(client, run, metric: str, epoch: Optional[int] = None) -> float:
    """The run's figure for `metric` with the weights it kept (see the module doc)."""
    metric_split(metric)
    hist = _history(client, run.info.run_id, metric)
    if not hist:
        logged = sorted(k for k in run.data.metrics if k.startswith(("val_", "test_")) or k == "pose_accuracy")
        raise PromoteError(f"metric {metric!r} is not logged on run {run.info.run_id} "
                           f"(its val_/test_ metrics: {', '.join(logged) or 'none'})")
    if metric.startswith("test_"):
        return float(hist[-1].value)  # logged once, at the end, for the selected weights
    epoch = selected_epoch(client, run) if epoch is None else epoch
    at = [m.value for m in hist if m.step == epoch]
    if not at:
        raise PromoteError(f"run {run.info.run_id}: {metric!r} has no value at the selected epoch {epoch}")
    return float(at[-1])


def selected_figures(client, run, epoch: int) -> Dict[str, float]:
    """Every val_*/test_* figure of the selected weights (recorded on the version for later comparisons)."""
    out = {}
    for name in sorted(run.data.metrics):
        if name.startswith(("val_", "test_")) or name == "pose_accuracy":
            try:
                out[name] = selected_value(client, run, name, epoch)
            except PromoteError:
                continue
    return out


# --- finding the candidate ---------------------------------------------------------------------------

@dataclass
class Candidate:
    run: Any
    value: float
    epoch: int
    why: Optional[str] = None  # how it was chosen, where more than "the best run" (a refit stage's winner)
    tags: Dict[str, str] = field(default_factory=dict)  # recorded on the registered version

    @property
    def run_id(self) -> str:
        return self.run.info.run_id


def _rank_key(c: Candidate, metric: str) -> Tuple:
    v = -c.value if higher_is_better(metric) else c.value
    return (v, c.run.info.start_time or 0, c.run.info.run_id)


def _search_parent(client, name: str, uri: str):
    exp = client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage == "deleted":
        known = sorted(e.name for e in client.search_experiments(max_results=200) if e.name != "Default")
        raise PromoteError(f"--search {name!r}: no search of that name on {uri} "
                           f"(searches there: {', '.join(known) or 'none'})")
    runs = client.search_runs([exp.experiment_id],
                              filter_string=f"tags.`{TAG_KIND}` = 'search' and tags.`{TAG_SEARCH}` = '{name}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise PromoteError(f"--search {name!r}: experiment {name!r} on {uri} has no fer-automl search run")
    return runs[0]


def candidates(client, runs, metric: str) -> List[Candidate]:
    """The runs that logged `metric`, each with the figure of the epoch whose weights it keeps
    (promote and promote --ensemble rank these)."""
    out = []
    for r in runs:
        if metric not in r.data.metrics:
            continue
        epoch = selected_epoch(client, r)
        out.append(Candidate(r, selected_value(client, r, metric, epoch), epoch))
    return out


def refit_candidate(client, name: str, children: List[Any], metric: str):
    """The candidate `promote --search` takes from a search with a refit stage, or None when the
    search has none: the refit configuration with the best mean `metric` over its finished seeds
    (each seed's figure is that of the weights it kept), then that configuration's seed with the best
    figure. The Candidate's `tags` and `why` say which configuration, which seed and why."""
    from runners.search.fidelity import TAG_REFIT_CONFIG, TAG_REFIT_OF, TAG_SEED, TAG_STAGE, mean_std

    refits = [r for r in children if r.data.tags.get(TAG_STAGE) == "refit"]
    if not refits:
        return None
    finished = [r for r in refits if r.data.tags.get(TAG_STATUS) == "finished" and metric in r.data.metrics]
    if not finished:
        raise PromoteError(f"--search {name!r}: its refit stage has no finished run with {metric!r} logged "
                           f"({len(refits)} refit run(s); continue the search with --resume)")
    groups: Dict[str, List[Any]] = {}
    for r in finished:
        epoch = selected_epoch(client, r)
        groups.setdefault(r.data.tags.get(TAG_REFIT_CONFIG, "?"), []).append(
            Candidate(r, selected_value(client, r, metric, epoch), epoch))
    sign = -1.0 if higher_is_better(metric) else 1.0

    def rank(c: str) -> int:
        return int(c[1:]) if c[1:].isdigit() else 10**6

    stats = {c: mean_std([m.value for m in ms]) for c, ms in groups.items()}
    config = min(groups, key=lambda c: (sign * stats[c][0], rank(c)))
    mean, std = stats[config]
    members = groups[config]
    best = min(members, key=lambda m: (sign * m.value, int(m.run.data.tags.get(TAG_SEED, "0") or 0)))
    seed = best.run.data.tags.get(TAG_SEED, "?")
    others = "; ".join(f"{c} {stats[c][0]:.4f} ± {stats[c][1]:.4f} (n={len(groups[c])})"
                       for c in sorted(groups, key=rank) if c != config)
    best.why = (f"refit winner: configuration {config} (search-stage trial "
                f"{best.run.data.tags.get(TAG_REFIT_OF, '?')}) has the best mean {metric} over its seeds, "
                f"{mean:.4f} ± {std:.4f} (n={len(members)}){'; others: ' + others if others else ''}; its weights are "
                f"seed {seed}'s (trial {best.run.data.tags.get('fer_automl.trial_id', '?')}), the best {metric} of "
                f"its seeds: {best.value:.4f}")
    best.tags = {"fer_automl.refit_config": config, "fer_automl.refit_seed": str(seed),
                 "fer_automl.refit_mean": repr(mean), "fer_automl.refit_std": repr(std),
                 "fer_automl.refit_seeds": str(len(members)), "fer_automl.selection": best.why}
    return best


def best_of_search(client, name: str, metric: str, uri: str) -> Candidate:
    """The best finished trial of the search's latest parent run, by the figure of its kept weights."""
    parent = _search_parent(client, name, uri)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  max_results=5000)
    refit = refit_candidate(client, name, children, metric)  # a search with a refit stage: its winner
    if refit is not None:
        return refit
    finished = [r for r in children if r.data.tags.get(TAG_STATUS) == "finished"]
    if not finished:
        counts: Dict[str, int] = {}
        for r in children:
            s = r.data.tags.get(TAG_STATUS, "unknown")
            counts[s] = counts.get(s, 0) + 1
        raise PromoteError(f"--search {name!r}: no finished trial to promote (trials: "
                           f"{', '.join(f'{n} {s}' for s, n in sorted(counts.items())) or 'none'})")
    cands = candidates(client, finished, metric)
    if not cands:
        logged = sorted({k for r in finished for k in r.data.metrics if k.startswith(("val_", "test_"))})
        raise PromoteError(f"metric {metric!r} is not logged by any finished trial of search {name!r} "
                           f"(logged: {', '.join(logged) or 'none'})")
    return min(cands, key=lambda c: _rank_key(c, metric))


def trial_run(client, run_id: str, metric: str, uri: str) -> Candidate:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise PromoteError(f"--run {run_id!r}: no such run on {uri}") from None
    kind = run.data.tags.get(TAG_KIND)
    if kind != "trial":
        raise PromoteError(f"--run {run_id!r} is not a fer-automl trial run (tag {TAG_KIND} = {kind!r}); "
                           "give a trial's run id, or --search NAME")
    status = run.data.tags.get(TAG_STATUS)
    if status != "finished":
        raise PromoteError(f"--run {run_id!r} is a {status or 'unfinished'} trial: only finished trials leave "
                           "selected weights to promote")
    epoch = selected_epoch(client, run)
    return Candidate(run, selected_value(client, run, metric, epoch), epoch)


# --- registering ----------------------------------------------------------------------------------

def find_version(client, model_name: str, run_id: str):
    """The version of `model_name` already registered for this trial run, if any."""
    return find_version_tagged(client, model_name, TAG_RUN_ID, run_id)


def find_version_tagged(client, model_name: str, tag: str, value: str):
    """The first version of `model_name` whose tag `tag` is `value`, if any."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = '{model_name}' and tags.`{tag}` = '{value}'")
    except MlflowException:
        return None
    found = sorted(found, key=lambda v: int(v.version))
    return found[0] if found else None


@contextlib.contextmanager
def _log_into(uri: str, experiment_id: str) -> Iterator[None]:
    """mlflow's fluent log_model writes to the global tracking URI and active experiment: point them at the
    trial's server and experiment (else the model would land in 'Default'), then put back what was there."""
    import mlflow
    import mlflow.tracking.fluent as fluent

    prev_exp = fluent._active_experiment_id
    prev_env = os.environ.get("MLFLOW_EXPERIMENT_ID")
    try:
        with using_store(uri):
            mlflow.set_experiment(experiment_id=experiment_id)
            yield
    finally:
        fluent._active_experiment_id = prev_exp
        if prev_env is None:
            os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        else:
            os.environ["MLFLOW_EXPERIMENT_ID"] = prev_env


def download_weights(client, run_id: str, dst: Path) -> Path:
    """The trial's model.pt and model_config.json into dst (what runners.registry.packaging logs)."""
    present = {Path(a.path).name for a in client.list_artifacts(run_id, ARTIFACT_DIR)}
    missing = [f for f in NEEDED_FILES if f not in present]
    if missing:
        raise PromoteError(f"run {run_id}: no selected weights to promote ({', '.join(f'{ARTIFACT_DIR}/{m}' for m in missing)} "
                           "missing from its artifacts)")
    out = dst / ARTIFACT_DIR
    out.mkdir(parents=True, exist_ok=True)
    for f in NEEDED_FILES:
        got = Path(client.download_artifacts(run_id, f"{ARTIFACT_DIR}/{f}", str(dst / "download")))
        shutil.move(str(got), str(out / f))
    return out


def search_params(client, parent_id: Optional[str]) -> Dict[str, str]:
    """The params of a search's parent run ({} without one, or when it is gone: a lost parent must not
    stop a promotion)."""
    if not parent_id:
        return {}
    try:
        return client.get_run(parent_id).data.params
    except Exception:  # noqa: BLE001 - see the docstring
        return {}


def version_tags(client, cand: Candidate, metric: str, model_cfg: Dict[str, Any]) -> Dict[str, str]:
    run = cand.run
    parent_id = run.data.tags.get("mlflow.parentRunId")
    parent_params = search_params(client, parent_id)
    dataset = model_cfg.get("dataset") or {}
    tags = {
        TAG_RUN_ID: run.info.run_id,
        TAG_TRIAL: run.data.tags.get(TAG_TRIAL_ID, ""),
        TAG_SEARCH_NAME: run.data.tags.get(TAG_SEARCH, ""),
        TAG_DATASET: dataset.get("name") or parent_params.get("dataset.name", ""),
        TAG_FINGERPRINT: dataset.get("fingerprint") or parent_params.get("dataset.fingerprint", ""),
        TAG_SPLIT: metric_split(metric),
        TAG_METRIC: metric,
        TAG_METRIC_VALUE: repr(cand.value),
        TAG_EPOCH: str(cand.epoch),
        TAG_CONFIG: json.dumps(model_cfg.get("trial", {}), sort_keys=True),
        TAG_CLASSES: json.dumps(list(model_cfg.get("classes", []))),
        TAG_IMAGE_SIZE: str(model_cfg.get("trial", {}).get("data", {}).get("image_size", "")),
        TAG_COMMIT: parent_params.get("git_commit", "unknown"),
    }
    for name, value in selected_figures(client, run, cand.epoch).items():
        tags[TAG_METRIC_PREFIX + name] = repr(value)
    tags.update({k: v[:5000] for k, v in cand.tags.items()})
    return tags


def register(client, uri: str, cand: Candidate, model_name: str, metric: str):
    """Log the candidate's weights as an MLflow model (pt2) and register it (a new version, with tags)."""
    from runners.registry.packaging import ModelExportError, log_fer_model, read_model_config

    with tempfile.TemporaryDirectory(prefix="fer-promote-") as tmp:
        art = download_weights(client, cand.run_id, Path(tmp))
        model_cfg = read_model_config(art)
        tags = version_tags(client, cand, metric, model_cfg)
        with _log_into(uri, cand.run.info.experiment_id):
            try:
                info = log_fer_model(art, name="model", run_id=cand.run_id)
            except ModelExportError as exc:  # nothing was logged
                raise PromoteError(f"run {cand.run_id}: refused: {exc}") from None
    meta = (info.metadata or {}).get("fer_automl", {})
    tags[TAG_SERIALIZATION] = meta.get("serialization", "")
    return create_version(client, uri, model_name, info, cand.run_id, tags)


def create_version(client, uri: str, model_name: str, info, run_id: str, tags: Dict[str, str]):
    """A new version of `model_name` (the registered model made first if absent) from a logged
    model (`info`: what log_fer_model returned); promote, promote --ensemble and promote --weights."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(model_name, description="fer-automl: facial expression classifier; uint8 "
                                       "RGB images (N, S, S, 3) in, class probabilities out")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # the registry store looks the logged model up through MLflow's global tracking URI (a client
    # of its own): point it at this store, or it searches whatever store the process used last
    with using_store(uri):
        return client.create_model_version(model_name, source=info.model_uri, run_id=run_id, tags=tags,
                                           model_id=info.model_id)


# --- the alias rule ---------------------------------------------------------------------------------

def _fmt(v: Optional[float]) -> str:
    return "none" if v is None else f"{v:.4f}"


def holder_figure(holder, metric: str) -> Optional[float]:
    tags = holder.tags or {}
    raw = tags.get(TAG_METRIC_PREFIX + metric)
    if raw is None and tags.get(TAG_METRIC) == metric:
        raw = tags.get(TAG_METRIC_VALUE)
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def compare(version, holder, metric: str) -> Tuple[bool, str]:
    """(moves, explanation): does `version` beat `holder` on `metric`, on the same dataset?"""
    new_v = holder_figure(version, metric)
    old_v = holder_figure(holder, metric)
    split = metric_split(metric)
    fp_new = (version.tags or {}).get(TAG_FINGERPRINT, "")
    fp_old = (holder.tags or {}).get(TAG_FINGERPRINT, "")
    figures = (f"new version {version.version}: {metric} {_fmt(new_v)} on {split} of dataset {fp_new[:12] or '?'}; "
               f"current version {holder.version}: {metric} {_fmt(old_v)} on {split} of dataset {fp_old[:12] or '?'}")
    if not fp_new or fp_new != fp_old:
        return False, f"not comparable: different datasets (fingerprints differ). {figures}"
    if old_v is None:
        return False, f"not comparable: the current version has no recorded {metric} figure. {figures}"
    better = new_v > old_v if higher_is_better(metric) else new_v < old_v
    if not better:
        return False, f"does not beat the current version. {figures}"
    return True, figures


@dataclass
class PromoteResult:
    model_name: str
    alias: str
    version: str
    run_id: str
    metric: str
    value: float
    created: bool  # False: the run's existing version was reused
    previous: Optional[str]  # the alias holder before, if any
    moved: bool
    refused: Optional[str] = None  # why the alias did not move
    forced: bool = False
    messages: List[str] = field(default_factory=list)


def promote(*, search: Optional[str] = None, run_id: Optional[str] = None, model_name: str = DEFAULT_MODEL_NAME,
            alias: str = DEFAULT_ALIAS, metric: str = DEFAULT_METRIC, force: bool = False,
            reason: Optional[str] = None, tracking_uri: Optional[str] = None) -> PromoteResult:
    if (search is None) == (run_id is None):
        raise PromoteError("give exactly one of --search NAME or --run RUN_ID")
    if force and not (reason and reason.strip()):
        raise PromoteError("--force needs --reason TEXT (it is recorded on the version)")
    metric_split(metric)
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_server(uri)
    require_existing_store(uri, f"--search {search!r}" if search else f"--run {run_id!r}")
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    cand = best_of_search(client, search, metric, uri) if search else trial_run(client, run_id, metric, uri)
    msgs = [f"candidate: run {cand.run_id} (trial {cand.run.data.tags.get(TAG_TRIAL_ID, '?')} of search "
            f"{cand.run.data.tags.get(TAG_SEARCH, '?')}): {metric} {cand.value:.4f} on {metric_split(metric)}, "
            f"weights of epoch {cand.epoch}"] + ([cand.why] if cand.why else [])

    version = find_version(client, model_name, cand.run_id)
    created = version is None
    if created:
        version = register(client, uri, cand, model_name, metric)
        msgs.append(f"registered {model_name} version {version.version} "
                    f"({version.tags.get(TAG_SERIALIZATION, '?')} serialisation)")
    else:
        msgs.append(f"{model_name} version {version.version} is already this run's model: reused, nothing logged")
    version = client.get_model_version(model_name, version.version)

    try:
        holder = client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        holder = None
    result = PromoteResult(model_name, alias, str(version.version), cand.run_id, metric, cand.value, created,
                           str(holder.version) if holder else None, moved=False, messages=msgs)
    if holder is not None and str(holder.version) == str(version.version):
        msgs.append(f"alias {alias!r} already on version {version.version}: unchanged")
        return result
    if holder is None:
        ok, why = True, f"no version held alias {alias!r}"
    else:
        ok, why = compare(version, holder, metric)
    if not ok and not force:
        result.refused = why
        msgs.append(f"refused: alias {alias!r} stays on version {holder.version}: {why}. "
                    f"Version {version.version} stays registered; --force --reason TEXT moves the alias anyway")
        return result
    if force:
        client.set_model_version_tag(model_name, version.version, TAG_FORCE_REASON, reason.strip())
        if holder is not None:
            client.set_model_version_tag(model_name, version.version, TAG_FORCED_OVER,
                                         f"{alias}: version {holder.version} ({why})")
        result.forced = True
    client.set_registered_model_alias(model_name, alias, version.version)
    result.moved = True
    before = f"version {holder.version}" if holder else "no version"
    msgs.append(f"alias {alias!r}: {before} -> version {version.version}"
                + (f" (forced: {reason.strip()})" if force else "") + ("; " if ok else "; forced past: ") + why)
    msgs.append(f"use it: models:/{model_name}@{alias}")
    return result
