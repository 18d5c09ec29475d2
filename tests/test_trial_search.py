"""A trial inside a real search (local Ray, FIFO, sqlite MLflow in tmp): its status, what it keeps
on disk, what a killed trial leaves and `--resume` removes (issue 10)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from _space_helpers import search_test_space
from conftest import REPO, search_runs
from runners.cli import main


def _space(tmp: Path, name: str, **search) -> Path:
    """Epochs as a dimension: a grid over train.epochs {1, 3} (2 trials), FIFO, nothing else varies."""
    d = search_test_space(name=name, presets=[], algorithm="grid", num_samples=1, scheduler={"type": "fifo"},
                          max_concurrent=2, **search)
    d["dimensions"] = {"epochs": {"type": "choice", "values": [1, 3], "maps_to": "train.epochs"}}
    d["constants"] = {k: v for k, v in d["constants"].items() if k != "train.epochs"}
    d["constants"]["train.lr"] = 0.005
    d["presets"] = {}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_a_search_on_one_class_refuses_before_ray_starts(tmp_path, capsys, monkeypatch):
    """The search's start-up data check refuses what `train` refuses: fewer than 2 classes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(12):
        (tmp_path / "one" / "sad").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "one" / "sad" / f"{i}.png")
    import ray

    ray_was_up = ray.is_initialized()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FER_AUTOML_CACHE_DIR", str(tmp_path / "cache"))
    space = _space(tmp_path, "one-class", dataset={"format": "imagefolder", "path": str(tmp_path / "one"),
                                                   "image_size": 32})
    rc = main(["search", str(space), "--storage-path", str(tmp_path / "ray"),
               "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    err = capsys.readouterr().err
    assert rc == 2 and "training set has 1 class(es) (sad)" in err, err
    assert not (tmp_path / "ray").exists() and not (tmp_path / "m.db").exists()
    assert ray.is_initialized() == ray_was_up  # refused before Ray was started


@pytest.fixture(scope="module")
def searched(module_tmp):
    """One search of two trials (1 and 3 epochs), then one of a 3-epoch trial keeping 2 checkpoints,
    on the same local Ray."""
    import ray

    from runners.search.driver import run_search

    tmp = module_tmp("trial-search")
    uri = f"sqlite:///{tmp}/mlflow.db"
    old = os.getcwd()
    os.chdir(tmp)  # the registry's and Ray's relative paths land here
    try:
        t0 = time.time()
        res = run_search(str(_space(tmp, "epochs-it")), storage_path=str(tmp / "ray"), tracking_uri=uri, verbose=0)
        t1 = time.time()
        keep2 = run_search(str(_space(tmp, "keep-two", keep_checkpoints=2, grid={"epochs": [3]})),
                           storage_path=str(tmp / "ray"), tracking_uri=uri, verbose=0)
        t2 = time.time()
        print(f"\nsearch of 2 trials: {t1 - t0:.1f} s; search of 1 trial on the same Ray: {t2 - t1:.1f} s")
        yield {"tmp": tmp, "uri": uri, "res": res, "keep2": keep2}
    finally:
        os.chdir(old)
        if ray.is_initialized():
            ray.shutdown()


def _trial_dirs(storage: Path):
    return sorted(d for d in storage.iterdir() if d.is_dir() and d.name.startswith("tune_trainable"))


@pytest.mark.slow
def test_a_trial_that_ran_its_own_epochs_is_finished_and_promotable(searched, capsys):
    """`finished` means the trial ran its own train.epochs (1 or 3 here, the space's largest is 3),
    in the leaderboard and in MLflow; `promote --search` takes the best of them."""
    res = searched["res"]
    assert res.num_failed == 0
    assert sorted((r["point"]["epochs"], r["epoch"], r["status"]) for r in res.leaderboard) == [
        (1, 1, "finished"), (3, 3, "finished")]
    _, _, parents, children = search_runs(searched["uri"], "epochs-it")
    assert sorted((int(r.data.params["epochs"]), r.data.tags["fer_automl.status"]) for r in children) == [
        (1, "finished"), (3, "finished")]
    # the leaderboard names the plain cross-entropy and the weighted objective apart
    assert all("val_objective" in r.data.metrics and "val_loss" in r.data.metrics for r in children)
    old = os.getcwd()
    os.chdir(searched["tmp"])
    try:
        capsys.readouterr()
        rc = main(["promote", "--search", "epochs-it", "--tracking-uri", searched["uri"], "--model-name", "epochs-it"])
    finally:
        os.chdir(old)
    out = capsys.readouterr()
    assert rc == 0, out.out + out.err


@pytest.mark.slow
def test_the_storage_keeps_one_checkpoint_per_trial_with_the_best_weights_once(searched):
    storage = Path(searched["res"].storage)
    trials = _trial_dirs(storage)
    assert len(trials) == 2
    for d in trials:
        ckpts = sorted(c.name for c in d.glob("checkpoint_*"))
        assert len(ckpts) == 1, (d.name, ckpts)  # the latest only (3 epochs: checkpoint_000002)
        files = {str(p.relative_to(d / ckpts[0])) for p in (d / ckpts[0]).rglob("*.pt")}
        assert files == {"state.pt", "artifacts/model.pt"}, files  # latest state + the best weights, once
        state = (d / ckpts[0] / "state.pt").stat().st_size
        total = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
        assert total <= 2 * state, (d.name, total, state)  # issue 10's goal: at most 2 model+optimizer states
    tid = next(r["trial_id"] for r in searched["res"].leaderboard if r["epoch"] == 3)
    three = [d for d in trials if tid in d.name]
    assert [c.name for c in three[0].glob("checkpoint_*")] == ["checkpoint_000002"]


@pytest.mark.slow
def test_keep_checkpoints_keeps_that_many(searched):
    trials = _trial_dirs(Path(searched["keep2"].storage))
    assert len(trials) == 1
    assert sorted(c.name for c in trials[0].glob("checkpoint_*")) == ["checkpoint_000001", "checkpoint_000002"]


_KILLED_TRIAL = """
import sys, time
from pathlib import Path
from runners.training.scratch import trial_scratch
with trial_scratch(sys.argv[1], tmp=sys.argv[2]) as d:
    (d / "state.pt").write_bytes(b"x" * 100000)
    print(d, flush=True)
    time.sleep(600)
"""


def _killed_trial_scratch(search_dir: str, tmp: Path) -> Path:
    """The scratch folder a trial leaves when it is killed (SIGKILL: no clean-up runs)."""
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_TRIAL, search_dir, str(tmp)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    path = Path(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)  # only the process this test started
    proc.wait(timeout=30)
    assert path.is_dir()
    return path


def test_remove_dead_scratch_removes_only_dead_trials_of_its_search(tmp_path):
    from runners.training.scratch import OWNER_FILE, remove_dead_scratch, trial_scratch

    ours, other = str(tmp_path / "ray" / "s1"), str(tmp_path / "ray" / "s2")
    dead = _killed_trial_scratch(ours, tmp_path)
    dead_other = _killed_trial_scratch(other, tmp_path)
    foreign = tmp_path / "fer-trial-foreign"  # not made by trial_scratch (no owner file): never touched
    foreign.mkdir()
    with trial_scratch(ours, tmp=str(tmp_path)) as live:  # a running trial of the same search
        assert (live / OWNER_FILE).is_file()
        assert remove_dead_scratch(ours, tmp=str(tmp_path)) == [dead]
        assert not dead.exists() and live.is_dir() and dead_other.is_dir() and foreign.is_dir()
    assert not live.exists()  # a trial that ends removes its own


@pytest.mark.slow
def test_resume_removes_the_scratch_of_killed_trials_of_this_search(searched, capsys, monkeypatch):
    import tempfile

    from runners.training.scratch import trial_scratch

    tmp = searched["tmp"]
    space = tmp / "epochs-it.yaml"
    search_dir = searched["res"].storage
    dead = _killed_trial_scratch(search_dir, Path(tempfile.gettempdir()))
    dead_other = _killed_trial_scratch(str(tmp / "ray" / "keep-two"), Path(tempfile.gettempdir()))
    monkeypatch.chdir(tmp)
    try:
        with trial_scratch(search_dir) as live:
            rc = main(["search", str(space), "--storage-path", str(tmp / "ray"), "--tracking-uri", searched["uri"],
                       "--resume"])
            out = capsys.readouterr().out
            assert rc == 0, out[-3000:]
            assert "removed 1 scratch folder(s) of killed trials of 'epochs-it'" in out
            assert not dead.exists() and live.is_dir() and dead_other.is_dir()
    finally:
        import shutil

        shutil.rmtree(dead_other, ignore_errors=True)
        shutil.rmtree(dead, ignore_errors=True)


@pytest.mark.slow
def test_child_runs_are_named_by_what_they_are_and_show_their_dataset(searched):
    """Issue 11 (MLflow UI): a child run is named `tNN <what it is>` (not the search's name and a
    hash), and carries the search's dataset as an MLflow dataset input (name, source, the content
    fingerprint as digest), which the runs table shows in its Dataset column."""
    import json

    from runners.search.driver import trial_label
    from runners.search.tracking import DATASET_DIGEST_CHARS
    from search_spaces import load_space

    client, _, parents, children = search_runs(searched["uri"], "epochs-it")
    space = load_space(str(searched["tmp"] / "epochs-it.yaml"))
    fingerprint = parents[0].data.params["dataset.fingerprint"]
    names = sorted(r.info.run_name for r in children)
    assert [n.split(" ", 1)[0] for n in names] == ["t01", "t02"], names
    for run in children:
        expected = trial_label(space.validate({"epochs": int(run.data.params["epochs"])}))
        assert run.info.run_name.split(" ", 1)[1] == expected
        inputs = client.get_run(run.info.run_id).inputs.dataset_inputs
        assert len(inputs) == 1
        ds = inputs[0].dataset
        assert ds.name == parents[0].data.params["dataset.name"]
        assert ds.digest == fingerprint[:DATASET_DIGEST_CHARS]
        assert json.loads(ds.profile)["fingerprint"] == fingerprint
        assert {t.key: t.value for t in inputs[0].tags} == {"mlflow.data.context": "training"}
    # the label says what varies between architectures
    base = space.validate({"epochs": 1})
    other = base.model_copy(update={"model": base.model.model_copy(update={
        "attention": "cbam", "num_patches": 4, "num_scales": 2, "context_branch": True})})
    assert trial_label(other).split() == [base.model.backbone, "cbam", "4p", "2s", base.train.loss_weighting, "cci"]


@pytest.mark.slow
def test_a_search_without_fidelity_counts_image_epochs_and_has_one_stage(searched):
    """Issue 11: every trial reports `image_epochs` (training images processed so far: compute), also
    without a `fidelity` section; such a search has one stage (`search`), no refit, and its trials
    train on the whole training split at the point's own size."""
    from runners.training.trial import DataSpec

    res = searched["res"]
    assert res.refit == [] and res.refit_winner is None
    client, _, parents, children = search_runs(searched["uri"], "epochs-it")
    n_train = len(DataSpec(format="synthetic", options={"n": 210, "size": 32}).load(32).indices("train"))
    for run in children:
        assert run.data.metrics["image_epochs"] == n_train * int(run.data.params["epochs"])
        assert run.data.tags["fer_automl.stage"] == "search"
        assert "fer_automl.fidelity.train_fraction" not in run.data.tags
        steps = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "image_epochs"), key=lambda m: m.step)]
        assert steps == [n_train * e for e in range(1, len(steps) + 1)]  # cumulative, one per epoch
    assert "refit_leaderboard.csv" not in {a.path for a in client.list_artifacts(parents[0].info.run_id)}


def test_a_trial_whose_point_cannot_be_named_keeps_its_id_as_run_name():
    # the tracker names child runs with runners.search.driver.trial_label on the validated point; a point
    # that does not validate must fall back to the trial id, not raise inside Ray Tune's callback
    # (which ended the whole search)
    from runners.search.tracking import run_label

    def name_of(config):
        raise ValueError("num_patches=9 with patch_split=ceil at image_size=32")

    assert run_label(name_of, {"p": 1}, "abc_00001") == "abc_00001"
    assert run_label(lambda c: "resnet18 se 0p 1s fixed", {}, "abc_00002") == "resnet18 se 0p 1s fixed"
    assert run_label(None, {}, "abc_00003") == "abc_00003"
