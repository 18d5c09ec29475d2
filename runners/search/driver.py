"""A search: Ray Tune schedules trials of one space, Optuna suggests them, MLflow records them.

`run_search(space_file, **overrides)` is what `fer-automl search SPEC.yaml` calls. Everything that
can be checked before a trial starts is checked first (space, spec, dataset, tracking server,
Ray address, resources), so bad input fails in seconds and leaves nothing half-written in MLflow.
"""
from __future__ import annotations

import hashlib
import json
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from fer_models.errors import UserError, UserPathError

from runners.search.pareto import is_number, pareto_front
from runners.search.tracking import (TAG_FAILURE, TAG_KIND, TAG_PARETO, TAG_SEARCH, TAG_STATUS, check_store_writable,
                                     check_tracking_server, complete_trial_runs, dataset_input_fields, find_child_runs,
                                     get_or_create_experiment, guarded, make_tracker, resolve_tracking_uri,
                                     tracking_paused, trial_status, unpause_tracking)
from runners.search.outage import TrackingLost, restore_http_limits
from runners.training.trial import DataSpec, check_classes, mark

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
    tracking_paused: Optional[str] = None  # why MLflow took no writes (the records are incomplete: --resume)
    # a search with `fidelity.refit` (runners.search.fidelity): one row per refit configuration, best mean first
    refit: List[Dict[str, Any]] = field(default_factory=list)
    refit_winner: Optional[Dict[str, Any]] = None
    num_infeasible: int = 0  # trials whose point broke search.constraints (not trained, not failures)


def data_spec_from(dataset) -> DataSpec:
    """The search spec's `dataset:` section as the trial's DataSpec."""
    opts: Dict[str, Any] = {}
    if dataset.format == "synthetic":
        if dataset.n is not None:
            opts["n"] = dataset.n
        if dataset.image_size is not None:
            opts["size"] = dataset.image_size
    path = str(Path(dataset.path).expanduser().resolve()) if dataset.path else None
    return DataSpec(format=dataset.format, path=path, options=opts, seed=dataset.seed,
                    skip_corrupt=dataset.skip_corrupt)


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

    from runners.training.trial import run_trial

    mark("trial_start")
    # the space travels as parsed YAML: the driver's file need not exist on the node running this trial
    space = (load_space(static["space"], name=static.get("space_where")) if static.get("space") is not None
             else load_space(static["space_file"]))
    point = point_from_config(config, space)
    perturbed = static.get("perturbed") or []
    if perturbed:  # pbt/pb2 may hand over a value off its dimension's grid (PB2: any float in the range)
        from runners.search.schedulers import fit_point

        point = fit_point(space, point, perturbed)
    cfg = space.validate(point)
    from runners.search.fidelity import FIDELITY_KEY, apply_fidelity

    # beside the point, not in it: the fidelity of a two-stage search (train fraction, image size, refit seed)
    cfg, train_fraction = apply_fidelity(cfg, config.get(FIDELITY_KEY))
    data = DataSpec(**static["data"])
    node_id = ray.get_runtime_context().get_node_id()  # which node ran it (the tracker tags the child run)
    hparams = {f"hp_{n}": point[n] for n in perturbed if isinstance(point.get(n), (int, float))}
    if perturbed:
        from runners.search.schedulers import TRIAL_EPOCHS_KEY

        hparams[TRIAL_EPOCHS_KEY] = int(cfg.train.epochs)

    def report(metrics: Dict[str, float], ckpt_dir: Optional[Path]) -> None:
        checkpoint = tune.Checkpoint.from_directory(str(ckpt_dir)) if ckpt_dir else None
        tune.report({**metrics, **hparams, "node_id": node_id}, checkpoint=checkpoint)

    second = static.get("second_objective")
    from runners.training.scratch import remove_dead_scratch, trial_scratch

    search_dir = static.get("search_dir") or ""
    if search_dir:  # what killed trials of this search left on this node
        remove_dead_scratch(search_dir)
    # the trial's own scratch folder: every checkpoint it reports is copied into the run's storage by
    # tune.report, so nothing in it is needed once the trial ends, however it ends
    with trial_scratch(search_dir) as out_dir:
        ckpt = tune.get_checkpoint()
        if ckpt is not None:
            with ckpt.as_directory() as d:
                run_trial(cfg, data, out_dir=out_dir, report=report, resume_from=d, second_objective=second,
                          train_fraction=train_fraction, constraints=static.get("constraints"))
        else:
            run_trial(cfg, data, out_dir=out_dir, report=report, second_objective=second, train_fraction=train_fraction,
                      constraints=static.get("constraints"))


# --- the driver -------------------------------------------------------------------------------------

# the flag of `fer-automl search` that sets each key of the search spec (named in its errors)
SPEC_FLAGS = {"outage_timeout_s": "--outage-timeout", "name": "--name", "num_samples": "--num-samples", "storage_path": "--storage-path",
              "address": "--address", "tracking_uri": "--tracking-uri", "dataset.path": "--data",
              "dataset.format": "--format", "dataset.skip_corrupt": "--skip-corrupt", "warm_start": "--warm-start"}
