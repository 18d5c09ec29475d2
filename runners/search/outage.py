"""A tracking server that goes away mid-search: the search keeps training and buffers its writes.

`MLflowTracker` (runners.search.tracking) writes through a `BufferedClient`: while the tracking server
answers, every write goes straight through (as before); once one fails because the server is
unreachable (connection refused or reset, a timeout, 5xx answers until MLflow's retries ran out),
that write and every later one are kept in memory, in order (`Journal`), and retried every
`RETRY_EVERY_S` seconds from the Tune loop. When the server is back they are flushed in order.

Retries are idempotent: a write that failed may have been applied (a timeout after the server
committed), so
- a metric keeps the timestamp it was made with: the same (run, key, step, timestamp, value) sent
  twice is one row (MLflow's SQL store drops exact duplicates);
- params are logged with the same value again (accepted), tags and end states are overwrites;
- a run is created once: a retried `create_run` first looks for the child run of its trial id.

Runs created while the server is away get a placeholder id (`pending:N`), replaced by the real one
when the create goes through.

If the server stays away longer than the search's outage timeout (`--outage-timeout`,
`search.outage_timeout_s`), the search is stopped as a Ctrl-C would stop it (Ray Tune saves its
state, the trials' checkpoints stay) and `run_search` raises `TrackingLost`: one message, exit
code 7 (runners.cli.EXIT_TRACKING_LOST), and `--resume` completes the records from Tune's results.
"""
from __future__ import annotations

import atexit
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional

PENDING = "pending:"  # the id of a run whose create is buffered (the tracker keeps none of these)

DEFAULT_OUTAGE_TIMEOUT_S = 300.0
RETRY_EVERY_S = 2.0  # how often the Tune loop retries the buffered writes while the server is away

# MLflow's HTTP client retries a refused connection 7 times with exponential backoff (minutes): the
# search's driver would hang in the Tune loop. While a search runs, an HTTP store gets these
# (unless set in the environment): the journal does the retrying.
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class TrackingLost(Exception):
    """The tracking server stayed unreachable longer than the search's outage timeout."""


_ADDED_ENV: List[str] = []  # the HTTP_LIMITS this process set (restore_http_limits takes them back)


def set_http_limits(uri: str) -> None:
    """Short HTTP retries while a search with tracking server `uri` runs (what the user set wins)."""
    if not uri.startswith(("http://", "https://")):
        return
    for k, v in HTTP_LIMITS.items():
        if k not in os.environ:
            os.environ[k] = v
            _ADDED_ENV.append(k)


def restore_http_limits() -> None:
    while _ADDED_ENV:
        os.environ.pop(_ADDED_ENV.pop(), None)


