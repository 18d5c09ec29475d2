"""Every MLflow call of a search, in one place.

One experiment per search name, one parent run per search, one child run per trial. All writes
happen on the Ray driver, in `MLflowTracker` (a Ray Tune callback), batched with `log_batch`:
the embedded SQLite store then never sees two writers, and trials on cluster nodes need no
MLflow access. What a trial leaves (plots, weights) reaches the driver through its Tune
checkpoint (`artifacts/` inside it).

Written as a custom callback rather than Ray's `MLflowLoggerCallback`: that one makes flat runs
(no parent), logs one call per metric and key, and cannot be resumed without duplicating runs.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

from fer_models.errors import UserError, UserPathError
from runners.search.outage import PENDING

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
TAG_SEARCH = "fer_automl.search"
TAG_TRIAL_ID = "fer_automl.trial_id"
TAG_KIND = "fer_automl.kind"  # search | trial | evaluation
TAG_STATUS = "fer_automl.status"  # finished (ran its own epochs) | stopped_early (by the scheduler) | failed
# | infeasible (broke a search.constraints limit: not trained, the run ends FINISHED; runners.training.constraints)
TAG_FAILURE = "fer_automl.failure_reason"
TAG_PARETO = "fer_automl.pareto"  # true | false on the child runs of a multi-objective search
TAG_NODE_ID = "fer_automl.node_id"  # the Ray node that ran the trial (its latest attempt)
TAG_NODE_IP = "fer_automl.node_ip"
MAX_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch


TRACKING_URI_SOURCES = "--tracking-uri, search.tracking_uri or $MLFLOW_TRACKING_URI"
# the schemes of MLflow's tracking stores (a database URI may name its driver: postgresql+psycopg2://)
TRACKING_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")


def resolve_tracking_uri(uri: Optional[str]) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory.
    Relative SQLite/file paths are made absolute: Ray moves trials into their own directories."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    m = re.match(r"^sqlite:///(?!/)(.+)$", uri)
    if m:
        uri = "sqlite:///" + str(Path(m.group(1)).resolve())
    elif "://" not in uri or uri.split("://", 1)[0].split("+", 1)[0].lower() not in TRACKING_SCHEMES:
        raise UserError(f"tracking URI {uri!r} ({TRACKING_URI_SOURCES}): expected sqlite:///PATH, "
                        "http(s)://HOST:PORT, postgresql://..., mysql://..., file:///PATH or databricks://...")
    return uri


@contextlib.contextmanager
def using_store(uri: str) -> Iterator[None]:
    """Point MLflow's process-global tracking and registry URIs (which model loading and the fluent
    API read, and which MLflow also copies into $MLFLOW_TRACKING_URI / $MLFLOW_REGISTRY_URI) at `uri`
    for the block, then put back what was there: a command run in-process (tests, a notebook) leaves
    no global MLflow state behind. MLflow has no public way to restore "not set", hence the module
    attributes."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env_keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved_uris = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    saved_env = {k: os.environ.get(k) for k in env_keys}
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        yield
    finally:
        mlflow.set_tracking_uri(saved_uris[0])
        registry_utils._registry_uri = saved_uris[1]
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Fail within seconds, before anything is written, when an HTTP tracking server does not answer
    or a SQLite store's file cannot be one (a folder, or a path under a file)."""
    db = sqlite_db_path(uri)
    if db is not None:
        if db.is_dir():
            raise UserPathError(f"tracking URI {uri} ({TRACKING_URI_SOURCES}): {db} is a folder, not a SQLite file")
        existing = db.parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise UserPathError(f"tracking URI {uri} ({TRACKING_URI_SOURCES}): {existing} is a file, not a folder: "
                                "the database cannot be made under it")
        return
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    from fer_models.errors import UserError

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            if r.status != 200:
                raise UserError(f"tracking server {uri} answered /health with HTTP {r.status}")
    except (urllib.error.URLError, OSError) as exc:
        raise UserError(f"tracking server {uri} is unreachable ({exc}); start one with mlflow/server.sh "
                        "or drop --tracking-uri to use sqlite:///mlflow.db") from None