# what a dataset of another format keeps of the space's `search.dataset` (the rest, such as the
# synthetic generator's n, num_classes, pose and seed, belongs to the space's own data)
KEPT_ACROSS_FORMATS = ("image_size", "skip_corrupt")


def _dataset_override(space, dataset: Optional[Dict[str, Any]], data: Optional[str], fmt: Optional[str]):
    """The space's `search.dataset` with --data / --format applied: a format other than the space's
    replaces its dataset (keeping image_size and skip_corrupt); --data alone replaces the path of a
    dataset that has files, and is an error for synthetic data (it has none: which reader?)."""
    from fer_models.errors import UserError, UserPathError

    from runners.data.readers import READERS

    if data is None and fmt is None:
        return dataset
    old = dict(dataset or {})
    if fmt is not None and fmt not in READERS:
        raise UserError(f"--format {fmt!r}: unknown dataset format; known formats: {', '.join(sorted(READERS))}")
    if fmt is None:  # --data alone
        if old.get("format") in (None, "synthetic"):
            raise UserError(f"--data {data!r}: the space's dataset is "
                            f"{'synthetic (generated, no files)' if old else 'not given'}; "
                            f"say how to read {data!r} with --format (one of: "
                            f"{', '.join(f for f in sorted(READERS) if f != 'synthetic')})")
        fmt = old["format"]
    if fmt == "synthetic" and data is not None:
        raise UserError(f"--data {data!r}: --format synthetic generates its images and reads no files; "
                        "give the format of the data at --data")
    if fmt == old.get("format"):
        new = old
    else:
        new = {k: old[k] for k in KEPT_ACROSS_FORMATS if k in old}
        new["format"] = fmt
        if fmt != "synthetic" and old.get("format") not in (None, "synthetic") and old.get("path") and data is None:
            new["path"] = old["path"]  # another reader of the same files
    if data is not None:
        if not Path(data).expanduser().exists():
            raise UserPathError(f"--data {data!r}: no such file or folder")
        new["path"] = data
    if fmt != "synthetic" and not new.get("path"):
        raise UserError(f"--format {fmt!r} reads files: give their folder with --data")
    return new


def _spec_error(exc, space, given: Dict[str, Any]):
    """A SearchSpec ValidationError of the merged spec as a UserError, one line per field: the flag
    when the value came from one, else the space file and its `search.` key."""
    from fer_models.errors import UserError, validation_lines

    lines = []
    for err, line in zip(exc.errors(include_url=False), validation_lines(exc, source=space.where, prefix="search.")):
        loc = ".".join(str(p) for p in err.get("loc", ()))
        if loc in given:
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            line = f"{SPEC_FLAGS[loc]} {err.get('input')!r}: {msg}"
        lines.append(line)
    return UserError("\n".join(lines))


def _merge_spec(space, overrides: Dict[str, Any]):
    """The space's `search:` section with the command line's flags applied (None: not given)."""
    from pydantic import ValidationError

    from fer_models.errors import UserError, UserPathError
    from search_spaces import SearchSpec

    # what the file set (defaults are filled again): a scheduler's settings are checked against its type
    base = space.search.model_dump(exclude_unset=True) if getattr(space, "search", None) is not None else {}
    given: Dict[str, Any] = {}
    for k, v in overrides.items():
        if v is None or k in ("data", "format"):
            continue
        if k == "skip_corrupt":
            if v:
                base.setdefault("dataset", {})["skip_corrupt"] = True
                given["dataset.skip_corrupt"] = v
            continue
        base[k] = v
        given[k] = v
    data, fmt = overrides.get("data"), overrides.get("format")
    base["dataset"] = _dataset_override(space, base.get("dataset"), data, fmt)
    given.update({k: v for k, v in (("dataset.path", data), ("dataset.format", fmt)) if v is not None})
    try:
        spec = SearchSpec.model_validate(base)
    except ValidationError as exc:
        raise _spec_error(exc, space, given) from None
    if spec.dataset is None:
        raise UserError(f"{space.where}: no dataset: give a `search: dataset:` section or --format and --data")
    if spec.dataset.path and not Path(spec.dataset.path).expanduser().exists():
        raise UserPathError(f"{space.where}: search.dataset.path {spec.dataset.path!r}: no such file or folder")
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


def _searcher(space, spec, max_epochs: int, grid_param_space: Optional[Dict[str, Any]] = None, warm=None):
    """(search algorithm, Tune param space); a grid search's param space is the one run_search
    enumerated before anything started.

    Every algorithm evaluates the presets first and runs at most `max_concurrent` trials at once:
    tpe and random are Optuna samplers behind Ray's OptunaSearch (a `Searcher`: Tune limits its
    concurrency through `max_concurrent_trials`, see `is_searcher`); the grid is Ray's
    BasicVariantGenerator over the enumerated points, with the presets put first in its list and
    the limit given to it (Tune's `max_concurrent_trials` takes a Searcher only)."""
    from fer_models.errors import UserError

    presets = []
    for name in spec.presets:
        if name not in space.presets:
            raise UserError(f"{space.where}: search.presets names {name!r}, which is not a preset of this space "
                            f"(presets: {', '.join(space.presets) or 'none'})")
        presets.append(dict(space.presets[name]))
    from search_spaces.spec import ALGORITHMS

    return ALGORITHMS[ALGORITHMS.checked(spec.algorithm)](space, spec, presets, grid_param_space=grid_param_space,
                                                          warm=warm)


