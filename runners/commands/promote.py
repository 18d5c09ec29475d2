"""`fer-automl promote (--search NAME | --run RUN_ID)`: register a trial's model and move an alias to it."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from ..registry import DEFAULT_ALIAS, DEFAULT_METRIC, DEFAULT_MODEL_NAME

    p = sub.add_parser("promote", help="register the best trial's model in the MLflow registry and move an alias "
                                       "to it when it beats the current holder")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--search", help="search name: promote its best finished trial")
    which.add_argument("--run", dest="run_id", help="a trial's MLflow run id: promote that trial")
    p.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help=f"registered model (default {DEFAULT_MODEL_NAME})")
    p.add_argument("--alias", default=DEFAULT_ALIAS, help=f"alias to move (default {DEFAULT_ALIAS})")
    p.add_argument("--metric", default=DEFAULT_METRIC,
                   help=f"val_* or test_* metric to rank and compare by (default {DEFAULT_METRIC}; *loss*: lower wins)")
    p.add_argument("--force", action="store_true", help="move the alias even when the version does not beat the "
                                                        "holder (needs --reason)")
    p.add_argument("--reason", help="why --force: recorded as a tag on the version")
    p.add_argument("--ensemble", type=int, metavar="K", default=None,
                   help="register one model averaging the softmax of the search's top-K trials (the refit stage's "
                        "where the search has one; see runners/ensemble.py)")
    p.add_argument("--tta", default=None, metavar="{none,flip}",
                   help="test-time augmentation inside the registered model: flip averages each image with its "
                        "mirror (alone: the best trial with flip TTA)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.set_defaults(func=_promote)


def _promote(args: argparse.Namespace) -> int:
    import sys

    from ..registry import EXIT_REFUSED, PromoteError, promote

    if args.force and not (args.reason or "").strip():
        raise PromoteError("--force needs --reason TEXT (it is recorded on the version)")
    if args.ensemble is not None or args.tta is not None:
        from ..ensemble import promote_ensemble

        res = promote_ensemble(search=args.search, run_id=args.run_id, k=args.ensemble, tta=args.tta,
                               model_name=args.model_name, alias=args.alias, metric=args.metric, force=args.force,
                               reason=args.reason, tracking_uri=args.tracking_uri)
    else:
        res = promote(search=args.search, run_id=args.run_id, model_name=args.model_name, alias=args.alias,
                      metric=args.metric, force=args.force, reason=args.reason,
                      tracking_uri=args.tracking_uri)
    for line in res.messages:
        print(line, file=sys.stderr if line.startswith("refused") else sys.stdout)
    return EXIT_REFUSED if res.refused else 0
