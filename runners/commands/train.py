"""`fer-automl train --config POINT.yaml --format NAME [--data PATH]`: one trial, no Ray."""
from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one point of a space (no Ray, progress per epoch)")
    p.add_argument("--config", required=True, help="a point YAML (dimension: value), e.g. a search's best_point.yaml")
    p.add_argument("--space", default="unified", help="the space the point belongs to (file or shipped name)")
    p.add_argument("--format", default="synthetic", help="dataset reader (see `fer-automl data formats`)")
    p.add_argument("--data", default=None, help="dataset path (not for synthetic)")
    p.add_argument("--n", type=int, default=None, help="synthetic: number of images")
    p.add_argument("--out", default="fer-train", help="folder for checkpoints and artifacts")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when there is one)")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from search_spaces import load_space

    from ..trial import DataSpec, TrialFailed, run_trial

    path = Path(args.config)
    if not path.is_file():
        raise FileNotFoundError(f"--config {str(path)!r}: no such file")
    try:
        point = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not YAML ({exc})") from None
    space = load_space(args.space)
    cfg = space.validate(point, where=str(path))
    opts = {"n": args.n} if args.n and args.format == "synthetic" else {}
    if args.format == "synthetic":
        opts["size"] = max(cfg.data.image_size, 32)
    data = DataSpec(format=args.format, path=str(Path(args.data).resolve()) if args.data else None, options=opts)
    try:
        metrics = run_trial(cfg, data, out_dir=args.out, device=args.device,
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
