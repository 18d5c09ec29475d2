"""A search's lifecycle: however it ends, it leaves no MLflow run RUNNING, loses no record, and its
exit code says how it ended."""
from __future__ import annotations

from pathlib import Path

from conftest import REPO


# --- artifacts of a SQLite store: beside its database ----------------------------------------------

def test_two_sqlite_stores_used_from_one_folder_keep_their_artifacts_apart(tmp_path, monkeypatch):
    import mlflow

    from runners.tracking import get_or_create_experiment

    monkeypatch.chdir(tmp_path)
    stores = [tmp_path / "a" / "mlflow.db", tmp_path / "b" / "team.db"]
    for db in stores:
        db.parent.mkdir()
        client = mlflow.MlflowClient(f"sqlite:///{db}")
        exp_id = get_or_create_experiment(client, "same name")
        assert get_or_create_experiment(client, "same name") == exp_id
        run = client.create_run(exp_id)
        client.log_text(run.info.run_id, str(db), "which.txt")
        where = Path(client.download_artifacts(run.info.run_id, "which.txt", str(tmp_path / "dl" / db.stem)))
        assert where.read_text() == str(db)
    for db in stores:
        logged = list((db.parent / f"{db.stem}-artifacts").rglob("which.txt"))
        assert [p.read_text() for p in logged] == [str(db)], logged
    assert not (tmp_path / "mlruns").exists()


def test_every_experiment_is_made_by_the_one_helper():
    """Every place that creates an experiment goes through tracking.get_or_create_experiment."""
    import re

    offenders = []
    for path in (REPO / "runners").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            creates = re.search(r"(?<!_)create_experiment\(", line) and "def " not in line
            by_name = re.search(r"set_experiment\((?!experiment_id=)", line)
            if (creates and path.name != "tracking.py") or by_name:
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, offenders
