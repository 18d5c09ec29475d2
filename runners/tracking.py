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

import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
TAG_SEARCH = "fer_automl.search"
TAG_TRIAL_ID = "fer_automl.trial_id"
TAG_KIND = "fer_automl.kind"  # search | trial | evaluation
TAG_STATUS = "fer_automl.status"  # finished (ran its own epochs) | stopped_early (by the scheduler) | failed
TAG_FAILURE = "fer_automl.failure_reason"
TAG_PARETO = "fer_automl.pareto"  # true | false on the child runs of a multi-objective search
TAG_NODE_ID = "fer_automl.node_id"  # the Ray node that ran the trial (its latest attempt)
TAG_NODE_IP = "fer_automl.node_ip"
MAX_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch


def resolve_tracking_uri(uri: Optional[str]) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory.
    Relative SQLite/file paths are made absolute: Ray moves trials into their own directories."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    m = re.match(r"^sqlite:///(?!/)(.+)$", uri)
    if m:
        uri = "sqlite:///" + str(Path(m.group(1)).resolve())
    elif "://" not in uri:
        raise ValueError(f"tracking URI {uri!r}: expected sqlite:///PATH, http(s)://HOST:PORT, postgresql://..., "
                         "or databricks")
    return uri


def check_tracking_server(uri: str, timeout: float = 5.0) -> None:
    """Fail within seconds, before anything is written, when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            if r.status != 200:
                raise ValueError(f"tracking server {uri} answered /health with HTTP {r.status}")
    except (urllib.error.URLError, OSError) as exc:
        raise ValueError(f"tracking server {uri} is unreachable ({exc}); start one with mlflow/server.sh "
                         "or drop --tracking-uri to use sqlite:///mlflow.db") from None


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

    def metric(self, run_id: str, values: Dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.pending.setdefault(run_id, []).extend(Metric(k, v, ts, step) for k, v in values.items())

    def flush(self, run_id: Optional[str] = None) -> None:
        for rid in ([run_id] if run_id else list(self.pending)):
            items = self.pending.pop(rid, [])
            for i in range(0, len(items), MAX_BATCH):
                self.client.log_batch(rid, metrics=items[i:i + MAX_BATCH])

    def params(self, run_id: str, params: Dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 90):
            self.client.log_batch(run_id, params=items[i:i + 90])

    def tags(self, run_id: str, tags: Dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])


def get_or_create_experiment(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    return client.create_experiment(name)


def find_child_runs(client, experiment_id: str, parent_run_id: str) -> Dict[str, Any]:
    """trial id -> run, for the child runs a parent already has (resume must not duplicate them)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              max_results=5000)
    return {r.data.tags.get(TAG_TRIAL_ID): r for r in runs if r.data.tags.get(TAG_TRIAL_ID)}


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


def make_tracker(**kwargs):
    """Build the Tune callback (the class derives from ray.tune.Callback, imported lazily)."""
    base = _tune_callback_base()

    class MLflowTracker(base):  # type: ignore[misc, valid-type]
        def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, search_name: str,
                     point_of: Callable[[Dict[str, Any]], Dict[str, Any]],
                     epochs_of: Callable[[Dict[str, Any]], Optional[int]],
                     metric_names: Optional[List[str]] = None, flush_every_s: float = 5.0):
            self.tracking_uri = tracking_uri
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
            self._last_flush = time.time()

        # the client is made lazily: the callback object is pickled with the experiment state
        def __getstate__(self):
            state = dict(self.__dict__)
            state["_client"] = None
            state["_writer"] = None
            return state

        @property
        def writer(self) -> RunWriter:
            if self._writer is None:
                import mlflow

                self._client = mlflow.MlflowClient(self.tracking_uri)
                self._writer = RunWriter(self._client)
                existing = find_child_runs(self._client, self.experiment_id, self.parent_run_id)
                for tid, run in existing.items():
                    self.runs.setdefault(tid, run.info.run_id)
            return self._writer

        def _run_for(self, trial) -> str:
            w = self.writer
            tid = trial.trial_id
            if tid in self.runs:
                return self.runs[tid]
            point = self.point_of(trial.config)
            run = self._client.create_run(
                self.experiment_id, run_name=f"{self.search_name}/{tid}",
                tags={"mlflow.parentRunId": self.parent_run_id, TAG_SEARCH: self.search_name, TAG_TRIAL_ID: tid,
                      TAG_KIND: "trial", TAG_STATUS: "running"})
            self.runs[tid] = run.info.run_id
            w.params(run.info.run_id, flatten(point))
            return run.info.run_id

        def on_trial_start(self, iteration, trials, trial, **info):
            self._run_for(trial)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            rid = self._run_for(trial)
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
            rid = self._run_for(trial)
            self.writer.flush(rid)
            status = self._status(trial)
            self._artifacts(trial, rid)
            self.writer.tags(rid, {TAG_STATUS: status})
            self._client.set_terminated(rid, "FINISHED")

        def _status(self, trial) -> str:
            """`finished` when the trial ran its own epochs, `stopped_early` when the scheduler
            stopped it first."""
            epochs_of = self.__dict__.get("epochs_of")
            if epochs_of is not None:
                epochs = epochs_of(trial.config)
            else:  # a tracker restored from a search started before trials were judged by their own epochs
                epochs = self.__dict__.get("max_epochs")
            return trial_status(self.last_step.get(trial.trial_id, 0), epochs)

        def on_trial_error(self, iteration, trials, trial, **info):
            rid = self._run_for(trial)
            self.writer.flush(rid)
            reason = _failure_reason(trial)
            self.failures[trial.trial_id] = reason
            self.writer.tags(rid, {TAG_STATUS: "failed", TAG_FAILURE: reason})
            self._client.set_terminated(rid, "FAILED")

        def on_experiment_end(self, trials, **info):
            self.writer.flush()

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
