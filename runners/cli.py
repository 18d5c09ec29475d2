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


class UserError(Exception):
    """A problem with what the user gave (a file, a key, a value): printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fer-automl",
        description="Hyperparameter search / AutoML for facial expression recognition.")
    sub = parser.add_subparsers(dest="group", metavar="GROUP", required=True)
    for modpath in COMMAND_GROUPS.values():
        try:
            module = importlib.import_module(modpath)
        except ModuleNotFoundError as exc:
            if exc.name != modpath:
                raise
            continue        # a group listed here whose module has not landed on this branch
        module.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.parse_args([args.group, "--help"])
        return 2
    try:
        rc = args.func(args)
    except (UserError, ValueError, FileNotFoundError, NotADirectoryError, KeyError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"fer-automl: error: {msg}", file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
