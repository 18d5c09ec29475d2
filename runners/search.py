"""A search: Ray Tune schedules trials of one space, Optuna suggests them, MLflow records them.

`run_search(space_file, **overrides)` is what `fer-automl search SPEC.yaml` calls. Everything that
can be checked before a trial starts is checked first (space, spec, dataset, tracking server,
Ray address, resources), so bad input fails in seconds and leaves nothing half-written in MLflow.
"""
from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from .pareto import is_number, pareto_front
from .tracking import (TAG_KIND, TAG_PARETO, TAG_SEARCH, check_tracking_server, find_child_runs,
                       get_or_create_experiment, make_tracker, resolve_tracking_uri, trial_status)
from .trial import DataSpec, check_classes, mark

# the metrics are the trial's last report (what the scheduler and the searcher saw); the trial keeps
# (and `fer-automl promote` logs) the weights of its best validation epoch: best_epoch, and
# best_val_balanced_accuracy, tell where those are
LEADERBOARD_COLUMNS = ["val_balanced_accuracy", "val_accuracy", "val_macro_f1", "val_loss", "val_objective",
                       "test_accuracy",
                       "test_balanced_accuracy", "epoch", "best_val_balanced_accuracy", "best_epoch",
                       "images_per_second"]


@dataclass
class SearchResult:
    name: str
    experiment_id: str
    parent_run_id: str
    storage: str
    leaderboard: List[Dict[str, Any]]
    best_point: Optional[Dict[str, Any]]
    best_point_path: Optional[Path]
    num_failed: int
    failures: Dict[str, str] = field(default_factory=dict)
    metric: str = "val_balanced_accuracy"
    mode: str = "max"
    second_metric: Optional[str] = None  # params | macs | latency_ms in a multi-objective search
    pareto_front: List[Dict[str, Any]] = field(default_factory=list)  # rows on the front, best metric first
    notes: List[str] = field(default_factory=list)  # what the summary could not do (a plot not drawn, ...)