def check_store_writable(uri: str) -> None:
    """Before a search writes anything: a SQLite store must take writes (an existing database is
    opened for appending, nothing written; a new one's folder gets a probe file, removed at once).
    Other stores are checked by their first write."""
    db = sqlite_db_path(uri)
    if db is None:
        return
    try:
        if db.exists():
            with open(db, "ab"):
                pass
        else:
            folder = db.parent
            while not folder.exists():
                folder = folder.parent
            probe = folder / f".fer-automl-write-probe-{os.getpid()}-{time.time_ns()}"
            probe.write_bytes(b"")
            probe.unlink()
    except OSError as exc:
        raise UserError(f"tracking URI {uri} ({TRACKING_URI_SOURCES}): the MLflow store is not writable "
                        f"({exc.strerror or exc}: {exc.filename or db})") from None


# --- a store that stops taking writes mid-search ------------------------------------------------
# A search must not die (nor print a traceback per write) because its MLflow store stopped taking
# writes (a SQLite file made read-only, a full disk, a tracking server gone): the first failed
# write prints one line and pauses tracking for the rest of the search (this process, this URI);
# the trials go on, and `--resume` later completes the records from the Tune results
# (`complete_trial_runs`).
_PAUSED: Dict[str, str] = {}  # tracking URI -> why tracking is paused


def _store_errors() -> tuple:
    import sqlite3

    from mlflow.exceptions import MlflowException

    types: List[type] = [MlflowException, sqlite3.Error, OSError]
    try:
        from sqlalchemy.exc import SQLAlchemyError

        types.append(SQLAlchemyError)
    except ImportError:  # pragma: no cover - mlflow brings sqlalchemy
        pass
    try:
        from requests import RequestException

        types.append(RequestException)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def _store_reason(exc: BaseException) -> str:
    """The store's own words, one line: '(sqlite3.OperationalError) attempt to write a readonly
    database [SQL: ...]' -> 'attempt to write a readonly database'."""
    seen = exc
    while seen.__cause__ is not None or seen.__context__ is not None:  # the innermost error says it best
        seen = seen.__cause__ or seen.__context__
    text = str(seen).strip() or str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0]
    line = re.sub(r"^\([\w.]+\)\s*", "", line)
    return line[:200]


def pause_tracking(uri: str, exc: BaseException) -> None:
    """Pause tracking to `uri` (first failure only prints)."""
    import sys

    if uri in _PAUSED:
        return
    _PAUSED[uri] = _store_reason(exc)
    print(f"fer-automl: MLflow store {uri} is not writable ({_PAUSED[uri]}): tracking paused, the search goes on; "
          "once the store takes writes again, rerun the same command with --resume to complete its MLflow records",
          file=sys.stderr, flush=True)


def tracking_paused(uri: str) -> Optional[str]:
    """Why tracking to `uri` is paused in this process, or None."""
    return _PAUSED.get(uri)


def unpause_tracking(uri: str) -> None:
    _PAUSED.pop(uri, None)