def is_unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the tracking server could not be reached (as opposed to refusing a write)."""
    import requests

    try:
        import urllib3.exceptions as u3
        u3_types: tuple = (u3.MaxRetryError, u3.NewConnectionError, u3.ProtocolError, u3.TimeoutError)
    except ImportError:  # pragma: no cover - requests brings urllib3
        u3_types = ()
    seen = exc
    depth = 0
    while seen is not None and depth < 10:
        if isinstance(seen, (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError,
                             ConnectionError, TimeoutError) + u3_types):
            return True
        text = str(seen)
        if "API request to" in text and ("Max retries exceeded" in text or "Connection refused" in text
                                          or "timeout" in text.lower() or "Connection aborted" in text):
            return True
        seen = seen.__cause__ or seen.__context__
        depth += 1
    return False


def resume_command() -> str:
    """The command this process was started with, plus --resume (what to run once the server is back)."""
    args = list(sys.argv[1:])
    if "--resume" not in args:
        args.append("--resume")
    return "fer-automl " + shlex.join(args)


# --- per tracking URI, in this process (like runners.search.tracking's _PAUSED) -----------------------------
_TIMEOUT: Dict[str, float] = {}  # tracking URI -> outage timeout (s) of the search under way
_JOURNALS: Dict[str, "Journal"] = {}  # tracking URI -> the journal of the search under way
_LOST: Dict[str, str] = {}  # tracking URI -> the message of TrackingLost, once the timeout ran out


def configure(uri: str, timeout_s: Optional[float]) -> None:
    """A search starts with `uri`: its outage timeout; nothing buffered, nothing lost."""
    _TIMEOUT[uri] = float(timeout_s if timeout_s is not None else DEFAULT_OUTAGE_TIMEOUT_S)
    set_http_limits(uri)
    _JOURNALS.pop(uri, None)
    _LOST.pop(uri, None)


def journal_for(uri: str, client) -> "Journal":
    """The one journal of the search under way with `uri` (its trackers share it: one order of writes)."""
    j = _JOURNALS.get(uri)
    if j is None:
        j = _JOURNALS[uri] = Journal(uri, client, _TIMEOUT.get(uri, DEFAULT_OUTAGE_TIMEOUT_S))
    return j


def unreachable_since(uri: str) -> Optional[float]:
    """When the tracking server of the search under way stopped answering (its writes are buffered), or None."""
    j = _JOURNALS.get(uri)
    return None if j is None else j.down_since


def lost(uri: str) -> Optional[str]:
    return _LOST.get(uri)


def lost_message(uri: str, waited: float, timeout: float) -> str:
    return (f"tracking server {uri} unreachable for {waited:.0f} s (outage timeout {timeout:g} s, "
            "--outage-timeout or search.outage_timeout_s): the search stopped; its trials' checkpoints are saved. "
            f"Once the server answers again, complete the search with:\n  {resume_command()}")


def finish(uri: str) -> None:
    """After Tune's loop: flush what is still buffered, waiting for the server up to the rest of
    the outage timeout; raise TrackingLost if it does not come back."""
    if uri in _LOST:
        raise TrackingLost(_LOST[uri])
    j = _JOURNALS.get(uri)
    if j is None:
        return
    while not j.drain():
        if j.timed_out():
            _LOST[uri] = lost_message(uri, j.outage_s(), j.timeout)
            raise TrackingLost(_LOST[uri])
        time.sleep(RETRY_EVERY_S)


class Journal:
    """The writes to one tracking server, in order; run straight through while it answers."""

    def __init__(self, uri: str, client, timeout: float):
        self.uri = uri
        self.client = client  # the real MlflowClient
        self.timeout = timeout
        self.ops: List[tuple] = []  # (description, fn(resolve) -> None), oldest first
        self.real: Dict[str, str] = {}  # placeholder -> run id
        self.down_since: Optional[float] = None
        self.last_try = 0.0
        self.buffered = 0  # writes kept during the current outage
        self._n = 0
        self._stopping = False

    # placeholders ---------------------------------------------------------------------------------
    def new_placeholder(self) -> str:
        self._n += 1
        return f"{PENDING}{self._n}"

    def resolve(self, run_id: str) -> str:
        if run_id.startswith(PENDING):
            if run_id not in self.real:  # an op queued before its run's create: cannot happen in order
                raise RuntimeError(f"run {run_id} used before it was created")
            return self.real[run_id]
        return run_id

    def known(self, run_id: str) -> Optional[str]:
        """The real id of `run_id` (itself if real), None while its create is buffered."""
        return self.real.get(run_id) if run_id.startswith(PENDING) else run_id

    # the queue ------------------------------------------------------------------------------------
    def submit(self, what: str, fn: Callable[[Callable[[str], str], bool], None]) -> None:
        """Run `fn(resolve, retry)` now if nothing is buffered, else keep it (in order)."""
        self.ops.append((what, fn, [False]))
        if len(self.ops) == 1 and self.down_since is None:
            self.drain()
        elif self.down_since is not None:
            self.buffered += 1

    def drain(self) -> bool:
        """Run the buffered writes in order; True when none is left. An unreachable server keeps the
        rest for later; any other error propagates (the tracker pauses tracking, as before)."""
        self.last_try = time.time()
        while self.ops:
            what, fn, tried = self.ops[0]
            try:
                fn(self.resolve, tried[0])
            except Exception as exc:  # noqa: BLE001 - sorted below
                tried[0] = True
                if not is_unreachable(exc):
                    self.ops.clear()
                    raise
                if self.down_since is None:
                    self.down_since = time.time()
                    self.buffered = len(self.ops)
                    print(f"fer-automl: tracking server {self.uri} unreachable: the search goes on, its MLflow "
                          f"writes are kept in memory (up to {self.timeout:g} s, --outage-timeout)",
                          file=sys.stderr, flush=True)
                return False
            self.ops.pop(0)
        if self.down_since is not None:
            print(f"fer-automl: tracking server {self.uri} is back after {time.time() - self.down_since:.0f} s: "
                  f"{self.buffered} buffered writes flushed in order", file=sys.stderr, flush=True)
            self.down_since = None
            self.buffered = 0
        return True

    def outage_s(self) -> float:
        return 0.0 if self.down_since is None else time.time() - self.down_since

    def timed_out(self) -> bool:
        return self.down_since is not None and self.outage_s() > self.timeout

    def tick(self) -> None:
        """From the Tune loop: retry the buffered writes now and then; past the outage timeout, stop
        the search as Ctrl-C would (Tune saves its state and returns), once."""
        if not self.ops or time.time() - self.last_try < RETRY_EVERY_S:
            return
        if self.drain() or not self.timed_out() or self._stopping:
            return
        self._stopping = True
        _LOST[self.uri] = lost_message(self.uri, self.outage_s(), self.timeout)
        if threading.current_thread() is threading.main_thread():
            handler = signal.getsignal(signal.SIGINT)  # Ray Tune's own during fit (wrapped by InterruptWatch)
            if callable(handler):
                handler(signal.SIGINT, None)
                return
        raise KeyboardInterrupt


_COPIES: List[str] = []  # artifact folders copied while the server was away


class BufferedClient:
    """The writes `MLflowTracker` makes, through a `Journal`; anything else goes to the real client."""

    def __init__(self, client, journal: Journal, id_tag: str = ""):
        self._client = client
        self.journal = journal
        self.id_tag = id_tag  # the tag naming a run's trial: a retried create looks for the run by it

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def create_run(self, experiment_id: str, run_name: str, tags: Dict[str, str]):
        TAG_TRIAL_ID = self.id_tag
        ph = self.journal.new_placeholder()
        client = self._client

        def create(resolve, retry: bool) -> None:
            tags_now = {k: (resolve(v) if k == "mlflow.parentRunId" else v) for k, v in tags.items()}
            if retry and tags.get(TAG_TRIAL_ID):  # the failed try may have made it
                found = client.search_runs(
                    [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{tags_now.get('mlflow.parentRunId')}' "
                                                   f"and tags.`{TAG_TRIAL_ID}` = '{tags[TAG_TRIAL_ID]}'", max_results=1)
                if found:
                    self.journal.real[ph] = found[0].info.run_id
                    return
            self.journal.real[ph] = client.create_run(experiment_id, run_name=run_name, tags=tags_now).info.run_id

        self.journal.submit(f"create run {run_name}", create)
        run_id = self.journal.real.get(ph, ph)
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id))

    def log_batch(self, run_id: str, metrics=(), params=(), tags=()) -> None:
        metrics, params, tags = list(metrics), list(params), list(tags)
        self.journal.submit("log_batch", lambda resolve, retry: self._client.log_batch(
            resolve(run_id), metrics=metrics, params=params, tags=tags))

    def log_inputs(self, run_id: str, datasets=None) -> None:
        self.journal.submit("log_inputs", lambda resolve, retry: self._client.log_inputs(resolve(run_id),
                                                                                         datasets=datasets))

    def set_terminated(self, run_id: str, status: str = "FINISHED") -> None:
        self.journal.submit("set_terminated", lambda resolve, retry: self._client.set_terminated(resolve(run_id),
                                                                                                 status))

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: Optional[str] = None) -> None:
        if self.journal.ops or self.journal.down_since is not None:
            # the folder is in a checkpoint Tune may delete before the server is back: keep a copy
            copy = tempfile.mkdtemp(prefix="fer-outage-artifacts-")
            if not _COPIES:  # copies never flushed (the search stopped: TrackingLost) go when the process ends
                atexit.register(lambda: [shutil.rmtree(c, ignore_errors=True) for c in _COPIES])
            _COPIES.append(copy)
            shutil.copytree(local_dir, copy, dirs_exist_ok=True)
            local_dir = copy

        def log(resolve, retry: bool) -> None:
            self._client.log_artifacts(resolve(run_id), local_dir, artifact_path)
            if os.path.basename(local_dir).startswith("fer-outage-artifacts-"):
                shutil.rmtree(local_dir, ignore_errors=True)

        self.journal.submit("log_artifacts", log)
