"""What a warm start costs a search before its first trial (issue 11, item 3), measured in one run.

An earlier search of N trials is written into a fresh SQLite MLflow store the way a search records
it (a parent run with its metric params and space.yaml; per trial a child run with the point as
params, the status tag and E epochs of `val_balanced_accuracy`); points are drawn from the shipped
`quickstart` space, 3/4 of the trials finished, 1/4 stopped early, every 10th failed. Then, timed:

1. read: `load_warm_start` (find the search, read its child runs, each trial's metric history,
   fit each point to the space);
2. seed: the in-memory study with the N trials and Ray's OptunaSearch over it;
3. ask: the first point the seeded searcher suggests (TPE fitted on N trials) against a cold
   searcher's first (TPE's random start-up), median of 5.

    PYTHONPATH=. python benchmarks/warm_start.py [--trials 20 100] [--epochs 6]

Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def write_search(uri: str, name: str, n: int, epochs: int, space) -> None:
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    from runners.search.tracking import TAG_KIND, TAG_SEARCH, TAG_STATUS, TAG_TRIAL_ID, flatten
    from search_spaces import sample

    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment(name, artifact_location=str(Path(uri.removeprefix("sqlite:///")).parent / "art"))
    parent = client.create_run(exp, tags={TAG_KIND: "search", TAG_SEARCH: name})
    pid = parent.info.run_id
    client.log_batch(pid, params=[Param("metric", "val_balanced_accuracy"), Param("mode", "max"),
                                  Param("second_objective", "None")])
    client.log_text(pid, Path(space.path).read_text(), "space.yaml")
    rng = random.Random(0)
    for i, point in enumerate(sample(space, n, seed=0)):
        status = "failed" if i % 10 == 9 else "stopped_early" if i % 4 == 3 else "finished"
        run = client.create_run(exp, tags={TAG_KIND: "trial", TAG_SEARCH: name, TAG_STATUS: status,
                                           TAG_TRIAL_ID: f"t{i:03d}", "mlflow.parentRunId": pid})
        reported = epochs if status == "finished" else max(1, epochs // 3)
        ts = int(time.time() * 1000)
        client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in flatten(point).items()],
                         metrics=[Metric("val_balanced_accuracy", rng.uniform(0.14, 0.2) + 0.05 * e, ts, e)
                                  for e in range(1, reported + 1)],
                         tags=[RunTag("x", "y")])
        client.set_terminated(run.info.run_id, "FAILED" if status == "failed" else "FINISHED")
    client.set_terminated(pid, "FINISHED")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, nargs="+", default=[20, 100])
    ap.add_argument("--epochs", type=int, default=6)
    args = ap.parse_args()

    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from _machine import cpu_name
    from runners.search.warm_start import load_warm_start
    from search_spaces import SearchSpec, load_space, to_optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space("quickstart")
    spec = SearchSpec.model_validate({"dataset": {"format": "synthetic"}, "seed": 0})
    rows = []
    for n in args.trials:
        with tempfile.TemporaryDirectory(prefix="fer-bench-warm-") as d:
            uri = f"sqlite:///{d}/m.db"
            write_search(uri, "earlier", n, args.epochs, space)
            t0 = time.perf_counter()
            warm = load_warm_start(["earlier"], space, spec, uri)
            t_read = time.perf_counter() - t0

            def searcher(seeded: bool):
                sampler = optuna.samplers.TPESampler(seed=0)
                kw = warm.searcher_kwargs(space, ["max"], sampler) if seeded else {}
                return OptunaSearch(space=to_optuna(space), metric="val_balanced_accuracy", mode="max",
                                    sampler=sampler, **kw)

            t0 = time.perf_counter()
            searcher(True)
            t_seed = time.perf_counter() - t0
            asks = {}
            for seeded in (False, True):
                times = []
                for k in range(5):
                    s = searcher(seeded)
                    t0 = time.perf_counter()
                    s.suggest(f"first-{k}")
                    times.append(time.perf_counter() - t0)
                asks[seeded] = statistics.median(times)
            pruned = sum(1 for t in warm.trials if t.state == "PRUNED")
            rows.append((n, warm.used, pruned, warm.skipped, t_read, t_seed, asks[False], asks[True]))
    print(f"machine: {cpu_name()}; earlier search: quickstart points, {args.epochs} epochs of history per finished trial")
    print()
    print("| trials | used (pruned) | skipped | read + fit s | seed s | first ask, cold s | first ask, seeded s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n, used, pruned, skipped, t_read, t_seed, cold, hot in rows:
        print(f"| {n} | {used} ({pruned}) | {skipped} | {t_read:.2f} | {t_seed:.3f} | {cold:.3f} | {hot:.3f} |")


if __name__ == "__main__":
    main()