class _NoStoreTracebacks(logging.Filter):
    """MLflow's SQL store logs every database error with its traceback before raising it: the error
    is reported once, in one line, by `pause_tracking`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and record.exc_info)


_STORE_LOGGER = "mlflow.store.db.utils"


def guarded(uri: str, fn: Callable[..., Any], *args, **kwargs) -> Any:
    """`fn(*args, **kwargs)` unless tracking to `uri` is paused; a store error pauses it (returns None)."""
    if uri in _PAUSED:
        return None
    quiet = _NoStoreTracebacks()
    logging.getLogger(_STORE_LOGGER).addFilter(quiet)
    try:
        return fn(*args, **kwargs)
    except _store_errors() as exc:
        pause_tracking(uri, exc)
        return None
    finally:
        logging.getLogger(_STORE_LOGGER).removeFilter(quiet)


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, str]:
    out: Dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


def numeric_metrics(result: Dict[str, Any], names: Optional[List[str]] = None) -> Dict[str, float]:
    keep = {}
    for k, v in result.items():
        if names is not None and k not in names:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(float(v)):
            keep[k] = float(v)
    return keep


class RunWriter:
    """Batches metric writes per run and flushes them with one `log_batch` call."""

    def __init__(self, client):
        self.client = client
        self.pending: Dict[str, list] = {}
        self.latencies: List[float] = []  # seconds per metric log_batch call (benchmarks/tracking_load.py)

    def metric(self, run_id: str, values: Dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.pending.setdefault(run_id, []).extend(Metric(k, v, ts, step) for k, v in values.items())

    def flush(self, run_id: Optional[str] = None) -> None:
        for rid in ([run_id] if run_id else list(self.pending)):
            items = self.pending.pop(rid, [])
            for i in range(0, len(items), MAX_BATCH):
                t0 = time.perf_counter()
                self.client.log_batch(rid, metrics=items[i:i + MAX_BATCH])
                self.latencies.append(time.perf_counter() - t0)

    def params(self, run_id: str, params: Dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 90):
            self.client.log_batch(run_id, params=items[i:i + 90])

    def tags(self, run_id: str, tags: Dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])


def sqlite_db_path(uri: str) -> Optional[Path]:
    """The database file of a `sqlite:///PATH` tracking URI, else None."""
    m = re.match(r"^sqlite:///(.+)$", uri or "")
    return Path(m.group(1)).expanduser().resolve() if m else None


def default_artifact_location(tracking_uri: str, experiment: str) -> Optional[str]:
    """Where a new experiment of a SQLite store keeps its artifacts: beside the database, in
    `<db stem>-artifacts/<experiment>` (MLflow's own default is `./mlruns` of whatever folder the
    command runs in, which two stores used from one folder would share). None for other stores: a
    tracking server or a database server decides itself."""
    db = sqlite_db_path(tracking_uri)
    if db is None:
        return None
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", experiment).strip(".") or "experiment"
    if safe != experiment:  # two names that differ only in characters replaced above must not share a folder
        import hashlib

        safe += "-" + hashlib.sha256(experiment.encode()).hexdigest()[:8]
    return (db.parent / f"{db.stem}-artifacts" / safe).as_uri()


def get_or_create_experiment(client, name: str) -> str:
    """The id of experiment `name`, created if absent (restored if deleted). Every experiment
    fer-automl creates is made here: with a SQLite store its artifacts go beside the database
    (`default_artifact_location`). An experiment that exists keeps its artifact location: to choose
    another, create it first (`mlflow experiments create -n NAME -l LOCATION`)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=default_artifact_location(client.tracking_uri, name))