def is_searcher(alg) -> bool:
    """Whether Tune's `max_concurrent_trials` applies to `alg` (it does to a `Searcher` only)."""
    from ray.tune.search import Searcher

    return isinstance(alg, Searcher)


def _scheduler(spec, max_epochs: int, space=None):
    """The Ray Tune scheduler of the search: one entry of `runners.search.schedulers.SCHEDULERS` per type."""
    from runners.search.schedulers import build_scheduler

    return build_scheduler(spec, space, max_epochs)


def trial_epochs(space, config: Dict[str, Any]) -> Optional[int]:
    """The epochs a trial's own configuration trains for (its `train.epochs`), None when its
    config is not a point of the space."""
    from search_spaces import point_from_config

    try:
        return int(space.validate(point_from_config(config or {}, space)).train.epochs)
    except Exception:  # noqa: BLE001 - a trial without a valid point has no epochs of its own
        return None


def trial_label(cfg) -> str:
    """What a trial is, in a few words, for its MLflow run name: backbone, attention, local patches,
    scales, loss weighting, and the context branch and pose head when on: 'resnet18 cbam 4p 2s dwa'."""
    m = cfg.model
    words = [m.backbone, m.attention, f"{m.num_patches}p",
             f"{m.num_scales}s" + ("-ms" if m.global_branch == "multiscale" else ""), cfg.train.loss_weighting]
    if m.global_attention not in (None, m.attention):
        words.insert(2, f"g-{m.global_attention}")
    return " ".join(words + (["cci"] if m.context_branch else []) + (["pose"] if m.pose_head else []))


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


def _storage_source(storage_path: Optional[str], spec, space) -> str:
    """Where the storage path came from, for messages: the flag, the key of the file, or the default."""
    if storage_path:
        return "--storage-path"
    if spec.storage_path:
        return f"search.storage_path in {space.where}"
    return "the default storage folder ./ray_results (choose another with --storage-path)"


def check_storage_writable(storage: str, exp_dir: str, source: str) -> None:
    """Refuse, before anything is written, a local storage path the search could not write: one under a
    file, a file itself, or a folder that refuses a new file (read-only, immutable, no permission).
    The check creates the search's folder and a probe file in it, then removes both (and any parent
    folder it made), so it leaves nothing behind either way. Remote storage (s3://...) is not probed."""
    if storage.startswith("file://"):
        from urllib.parse import urlparse

        exp_dir = urlparse(exp_dir).path
    elif "://" in storage:
        return
    target = Path(exp_dir)
    existing = target
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserPathError(f"{source}: storage path {storage!r} cannot be used: {existing} is a file, not a folder "
                            "(give a folder, or a path where one can be made)")
    made: List[Path] = []
    try:
        for folder in reversed([target, *target.parents]):
            if folder == existing or folder in existing.parents:
                continue
            folder.mkdir()
            made.append(folder)
        probe = target / f".fer-automl-write-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise UserPathError(f"{source}: storage path {storage!r} is not writable ({why}: {exc.filename or target}); "
                            "give a folder this user can write") from None
    finally:
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:
                pass


# the parent runs of the searches under way in this process (run_search's own, innermost last)
_OPEN_PARENTS: List[tuple] = []


