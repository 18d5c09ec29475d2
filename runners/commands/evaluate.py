"""`fer-automl evaluate --model URI --data PATH --format NAME [--split test]`."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path


# the same as runners.serving.evaluate's (not imported here: `fer-automl --help` stays light)
SPLIT_CHOICES = ("test", "val", "train", "all")
DEFAULT_EXPERIMENT = "fer-automl-evaluations"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a logged or registered model on a dataset split, logged to MLflow")
    p.add_argument("--model", required=True, metavar="URI",
                   help="MLflow model URI: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/model, a folder")
    p.add_argument("--format", required=True, help="dataset reader (see `fer-automl data formats`)")
    p.add_argument("--data", default=None, metavar="PATH", help="dataset folder or file (none for --format synthetic)")
    p.add_argument("--split", default="test", choices=SPLIT_CHOICES,
                   help="the reader's split (by subject, seeded by --seed) or all (default: test)")
    p.add_argument("--seed", type=int, default=0,
                   help="split seed (and synthetic data seed); the training's to get its test set (default 0)")
    p.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images instead of failing")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="reader option, e.g. -o scale=2 (repeatable)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help=f"experiment of the run (default {DEFAULT_EXPERIMENT})")
    p.add_argument("--detect-faces", action="store_true",
                   help="crop each image to its largest face first, as predict --detect-faces does (images read at "
                        "the set's native size); images without a face are counted and left out of the metrics")
    p.add_argument("--cascade", default=None, metavar="FILE.xml",
                   help="a Haar cascade file instead of the one OpenCV bundles (with --detect-faces)")
    p.add_argument("--output-dir", type=Path, default=None,
                   help="also keep the confusion matrix PNG and the JSON report in this folder")
    p.add_argument("--no-log", action="store_true", help="print only; log nothing to MLflow")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from fer_models.errors import UserError, UserPathError

    from runners.data import get_reader, load_dataset
    from runners.registry.ensemble import evaluate_members, member_metrics
    from runners.serving.evaluate import check_output_dir, evaluate_dataset, log_evaluation, resolve_model_ref, write_artifacts
    from runners.registry.packaging import load_fer_model
    from runners.serving.predict import FaceDetector
    from runners.registry.promote import require_existing_store
    from runners.search.tracking import check_tracking_server, resolve_tracking_uri, using_store
    from runners.commands.data import _parse_options

    # what can be checked in milliseconds first: the output folder, the face detector, the tracking server,
    # the format, the path, the options
    if args.output_dir is not None:
        check_output_dir(args.output_dir)
    detector = FaceDetector.from_flags(args.detect_faces, args.cascade)
    tracking = resolve_tracking_uri(args.tracking_uri)
    check_tracking_server(tracking)
    if args.model.startswith(("models:/", "runs:/")):
        require_existing_store(tracking, f"--model {args.model!r}")
    reader = get_reader(args.format)
    opts = _parse_options(args.option)
    unknown = set(opts) - set(reader.options)
    if unknown:
        raise UserError(f"dataset format {args.format!r} takes no option(s) {sorted(unknown)}; "
                        f"its options: {sorted(reader.options) or 'none'}")
    if reader.needs_path:
        if not args.data:
            raise UserError(f"dataset format {args.format!r} needs --data PATH ({reader.layout})")
        if not Path(args.data).expanduser().exists():
            raise UserPathError(f"--data {args.data!r} does not exist")
    elif args.data:
        raise UserError(f"dataset format {args.format!r} reads no files: drop --data {args.data!r}")

    with using_store(tracking):  # model loading reads MLflow's global URIs; put back afterwards
        ref = None
        if not args.no_log or args.model.startswith("models:/"):
            ref = resolve_model_ref(MlflowClient(tracking_uri=tracking, registry_uri=tracking), args.model)
        predictor = load_fer_model(args.model)
        # with face detection the images are read at their own size (as predict reads a file), then cropped and
        # resized; else at the model's input size (the decode-once cache)
        ds = load_dataset(args.format, args.data, image_size=None if detector else predictor.image_size,
                          seed=args.seed, skip_corrupt=args.skip_corrupt, **opts)
        ev = evaluate_dataset(predictor, ds, args.split, detector=detector)
        members = evaluate_members(predictor, ds, args.split, detector=detector)  # [] unless an ensemble
        logged = {}
        if args.output_dir is not None:
            write_artifacts(ev, args.output_dir)
        if not args.no_log:
            # MLflow prints "View run ... at: URL" for an HTTP server: keep stdout pure JSON with --json
            with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
                logged = log_evaluation(ev, ref, tracking_uri=tracking, experiment=args.experiment,
                                        params={"seed": args.seed, "format": args.format,
                                                "detect_faces": bool(detector),
                                                **{f"option.{k}": v for k, v in opts.items()}},
                                        extra_metrics=member_metrics(members, ev.split))
        if args.json:
            extra = {"ensemble_members": members} if members else {}
            print(json.dumps({**ev.to_json(), **extra,
                              "mlflow": {**logged, "tracking_uri": tracking} if logged else None,
                              "model_version": {"name": ref.name, "version": ref.version} if ref and ref.name else None},
                             indent=1))
            return 0
        _print_report(ev, ref, logged, tracking, args, members, (predictor.meta.get("ensemble") or {}).get("tta"))
        return 0


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _print_report(ev, ref, logged, tracking, args, members=(), tta=None) -> None:
    model = f"{ev.model_uri}" + (f"  ({ref.name} version {ref.version})" if ref and ref.name else "")
    if ev.lineage.get("imported"):  # promote --weights: say so beside the searched models' figures
        model += "  [imported]"
    print(f"model:   {model}")
    print(f"data:    {ev.dataset['name']} ({ev.dataset['source']}), split {ev.split}: "
          f"{ev.num_images} images evaluated, fingerprint {ev.dataset['fingerprint'][:16]}")
    print(f"lineage: {ev.lineage['note']}")
    m = ev.match
    print("classes: matched " + (", ".join(d if d == mc else f"{d}={mc}" for d, mc in m.matched) or "none"))
    if m.data_only:
        counts = ", ".join(f"{c} {ev.excluded.get(c, 0)}" for c in m.data_only)
        print(f"         the model does not know {', '.join(m.data_only)}: {ev.num_excluded} image(s) excluded "
              f"from every metric ({counts})")
    if m.model_only:
        print(f"         the data has no {', '.join(m.model_only)}: still predicted, and wrong when predicted")
    if ev.face_detection is not None:
        fd = ev.face_detection
        shown = ", ".join(fd["no_face"][:5]) + (", ..." if len(fd["no_face"]) > 5 else "")
        print(f"faces:   found in {fd['found']} of {fd['images']} images (largest face, {fd['margin']:.0%} margin)"
              + (f"; {ev.num_no_face} without a face are left out of every metric ({shown})" if ev.num_no_face else ""))
    print()
    print(f"{'metric':<20}{'value':>8}")
    for k in ("accuracy", "balanced_accuracy", "macro_f1"):
        print(f"{k:<20}{ev.metrics[k]:>8.4f}")
    if members:
        from runners.registry.ensemble import members_table

        print()
        print(f"members and ensemble on the same {ev.num_images} images:")
        for line in members_table(ev, members, tta):
            print("  " + line)
    print()
    print(f"{'class':<12}{'images':>8}{'recall':>9}{'precision':>11}{'f1':>8}")
    for c, row in ev.per_class.items():
        extra = "   (not in the data)" if c in m.model_only else ""
        print(f"{c:<12}{row['support']:>8}{_fmt(row['recall']):>9}{_fmt(row['precision']):>11}{_fmt(row['f1']):>8}{extra}")
    if ev.pose_accuracy:
        print()
        print(f"{'pose':<12}{'images':>8}{'accuracy':>10}")
        for pose, row in ev.pose_accuracy.items():
            print(f"{pose:<12}{row['images']:>8}{row['accuracy']:>10.4f}")
    print()
    print("confusion matrix (rows: true, columns: predicted): " + " ".join(ev.classes))
    for c, row in zip(ev.classes, ev.confusion):
        print(f"  {c:<10}" + " ".join(f"{int(v):>5}" for v in row))
    if args.output_dir is not None:
        print(f"report: {args.output_dir}/confusion_matrix.png, {args.output_dir}/evaluation.json")
    if logged:
        print(f"logged: run {logged['run_id']} (experiment {args.experiment}, {tracking})"
              + (f"; model version tag {logged['model_version_tag']} = {logged['run_id']}"
                 if logged["model_version_tag"] else ""))
