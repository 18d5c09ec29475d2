"""Tracking under load (issue 13, item 2): N concurrent searches against one MLflow backend.

    PYTHONPATH=. nice -n 5 python benchmarks/tracking_load.py                      # 4 and 8 searches, 3 backends
    PYTHONPATH=. python benchmarks/tracking_load.py --searches 2 --trials 2 --epochs 2 --backends sqlite,server-sqlite

Each search is a process of its own that drives the project's REAL tracking callback
(`runners.search.tracking.make_tracker`, the Ray Tune callback `fer-automl search` uses, with its batched
`log_batch` writes) the way the search driver does: a parent run, then per trial
`on_trial_start`, one `on_trial_result` per epoch, `on_trial_complete`, with `on_step_begin`
between (Tune's loop), and `on_experiment_end`. The trials are stand-ins: each epoch sleeps
`--epoch-s` instead of training and reports the metrics a real trial reports. Real Ray is not
started: on this 2-core machine 8 Ray clusters (or one with 8 searches' driver loops) would measure
Ray start-up (seconds per trial), not the tracking store. A reader process meanwhile lists and
compares runs as the MLflow UI does (search_runs with a parent filter ordered by a metric, then the
metric history of the best runs).

Backends: `sqlite` (a SQLite file, no server: every search process writes it directly),
`server-sqlite` (mlflow/server.sh on a SQLite file) and `server-postgres` (mlflow/server.sh on a
PostgreSQL made by the project's mlflow/postgres.sh, as the README's team section does: a cluster
in a temporary folder, 127.0.0.1 only, its unix socket in that folder, run as `postgres` when this
runs as root; schema by server.sh's `mlflow db upgrade`; driver psycopg2-binary).

Measured per (backend, searches): metric points/s (every metric point of every search over the
wall time from the first search start to the last search end; the searches start together once
every process has imported what it needs), p50/p95 of the callback's batched
metric writes (`RunWriter.latencies`: one `log_batch` each), the reader's p50/p95 per listing; and
afterwards that nothing was lost: every trial has one child run, FINISHED, every epoch its point
of every metric, no run left RUNNING, no tracking paused.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
# what a trial of `fer-automl search` reports every epoch (runners.training.trial), as numbers
REPORTED = ("val_balanced_accuracy", "val_accuracy", "val_macro_f1", "val_loss", "val_objective", "train_loss",
            "images_per_second", "image_epochs", "best_val_balanced_accuracy", "best_epoch", "time_this_iter_s")


def percentile(values: List[float], q: float) -> Optional[float]:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


# --- one search (a process of its own) --------------------------------------------------------------

def run_one_search(uri: str, name: str, trials: int, epochs: int, epoch_s: float, concurrent: int,
                   gate: Path) -> Dict[str, Any]:
    import mlflow

    from runners.search.tracking import (TAG_KIND, TAG_SEARCH, get_or_create_experiment, guarded, make_tracker,
                                         tracking_paused)

    # imports done (seconds each on 2 cores): say so, and start when every search is ready
    (gate.parent / f"ready-{name}").write_text("")
    while not gate.exists():
        time.sleep(0.05)
    start = time.time()
    client = mlflow.MlflowClient(uri)
    exp_id = get_or_create_experiment(client, name)
    parent = client.create_run(exp_id, run_name=name, tags={TAG_KIND: "search", TAG_SEARCH: name})
    tracker = make_tracker(tracking_uri=uri, experiment_id=exp_id, parent_run_id=parent.info.run_id,
                           search_name=name, point_of=lambda cfg: cfg, epochs_of=lambda cfg: epochs)
    t0 = time.perf_counter()
    slept = 0.0
    all_trials = [SimpleNamespace(trial_id=f"{name}_{i:05d}", config={"lr": 0.001 * (i + 1), "attention": "se"},
                                  checkpoint=None, error_file=None) for i in range(trials)]
    it = 0
    for g in range(0, trials, concurrent):
        group = all_trials[g:g + concurrent]
        for t in group:
            tracker.on_trial_start(it, all_trials, t)
        for epoch in range(1, epochs + 1):
            time.sleep(epoch_s)
            slept += epoch_s
            for k, t in enumerate(group):
                it += 1
                tracker.on_step_begin(it, all_trials)
                result = {key: 0.5 + 0.01 * epoch + 0.001 * k for key in REPORTED}
                result.update(epoch=epoch, training_iteration=epoch, trial_id=t.trial_id)
                tracker.on_trial_result(it, all_trials, t, result)
        for t in group:
            tracker.on_trial_complete(it, all_trials, t)
    tracker.on_experiment_end(all_trials)
    guarded(uri, client.set_terminated, parent.info.run_id, "FINISHED")
    wall = time.perf_counter() - t0
    writer = tracker.__dict__.get("_writer")
    return {"name": name, "wall_s": wall, "start": start, "end": time.time(), "slept_s": slept, "latencies": writer.latencies if writer else [],
            "paused": tracking_paused(uri), "points": trials * epochs * (len(REPORTED) + 2)}


def reader(uri: str, stop_file: Path, prefix: str) -> Dict[str, Any]:
    """What a colleague's MLflow UI does meanwhile: list the searches' runs by a metric, open the best."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    lat, errors = [], 0
    while not stop_file.exists():
        t0 = time.perf_counter()
        try:
            exps = client.search_experiments(filter_string=f"name LIKE '{prefix}%'")
            for exp in exps:
                parents = client.search_runs([exp.experiment_id], "tags.`fer_automl.kind` = 'search'", max_results=1)
                if not parents:
                    continue
                runs = client.search_runs([exp.experiment_id],
                                          f"tags.mlflow.parentRunId = '{parents[0].info.run_id}'",
                                          order_by=["metrics.val_balanced_accuracy DESC"], max_results=50)
                for r in runs[:2]:
                    client.get_metric_history(r.info.run_id, "val_balanced_accuracy")
            lat.append(time.perf_counter() - t0)
        except Exception:  # noqa: BLE001 - counted: a reader that fails is a finding, not a crash
            errors += 1
        time.sleep(0.2)
    return {"latencies": lat, "errors": errors}


