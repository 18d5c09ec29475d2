"""`fer-automl train --config POINT.yaml --format NAME [--data PATH]`: one trial, no Ray."""
from __future__ import annotations

import argparse
import json
import sys


def _count(least: int = 1):
    """An argparse type: a whole number >= `least` (argparse's message names the flag and the value)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value}: expected a whole number >= {least}")
        return value
    parse.__name__ = "count"  # argparse names the type in its message
    return parse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one point of a space (no Ray, progress per epoch)")
    p.add_argument("--config", required=True, help="a point YAML (dimension: value), e.g. a search's best_point.yaml")
    p.add_argument("--space", default="unified", help="the space the point belongs to (file or shipped name)")
    p.add_argument("--format", default="synthetic", help="dataset reader (see `fer-automl data formats`)")
    p.add_argument("--data", default=None, help="dataset path (not for synthetic)")
    p.add_argument("--n", type=_count(1), default=None, help="synthetic: number of images (>= 1)")
    p.add_argument("--out", default="fer-train", help="folder for checkpoints and artifacts")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when there is one)")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    p.set_defaults(func=_train)


def _check_args(args: argparse.Namespace) -> None:
    """What can be refused before anything is read or written: the flags and how they combine."""
    from pathlib import Path

    from fer_models.errors import UserError, UserPathError

    from runners.data import READERS

    if args.format not in READERS:
        raise UserError(f"--format {args.format!r}: unknown dataset format; valid: {', '.join(sorted(READERS))}")
    if args.format == "synthetic":
        if args.data is not None:
            raise UserError(f"--data {args.data!r}: format 'synthetic' reads no files "
                            "(give --format NAME for a dataset on disk)")
    else:
        if args.n is not None:
            raise UserError(f"--n {args.n}: applies to --format synthetic only (format is {args.format!r})")
        if args.data is None:
            raise UserError(f"--format {args.format!r} needs --data PATH (the dataset's folder or file)")
        if not Path(args.data).expanduser().exists():
            raise UserPathError(f"--data {args.data!r}: no such file or folder")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserPathError(f"--out {args.out!r}: exists and is not a folder")
    cfg = Path(args.config)
    if not cfg.exists():
        raise UserPathError(f"--config {args.config!r}: no such file")
    if not cfg.is_file():
        raise UserPathError(f"--config {args.config!r}: not a regular file (expected a point YAML)")


def _train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fer_models.errors import UserError, UserPathError
    from search_spaces import load_space
    from search_spaces.yamlio import load_yaml

    from runners.training.trial import DataSpec, TrialFailed, resolve_device, run_trial

    _check_args(args)
    path = Path(args.config)
    try:  # duplicate keys refused; syntax errors with line and column
        point = load_yaml(path, what="--config")
    except UserPathError:
        raise
    except UserError as exc:  # the content's fault: say which flag named the file
        raise UserError(f"--config {exc}") from None
    device = resolve_device(args.device)  # before the data is read: a missing GPU fails in a second
    space = load_space(args.space)
    cfg = space.validate(point, where=str(path))
    opts = {"n": args.n} if args.n is not None and args.format == "synthetic" else {}
    if args.format == "synthetic":
        opts["size"] = max(cfg.data.image_size, 32)
    data = DataSpec(format=args.format, path=str(Path(args.data).resolve()) if args.data else None, options=opts)
    try:
        metrics = run_trial(cfg, data, out_dir=args.out, device=str(device),
                            log=lambda s: print(s, file=sys.stderr, flush=True))
    except TrialFailed as exc:
        print(f"fer-automl: trial failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(metrics))
    else:
        print("final: " + "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
        print(f"artifacts: {Path(args.out).resolve()}")
    return 0