def find_child_runs(client, experiment_id: str, parent_run_id: str) -> Dict[str, Any]:
    """trial id -> run, for the child runs a parent already has (resume must not duplicate them)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              max_results=5000)
    return {r.data.tags.get(TAG_TRIAL_ID): r for r in runs if r.data.tags.get(TAG_TRIAL_ID)}


def complete_trial_runs(client, experiment_id: str, parent_run_id: str, search_name: str, trials: List[tuple],
                        point_of: Callable[[Dict[str, Any]], Dict[str, Any]]) -> List[str]:
    """Complete the child runs that tracking left open, or never made, while it was paused.

    `trials`: (trial id, status, failure reason or None, Tune `Result`) per trial that ended. A run
    already ended is left alone; one still RUNNING, or whose status tag is still `running` (ended
    KILLED by an interruption), or missing, gets its point, the metric history
    the trial reported (read back from Tune's storage: steps not logged yet), its artifacts, its
    status tags, and its end state. Returns the trial ids completed."""
    children = find_child_runs(client, experiment_id, parent_run_id)
    writer = RunWriter(client)
    completed = []
    for tid, status, failure, res in trials:
        run = children.get(tid)
        if run is not None and run.info.status != "RUNNING" and run.data.tags.get(TAG_STATUS) != "running":
            if run.data.tags.get(TAG_STATUS) != "infeasible":
                _fill_gaps(client, writer, run.info.run_id, res)
            continue
        if run is None:
            run = client.create_run(experiment_id, run_name=f"{search_name}/{tid}",
                                    tags={"mlflow.parentRunId": parent_run_id, TAG_SEARCH: search_name,
                                          TAG_TRIAL_ID: tid, TAG_KIND: "trial", TAG_STATUS: "running"})
        rid = run.info.run_id
        if not run.data.params:
            writer.params(rid, flatten(point_of(res.config or {})))
        _fill_gaps(client, writer, rid, res)
        if res.checkpoint is not None:
            with res.checkpoint.as_directory() as d:
                if (Path(d) / "artifacts").is_dir():
                    client.log_artifacts(rid, str(Path(d) / "artifacts"), "trial")
        writer.tags(rid, {TAG_STATUS: status, **({TAG_FAILURE: failure} if failure else {})})
        client.set_terminated(rid, "FAILED" if status == "failed" else "FINISHED")
        completed.append(tid)
    return completed


def _fill_gaps(client, writer: RunWriter, rid: str, res) -> None:
    """Log the epochs of the trial's Tune history (`res.metrics_dataframe`) that run `rid` lacks:
    those its tracker never wrote (tracking paused, or a tracking server that stayed away past the
    outage timeout: runners.search.outage). One point per epoch: a history that holds an epoch twice (a
    trial restored from its checkpoint reported it again) logs it once, its last report."""
    history = res.metrics_dataframe
    rows: Dict[int, Dict[str, Any]] = {}
    for row in ([] if history is None else history.to_dict("records")):
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items() if not k.startswith("config/")}
        rows[int(row.get("epoch", row.get("training_iteration", 0)) or 0)] = row
    if not rows:
        return
    logged = {m.step for m in client.get_metric_history(rid, "training_iteration")}
    for step, row in sorted(rows.items()):
        if step not in logged:
            writer.metric(rid, numeric_metrics(row), step)
    writer.flush(rid)


def trial_status(last_epoch: Optional[float], epochs: Optional[int]) -> str:
    """A trial that ended without an error: `finished` when it ran its own epochs (its
    `train.epochs`), `stopped_early` when it reported fewer (the scheduler stopped it, or the
    search's time budget ran out). A trial that failed is `failed`, whatever it reported."""
    if epochs is None:  # no epochs of its own to compare with
        return "finished" if last_epoch else "stopped_early"
    return "finished" if (last_epoch or 0) >= epochs else "stopped_early"


def _tune_callback_base():
    from ray.tune import Callback

    return Callback


# MLflow keeps a dataset's digest in a 36-character column: the first 32 hex characters of the
# content fingerprint (128 bits) stand for it there; the whole fingerprint is in the profile
DATASET_DIGEST_CHARS = 32


def dataset_input_fields(ds, path: Optional[str] = None) -> Dict[str, Any]:
    """What a run's dataset input says of a `FERDataset`: name, source, digest (its content
    fingerprint), and a profile (images, classes, images per split, the whole fingerprint)."""
    from collections import Counter

    splits = dict(sorted(Counter(str(x) for x in ds.splits).items()))
    return {"name": ds.name, "digest": ds.fingerprint[:DATASET_DIGEST_CHARS],
            "source_type": "local" if path else "code",
            "source": json.dumps({"uri": str(Path(path).resolve())} if path else {"reader": ds.source}),
            "profile": json.dumps({"num_images": len(ds), "classes": list(ds.classes), "splits": splits,
                                   "fingerprint": ds.fingerprint})}


def log_dataset_input(client, run_id: str, fields: Dict[str, Any], context: str = "training") -> None:
    """The run's dataset input (MLflow's runs table shows it in its Dataset column)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(name=fields["name"], digest=fields["digest"], source_type=fields["source_type"],
                      source=fields["source"], profile=fields.get("profile"))
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])])


def run_label(name_of: Optional[Callable[[Dict[str, Any]], str]], config: Dict[str, Any], trial_id: str) -> str:
    """A trial's run name from `name_of`, or its trial id when there is none or the config cannot be
    named: a point that does not validate (e.g. 9 patches cut `ceil` at 32 px) fails its own trial,
    which says why; naming its run must not end the whole search from inside a Tune callback."""
    if name_of is None:
        return trial_id
    try:
        return name_of(config)
    except Exception:  # noqa: BLE001 - see above
        return trial_id


def make_tracker(**kwargs):
    """Build the Tune callback (the class derives from ray.tune.Callback, imported lazily)."""
    base = _tune_callback_base()

    class MLflowTracker(base):  # type: ignore[misc, valid-type]
        def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, search_name: str,
                     point_of: Callable[[Dict[str, Any]], Dict[str, Any]],
                     epochs_of: Callable[[Dict[str, Any]], Optional[int]],
                     metric_names: Optional[List[str]] = None, flush_every_s: float = 5.0,
                     name_of: Optional[Callable[[Dict[str, Any]], str]] = None,
                     dataset: Optional[Dict[str, Any]] = None,
                     run_info: Optional[Callable[[Dict[str, Any]], tuple]] = None):
            self.tracking_uri = tracking_uri
            self.run_info = run_info  # a trial's config -> (tags, run-name suffix): stage, seed, fidelity
            self.name_of = name_of  # a trial's config -> what it is ("cbam 4p 2s dwa"), for its run name
            self.dataset = dataset  # `dataset_input_fields(ds)`: logged as each child run's dataset input
            self.experiment_id = experiment_id
            self.parent_run_id = parent_run_id
            self.search_name = search_name
            self.point_of = point_of
            self.epochs_of = epochs_of  # a trial's own train.epochs, from its config
            self.metric_names = metric_names
            self.flush_every_s = flush_every_s
            self.runs: Dict[str, str] = {}  # trial id -> run id
            self.last_step: Dict[str, int] = {}
            self.failures: Dict[str, str] = {}
            self.nodes: Dict[str, str] = {}  # trial id -> Ray node id last tagged
            self._client = None
            self._writer: Optional[RunWriter] = None
            self._journal = None
            self._last_flush = time.time()

        # the client is made lazily: the callback object is pickled with the experiment state
        def __getstate__(self):
            state = dict(self.__dict__)
            journal = state.get("_journal")
            # a run whose create is still buffered (runners.search.outage) is not kept: --resume finds or makes it
            state["runs"] = {t: r for t, r in ((t, journal.known(r) if journal else r) for t, r in self.runs.items())
                             if r and not r.startswith(PENDING)}
            state["_client"] = None
            state["_writer"] = None
            state["_journal"] = None
            return state

        @property
        def writer(self) -> RunWriter:
            if self._writer is None:
                import mlflow

                from runners.search.outage import BufferedClient, journal_for

                real = mlflow.MlflowClient(self.tracking_uri)
                existing = find_child_runs(real, self.experiment_id, self.parent_run_id)
                for tid, run in existing.items():
                    self.runs.setdefault(tid, run.info.run_id)
                # every write goes through the journal: kept in memory, in order, while the server is away
                self._journal = journal_for(self.tracking_uri, real)
                self._client = BufferedClient(real, self._journal, id_tag=TAG_TRIAL_ID)
                self._writer = RunWriter(self._client)
            return self._writer

        def on_step_begin(self, iteration, trials, **info):
            journal = self.__dict__.get("_journal")
            if journal is not None:  # retry what an unreachable server left buffered; stop past the timeout
                guarded(self.tracking_uri, journal.tick)

        def _run_for(self, trial) -> str:
            w = self.writer
            tid = trial.trial_id
            if tid in self.runs:
                return self.runs[tid]
            point = self.point_of(trial.config)
            name_of = self.__dict__.get("name_of")  # a tracker restored from an older search has none
            label = run_label(name_of, trial.config, tid)
            run_info = self.__dict__.get("run_info")  # runners.search.fidelity.run_info
            extra, suffix = run_info(trial.config) if run_info is not None else ({}, "")
            run = self._client.create_run(
                self.experiment_id, run_name=f"t{len(self.runs) + 1:02d} {label}{suffix}",
                tags={"mlflow.parentRunId": self.parent_run_id, TAG_SEARCH: self.search_name, TAG_TRIAL_ID: tid,
                      TAG_KIND: "trial", TAG_STATUS: "running", **extra})
            self.runs[tid] = run.info.run_id
            w.params(run.info.run_id, flatten(point))
            if self.__dict__.get("dataset"):
                log_dataset_input(self._client, run.info.run_id, self.dataset)
            return run.info.run_id

        # every callback writes through `guarded`: a store that stops taking writes pauses tracking
        # (one line) instead of raising into Ray Tune, which would end the search
        def on_trial_start(self, iteration, trials, trial, **info):
            guarded(self.tracking_uri, self._run_for, trial)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            guarded(self.tracking_uri, self._on_result, trial, result)

        def _on_result(self, trial, result) -> None:
            rid = self._run_for(trial)
            from runners.training.constraints import STATUS_INFEASIBLE, is_infeasible, run_fields

            if is_infeasible(result):  # search.constraints: the measured figures, none of the stand-in worst values
                metrics, tags = run_fields(result)
                self.__dict__.setdefault("infeasible", set()).add(trial.trial_id)
                self.writer.metric(rid, metrics, 0)
                self.writer.tags(rid, {TAG_STATUS: STATUS_INFEASIBLE, **tags})
                return
            step = int(result.get("epoch", result.get("training_iteration", 0)))
            self.last_step[trial.trial_id] = step
            self.writer.metric(rid, numeric_metrics(result, self.metric_names), step)
            node = result.get("node_id")
            nodes = self.__dict__.setdefault("nodes", {})  # a tracker restored from an older search has none
            if node and nodes.get(trial.trial_id) != node:
                nodes[trial.trial_id] = node
                self.writer.tags(rid, {TAG_NODE_ID: node, TAG_NODE_IP: result.get("node_ip", "")})
            if time.time() - self._last_flush > self.flush_every_s:
                self.writer.flush()
                self._last_flush = time.time()

        def _artifacts(self, trial, rid: str) -> None:
            ckpt = getattr(trial, "checkpoint", None)
            if ckpt is None:
                return
            try:
                with ckpt.as_directory() as d:
                    art = Path(d) / "artifacts"
                    if art.is_dir():
                        self._client.log_artifacts(rid, str(art), "trial")
            except Exception as exc:  # noqa: BLE001 - a missing artifact must not lose the run
                log.warning("trial %s: could not log artifacts: %s", trial.trial_id, exc)

        def on_trial_complete(self, iteration, trials, trial, **info):
            guarded(self.tracking_uri, self._on_complete, trial)

        def _on_complete(self, trial) -> None:
            rid = self._run_for(trial)
            self.writer.flush(rid)
            status = self._status(trial)
            self._artifacts(trial, rid)
            self.writer.tags(rid, {TAG_STATUS: status})
            self._client.set_terminated(rid, "FINISHED")

        def _status(self, trial) -> str:
            """`finished` when the trial ran its own epochs, `stopped_early` when the scheduler
            stopped it first, `infeasible` when it broke a constraint (and trained no epoch)."""
            if trial.trial_id in self.__dict__.get("infeasible", ()):
                return "infeasible"
            epochs_of = self.__dict__.get("epochs_of")
            if epochs_of is not None:
                epochs = epochs_of(trial.config)
            else:  # a tracker restored from a search started before trials were judged by their own epochs
                epochs = self.__dict__.get("max_epochs")
            return trial_status(self.last_step.get(trial.trial_id, 0), epochs)

        def on_trial_error(self, iteration, trials, trial, **info):
            guarded(self.tracking_uri, self._on_error, trial)

        def _on_error(self, trial) -> None:
            rid = self._run_for(trial)
            self.writer.flush(rid)
            reason = _failure_reason(trial)
            self.failures[trial.trial_id] = reason
            self.writer.tags(rid, {TAG_STATUS: "failed", TAG_FAILURE: reason})
            self._client.set_terminated(rid, "FAILED")

        def on_experiment_end(self, trials, **info):
            guarded(self.tracking_uri, lambda: self.writer.flush())

    return MLflowTracker(**kwargs)


def _failure_reason(trial) -> str:
    # Tune writes the error into the trial's local folder first (`trial.error_file`) and copies it
    # to the storage path later: `trial.get_error()` reads the storage copy, which may not be there
    # yet when this callback runs (seen: 'unknown error' for a trial whose traceback was logged)
    text = ""
    try:
        local = trial.error_file
        if local and os.path.isfile(local):
            text = Path(local).read_text(errors="replace")
        if not text.strip():
            text = trial.get_error() or ""
    except Exception:  # noqa: BLE001
        pass
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    # the last line of a traceback is "ExcType: message"
    for ln in reversed(lines):
        if ":" in ln and not ln.startswith(("File ", "^", "~")):
            return ln[:1000]
    return (lines[-1] if lines else "unknown error")[:1000]


def log_json_artifact(client, run_id: str, obj: Any, path: str) -> None:
    client.log_text(run_id, json.dumps(obj, indent=1, default=str), path)