def _ends_its_parent_run(run):
    """Once a search's parent run exists, however the search ends, it ends the parent: FINISHED (the
    summary), FAILED with the reason in a tag on an exception, KILLED on Ctrl-C or SIGTERM; never
    RUNNING (unless the MLflow store takes no writes any more: --resume ends it then)."""
    import functools

    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        depth = len(_OPEN_PARENTS)
        try:
            return run(*args, **kwargs)
        except TrackingLost:
            raise  # the server is away: the parent stays RUNNING, --resume goes on with it
        except KeyboardInterrupt:
            from runners.search.outage import unreachable_since

            # a Ctrl-C while the tracking server is away: the parent run cannot be ended now (it stays
            # RUNNING; --resume goes on with it), and no second message about the store
            if len(_OPEN_PARENTS) > depth and unreachable_since(_OPEN_PARENTS[-1][1]) is None:
                _end_parent(*_OPEN_PARENTS[-1], "KILLED", "interrupted (Ctrl-C or SIGTERM); continue it with --resume")
            raise
        except BaseException as exc:
            if len(_OPEN_PARENTS) > depth:
                _end_parent(*_OPEN_PARENTS[-1], "FAILED", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            del _OPEN_PARENTS[depth:]
            if not depth:
                restore_http_limits()

    return wrapper


@_ends_its_parent_run
def run_search(space_file: str, *, name: Optional[str] = None, data: Optional[str] = None, format: Optional[str] = None,
               num_samples: Optional[int] = None, storage_path: Optional[str] = None, address: Optional[str] = None,
               tracking_uri: Optional[str] = None, resume: bool = False, skip_corrupt: bool = False,
               verbose: int = 1, warm_start: Optional[List[str]] = None,
               outage_timeout: Optional[float] = None) -> SearchResult:
    from fer_models.errors import UserError
    from search_spaces import load_space
    from search_spaces.spec import search_name_error

    mark("search_start")
    space = load_space(space_file)
    spec = _merge_spec(space, dict(name=name, data=data, format=format, num_samples=num_samples,
                                   storage_path=storage_path, address=address, tracking_uri=tracking_uri,
                                   skip_corrupt=skip_corrupt, warm_start=warm_start or None,
                                   outage_timeout_s=outage_timeout))
    name = spec.name or Path(space.where).stem
    if search_name_error(name):  # a name from the file's stem (`search.name` and --name are checked with the spec)
        raise UserError(f"{space.where}: the search is named after the file: {search_name_error(name)}; "
                        "give search.name or --name")
    max_epochs = _max_epochs(space)
    from runners.search.schedulers import (check_scheduler, is_population, perturbed_dimensions, population_checkpoints,
                                           population_stopper)

    check_scheduler(spec, space)
    uri = resolve_tracking_uri(spec.tracking_uri)
    check_tracking_server(uri)
    import runners.search.outage as outage

    outage.configure(uri, spec.outage_timeout_s)  # a tracking server that goes away mid-search (runners.search.outage)
    storage = spec.storage_path or str(Path("ray_results").resolve())
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    exp_dir = f"{storage.rstrip('/')}/{name}"
    check_storage_writable(storage, exp_dir, _storage_source(storage_path, spec, space))
    check_store_writable(uri)
    unpause_tracking(uri)  # a search run before in this process may have paused it
    warm = None
    if spec.warm_start and not resume:
        from runners.search.warm_start import load_warm_start

        warm = load_warm_start(spec.warm_start, space, spec, uri, from_flag=bool(warm_start))
        if verbose:
            print("\n".join(warm.summary_lines()), flush=True)
    elif spec.warm_start and verbose:
        print("warm start: --resume keeps the study the search was seeded with", flush=True)

    grid_fixed, grid_note, grid_param_space = None, None, None
    if spec.algorithm == "grid":  # the grid is enumerated (and its fixed floats named) before anything runs
        from runners.search.searchers import to_ray_grid

        grid_values, grid_fixed, grid_note = grid_settings(space, spec)
        grid_param_space = to_ray_grid(space, fixed=grid_fixed, values=grid_values)
        if grid_note and verbose:
            print(grid_note, flush=True)
        refit = spec.fidelity.refit if spec.fidelity is not None else None
        if refit is not None and refit.top_k > len(grid_param_space["point"]["grid_search"]):
            raise UserError(f"{space.where}: search.fidelity.refit.top_k={refit.top_k} is larger than the "
                            f"{len(grid_param_space['point']['grid_search'])} distinct points of the grid")

    import runners.search.cluster as ray_cluster

    resources = {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu}
    if spec.address:
        ray_cluster.check_address(spec.address)
    data_spec = data_spec_from(spec.dataset)
    ds = data_spec.load(spec.dataset.image_size or 64)  # fails here, before anything is written, on bad data
    check_classes(ds)
    from runners.data.stats import check_splits  # splits preprocessed differently: a warning, printed and logged
    data_warnings = check_splits(ds, echo=print if verbose else None)
    mark("dataset_loaded")
    cluster = ray_cluster.init_ray(spec.address)
    mark("ray_started")
    ray_cluster.check_resources(resources, cluster, ray_cluster.node_resources())
    ray_cluster.check_storage(storage)

    import mlflow
    from ray import tune

    can_restore = tune.Tuner.can_restore(exp_dir)
    if resume and not can_restore:  # before the experiment is made: a refused command writes nothing
        raise UserError(f"--resume: no search to resume at {exp_dir}")
    client = mlflow.MlflowClient(uri)
    exp_id = get_or_create_experiment(client, name)
    parent = _find_parent(client, exp_id, name) if (resume and can_restore) else None
    if parent is None:
        space_text = Path(space.path).read_text() if getattr(space, "path", None) else ""
        parent = client.create_run(exp_id, run_name=name, tags={TAG_KIND: "search", TAG_SEARCH: name})
        _OPEN_PARENTS.append((client, uri, parent.info.run_id))  # from here on, a failure ends it
        from runners.search.tracking import RunWriter, flatten

        RunWriter(client).params(parent.info.run_id, flatten({
            "algorithm": spec.algorithm, "scheduler": spec.scheduler.type, "num_samples": spec.num_samples,
            "max_concurrent": spec.max_concurrent, "metric": spec.metric, "mode": spec.mode,
            "second_objective": spec.second_objective,
            "space_file": str(space.path or space.where),
            "space_sha256": hashlib.sha256(space_text.encode()).hexdigest()[:16],
            "dataset": {"format": spec.dataset.format, "path": spec.dataset.path, "name": ds.name,
                        "fingerprint": ds.fingerprint, "num_images": len(ds), "num_skipped": ds.num_skipped},
            "git_commit": git_commit(), "python": platform.python_version(), "versions": package_versions(),
            "resources": resources, "storage": exp_dir,
            **({"fidelity": spec.fidelity.model_dump()} if spec.fidelity is not None else {}),
            **({"grid_fixed": grid_fixed} if spec.algorithm == "grid" else {})}))
        if space_text:
            client.log_text(parent.info.run_id, space_text, "space.yaml")
        client.log_text(parent.info.run_id, yaml.safe_dump(spec.model_dump(), sort_keys=False), "search_spec.yaml")
        if warm is not None:
            warm.record(client, parent.info.run_id)
        if data_warnings:
            client.log_text(parent.info.run_id, "\n".join(data_warnings) + "\n", "data_warnings.txt")
    parent_id = parent.info.run_id
    if not _OPEN_PARENTS or _OPEN_PARENTS[-1][2] != parent_id:  # a resumed search's parent
        _OPEN_PARENTS.append((client, uri, parent_id))  # from here on, a failure ends it (_ends_its_parent_run)
    if resume:
        _reopen_parent(client, uri, parent_id)

    from search_spaces import point_from_config

    from runners.search.fidelity import run_info

    tracker_args = dict(tracking_uri=uri, experiment_id=exp_id, parent_run_id=parent_id, search_name=name,
                        point_of=lambda cfg: point_from_config(cfg, space),
                        epochs_of=lambda cfg: trial_epochs(space, cfg),
                        name_of=lambda cfg: trial_label(space.validate(point_from_config(cfg, space))),
                        dataset=dataset_input_fields(ds, spec.dataset.path),
                        run_info=lambda cfg: run_info(cfg, space))
    tracker = make_tracker(**tracker_args)
    from search_spaces.schema import read_yaml

    static = {"space_file": str(Path(space.path).resolve()) if space.path else space_file,
              "space_where": space.where,
              "space": read_yaml(Path(space.path)) if getattr(space, "path", None) else None,
              "data": data_spec.__dict__, "second_objective": spec.second_objective, "search_dir": exp_dir,
              # pbt/pb2: the dimensions they perturb (kept valid, and reported every epoch as hp_<name>)
              "perturbed": list(perturbed_dimensions(space)) if is_population(spec) else [],
              "constraints": spec.constraints.limits() if spec.constraints else None}
    trainable = tune.with_resources(tune.with_parameters(tune_trainable, static=static), resources)
    run_config = tune.RunConfig(
        name=name, storage_path=storage, callbacks=[tracker, interrupt_watch()], verbose=verbose,
        stop=population_stopper() if is_population(spec) else None,
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        # the latest checkpoint(s) of a trial (each holds the best weights too): older ones are deleted
        checkpoint_config=tune.CheckpointConfig(num_to_keep=population_checkpoints(spec)))
    from runners.search.fidelity import REFIT_DIR, search_stage_config

    refit_spec = spec.fidelity.refit if spec.fidelity is not None else None
    # --resume of a search interrupted in its refit stage: the search stage is over, its results are read
    in_refit = bool(resume and refit_spec is not None and tune.Tuner.can_restore(f"{exp_dir}/{REFIT_DIR}"))
    if resume:
        from runners.training.scratch import remove_dead_scratch

        removed = remove_dead_scratch(exp_dir)  # what trials killed with the driver left in this machine's temp dir
        if removed and verbose:
            print(f"resume: removed {len(removed)} scratch folder(s) of killed trials of {name!r}", flush=True)
        tuner = tune.Tuner.restore(exp_dir, trainable, resume_unfinished=not in_refit, resume_errored=not in_refit)
    else:
        searcher, param_space = _searcher(space, spec, max_epochs, grid_param_space, warm=warm)
        if spec.fidelity is not None:  # beside the point (runners.search.fidelity): every search-stage trial's fidelity
            from runners.search.fidelity import FIDELITY_KEY

            param_space = {**param_space, FIDELITY_KEY: search_stage_config(spec.fidelity)}
        tuner = tune.Tuner(trainable, param_space=param_space, run_config=run_config, tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, search_alg=searcher, scheduler=_scheduler(spec, max_epochs, space),
            num_samples=spec.num_samples, time_budget_s=spec.time_budget_s,
            max_concurrent_trials=spec.max_concurrent if is_searcher(searcher) else None))
    mark("fit_start")
    if in_refit:  # the search stage's results as they were saved: nothing of it runs again
        INTERRUPTED.clear()
        grid = tuner.get_results()
    else:
        grid = _fit(tuner)
    _after_fit(uri, name)
    if warm is not None:  # the study as it ended: the seeded trials, then the search's own
        guarded(uri, warm.record_study, client, parent_id)
    res = _summarise(grid, spec, space, client, parent_id, exp_id, name, exp_dir, end_parent=refit_spec is None)
    if grid_note:
        res.notes.insert(0, grid_note)
    if refit_spec is not None:
        from runners.search.fidelity import run_refit_stage

        def make_tuner(param_space=None, search_alg=None, num_samples=None, restore_path=None):
            if restore_path is not None:
                return tune.Tuner.restore(restore_path, trainable, param_space=param_space, resume_unfinished=True,
                                          resume_errored=True)
            refit_tracker = make_tracker(**tracker_args)  # its own: numbering goes on from the search's runs
            return tune.Tuner(trainable, param_space=param_space, run_config=tune.RunConfig(
                name=REFIT_DIR, storage_path=exp_dir, callbacks=[refit_tracker, interrupt_watch()], verbose=verbose,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.keep_checkpoints)),
                tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, search_alg=search_alg,
                                            scheduler=_scheduler_fifo(), num_samples=num_samples))

        def fit(t):
            out = _fit(t)
            _after_fit(uri, name)
            return out

        refit_grid = run_refit_stage(search_rows=res.leaderboard, spec=spec, exp_dir=exp_dir, resume=resume,
                                     make_tuner=make_tuner, fit=fit, notes=res.notes, verbose=verbose)
        _summarise_refit(res, refit_grid, spec, client, parent_id, exp_id, name)
    return res


