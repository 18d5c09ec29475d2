"""Fidelity and refit (issue 11, item 1): the stratified train subset, and a two-stage search end to
end on a real local Ray and a SQLite MLflow store (search stage at half the training data and a
smaller input, refit of the top 2 configurations at full fidelity with 2 seeds each), promote
taking the refit winner, and --resume of a finished two-stage search rerunning nothing."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from _space_helpers import search_test_space
from conftest import search_runs
from runners.cli import main
from runners.training.trial import DataSpec

N_IMAGES = 140


def _synthetic():
    return DataSpec(format="synthetic", options={"n": N_IMAGES, "size": 32}).load(32)


def test_the_train_subset_is_stratified_seeded_and_leaves_val_and_test_alone():
    from runners.search.fidelity import train_subset

    ds = _synthetic()
    sub = train_subset(ds, 0.25, seed=0)
    full = ds.class_counts("train")
    part = sub.class_counts("train")
    assert set(part) == set(full) and all(v > 0 for v in part.values())  # every class kept
    for c in full:  # about a quarter of each class
        assert abs(part[c] - 0.25 * full[c]) <= 1, (c, part[c], full[c])
    for split in ("val", "test"):  # untouched: the same images, in the same order
        assert list(sub.keys[sub.splits == split]) == list(ds.keys[ds.splits == split])
    kept = set(sub.keys[sub.splits == "train"])
    assert kept <= set(ds.keys[ds.splits == "train"])
    assert set(train_subset(ds, 0.25, seed=0).keys[sub.splits == "train"]) == kept  # the same for every trial
    assert set((o := train_subset(ds, 0.25, seed=1)).keys[o.splits == "train"]) != kept  # seeded
    assert train_subset(ds, 1.0, seed=0) is ds


def test_a_search_stage_trial_trains_on_the_subset_at_the_fidelity_image_size(tmp_path):
    """apply_fidelity + run_trial: the search stage's image size and fraction reach the trial (its
    image_epochs count the subset), a refit gets its seed and full fidelity."""
    from runners.search.fidelity import apply_fidelity, train_subset
    from runners.training.trial import run_trial
    from search_spaces import load_space

    d = search_test_space()
    d["constants"]["train.epochs"] = 1
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(d))
    space = load_space(str(tmp_path / "s.yaml"))
    cfg = space.validate({"attention": "none", "num_patches": 0, "lr": 0.005})
    small, frac = apply_fidelity(cfg, {"stage": "search", "train_fraction": 0.5, "image_size": 24})
    assert (small.data.image_size, frac, small.train.seed) == (24, 0.5, cfg.train.seed)
    refit, none = apply_fidelity(cfg, {"stage": "refit", "seed": 1, "config": "c1"})
    assert (refit.data.image_size, none, refit.train.seed) == (32, None, 1)
    ds = _synthetic()
    out = run_trial(small, DataSpec(format="synthetic", options={"n": N_IMAGES, "size": 32}), out_dir=tmp_path / "t",
                    train_fraction=frac)
    assert out["image_epochs"] == len(train_subset(ds, 0.5, 0).indices("train")) < len(ds.indices("train"))
    written = json.loads((tmp_path / "t" / "checkpoint_0001" / "artifacts" / "model_config.json").read_text())
    assert written["trial"]["data"]["image_size"] == 24


def _space(tmp: Path, name: str) -> Path:
    d = search_test_space(name=name, presets=["plain"], num_samples=2, max_concurrent=2, seed=3,
                          dataset={"format": "synthetic", "n": N_IMAGES, "image_size": 32},
                          scheduler={"type": "asha", "grace_period": 1, "max_t": 1, "reduction_factor": 2},
                          fidelity={"train_fraction": 0.5, "image_size": 24, "refit": {"top_k": 2, "seeds": 2}})
    d["dimensions"] = {"attention": {"type": "choice", "values": ["none", "se"]},
                       "lr": {"type": "float", "low": 1e-3, "high": 2e-2, "log": True}}
    d["constants"].update({"train.epochs": 1, "model.num_patches": 0})
    d["presets"] = {"plain": {"attention": "none", "lr": 0.005}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.fixture(scope="module")
def two_stage(module_tmp):
    import ray

    from runners.search.driver import run_search

    tmp = module_tmp("fidelity")
    uri = f"sqlite:///{tmp}/mlflow.db"
    old = os.getcwd()
    os.chdir(tmp)
    try:
        space = _space(tmp, "two-stage")
        res = run_search(str(space), storage_path=str(tmp / "ray"), tracking_uri=uri, verbose=0)
        yield {"tmp": tmp, "uri": uri, "res": res, "space": space}
    finally:
        os.chdir(old)
        if ray.is_initialized():
            ray.shutdown()


def _csv(client, run_id: str, path: str, dst: Path):
    local = client.download_artifacts(run_id, path, str(dst))
    return list(csv.DictReader(io.StringIO(Path(local).read_text())))


@pytest.mark.slow
def test_a_two_stage_search_refits_the_top_configurations_at_full_fidelity(two_stage):
    res = two_stage["res"]
    n_train = len(_synthetic().indices("train"))
    from runners.search.fidelity import train_subset

    half = len(train_subset(_synthetic(), 0.5, 0).indices("train"))
    assert res.num_failed == 0 and len(res.leaderboard) == 2
    client, _, parents, children = search_runs(two_stage["uri"], "two-stage")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    search = [r for r in children if r.data.tags["fer_automl.stage"] == "search"]
    refit = [r for r in children if r.data.tags["fer_automl.stage"] == "refit"]
    assert len(search) == 2 and len(refit) == 4
    # the search stage: half the training images, 24 px
    for r in search:
        assert r.data.tags["fer_automl.fidelity.train_fraction"] == "0.5"
        assert r.data.tags["fer_automl.fidelity.image_size"] == "24"
        assert r.data.metrics["image_epochs"] == half * r.data.metrics["epoch"]
    # the refit stage: every training image, the point's 32 px, seeds 0 and 1 per configuration
    for r in refit:
        assert r.data.tags["fer_automl.fidelity.train_fraction"] == "1.0"
        assert r.data.tags["fer_automl.fidelity.image_size"] == "32"
        assert r.data.metrics["image_epochs"] == n_train * 1  # train.epochs = 1
        assert r.info.run_name.endswith(f"refit {r.data.tags['fer_automl.refit_config']} s{r.data.tags['fer_automl.seed']}")
        assert r.data.tags["fer_automl.status"] == "finished"
    assert sorted((r.data.tags["fer_automl.refit_config"], r.data.tags["fer_automl.seed"]) for r in refit) == [
        ("c1", "0"), ("c1", "1"), ("c2", "0"), ("c2", "1")]
    # c1, c2: the two best distinct points of the search stage, in its order
    by_trial = {r.data.tags["fer_automl.trial_id"]: r for r in search}
    sources = {r.data.tags["fer_automl.refit_config"]: r.data.tags["fer_automl.refit_of"] for r in refit}
    assert [sources["c1"], sources["c2"]] == [str(row["trial_id"]) for row in res.leaderboard[:2]]
    assert all(s in by_trial for s in sources.values())
    # the refit leaderboard: mean ± std over the seeds' kept-weights figures, best mean first
    assert [r["config"] for r in res.refit] and res.refit_winner is res.refit[0]
    runs = {r.data.tags["fer_automl.trial_id"]: r for r in refit}
    for row in res.refit:
        vals = [runs[t].data.metrics["best_val_balanced_accuracy"] for t in row["trial_ids"]]
        tests = [runs[t].data.metrics["test_accuracy"] for t in row["trial_ids"]]
        assert row["val_balanced_accuracy_mean"] == pytest.approx(np.mean(vals))
        assert row["val_balanced_accuracy_std"] == pytest.approx(np.std(vals, ddof=1))
        assert row["test_accuracy_mean"] == pytest.approx(np.mean(tests))
        assert row["seeds"] == [0, 1]
    means = [r["val_balanced_accuracy_mean"] for r in res.refit]
    assert means == sorted(means, reverse=True)
    board = _csv(client, parents[0].info.run_id, "refit_leaderboard.csv", two_stage["tmp"] / "dl")
    assert [b["config"] for b in board] == [r["config"] for r in res.refit]
    assert json.loads(board[0]["trial_ids"]) == res.refit[0]["trial_ids"]
    arts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"leaderboard.csv", "refit_leaderboard.csv", "best_point.yaml"} <= arts
    # best_point.yaml (what `fer-automl train --config` retrains) is the refit winner's point, on disk
    # and on the parent run
    assert res.best_point == res.refit_winner["point"]
    assert yaml.safe_load(res.best_point_path.read_text()) == res.refit_winner["point"]
    logged = client.download_artifacts(parents[0].info.run_id, "best_point.yaml", str(two_stage["tmp"] / "dl-bp"))
    assert yaml.safe_load(Path(logged).read_text()) == res.refit_winner["point"]


@pytest.mark.slow
def test_promote_takes_the_refit_winners_best_seed_and_says_why(two_stage, capsys):
    res = two_stage["res"]
    win = res.refit_winner
    client, _, _, children = search_runs(two_stage["uri"], "two-stage")
    runs = {r.data.tags["fer_automl.trial_id"]: r for r in children}
    best_tid = max(win["trial_ids"], key=lambda t: (runs[t].data.metrics["best_val_balanced_accuracy"],
                                                    -int(runs[t].data.tags["fer_automl.seed"])))
    old = os.getcwd()
    os.chdir(two_stage["tmp"])
    try:
        capsys.readouterr()
        rc = main(["promote", "--search", "two-stage", "--tracking-uri", two_stage["uri"], "--model-name", "two-stage"])
    finally:
        os.chdir(old)
    out = capsys.readouterr()
    assert rc == 0, out.out + out.err
    assert f"refit winner: configuration {win['config']}" in out.out
    assert f"seed {runs[best_tid].data.tags['fer_automl.seed']}'s" in out.out
    v = client.get_model_version("two-stage", "1")
    assert v.run_id == runs[best_tid].info.run_id
    assert v.tags["fer_automl.refit_config"] == win["config"]
    assert v.tags["fer_automl.refit_seed"] == runs[best_tid].data.tags["fer_automl.seed"]
    assert float(v.tags["fer_automl.refit_mean"]) == pytest.approx(win["val_balanced_accuracy_mean"])
    assert "best mean val_balanced_accuracy" in v.tags["fer_automl.selection"]


@pytest.mark.slow
def test_resuming_a_finished_two_stage_search_reruns_neither_stage(two_stage):
    from runners.search.driver import run_search

    before = {r.info.run_id for r in search_runs(two_stage["uri"], "two-stage")[3]}
    old = os.getcwd()
    os.chdir(two_stage["tmp"])
    try:
        res = run_search(str(two_stage["space"]), storage_path=str(two_stage["tmp"] / "ray"),
                         tracking_uri=two_stage["uri"], resume=True, verbose=0)
    finally:
        os.chdir(old)
    _, _, parents, children = search_runs(two_stage["uri"], "two-stage")
    assert {r.info.run_id for r in children} == before  # no new trial in either stage
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert [r["config"] for r in res.refit] == [r["config"] for r in two_stage["res"].refit]
    assert [r["trial_ids"] for r in res.refit] == [r["trial_ids"] for r in two_stage["res"].refit]


def _refit_reports(db: Path) -> int:
    """Epochs the refit stage's trials have reported to MLflow so far."""
    import sqlite3

    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return con.execute("select count(*) from metrics m join tags t on t.run_uuid = m.run_uuid where "
                               "m.key = 'val_balanced_accuracy' and t.key = 'fer_automl.stage' and "
                               "t.value = 'refit'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
def test_ctrl_c_in_the_refit_stage_and_resume_continue_the_refit_without_rerunning_the_search(tmp_path):
    """--resume of a search interrupted in its refit stage reads the search stage back (no new
    search-stage run) and finishes the refit stage."""
    import signal
    import time

    from test_search_lifecycle import finish, start_search

    d = search_test_space(name="refit-ctrl-c", presets=[], num_samples=1, max_concurrent=1,
                          scheduler={"type": "fifo"}, dataset={"format": "synthetic", "n": N_IMAGES, "image_size": 32},
                          fidelity={"train_fraction": 0.5, "refit": {"top_k": 1, "seeds": 2}})
    d["presets"] = {}
    d["constants"].update({"train.epochs": 2, "model.num_patches": 0})
    d["dimensions"] = {"lr": {"type": "float", "low": 1e-3, "high": 2e-2, "log": True}}
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(d))
    db = tmp_path / "mlflow.db"
    proc = start_search(tmp_path, space, db)
    deadline = time.time() + 400
    while _refit_reports(db) < 1:  # the first refit trial is mid-way (1 of 2 epochs)
        assert proc.poll() is None, "the search ended before its refit stage reported"
        assert time.time() < deadline, "no refit report in 400 s"
        time.sleep(0.3)
    os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C sends, to the process this test started
    rc, out, err = finish(proc)
    assert rc == 130, err[-3000:]
    uri = f"sqlite:///{db}"
    _, _, parents, children = search_runs(uri, "refit-ctrl-c")
    assert [p.info.status for p in parents] == ["KILLED"]
    search_before = {r.info.run_id for r in children if r.data.tags["fer_automl.stage"] == "search"}
    assert len(search_before) == 1

    proc = start_search(tmp_path, space, db, "--resume")
    rc, out, err = finish(proc)
    assert rc == 0, err[-3000:]
    assert "resume: continuing the refit stage" in out
    assert "refit stage (1 configurations" in out and "c1 |" in out
    _, _, parents, children = search_runs(uri, "refit-ctrl-c")
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert {r.info.run_id for r in children if r.data.tags["fer_automl.stage"] == "search"} == search_before
    refit = [r for r in children if r.data.tags["fer_automl.stage"] == "refit"]
    assert sorted(r.data.tags["fer_automl.seed"] for r in refit) == ["0", "1"]
    assert all(r.info.status == "FINISHED" and r.data.tags["fer_automl.status"] == "finished"
               and r.data.metrics["epoch"] == 2 for r in refit)


