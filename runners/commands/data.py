"""`fer-automl data`: inspect a dataset, list the readers, write synthetic faces."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("data", help="datasets: inspect, formats, synth")
    sub = p.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    i = sub.add_parser("inspect", help="counts per class, pose and split, the fingerprint, a contact sheet")
    i.add_argument("path", nargs="?", default=None, help="dataset folder or file (none for --format synthetic)")
    i.add_argument("--format", required=True, help="reader name (see `fer-automl data formats`)")
    i.add_argument("--json", action="store_true", help="print the summary as JSON")
    i.add_argument("--sheet", type=Path, default=None, metavar="FILE.png",
                   help="write a contact sheet: a row of samples per class")
    i.add_argument("--image-size", type=int, default=None, help="resize every image (default: native)")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images instead of failing")
    i.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="reader option, e.g. -o num_classes=8 (repeatable)")
    i.set_defaults(func=_inspect)

    f = sub.add_parser("formats", help="list the dataset readers and their expected layouts")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=_formats)

    s = sub.add_parser("synth", help="write synthetic faces as an ImageFolder plus manifest.csv")
    s.add_argument("out", type=Path, help="output folder (new or empty)")
    s.add_argument("--n", type=int, default=2000, help="number of images")
    s.add_argument("--size", type=int, default=64, help="image side in pixels")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--subjects", type=int, default=None, help="number of identities (default: n/50, 10..200)")
    s.set_defaults(func=_synth)


def _parse_options(pairs: list[str]) -> dict:
    from fer_models.errors import UserError

    opts = {}
    for pair in pairs:
        if "=" not in pair or not pair.split("=", 1)[0].strip():
            raise UserError(f"--option {pair!r}: expected KEY=VALUE")
        k, v = pair.split("=", 1)
        try:
            opts[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            opts[k.strip()] = v
    return opts


def _inspect(args: argparse.Namespace) -> int:
    import sys

    from runners.data import load_dataset
    from runners.data.sheet import check_sheet_path
    from runners.data.stats import split_stats, split_warnings

    from fer_models.errors import UserError
    from runners.data import get_reader

    if not get_reader(args.format).needs_path and args.path is not None:
        raise UserError(f"dataset format {args.format!r} reads no files: drop the path {args.path!r}")
    if args.sheet is not None:
        check_sheet_path(args.sheet)  # before the dataset is read
    ds = load_dataset(args.format, args.path, image_size=args.image_size, seed=args.seed,
                      skip_corrupt=args.skip_corrupt, cache=False, **_parse_options(args.option))
    summary = ds.summary()
    stats = split_stats(ds, seed=args.seed)
    warnings = split_warnings(stats)
    summary["image_stats"] = stats
    summary["warnings"] = warnings
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    if args.sheet is not None:
        from runners.data.sheet import contact_sheet

        summary["sheet"] = str(contact_sheet(ds, args.sheet, seed=args.seed))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{ds.name}  ({ds.format}, {ds.source})")
    print(f"  images: {len(ds)}  size: {ds.image_size[0]}x{ds.image_size[1]}  subjects: {ds.num_subjects()}"
          f"  skipped: {ds.num_skipped}")
    header = f"  {'class':<10}" + "".join(f"{s:>8}" for s in ("train", "val", "test", "all"))
    print(header)
    per = {s: ds.class_counts(s) for s in ("train", "val", "test")}
    for c, total in ds.class_counts().items():
        print(f"  {c:<10}" + "".join(f"{per[s][c]:>8}" for s in ("train", "val", "test")) + f"{total:>8}")
    print(f"  {'all':<10}" + "".join(f"{v:>8}" for v in ds.split_counts().values()) + f"{len(ds):>8}")
    if ds.poses is not None:
        print("  poses: " + ", ".join(f"{p} {k}" for p, k in ds.pose_counts().items()))
    print(f"  fingerprint: {ds.fingerprint}")
    print(f"  image statistics per split (medians of up to {max(r['sampled'] for r in stats.values())} "
          "images each; sharpness = variance of the Laplacian; size as decoded):")
    print(f"  {'split':<8}{'sampled':>8}{'brightness':>12}{'contrast':>10}{'sharpness':>11}{'size':>11}")
    for split, r in stats.items():
        size = f"{r['height']:g}x{r['width']:g}"
        print(f"  {split:<8}{r['sampled']:>8}{r['brightness']:>12.1f}{r['contrast']:>10.1f}{r['sharpness']:>11.1f}"
              f"{size:>11}")
    for line in warnings:
        print(f"  warning: {line}")
    if args.sheet is not None:
        print(f"  contact sheet: {summary['sheet']}")
    return 0


def _formats(args: argparse.Namespace) -> int:
    from runners.data.readers import describe

    rows = describe()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['description']}")
        print(f"{'':<{width}}    layout: {r['layout']}")
        if r["options"]:
            print(f"{'':<{width}}    options: " + ", ".join(f"{k}={v!r}" for k, v in r["options"].items()))
    return 0


def _synth(args: argparse.Namespace) -> int:
    import time

    from runners.data.synth import write_imagefolder

    t = time.perf_counter()
    manifest = write_imagefolder(args.out, args.n, size=args.size, seed=args.seed, num_subjects=args.subjects)
    print(f"wrote {args.n} synthetic faces ({args.size}x{args.size}) to {args.out} in "
          f"{time.perf_counter() - t:.1f} s; manifest {manifest} "
          f"(read it with: fer-automl data inspect {manifest} --format csv)")
    return 0
