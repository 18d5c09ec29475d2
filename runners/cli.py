"""`fer-automl` command line.

A command group is one module in `runners/commands/` with a `register(subparsers)` function,
plus one line in COMMAND_GROUPS below.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

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

# The exit codes of every command (README: "Exit codes and errors"), in one place.
EXIT_OK = 0
EXIT_BUG = 1               # anything but a UserError: the traceback is printed
EXIT_USAGE = 2             # a UserError: bad input, one message, nothing written
EXIT_REFUSED = 3           # promote: registered, but the alias did not move
EXIT_SOME_FAILED = 4       # done, but some items failed (a search's trials, predict's images)
EXIT_TRACKING_PAUSED = 5   # a search finished, but the MLflow store took no writes: records incomplete
EXIT_TRACKING_LOST = 7     # a search stopped: the tracking server stayed unreachable past --outage-timeout
EXIT_INTERRUPTED = 130     # Ctrl-C or SIGTERM
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader went away


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

    from .outage import TrackingLost

    # Only deliberate user errors exit 2 without a traceback; anything else is a bug and
    # propagates (Python prints the traceback, exit 1).
    try:
        rc = args.func(args)
    except UserError as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"fer-automl: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fer-automl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TrackingLost as exc:  # the tracking server stayed away past --outage-timeout (runners.outage)
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
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