# --- afterwards: nothing lost ---------------------------------------------------------------------

def check_nothing_lost(uri: str, names: List[str], trials: int, epochs: int) -> List[str]:
    import mlflow

    client = mlflow.MlflowClient(uri)
    problems = []
    for name in names:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            problems.append(f"{name}: no experiment")
            continue
        runs = client.search_runs([exp.experiment_id], max_results=5000)
        running = [r.info.run_id for r in runs if r.info.status == "RUNNING"]
        if running:
            problems.append(f"{name}: {len(running)} run(s) left RUNNING")
        children = [r for r in runs if r.data.tags.get("fer_automl.kind") == "trial"]
        ids = Counter(r.data.tags.get("fer_automl.trial_id") for r in children)
        if len(ids) != trials:
            problems.append(f"{name}: {len(ids)} trials with a child run, expected {trials}")
        dup = [t for t, n in ids.items() if n > 1]
        if dup:
            problems.append(f"{name}: duplicate child runs for {dup}")
        for r in children:
            if r.info.status != "FINISHED":
                problems.append(f"{name}: {r.data.tags.get('fer_automl.trial_id')} ended {r.info.status}")
            for key in ("val_balanced_accuracy", "train_loss", "epoch"):
                steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, key))
                if steps != list(range(1, epochs + 1)):
                    problems.append(f"{name}: {r.data.tags.get('fer_automl.trial_id')} {key} steps {steps}")
    return problems


# --- backends -----------------------------------------------------------------------------------------