def data_spec_from(dataset) -> DataSpec:
    """The search spec's `dataset:` section as the trial's DataSpec."""
    opts: Dict[str, Any] = {}
    if dataset.format == "synthetic":
        if dataset.n is not None:
            opts["n"] = dataset.n
        if dataset.image_size is not None:
            opts["size"] = dataset.image_size
    path = str(Path(dataset.path).expanduser().resolve()) if dataset.path else None
    return DataSpec(format=dataset.format, path=path, options=opts, seed=dataset.seed)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> Dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("torch", "timm", "ray", "optuna", "mlflow", "albumentations", "fer-automl"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


# --- the function every trial runs (on any node) ---------------------------------------------------

def tune_trainable(config: Dict[str, Any], static: Dict[str, Any]) -> None:
    import ray
    from ray import tune

    from search_spaces import load_space, point_from_config

    from .trial import run_trial

    mark("trial_start")
    # the space travels as parsed YAML: the driver's file need not exist on the node running this trial
    space = (load_space(static["space"], name=static.get("space_where")) if static.get("space") is not None
             else load_space(static["space_file"]))
    point = point_from_config(config, space)
    cfg = space.validate(point)
    data = DataSpec(**static["data"])
    node_id = ray.get_runtime_context().get_node_id()  # which node ran it (the tracker tags the child run)

    def report(metrics: Dict[str, float], ckpt_dir: Optional[Path]) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None
        tune.report({**metrics, "node_id": node_id}, checkpoint=checkpoint)

    second = static.get("second_objective")
    from .scratch import remove_dead_scratch, trial_scratch

    search_dir = static.get("search_dir") or ""
    if search_dir:  # what killed trials of this search left on this node
        remove_dead_scratch(search_dir)
    # the trial's own scratch folder: every checkpoint it reports is copied into the run's storage by
    # tune.report, so nothing in it is needed once the trial ends, however it ends
    with trial_scratch(search_dir) as out_dir:
        ckpt = tune.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                run_trial(cfg, data, out_dir=out_dir, report=report, resume_from=d, second_objective=second)
        else:
            run_trial(cfg, data, out_dir=out_dir, report=report, second_objective=second)


# --- the driver -------------------------------------------------------------------------------------

def _merge_spec(space, overrides: Dict[str, Any]):
    from search_spaces import SearchSpec

    base = space.search.model_dump() if getattr(space, "search", None) is not None else {}
    for k, v in overrides.items():
        if v is None:
            continue
        if k == "data":
            base.setdefault("dataset", {})["path"] = v
        elif k == "format":
            base.setdefault("dataset", {})["format"] = v
        else:
            base[k] = v
    spec = SearchSpec.model_validate(base)
    if spec.dataset is None:
        raise ValueError(f"{space.where}: no dataset: give a `search: dataset:` section or --format/--data")
    return spec


def grid_settings(space, spec):
    """What a grid search enumerates: (values per dimension from `search.grid`, fixed values for the
    float dimensions left over (their midpoints), the message naming what was fixed or None)."""
    from search_spaces import grid_midpoints

    values = dict(spec.grid)
    fixed = grid_midpoints(space, values=values)
    note = None
    if fixed:
        named = ", ".join(f"{n}={v:g}" for n, v in fixed.items())
        note = (f"grid: float dimensions fixed at the middle of their range: {named} "
                "(list values to try under search.grid to change this)")
    return values, fixed, note


def _searcher(space, spec, max_epochs: int, grid_param_space: Optional[Dict[str, Any]] = None):
    """(search algorithm, Tune param space); a grid search's param space is the one run_search
    enumerated before anything started."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    from search_spaces import to_optuna, to_ray_param_space

    presets = []
    for name in spec.presets:
        if name not in space.presets:
            raise ValueError(f"{space.where}: search.presets names {name!r}, which is not a preset of this space "
                             f"(presets: {', '.join(space.presets) or 'none'})")
        presets.append(dict(space.presets[name]))
    if spec.algorithm == "tpe":
        from ray.tune.search.optuna import OptunaSearch

        # multi-objective: Optuna optimises both (the study gets two directions); the scheduler
        # (ASHA) still stops trials on the primary metric alone, given to TuneConfig
        metric, mode = ((spec.metric, spec.mode) if not spec.second_metric
                        else ([spec.metric, spec.second_metric], [spec.mode, "min"]))
        alg = OptunaSearch(space=to_optuna(space), metric=metric, mode=mode,
                           points_to_evaluate=presets or None, seed=spec.seed)
        if spec.max_concurrent:
            alg = ConcurrencyLimiter(alg, max_concurrent=spec.max_concurrent)
        return alg, {}
    if spec.algorithm == "random":
        from search_spaces import POINT_KEY

        return (BasicVariantGenerator(points_to_evaluate=[{POINT_KEY: p} for p in presets] or None,
                                      max_concurrent=spec.max_concurrent or 0),
                to_ray_param_space(space, seed=spec.seed))
    if spec.algorithm == "grid":
        return BasicVariantGenerator(max_concurrent=spec.max_concurrent or 0), grid_param_space
    raise ValueError(f"unknown algorithm {spec.algorithm!r}; valid: tpe, random, grid")


def _scheduler(spec, max_epochs: int):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler

    s = spec.scheduler
    max_t = s.max_t or max_epochs
    if s.type == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=s.grace_period,
                             reduction_factor=s.reduction_factor, brackets=s.brackets)
    if s.type == "hyperband":
        return HyperBandScheduler(time_attr="training_iteration", max_t=max_t, reduction_factor=s.reduction_factor)
    if s.type == "fifo":
        return FIFOScheduler()
    raise ValueError(f"unknown scheduler {s.type!r}; valid: asha, hyperband, fifo")


def trial_epochs(space, config: Dict[str, Any]) -> Optional[int]:
    """The epochs a trial's own configuration trains for (its `train.epochs`), None when its
    config is not a point of the space."""
    from search_spaces import point_from_config

    try:
        return int(space.validate(point_from_config(config or {}, space)).train.epochs)
    except Exception:  # noqa: BLE001 - a trial without a valid point has no epochs of its own
        return None


def _max_epochs(space) -> int:
    """The largest number of epochs any point of the space trains for (ASHA's default max_t)."""
    for n, target in space.targets.items():
        if target == "train.epochs":
            return int(max(space.dimensions[n].support()))
    return int(space.constants.get("train.epochs", 30)) if hasattr(space, "constants") else 30


def _find_parent(client, experiment_id: str, name: str):
    runs = client.search_runs([experiment_id], filter_string=f"tags.{TAG_KIND} = 'search' and tags.{TAG_SEARCH} = '{name}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def run_search(space_file: str, *, name: Optional[str] = None, data: Optional[str] = None, format: Optional[str] = None,
               num_samples: Optional[int] = None, storage_path: Optional[str] = None, address: Optional[str] = None,
               tracking_uri: Optional[str] = None, resume: bool = False, verbose: int = 1) -> SearchResult:
    from search_spaces import load_space

    mark("search_start")
    space = load_space(space_file)
    spec = _merge_spec(space, dict(name=name, data=data, format=format, num_samples=num_samples,
                                   storage_path=storage_path, address=address, tracking_uri=tracking_uri))
    name = spec.name or Path(space.where).stem
    max_epochs = _max_epochs(space)
    uri = resolve_tracking_uri(spec.tracking_uri)
    check_tracking_server(uri)
    storage = spec.storage_path or str(Path("ray_results").resolve())
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    exp_dir = f"{storage.rstrip('/')}/{name}"

    grid_fixed, grid_note, grid_param_space = None, None, None
    if spec.algorithm == "grid":  # the grid is enumerated (and its fixed floats named) before anything runs
        from search_spaces import to_ray_grid

        grid_values, grid_fixed, grid_note = grid_settings(space, spec)
        grid_param_space = to_ray_grid(space, fixed=grid_fixed, values=grid_values)
        if grid_note and verbose:
            print(grid_note, flush=True)

    from . import ray_cluster

    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    if spec.address:
        ray_cluster.check_address(spec.address)
    data_spec = data_spec_from(spec.dataset)
    ds = data_spec.load(spec.dataset.image_size or 64)  # fails here, before anything is written, on bad data
    check_classes(ds)
    mark("dataset_loaded")
    cluster = ray_cluster.init_ray(spec.address)
    mark("ray_started")
    ray_cluster.check_resources(resources, cluster, ray_cluster.node_resources())
    ray_cluster.check_storage(storage)

    import mlflow
    from ray import tune

    client = mlflow.MlflowClient(uri)
    exp_id = get_or_create_experiment(client, name)
    can_restore = tune.Tuner.can_restore(exp_dir)
    if resume and not can_restore:
        raise ValueError(f"--resume: no search to resume at {exp_dir}")
    parent = _find_parent(client, exp_id, name) if (resume and can_restore) else None
    if parent is None:
        space_text = Path(space.path).read_text() if getattr(space, "path", None) else ""
        parent = client.create_run(exp_id, run_name=name, tags={TAG_KIND: "search", TAG_SEARCH: name})
        from .tracking import RunWriter, flatten

        RunWriter(client).params(parent.info.run_id, flatten({
            "algorithm": spec.algorithm, "scheduler": spec.scheduler.type, "num_samples": spec.num_samples,
            "max_concurrent": spec.max_concurrent, "metric": spec.metric, "mode": spec.mode,
            "second_objective": spec.second_objective,
            "space_file": str(space.path or space.where),
            "space_sha256": hashlib.sha256(space_text.encode()).hexdigest()[:16],
            "dataset": {"format": spec.dataset.format, "path": spec.dataset.path, "name": ds.name,
                        "fingerprint": ds.fingerprint, "num_images": len(ds)},
            "git_commit": git_commit(), "python": platform.python_version(), "versions": package_versions(),
            "resources": resources, "storage": exp_dir,
            **({"grid_fixed": grid_fixed} if spec.algorithm == "grid" else {})}))
        if space_text:
            client.log_text(parent.info.run_id, space_text, "space.yaml")
        client.log_text(parent.info.run_id, yaml.safe_dump(spec.model_dump(), sort_keys=False), "search_spec.yaml")
    parent_id = parent.info.run_id

    from search_spaces import point_from_config

    tracker = make_tracker(tracking_uri=uri, experiment_id=exp_id, parent_run_id=parent_id, search_name=name,
                           point_of=lambda cfg: point_from_config(cfg, space),
                           epochs_of=lambda cfg: trial_epochs(space, cfg))
    from search_spaces.schema import read_yaml

    static = {"space_file": str(Path(space.path).resolve()) if space.path else space_file,
              "space_where": space.where,
              "space": read_yaml(Path(space.path)) if getattr(space, "path", None) else None,
              "data": data_spec.__dict__, "second_objective": spec.second_objective, "search_dir": exp_dir}
    trainable = tune.with_resources(tune.with_parameters(tune_trainable, static=static), resources)
    run_config = tune.RunConfig(
        name=name, storage_path=storage, callbacks=[tracker], verbose=verbose,
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        # the latest checkpoint(s) of a trial (each holds the best weights too): older ones are deleted
        checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints))
    if resume:
        from .scratch import remove_dead_scratch

        removed = remove_dead_scratch(exp_dir)  # what trials killed with the driver left in this machine's temp dir
        if removed and verbose:
            print(f"resume: removed {len(removed)} scratch folder(s) of killed trials of {name!r}", flush=True)
        tuner = tune.Tuner.restore(exp_dir, trainable, resume_unfinished=True, resume_errored=True)
    else:
        searcher, param_space = _searcher(space, spec, max_epochs, grid_param_space)
        tuner = tune.Tuner(trainable, param_space=param_space, run_config=run_config, tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, search_alg=searcher, scheduler=_scheduler(spec, max_epochs),
            num_samples=spec.num_samples, time_budget_s=spec.time_budget_s,
            max_concurrent_trials=spec.max_concurrent))
    mark("fit_start")
    grid = tuner.fit()
    res = _summarise(grid, spec, space, client, parent_id, exp_id, name, exp_dir)
    if grid_note:
        res.notes.insert(0, grid_note)
    return res


