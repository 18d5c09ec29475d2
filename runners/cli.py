"""`fer-automl` command line.

A command group is one module in `runners/commands/` with a `register(subparsers)` function,
plus one line in COMMAND_GROUPS below.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from runners.errors import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_NOT_ALLOWED, EXIT_TRACKING_LOST, EXIT_USAGE

COMMAND_GROUPS = {
    "models": "runners.commands.models",
    "space": "runners.commands.space",
    "train": "runners.commands.train",
    "search": "runners.commands.search",
    "data": "runners.commands.data",
    "promote": "runners.commands.promote",
    "predict": "runners.commands.predict",
    "evaluate": "runners.commands.evaluate",
}

__all__ = ["COMMAND_GROUPS", "build_parser", "main"]



def _stdout_reader_gone() -> bool:
    """True when stdout is a pipe whose reading end is closed (`fer-automl ... | head`)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no real file descriptor (captured output)
        return False


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush does not fail again."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def mlflow_refusal(exc: BaseException, tracking_uri: Optional[str] = None) -> Optional[str]:
    """One line for an MLflow server's refusal (basic auth: HTTP 401 not authenticated, 403 permission
    denied) found in `exc` or its causes, naming the server, the request refused and the user; None
    for any other error (which keeps its own handling)."""
    import os
    import re

    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # pragma: no cover - mlflow is a dependency
        return None
    seen, found = exc, None
    while seen is not None and found is None:
        if isinstance(seen, MlflowException):
            try:
                status = seen.get_http_status_code()
            except Exception:  # noqa: BLE001 - an error code MLflow cannot map is not a refusal
                status = None
            if status in (401, 403):
                found = (seen, status)
        seen = seen.__cause__ or seen.__context__
    if found is None:
        return None
    err, status = found
    server = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not server:
        import mlflow

        server = mlflow.get_tracking_uri()
    m = re.search(r"endpoint (\S+) failed", err.message)
    request = m.group(1) if m else "a request"
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if status == 401:
        who = f"the credentials of user '{user}'" if user else "a request without credentials"
        return (f"MLflow server {server} refused {request}: not authenticated (HTTP 401) with {who}; "
                "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user of that server")
    return (f"MLflow server {server} refused {request} for user '{user or '?'}': permission denied (HTTP 403); "
            "an admin of that server can grant EDIT (or MANAGE) on the experiment or registered model")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fer-automl",
        description="Hyperparameter search / AutoML for facial expression recognition.")
    sub = parser.add_subparsers(dest="group", metavar="GROUP", required=True)
    for modpath in COMMAND_GROUPS.values():
        # a group that fails to import is a broken install or a bug: fail loudly, never drop it
        importlib.import_module(modpath).register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.parse_args([args.group, "--help"])
        return 2
    # the one family of deliberate user errors; imported here, not at the top, so that --help and
    # argparse's usage errors do not wait for torch (fer_models imports it)
    from fer_models.errors import UserError

    from runners.search.outage import TrackingLost

    # Only deliberate user errors exit 2 without a traceback, an MLflow server's refusal (basic
    # auth: 401/403) exits 6 with one line, a tracking server lost past --outage-timeout exits 7;
    # anything else is a bug and propagates (Python prints the traceback, exit 1).
    try:
        rc = args.func(args)
    except UserError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"fer-automl: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fer-automl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TrackingLost as exc:  # the tracking server stayed away past --outage-timeout (runners.search.outage)
        for line in str(exc).splitlines():
            print(f"fer-automl: error: {line}", file=sys.stderr)
        return EXIT_TRACKING_LOST
    except BrokenPipeError:
        # the reader of our output went away (`space sample ... | head`): stop quietly, as a plain
        # SIGPIPE would; a broken pipe anywhere else (a socket) is a bug like any other error
        if not _stdout_reader_gone():
            raise
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # noqa: BLE001 - an MLflow server's 401/403: one line; anything else: re-raised
        line = mlflow_refusal(exc, getattr(args, "tracking_uri", None))
        if line is None:
            raise
        print(f"fer-automl: error: {line}", file=sys.stderr)
        return EXIT_NOT_ALLOWED
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
