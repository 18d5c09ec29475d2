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

EXIT_OK, EXIT_BUG, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


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
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