def sort_leaderboard(rows: List[Dict[str, Any]], metric: str, mode: str) -> List[Dict[str, Any]]:
    """Best `metric` first (by `mode`); trials without a finite value of it after those with one;
    failed trials last. Ties keep the order the trials ran in."""
    sign = -1.0 if mode == "max" else 1.0
    return sorted(rows, key=lambda r: (r["status"] == "failed", not is_number(r.get(metric)),
                                       sign * float(r[metric]) if is_number(r.get(metric)) else 0.0))


def leaderboard_columns(second_metric: Optional[str]) -> List[str]:
    return LEADERBOARD_COLUMNS + ([second_metric, "pareto"] if second_metric else [])


def _write_csv(path: Path, header: List[str], rows: List[List[Any]]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _summarise(grid, spec, space, client, parent_id, exp_id, name, exp_dir) -> SearchResult:
    # the plots and tables are written to a scratch folder, logged to the parent run, then removed
    with tempfile.TemporaryDirectory(prefix="fer-search-") as scratch:
        return _summarise_in(Path(scratch), grid, spec, space, client, parent_id, exp_id, name, exp_dir)


def _summarise_in(art_dir: Path, grid, spec, space, client, parent_id, exp_id, name, exp_dir) -> SearchResult:
    from search_spaces import point_from_config

    from .study_plots import rebuild_study, write_plots
    from .tracking import RunWriter

    second = spec.second_metric
    columns = leaderboard_columns(second)
    rows, failures = [], {}
    for res in grid:  # the order the trials ran in
        trial_id = res.metrics.get("trial_id") if res.metrics else None
        point = point_from_config(res.config or {}, space)
        row: Dict[str, Any] = {"trial_id": trial_id or Path(res.path).name, "status": "finished"}
        if res.error is not None:
            row["status"] = "failed"
            failures[row["trial_id"]] = str(res.error).strip().splitlines()[-1][:300] if str(res.error).strip() else "error"
        else:
            row["status"] = trial_status((res.metrics or {}).get("epoch"), trial_epochs(space, res.config))
        for c in LEADERBOARD_COLUMNS + ([second] if second else []):
            row[c] = (res.metrics or {}).get(c)
        row["point"] = point
        rows.append(row)
    notes: List[str] = []

    # Optuna's plots, from a study rebuilt out of the trials in the order they ran
    try:
        study, skipped = rebuild_study(rows, space, spec.metric, spec.mode, second)
        notes += skipped
        _, plot_notes = write_plots(study, art_dir / "plots", spec.metric, second)
        notes += plot_notes
        client.log_artifacts(parent_id, str(art_dir / "plots"), "plots")
    except Exception as exc:  # noqa: BLE001 - the plots must not lose the leaderboard
        notes.append(f"plots: not written: {type(exc).__name__}: {exc}")

    key = spec.metric
    front: List[Dict[str, Any]] = []
    if second:
        on_front = set(pareto_front(rows, key, spec.mode, second))
        for i, r in enumerate(rows):
            r["pareto"] = i in on_front
    rows = sort_leaderboard(rows, key, spec.mode)
    if second:
        front = [r for r in rows if r.get("pareto")]  # in leaderboard order: best metric first, ties as ranked
    best = next((r for r in rows if r["status"] != "failed" and is_number(r.get(key))), None)
    best_path = None
    if best is not None:
        # beside the search's runs; with remote storage (s3://...) in a small folder of its own that
        # outlives the scratch one (the path is printed; the parent run has a copy too)
        best_path = Path(exp_dir if "://" not in exp_dir else tempfile.mkdtemp(prefix="fer-search-best-")) \
            / "best_point.yaml"
        best_path.write_text(yaml.safe_dump(best["point"], sort_keys=False))
        client.log_artifact(parent_id, str(best_path))
    _write_csv(art_dir / "leaderboard.csv", ["rank", "trial_id", "status", *columns, "point"],
               [[i, r["trial_id"], r["status"], *[r.get(c) for c in columns], json.dumps(r["point"])]
                for i, r in enumerate(rows, 1)])
    client.log_artifact(parent_id, str(art_dir / "leaderboard.csv"))
    if second:
        rank = {id(r): i for i, r in enumerate(rows, 1)}
        _write_csv(art_dir / "pareto_front.csv", ["rank", "trial_id", "status", key, second, "point"],
                   [[rank[id(r)], r["trial_id"], r["status"], r[key], r[second], json.dumps(r["point"])] for r in front])
        client.log_artifact(parent_id, str(art_dir / "pareto_front.csv"))
        writer = RunWriter(client)
        children = find_child_runs(client, exp_id, parent_id)
        for r in rows:
            run = children.get(r["trial_id"])
            if run is not None:
                writer.tags(run.info.run_id, {TAG_PARETO: "true" if r.get("pareto") else "false"})
        client.set_tag(parent_id, "fer_automl.pareto_size", str(len(front)))
    if best is not None:
        client.log_metric(parent_id, f"best_{key}", float(best[key]))
    client.set_tag(parent_id, "fer_automl.num_failed", str(len(failures)))
    if notes:
        client.log_text(parent_id, "\n".join(notes) + "\n", "notes.txt")
    client.set_terminated(parent_id, "FINISHED")
    return SearchResult(name, exp_id, parent_id, exp_dir, rows, best["point"] if best else None, best_path,
                        len(failures), failures, metric=key, mode=spec.mode, second_metric=second,
                        pareto_front=front, notes=notes)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    return "-" if v is None else str(v)


def format_leaderboard(rows: List[Dict[str, Any]], metric: str, top: int = 10,
                       second_metric: Optional[str] = None) -> str:
    """The leaderboard as text: its first `top` rows (a multi-objective search adds the second
    objective and whether the trial is on the Pareto front)."""
    extra = [second_metric, "pareto"] if second_metric else []
    cols = ["#", "trial", "status", metric, "val_accuracy", "test_accuracy", "epoch", "best_val_balanced_accuracy",
            "best_epoch", *extra]
    lines = [" | ".join(cols)]
    for i, r in enumerate(rows[:top], 1):
        lines.append(" | ".join([str(i), str(r["trial_id"]), r["status"]]
                                + [_fmt(r.get(c)) for c in cols[3:]]))
    return "\n".join(lines)


def format_pareto(front: List[Dict[str, Any]], metric: str, second_metric: str) -> str:
    """The Pareto front as text, best metric first, with each trial's point."""
    lines = [" | ".join(["trial", "status", metric, second_metric, "point"])]
    for r in front:
        point = json.dumps(r.get("point"))
        lines.append(" | ".join([str(r["trial_id"]), r["status"], _fmt(r.get(metric)), _fmt(r.get(second_metric)),
                                 point if len(point) <= 240 else "(long: see pareto_front.csv)"]))
    return "\n".join(lines)
