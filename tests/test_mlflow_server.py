"""mlflow/server.sh starts a real tracking server on loopback that takes runs."""
from __future__ import annotations

import pytest


@pytest.mark.slow
def test_server_script_serves_runs_on_loopback(mlflow_server):
    import mlflow

    client = mlflow.MlflowClient(mlflow_server.uri)
    exp = client.create_experiment("server-test")
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "val_accuracy", 0.5)
    client.log_text(run.info.run_id, "hello", "note.txt")
    assert client.get_run(run.info.run_id).data.metrics["val_accuracy"] == 0.5
    assert (mlflow_server.data_dir / "mlflow.db").is_file()
    assert list((mlflow_server.data_dir / "artifacts").rglob("note.txt"))
