"""`fer-automl search SPEC.yaml`: a search over a space file's dimensions, run as its `search:` section says."""
from __future__ import annotations

import argparse

from runners.errors import EXIT_SOME_FAILED, EXIT_TRACKING_PAUSED


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="run a search (Ray Tune + Optuna, tracked in MLflow)")
    p.add_argument("spec", help="a space file with a `search:` section, or a shipped name (quickstart, unified)")
    p.add_argument("--name", help="search name (MLflow experiment and Ray run)")
    p.add_argument("--data", help="dataset folder or file to train on (replaces search.dataset.path; a synthetic "
                                  "space needs --format too)")
    p.add_argument("--format", help="reader of --data (`fer-automl data formats`); another format than the space's "
                                    "replaces its dataset, keeping image_size")
    p.add_argument("--num-samples", type=int, help="number of trials (overrides search.num_samples)")
    p.add_argument("--skip-corrupt", action="store_true",
                   help="skip unreadable images (counted in the parent run's dataset.num_skipped) instead of failing")
    p.add_argument("--storage-path", help="Ray Tune storage (local folder, NFS or s3://...)")
    p.add_argument("--address", help="Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: a local Ray)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted search of the same name")
    p.add_argument("--outage-timeout", type=float, metavar="SECONDS",
                   help="how long the search waits for an unreachable tracking server, keeping its MLflow writes "
                        "in memory, before it stops with exit code 7 (default 300; replaces "
                        "search.outage_timeout_s)")
    p.add_argument("--warm-start", action="append", metavar="SEARCH",
                   help="seed the tpe sampler with an earlier search's trials read from MLflow: NAME (this store) "
                        "or URI#NAME (another store); may be given more than once (replaces search.warm_start)")
    p.set_defaults(func=_search)


def _search(args: argparse.Namespace) -> int:
    from runners.search.driver import format_leaderboard, format_pareto, run_search

    res = run_search(args.spec, name=args.name, data=args.data, format=args.format, num_samples=args.num_samples,
                     storage_path=args.storage_path, address=args.address, tracking_uri=args.tracking_uri,
                     resume=args.resume, skip_corrupt=args.skip_corrupt, warm_start=args.warm_start,
                     outage_timeout=args.outage_timeout)
    print()
    n_refit = sum(len(r["seeds"]) for r in res.refit)
    print(f"search {res.name}: {len(res.leaderboard)} trials" + (f" + {n_refit} refit trials" if n_refit else "")
          + f", {res.num_failed} failed"
          + (f", {res.num_infeasible} infeasible (broke search.constraints: not trained)" if res.num_infeasible else ""))
    for row in res.leaderboard:
        if row["status"] == "infeasible":
            print(f"  infeasible {row['trial_id']}: {row.get('infeasible_reason')}")
    for tid, why in res.failures.items():
        print(f"  failed {tid}: {why}")
    print(format_leaderboard(res.leaderboard, res.metric, second_metric=res.second_metric))
    if res.second_metric:
        print()
        print(f"Pareto front ({len(res.pareto_front)} trials; {res.metric} {res.mode}, {res.second_metric} min; "
              "pareto_front.csv on the parent run):")
        print(format_pareto(res.pareto_front, res.metric, res.second_metric))
    if res.refit:
        from runners.search.fidelity import format_refit_leaderboard

        print()
        print(f"refit stage ({len(res.refit)} configurations at full fidelity, mean ± std over seeds; "
              "refit_leaderboard.csv on the parent run):")
        print(format_refit_leaderboard(res.refit, res.metric))
    for note in res.notes:
        print(f"note: {note}")
    if res.best_point_path:
        print(f"best point: {res.best_point_path}")
    print(f"MLflow: experiment {res.name!r}, parent run {res.parent_run_id}. Compare the runs with `mlflow ui` "
          "(in this folder for the default sqlite:///mlflow.db), then open http://127.0.0.1:5000")
    return search_exit_code(res)




def search_exit_code(res) -> int:
    """What `fer-automl search` exits with after a search ran to its end (runners.cli's codes): 5 when
    the MLflow store took no writes, 4 when trials failed for good (the leaderboard printed and
    logged), else 0."""
    import sys

    if res.tracking_paused:
        print(f"fer-automl: search {res.name} finished, but its MLflow records are incomplete (the store took no "
              f"writes: {res.tracking_paused}); rerun the same command with --resume once it does", file=sys.stderr)
        return EXIT_TRACKING_PAUSED
    if res.num_failed:
        total = len(res.leaderboard) + sum(len(r["seeds"]) for r in res.refit)
        print(f"fer-automl: search {res.name} finished, but {res.num_failed} of {total} trials failed "
              "(their reasons are above and on their MLflow runs)", file=sys.stderr)
        return EXIT_SOME_FAILED
    return 0