def _after_fit(uri: str, name: str) -> None:
    """After Ray Tune's loop: TrackingLost if the tracking server stayed away past the outage timeout
    (the loop was stopped for it), KeyboardInterrupt if the search was interrupted, else flush the
    writes still buffered for an unreachable server (waiting for it up to the timeout)."""
    import runners.search.outage as outage

    if outage.lost(uri):
        INTERRUPTED.clear()
        raise TrackingLost(outage.lost(uri))
    _raise_if_interrupted(name)
    outage.finish(uri)


def _raise_if_interrupted(name: str) -> None:
    if INTERRUPTED.is_set():
        # Ray Tune took the Ctrl-C (or SIGTERM, see _fit) itself: it saved the search's state, stopped
        # the trials and returned early
        print(f"fer-automl: search {name} interrupted; its state is saved: continue it with the same command "
              "and --resume", file=sys.stderr, flush=True)
        raise KeyboardInterrupt


def _scheduler_fifo():
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def _summarise_refit(res: SearchResult, grid, spec, client, parent_id: str, exp_id: str, name: str) -> None:
    """The refit stage's leaderboard (refit_leaderboard.csv on the parent run) into `res`; then the
    parent run ends FINISHED."""
    from search_spaces import point_from_config

    from runners.search.fidelity import TAG_REFIT_WINNER, refit_csv_rows, refit_rows

    uri = client.tracking_uri

    def mlf(fn, *args, **kwargs):
        return guarded(uri, fn, *args, **kwargs)

    if grid is not None:
        ended = []
        for r in grid:
            tid = (r.metrics or {}).get("trial_id")
            if tid:
                status = "failed" if r.error is not None else "finished"
                ended.append((tid, status, str(r.error).strip().splitlines()[-1][:300] if r.error is not None else None, r))
        mlf(complete_trial_runs, client, exp_id, parent_id, name, ended, lambda cfg: point_from_config(cfg, None))
        res.refit = refit_rows(grid, spec.metric, spec.mode)
        res.refit_winner = next((r for r in res.refit if r[f"{spec.metric}_mean"] is not None), None)
        failed = {r["config"]: r["num_failed"] for r in res.refit if r["num_failed"]}
        if failed:
            res.notes.append("refit: failed seeds: " + ", ".join(f"{c} {n}" for c, n in failed.items()))
        # a failed refit seed is a failed trial of the search: counted (exit code 4), with its reason
        for tid, status, reason, _ in ended:
            if status == "failed":
                res.failures[f"refit {tid}"] = reason or "error"
        res.num_failed = len(res.failures)
        mlf(client.set_tag, parent_id, "fer_automl.num_failed", str(res.num_failed))
        with tempfile.TemporaryDirectory(prefix="fer-refit-") as tmp:
            header, rows = refit_csv_rows(res.refit, spec.metric)
            _write_csv(Path(tmp) / "refit_leaderboard.csv", header, rows)
            mlf(client.log_artifact, parent_id, str(Path(tmp) / "refit_leaderboard.csv"))
        if res.refit_winner is not None:
            w = res.refit_winner
            if w.get("point") and res.best_point_path is not None:
                # the point to retrain is the refit stage's winner (best mean over seeds), not the
                # search stage's best at reduced fidelity
                res.best_point = dict(w["point"])
                res.best_point_path.write_text(yaml.safe_dump(res.best_point, sort_keys=False))
                mlf(client.log_artifact, parent_id, str(res.best_point_path))
            mlf(client.log_metric, parent_id, f"refit_best_{spec.metric}_mean", float(w[f"{spec.metric}_mean"]))
            mlf(client.set_tag, parent_id, TAG_REFIT_WINNER, f"{w['config']} (search trial {w['source_trial']})")
        if res.notes:
            mlf(client.log_text, parent_id, "\n".join(res.notes) + "\n", "notes.txt")
    mlf(client.set_terminated, parent_id, "FINISHED")
    res.tracking_paused = tracking_paused(uri)