def wait_health(uri: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server {uri} did not answer /health in {timeout:g} s")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a process group this script started (never anything else)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_server(data_dir: Path, env_extra: Optional[Dict[str, str]], workers: int) -> tuple:
    """mlflow/server.sh on a free port; `env_extra`: BACKEND=... and what it needs (default: SQLite)."""
    port = free_port()
    env = {**os.environ, "DATA_DIR": str(data_dir), "PORT": str(port), "WORKERS": str(workers),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **(env_extra or {})}
    proc = subprocess.Popen(["bash", str(REPO / "mlflow" / "server.sh")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    wait_health(uri, proc)
    return uri, proc


class Postgres:
    """A throwaway PostgreSQL made by the project's own mlflow/postgres.sh (what the README's team
    section runs): a temporary folder, 127.0.0.1 only. `server_env`: what mlflow/server.sh needs to use
    it (BACKEND, PGPASSFILE); server.sh makes the schema with `mlflow db upgrade`."""

    def __init__(self, data_dir: Path):
        # the cluster's folder: short (its unix socket lives there) and, when we are root, reachable by the
        # unprivileged user postgres.sh runs PostgreSQL as (mkdtemp makes it mode 700)
        self.root = Path(tempfile.mkdtemp(prefix="fer-load-pg-", dir="/tmp" if os.path.isdir("/tmp") else None))
        self.root.chmod(0o755)
        self.env = {**os.environ, "DATA_DIR": str(data_dir), "PG_DATA": str(self.root / "pg"),
                    "PG_PORT": str(free_port())}
        res = subprocess.run(["bash", str(REPO / "mlflow" / "postgres.sh")], capture_output=True, text=True,
                             env=self.env, cwd="/")
        if res.returncode != 0:
            self.stop()
            raise RuntimeError(f"mlflow/postgres.sh: exit {res.returncode}\n{res.stderr[-2000:]}")
        exports = dict(line[len("export "):].split("=", 1) for line in res.stdout.splitlines()
                       if line.startswith("export "))
        exports = {k: v.strip("'") for k, v in exports.items()}
        self.server_env = {"BACKEND": exports["BACKEND"], "PGPASSFILE": exports["PGPASSFILE"]}

    def stop(self) -> None:
        subprocess.run(["bash", str(REPO / "mlflow" / "postgres.sh"), "stop"], capture_output=True, env=self.env,
                       cwd="/")
        shutil.rmtree(self.root, ignore_errors=True)


def run_load(uri: str, n: int, trials: int, epochs: int, epoch_s: float, concurrent: int, tmp: Path,
             tag: str) -> Dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("MLFLOW_TRACKING_URI", None)
    stop_file = tmp / f"stop-{tag}"
    prefix = f"load-{tag}-"
    names = [f"{prefix}{i}" for i in range(n)]
    import mlflow

    # the store exists before the searches start (a team's store does): N processes creating the
    # schema of a new SQLite file at once race on its migrations
    mlflow.MlflowClient(uri).search_experiments(max_results=1)
    me = [sys.executable, str(Path(__file__).resolve())]
    rd = subprocess.Popen(me + ["--reader", uri, str(stop_file), prefix], stdout=subprocess.PIPE, text=True,
                          env=env, start_new_session=True)
    gate = tmp / f"go-{tag}"
    procs = [subprocess.Popen(me + ["--worker", uri, name, str(trials), str(epochs), str(epoch_s), str(concurrent),
                                    str(gate)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                              start_new_session=True) for name in names]
    deadline = time.time() + 600
    while not all((tmp / f"ready-{name}").exists() for name in names):
        if any(p.poll() is not None for p in procs) or time.time() > deadline:
            break  # reported below
        time.sleep(0.1)
    gate.write_text("go")
    results = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"a search process failed ({p.returncode}):\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)  # all searches, start-up excluded
    stop_file.write_text("stop")
    rout, _ = rd.communicate(timeout=120)
    rres = json.loads(rout.strip().splitlines()[-1])
    lat = [x for r in results for x in r["latencies"]]
    problems = check_nothing_lost(uri, names, trials, epochs)
    problems += [f"{r['name']}: tracking paused ({r['paused']})" for r in results if r["paused"]]
    points = sum(r["points"] for r in results)
    return {"searches": n, "points": points, "wall_s": wall, "points_per_s": points / wall,
            "write_p50_ms": 1000 * (percentile(lat, 50) or 0), "write_p95_ms": 1000 * (percentile(lat, 95) or 0),
            "writes": len(lat), "reader_p50_ms": 1000 * (percentile(rres["latencies"], 50) or 0),
            "reader_p95_ms": 1000 * (percentile(rres["latencies"], 95) or 0), "reader_listings": len(rres["latencies"]),
            "reader_errors": rres["errors"], "lost": problems}


def bench(backends: List[str], searches: List[int], trials: int, epochs: int, epoch_s: float, concurrent: int,
          workers: int, repeats: int = 1) -> List[Dict[str, Any]]:
    rows = []
    for backend in backends:
        for n in searches:
            reps = []
            for rep in range(repeats):
                tmp = Path(tempfile.mkdtemp(prefix=f"fer-load-{backend}-"))
                server = pg = None
                try:
                    if backend == "sqlite":
                        uri = f"sqlite:///{tmp / 'mlflow.db'}"
                    elif backend == "server-sqlite":
                        uri, server = start_server(tmp / "server", None, workers)
                    elif backend == "server-postgres":
                        pg = Postgres(tmp / "server")
                        uri, server = start_server(tmp / "server", pg.server_env, workers)
                    else:
                        raise SystemExit(f"unknown backend {backend!r}: sqlite, server-sqlite, server-postgres")
                    reps.append(run_load(uri, n, trials, epochs, epoch_s, concurrent, tmp, f"{n}x{rep}"))
                finally:
                    if server is not None:
                        stop_group(server)
                    if pg is not None:
                        pg.stop()
                    shutil.rmtree(tmp, ignore_errors=True)
            row = {"backend": backend, "searches": n, "repeats": repeats}
            for k in ("points_per_s", "write_p50_ms", "write_p95_ms", "reader_p50_ms", "reader_p95_ms", "wall_s"):
                row[k] = statistics.median(r[k] for r in reps)
            for k in ("points", "writes", "reader_listings", "reader_errors"):
                row[k] = reps[0][k]
            row["lost"] = [p for r in reps for p in r["lost"]]
            rows.append(row)
            print(format_row(row), flush=True)
    return rows


HEADER = ("| backend | searches | points | wall (s) | points/s | write p50 (ms) | write p95 (ms) | "
          "reader p50 (ms) | reader p95 (ms) | nothing lost |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")


def format_row(r: Dict[str, Any]) -> str:
    lost = "yes" if not r["lost"] else f"NO ({len(r['lost'])}: {r['lost'][0]})"
    return (f"| {r['backend']} | {r['searches']} | {r['points']:,} | {r['wall_s']:.1f} | {r['points_per_s']:,.0f} | "
            f"{r['write_p50_ms']:.1f} | {r['write_p95_ms']:.1f} | {r['reader_p50_ms']:.0f} | "
            f"{r['reader_p95_ms']:.0f} | {lost} |")


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        uri, name, trials, epochs, epoch_s, concurrent, gate = argv[1:8]
        print(json.dumps(run_one_search(uri, name, int(trials), int(epochs), float(epoch_s), int(concurrent),
                                        Path(gate))))
        return 0
    if argv and argv[0] == "--reader":
        print(json.dumps(reader(argv[1], Path(argv[2]), argv[3])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--searches", default="4,8", help="concurrent searches, comma-separated (default 4,8)")
    ap.add_argument("--trials", type=int, default=6, help="trials per search")
    ap.add_argument("--epochs", type=int, default=10, help="epochs per trial (one report each)")
    ap.add_argument("--epoch-s", type=float, default=0.1, help="seconds a stand-in epoch sleeps")
    ap.add_argument("--concurrent", type=int, default=2, help="trials of a search running at once")
    ap.add_argument("--workers", type=int, default=2, help="mlflow server worker processes")
    ap.add_argument("--repeats", type=int, default=1, help="runs per cell (the table shows medians)")
    ap.add_argument("--backends", default="sqlite,server-sqlite,server-postgres")
    ap.add_argument("--json", help="write the rows here too")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from benchmarks._machine import cpu_name

    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"{a.trials} trials x {a.epochs} epochs per search, {a.concurrent} at a time, epoch {a.epoch_s:g} s, "
          f"{len(REPORTED) + 2} metrics per report; server workers {a.workers}", flush=True)
    print(HEADER, flush=True)
    rows = bench(a.backends.split(","), [int(x) for x in a.searches.split(",")], a.trials, a.epochs, a.epoch_s,
                 a.concurrent, a.workers, a.repeats)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(not r["lost"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
