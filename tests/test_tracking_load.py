"""benchmarks/tracking_load.py in a reduced form (issue 13, item 2): 2 concurrent searches x 2
trials x 2 epochs through the real tracking callback, with a reader listing runs meanwhile; nothing
is lost (every trial its one child run, FINISHED, every epoch its points, no run left RUNNING, no
tracking paused), on a SQLite file and on an MLflow server (mlflow/server.sh) on SQLite."""
from __future__ import annotations

import importlib.util

import pytest

from conftest import REPO


def load_bench():
    spec = importlib.util.spec_from_file_location("tracking_load", REPO / "benchmarks" / "tracking_load.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def check(row: dict) -> None:
    assert row["lost"] == [], row["lost"]
    assert row["points"] == 2 * 2 * 2 * (len(load_bench().REPORTED) + 2)
    assert row["writes"] >= 4 and row["write_p95_ms"] >= row["write_p50_ms"] > 0
    assert row["reader_errors"] == 0


def test_two_searches_on_a_sqlite_file_lose_nothing(tmp_path):
    bench = load_bench()
    check(bench.run_load(f"sqlite:///{tmp_path / 'mlflow.db'}", 2, trials=2, epochs=2, epoch_s=0.05, concurrent=2,
                         tmp=tmp_path, tag="file"))


@pytest.mark.slow
def test_two_searches_on_a_tracking_server_lose_nothing(mlflow_server, tmp_path):
    bench = load_bench()
    check(bench.run_load(mlflow_server.uri, 2, trials=2, epochs=2, epoch_s=0.05, concurrent=2, tmp=tmp_path,
                         tag=f"server{tmp_path.name}"))