def _reopen_parent(client, uri: str, parent_id: str) -> None:
    """A resumed search runs again: its parent, and the child runs of trials that had not ended (all
    KILLED or FAILED by the interruption), are RUNNING until they end."""
    def reopen() -> None:
        run = client.get_run(parent_id)
        for child in find_child_runs(client, run.info.experiment_id, parent_id).values():
            if child.info.status != "RUNNING" and child.data.tags.get(TAG_STATUS) == "running":
                client.update_run(child.info.run_id, status="RUNNING")
        if run.info.status != "RUNNING":
            client.update_run(parent_id, status="RUNNING")
        if TAG_FAILURE in run.data.tags:
            client.delete_tag(parent_id, TAG_FAILURE)

    guarded(uri, reopen)


def _end_parent(client, uri: str, parent_id: str, status: str, reason: str) -> None:
    """End the parent run `status` (FAILED | KILLED) with `reason` in a tag, and the child runs of
    trials that had not ended KILLED (their status tag stays `running`: --resume continues them). A
    store that takes no writes any more (tracking paused) is left as it is: --resume ends the runs."""
    def end() -> None:
        run = client.get_run(parent_id)
        client.set_tag(parent_id, TAG_FAILURE, reason[:5000])
        for child in find_child_runs(client, run.info.experiment_id, parent_id).values():
            if child.info.status == "RUNNING":
                client.set_terminated(child.info.run_id, "KILLED")
        client.set_terminated(parent_id, status)

    guarded(uri, end)