@pytest.mark.slow
def test_a_failed_refit_seed_is_a_failed_trial_and_the_search_exits_4(tmp_path, monkeypatch, capsys):
    """A refit seed that fails counts in the search's failures like any trial: the summary, the
    parent's num_failed tag and exit code 4 say so. The refit fails for real: the weights file one
    configuration starts from is removed once the search stage is over (when the refit stage's Ray
    run folder appears), so its refit trial finds no file."""
    import threading
    import time

    import ray
    import torch

    from _space_helpers import SEARCH_TEST_BACKBONE
    from fer_models import ModelConfig, build_model

    monkeypatch.chdir(tmp_path)
    sd = build_model(ModelConfig(num_classes=7, backbone=SEARCH_TEST_BACKBONE)).state_dict()
    for name in ("a.pt", "b.pt"):
        torch.save(sd, tmp_path / name)
    d = search_test_space(name="refit-fails", presets=[], algorithm="grid", num_samples=1, max_concurrent=2,
                          max_failures=0, dataset={"format": "synthetic", "n": N_IMAGES, "image_size": 32},
                          scheduler={"type": "fifo"}, fidelity={"image_size": 24, "refit": {"top_k": 2, "seeds": 1}})
    d["dimensions"] = {"weights": {"type": "choice", "maps_to": "model.pretrained_path",
                                   "values": [str(tmp_path / "a.pt"), str(tmp_path / "b.pt")]}}
    d["presets"] = {}
    d["constants"].update({"train.epochs": 1, "model.num_patches": 0})
    space = tmp_path / "refit-fails.yaml"
    space.write_text(yaml.safe_dump(d))
    refit_dir = tmp_path / "ray" / "refit-fails" / "refit"
    done = threading.Event()

    def remove_b_when_the_refit_starts():
        while not done.is_set():
            if refit_dir.exists():
                (tmp_path / "b.pt").unlink()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=remove_b_when_the_refit_starts, daemon=True)
    watcher.start()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    try:
        rc = main(["search", str(space), "--storage-path", str(tmp_path / "ray"), "--tracking-uri", uri])
    finally:
        done.set()
        if ray.is_initialized():
            ray.shutdown()
    out, err = capsys.readouterr()
    assert not (tmp_path / "b.pt").exists(), "the refit stage never started"
    assert rc == 4, out[-3000:] + err[-2000:]
    assert "search refit-fails: 2 trials + 2 refit trials, 1 failed" in out
    assert "search refit-fails finished, but 1 of 4 trials failed" in err
    assert "b.pt': no such file" in out + err
    client, _, parents, children = search_runs(uri, "refit-fails")
    assert parents[0].data.tags["fer_automl.num_failed"] == "1"
    refit = {Path(r.data.params["weights"]).name: r for r in children if r.data.tags["fer_automl.stage"] == "refit"}
    assert refit["a.pt"].data.tags["fer_automl.status"] == "finished"
    assert refit["b.pt"].info.status == "FAILED" and refit["b.pt"].data.tags["fer_automl.status"] == "failed"
