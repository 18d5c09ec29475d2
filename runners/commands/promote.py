"""`fer-automl promote (--search NAME | --run RUN_ID | --weights FILE.pt --preset NAME)`: register a trial's
(or an imported) model and move an alias to it."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from runners.registry.promote import DEFAULT_ALIAS, DEFAULT_METRIC, DEFAULT_MODEL_NAME

    p = sub.add_parser("promote", help="register the best trial's model in the MLflow registry and move an alias "
                                       "to it when it beats the current holder")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--search", help="search name: promote its best finished trial")
    which.add_argument("--run", dest="run_id", help="a trial's MLflow run id: promote that trial")
    which.add_argument("--weights", metavar="FILE.pt",
                       help="register an imported state dict of --preset (e.g. `models import-weights` output; "
                            "runners/registry/imported.py)")
    w = p.add_argument_group("with --weights")
    w.add_argument("--preset", help="the preset (see `models list`) or model-config file the state dict is for")
    w.add_argument("--image-size", type=int, default=None, help="input side S of the registered model (default 224)")
    w.add_argument("--num-classes", type=int, default=None,
                   help="classes of the model (default: import-weights' record, else the --classes count, else 7)")
    w.add_argument("--classes", default=None, metavar="A,B,C",
                   help="the model's output classes in order (default: the 7 basic expressions, canonical order)")
    w.add_argument("--layout", default=None, help="the official layout the file came from, where import-weights' "
                                                  "record (FILE.pt.import.json) is absent")
    p.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help=f"registered model (default {DEFAULT_MODEL_NAME})")
    p.add_argument("--alias", default=DEFAULT_ALIAS, help=f"alias to move (default {DEFAULT_ALIAS})")
    p.add_argument("--metric", default=DEFAULT_METRIC,
                   help=f"val_* or test_* metric to rank and compare by (default {DEFAULT_METRIC}; *loss*: lower wins)")
    p.add_argument("--force", action="store_true", help="move the alias even when the version does not beat the "
                                                        "holder (needs --reason)")
    p.add_argument("--reason", help="why --force: recorded as a tag on the version")
    p.add_argument("--ensemble", type=int, metavar="K", default=None,
                   help="register one model averaging the softmax of the search's top-K trials (the refit stage's "
                        "where the search has one; see runners/registry/ensemble.py)")
    p.add_argument("--tta", default=None, metavar="{none,flip}",
                   help="test-time augmentation inside the registered model: flip averages each image with its "
                        "mirror (alone: the best trial with flip TTA)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.set_defaults(func=_promote)


def _promote(args: argparse.Namespace) -> int:
    import sys

    from runners.errors import EXIT_REFUSED
    from runners.registry.promote import PromoteError, promote

    if args.force and not (args.reason or "").strip():
        raise PromoteError("--force needs --reason TEXT (it is recorded on the version)")
    res = _promote_weights(args)  # None unless --weights
    if res is None and (args.ensemble is not None or args.tta is not None):
        from runners.registry.ensemble import promote_ensemble

        res = promote_ensemble(search=args.search, run_id=args.run_id, k=args.ensemble, tta=args.tta,
                               model_name=args.model_name, alias=args.alias, metric=args.metric, force=args.force,
                               reason=args.reason, tracking_uri=args.tracking_uri)
    elif res is None:
        res = promote(search=args.search, run_id=args.run_id, model_name=args.model_name, alias=args.alias,
                      metric=args.metric, force=args.force, reason=args.reason,
                      tracking_uri=args.tracking_uri)
    for line in res.messages:
        print(line, file=sys.stderr if line.startswith("refused") else sys.stdout)
    return EXIT_REFUSED if res.refused else 0


def _promote_weights(args: argparse.Namespace):
    """promote --weights (runners/registry/imported.py); None for --search / --run, whose flags it refuses."""
    from runners.registry.promote import DEFAULT_METRIC, PromoteError

    own = [f for f, v in (("--preset", args.preset), ("--image-size", args.image_size),
                          ("--num-classes", args.num_classes), ("--classes", args.classes),
                          ("--layout", args.layout)) if v is not None]
    if args.weights is None:
        if own:
            raise PromoteError(f"{', '.join(own)}: only with --weights FILE.pt (a trial's model has its own)")
        return None
    other = [f for f, v in (("--ensemble", args.ensemble), ("--tta", args.tta)) if v is not None]
    if args.metric != DEFAULT_METRIC:
        other.append("--metric")
    if other:
        raise PromoteError(f"{', '.join(other)}: not with --weights (an imported model has no trials or figures)")
    if not args.preset:
        raise PromoteError("--weights needs --preset NAME: the preset (or model-config file) the state dict is for")
    from runners.registry.imported import promote_weights

    return promote_weights(weights=args.weights, preset=args.preset, image_size=args.image_size,
                           num_classes=args.num_classes, classes=args.classes, layout=args.layout,
                           model_name=args.model_name, alias=args.alias, force=args.force, reason=args.reason,
                           tracking_uri=args.tracking_uri)