# set when Ray Tune took a Ctrl-C during `tuner.fit()`: it then returns normally, its trials stopped
# (and marked terminated), so nothing in the results tells an interrupted search from a finished one
INTERRUPTED = threading.Event()


def interrupt_watch():
    """A Ray Tune callback that sets INTERRUPTED when Tune's Ctrl-C handler runs: at each step of the
    search it wraps whatever SIGINT handler is in place (Tune installs its own inside `fit`)."""
    from ray.tune import Callback

    class InterruptWatch(Callback):
        def on_step_begin(self, iteration, trials, **info):
            if threading.current_thread() is not threading.main_thread():
                return
            current = signal.getsignal(signal.SIGINT)
            if getattr(current, "fer_automl_watch", False):
                return

            def watch(signum, frame):
                # looked up at call time: this callback is pickled with the search and restored by --resume
                sys.modules["runners.search.driver"].INTERRUPTED.set()
                if callable(current):
                    current(signum, frame)
                elif current != signal.SIG_IGN:
                    raise KeyboardInterrupt

            watch.fer_automl_watch = True
            signal.signal(signal.SIGINT, watch)

    return InterruptWatch()


def _fit(tuner):
    """`tuner.fit()`, with SIGTERM (a scheduler or `kill` stopping the search) taken like Ctrl-C:
    Ray Tune saves the search's state and returns, and the parent run ends KILLED."""
    INTERRUPTED.clear()
    if threading.current_thread() is not threading.main_thread():
        return tuner.fit()

    def on_sigterm(signum, frame):
        handler = signal.getsignal(signal.SIGINT)  # Ray Tune's own during fit: stop, save, return
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return tuner.fit()
    finally:
        signal.signal(signal.SIGTERM, previous)


def sort_leaderboard(rows: List[Dict[str, Any]], metric: str, mode: str) -> List[Dict[str, Any]]:
    """Best `metric` first (by `mode`); trials without a finite value of it after those with one;
    then infeasible trials (search.constraints); failed trials last. Ties keep the order the trials ran in."""
    sign = -1.0 if mode == "max" else 1.0
    return sorted(rows, key=lambda r: (r["status"] == "failed", r["status"] == "infeasible",
                                       not is_number(r.get(metric)),
                                       sign * float(r[metric]) if is_number(r.get(metric)) else 0.0))


def leaderboard_columns(second_metric: Optional[str]) -> List[str]:
    return LEADERBOARD_COLUMNS + ([second_metric, "pareto"] if second_metric else [])


