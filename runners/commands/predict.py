"""`fer-automl predict --model URI IMAGE... [--detect-faces] [--json]`."""
from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="predict the expression of image files with a logged or registered model")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format OpenCV or Pillow reads)")
    p.add_argument("--model", required=True, metavar="URI",
                   help="MLflow model URI: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN/model, a folder")
    p.add_argument("--detect-faces", action="store_true",
                   help="crop the largest face (OpenCV Haar cascade, 20%% margin) before predicting")
    p.add_argument("--cascade", default=None, metavar="FILE.xml",
                   help="a Haar cascade file instead of the one OpenCV bundles (with --detect-faces)")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per image")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.set_defaults(func=_predict)


def _predict(args: argparse.Namespace) -> int:
    from runners.serving.predict import FaceDetector, predict_files

    detector = FaceDetector.from_flags(args.detect_faces, args.cascade)
    predictor = _load(args.model, args.tracking_uri)
    results = predict_files(predictor, args.images, detector)
    if args.json:
        print(json.dumps([r.to_json(args.detect_faces) for r in results], indent=1))
    else:
        for r in results:
            if not r.ok:
                print(f"{r.path}\tERROR\t{r.error}")
                continue
            line = f"{r.path}\t{r.label}\t{r.probability:.6f}"
            if args.detect_faces:
                line += "\tface=" + ",".join(str(v) for v in r.face_box)
            print(line)
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"fer-automl: {len(failed)} of {len(results)} image(s) failed: "
              + "; ".join(f"{r.path}: {r.error}" for r in failed[:10]), file=sys.stderr)
        from runners.errors import EXIT_SOME_FAILED

        return EXIT_SOME_FAILED
    return 0


def _load(uri: str, tracking_uri):
    """The model, with models:/ URIs resolved against the tracking server (errors name the URI)."""
    from runners.registry.packaging import load_fer_model
    from runners.registry.promote import require_existing_store
    from runners.search.tracking import check_tracking_server, resolve_tracking_uri, using_store

    tracking = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("models:/", "runs:/")):
        check_tracking_server(tracking)
        require_existing_store(tracking, f"--model {uri!r}")
    with using_store(tracking):
        return load_fer_model(uri)
