"""`fer-automl space show | sample | check FILE` (FILE: a space YAML, or `unified` / `quickstart`)."""
from __future__ import annotations

import argparse
import json


MAX_SAMPLES = 100_000  # points printed by `space sample`


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("space", help="search spaces: show, sample, check")
    ssub = p.add_subparsers(dest="space_cmd", metavar="CMD", required=True)
    show = ssub.add_parser("show", help="the dimensions, their conditions and the number of distinct architectures")
    show.add_argument("file", help="space YAML file, or a shipped space: unified, quickstart")
    show.set_defaults(func=_show)
    smp = ssub.add_parser("sample", help="N valid points, the same for the same seed")
    smp.add_argument("file", help="space YAML file, or a shipped space: unified, quickstart")
    smp.add_argument("-n", type=int, default=5, help=f"number of points, 1..{MAX_SAMPLES} (default 5)")
    smp.add_argument("--seed", type=int, default=0, help="random seed, >= 0 (default 0)")
    smp.add_argument("--json", action="store_true", help="print a JSON list of {dimension: value}")
    smp.set_defaults(func=_sample)
    chk = ssub.add_parser("check", help="validate the file and every preset; exit 0, or 2 with the errors")
    chk.add_argument("file", help="space YAML file, or a shipped space: unified, quickstart")
    chk.set_defaults(func=_check)


def _fmt(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _show(args: argparse.Namespace) -> int:
    from search_spaces import architecture_count, load_space

    space = load_space(args.file)
    print(f"{space.where}: {len(space.dimensions)} dimensions, {len(space.constants)} constants, "
          f"{len(space.presets)} presets")
    if space.raw.description:
        print(f"  {space.raw.description}")
    rows = space.describe_rows()
    w0 = max(len(r[0]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    print("\ndimensions (in decision order):")
    for name, desc, target, cond in rows:
        print(f"  {name:<{w0}}  {target:<{w2}}  {desc}" + (f"   [when {cond}]" if cond else ""))
    if space.constants:
        print("\nconstants:")
        for k, v in space.constants.items():
            print(f"  {k} = {_fmt(v)}")
    if space.presets:
        print("\npresets: " + ", ".join(space.presets))
    n = architecture_count(space)
    print(f"\ndistinct architectures: {n:,} (model-part configurations over the choice dimensions)")
    if space.search is not None:
        s = space.search
        data = f"{s.dataset.format}" + (f" {s.dataset.path}" if s.dataset and s.dataset.path else "") if s.dataset else "-"
        print(f"\nsearch: {s.algorithm}, scheduler {s.scheduler.type}, {s.num_samples} samples, "
              f"metric {s.metric} ({s.mode})" + (f" + {s.second_objective} (min)" if s.second_objective else "")
              + f", data {data}, per trial cpu {s.resources.cpu:g} gpu {s.resources.gpu:g}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from search_spaces import load_space, sample

    from fer_models.errors import UserError

    if not 1 <= args.n <= MAX_SAMPLES:
        raise UserError(f"-n must be in 1..{MAX_SAMPLES}, got {args.n}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed} (a negative seed would repeat the points of "
                        f"its absolute value)")
    space = load_space(args.file)
    points = sample(space, args.n, seed=args.seed)
    for i, p in enumerate(points):  # never hand out a point that does not validate
        space.validate(p, where=f"sample[{i}]")
    if args.json:
        print(json.dumps(points))
        return 0
    for i, p in enumerate(points):
        print(f"[{i}] " + ", ".join(f"{k}={_fmt(v)}" for k, v in p.items()))
    return 0


def _check(args: argparse.Namespace) -> int:
    from search_spaces import SpaceError, load_space

    space = load_space(args.file)
    errors = []
    for name, point in space.presets.items():
        try:
            space.validate(point, where=f"presets.{name}")
        except SpaceError as exc:
            errors.append(str(exc))
    if errors:  # a fault of the file like any other: exit 2, every error one line
        raise SpaceError("\n".join(errors + [f"{space.where}: {len(errors)} of {len(space.presets)} presets invalid"]))
    print(f"{space.where}: OK ({len(space.dimensions)} dimensions, {len(space.presets)} presets valid"
          + (", search section valid" if space.search is not None else "") + ")")
    return 0