def _write_csv(path: Path, header: List[str], rows: List[List[Any]]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _summarise(grid, spec, space, client, parent_id, exp_id, name, exp_dir, end_parent: bool = True) -> SearchResult:
    # the plots and tables are written to a scratch folder, logged to the parent run, then removed
    with tempfile.TemporaryDirectory(prefix="fer-search-") as scratch:
        return _summarise_in(Path(scratch), grid, spec, space, client, parent_id, exp_id, name, exp_dir, end_parent)


def _summarise_in(art_dir: Path, grid, spec, space, client, parent_id, exp_id, name, exp_dir,
                  end_parent: bool = True) -> SearchResult:
    from search_spaces import point_from_config

    from runners.search.plots import rebuild_study, write_plots
    from runners.search.tracking import RunWriter

    second = spec.second_metric
    columns = leaderboard_columns(second)
    uri = client.tracking_uri

    def mlf(fn, *args, **kwargs):  # every MLflow write of the summary: skipped while tracking is paused
        return guarded(uri, fn, *args, **kwargs)

    from search_spaces import POINT_KEY

    from runners.training.constraints import REASON_KEY, is_infeasible
    from runners.search.schedulers import fit_point, is_population, perturbed_dimensions

    # pbt/pb2: Tune's config may hold a perturbed value off its dimension's grid (PB2 draws any float in
    # the range); the point is the one the trial trained with (what best_point.yaml must hold)
    perturbed = list(perturbed_dimensions(space)) if is_population(spec) else []
    rows, failures, ended = [], {}, []
    for res in grid:  # the order the trials ran in
        trial_id = res.metrics.get("trial_id") if res.metrics else None
        point = fit_point(space, point_from_config(res.config or {}, space), perturbed)
        row: Dict[str, Any] = {"trial_id": trial_id or Path(res.path).name, "status": "finished"}
        if res.error is not None:
            row["status"] = "failed"
            failures[row["trial_id"]] = str(res.error).strip().splitlines()[-1][:300] if str(res.error).strip() else "error"
        elif is_infeasible(res.metrics):
            row["status"] = "infeasible"
            row["infeasible_reason"] = res.metrics.get(REASON_KEY)
        else:
            row["status"] = trial_status((res.metrics or {}).get("epoch"), trial_epochs(space, {POINT_KEY: point}))
        for c in LEADERBOARD_COLUMNS + ([second] if second else []):
            # an infeasible trial's metrics are stand-ins (runners.training.constraints): shown as none; its cost is real
            row[c] = (res.metrics or {}).get(c) if row["status"] != "infeasible" or c == second else None
        row["point"] = point
        rows.append(row)
        if trial_id:
            ended.append((trial_id, row["status"], failures.get(trial_id), res))
    # the child runs that tracking left open while it was paused (the store took no writes): a resumed
    # search completes them from what Tune kept; a search tracked throughout has none
    mlf(complete_trial_runs, client, exp_id, parent_id, name, ended, lambda cfg: point_from_config(cfg, space))
    notes: List[str] = []

    # Optuna's plots, from a study rebuilt out of the trials in the order they ran
    try:
        study, skipped = rebuild_study(rows, space, spec.metric, spec.mode, second)
        notes += skipped
        _, plot_notes = write_plots(study, art_dir / "plots", spec.metric, second)
        notes += plot_notes
        mlf(client.log_artifacts, parent_id, str(art_dir / "plots"), "plots")
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
    best = next((r for r in rows if r["status"] not in ("failed", "infeasible") and is_number(r.get(key))), None)
    best_path = None
    if best is not None:
        # beside the search's runs; with remote storage (s3://...) in a small folder of its own that
        # outlives the scratch one (the path is printed; the parent run has a copy too)
        best_path = Path(exp_dir if "://" not in exp_dir else tempfile.mkdtemp(prefix="fer-search-best-")) \
            / "best_point.yaml"
        best_path.write_text(yaml.safe_dump(best["point"], sort_keys=False))
        mlf(client.log_artifact, parent_id, str(best_path))
    _write_csv(art_dir / "leaderboard.csv", ["rank", "trial_id", "status", *columns, "point"],
               [[i, r["trial_id"], r["status"], *[r.get(c) for c in columns], json.dumps(r["point"])]
                for i, r in enumerate(rows, 1)])
    mlf(client.log_artifact, parent_id, str(art_dir / "leaderboard.csv"))
    if second:
        rank = {id(r): i for i, r in enumerate(rows, 1)}
        _write_csv(art_dir / "pareto_front.csv", ["rank", "trial_id", "status", key, second, "point"],
                   [[rank[id(r)], r["trial_id"], r["status"], r[key], r[second], json.dumps(r["point"])] for r in front])
        mlf(client.log_artifact, parent_id, str(art_dir / "pareto_front.csv"))

        def tag_front() -> None:
            writer = RunWriter(client)
            children = find_child_runs(client, exp_id, parent_id)
            for r in rows:
                run = children.get(r["trial_id"])
                if run is not None:
                    writer.tags(run.info.run_id, {TAG_PARETO: "true" if r.get("pareto") else "false"})
            client.set_tag(parent_id, "fer_automl.pareto_size", str(len(front)))

        mlf(tag_front)
    if best is not None:
        mlf(client.log_metric, parent_id, f"best_{key}", float(best[key]))
    mlf(client.set_tag, parent_id, "fer_automl.num_failed", str(len(failures)))
    num_infeasible = sum(r["status"] == "infeasible" for r in rows)
    if spec.constraints is not None:
        mlf(client.set_tag, parent_id, "fer_automl.num_infeasible", str(num_infeasible))
        mlf(client.log_metric, parent_id, "num_infeasible", float(num_infeasible))
    if notes:
        mlf(client.log_text, parent_id, "\n".join(notes) + "\n", "notes.txt")
    # ended only once everything above is logged; with tracking paused it stays RUNNING (--resume ends it);
    # a two-stage search ends it after its refit stage
    if end_parent:
        mlf(client.set_terminated, parent_id, "FINISHED")
    return SearchResult(name, exp_id, parent_id, exp_dir, rows, best["point"] if best else None, best_path,
                        len(failures), failures, metric=key, mode=spec.mode, second_metric=second,
                        pareto_front=front, notes=notes, tracking_paused=tracking_paused(uri),
                        num_infeasible=num_infeasible)


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
