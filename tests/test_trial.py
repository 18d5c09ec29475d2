"""runners.trial: one real trial on built-in synthetic faces (CPU, 32 px)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from _space_helpers import SEARCH_TEST_BACKBONE, first_conv_key
from fer_models import ModelConfig
from runners.trial import BEST_FILE, STATE_FILE, TIMING_ENV, DataSpec, TrialFailed, lr_factor, mark, run_trial
from search_spaces import DataConfig, TrainConfig, TrialConfig

METRICS = {"val_accuracy", "val_balanced_accuracy", "val_macro_f1", "val_loss", "train_loss", "images_per_second",
           "epoch", "pose_accuracy"}


def _cfg(epochs=2, **model):
    return TrialConfig(model=ModelConfig(**{"backbone": SEARCH_TEST_BACKBONE, "num_patches": 4, "local_aggregation": "mean", "attention": "cbam",
                                            "pose_head": True, "num_pose_classes": 5, **model}),
                       train=TrainConfig(epochs=epochs, batch_size=32, lr=3e-3, loss_weighting="dwa"),
                       data=DataConfig(image_size=32, aug_strength=0.3))


@pytest.fixture(scope="module")
def synth():
    return DataSpec(format="synthetic", options={"n": 280, "size": 32}, seed=3).load(32)


def test_trial_reports_every_epoch_and_leaves_artifacts(synth, tmp_path, monkeypatch):
    timing = tmp_path / "timing.txt"
    monkeypatch.setenv(TIMING_ENV, str(timing))  # benchmarks/overhead.py's start-up marks
    reports = []
    final = run_trial(_cfg(), synth, out_dir=tmp_path, report=lambda m, c: reports.append((dict(m), c)))
    events = [line.split()[1] for line in timing.read_text().splitlines()]
    # the marks of each epoch; the first step of the run only, not of each epoch
    epoch = ["train_done", "val_done", "checkpoint_saved", "reported"]
    assert events == ["trial_data_loaded", "epoch_start", "first_step", *epoch, "epoch_start", *epoch]
    assert [m["epoch"] for m, _ in reports] == [1, 2]
    # the kept weights: the best validation epoch so far, and where it was
    vals = [m["val_balanced_accuracy"] for m, _ in reports]
    for i, (m, _) in enumerate(reports):
        assert m["best_val_balanced_accuracy"] == max(vals[:i + 1])
        assert vals[m["best_epoch"] - 1] == m["best_val_balanced_accuracy"] and m["best_epoch"] <= m["epoch"]
    for m, ckpt in reports:
        assert METRICS <= set(m), METRICS - set(m)
        assert all(math.isfinite(v) for v in m.values() if isinstance(v, float))
        assert 0.0 <= m["val_balanced_accuracy"] <= 1.0
    ckpt = reports[-1][1]
    assert (ckpt / STATE_FILE).is_file() and (ckpt / BEST_FILE).is_file()
    art = ckpt / "artifacts"
    for f in ["confusion_matrix.png", "attention.png", "per_class_metrics.json", "model.pt", "model_config.json"]:
        assert (art / f).is_file(), f
    assert {"test_accuracy", "test_balanced_accuracy"} <= set(final)
    per_class = json.loads((art / "per_class_metrics.json").read_text())
    assert per_class["classes"] == list(synth.classes)
    assert sum(v["support"] for v in per_class["per_class"].values()) == len(synth.indices("test"))
    meta = json.loads((art / "model_config.json").read_text())
    assert meta["dataset"]["fingerprint"] == synth.fingerprint
    # the selected weights load into the model the config describes
    from fer_models import build_model

    model = build_model(ModelConfig.model_validate(meta["model"]))
    model.load_state_dict(torch.load(art / "model.pt", weights_only=True))


def test_trial_resumes_from_its_checkpoint(synth, tmp_path):
    class Killed(Exception):
        pass

    first = []

    def die_after_first(m, c):
        first.append(c)
        raise Killed

    with pytest.raises(Killed):
        run_trial(_cfg(epochs=3), synth, out_dir=tmp_path / "a", report=die_after_first)
    resumed = []
    run_trial(_cfg(epochs=3), synth, out_dir=tmp_path / "b", resume_from=first[0],
              report=lambda m, c: resumed.append(m))
    assert [m["epoch"] for m in resumed] == [2, 3]  # epoch 1 is not trained twice
    state = torch.load(first[0] / STATE_FILE, weights_only=False)
    assert state["epoch"] == 0 and state["weighting_state"]["history"]  # DWA history travels


def test_non_finite_loss_fails_the_trial_with_its_reason(synth, tmp_path):
    # a broken checkpoint (NaN weights) is a real way for a trial's loss to go non-finite
    from fer_models import build_model

    cfg = _cfg(epochs=1)
    model = build_model(cfg.model.model_copy(update={"num_classes": len(synth.classes)}))
    sd = model.state_dict()
    key = first_conv_key(sd)
    sd[key] = torch.full_like(sd[key], float("nan"))
    path = tmp_path / "nan.pt"
    torch.save(sd, path)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"pretrained_path": str(path)})})
    with pytest.raises(TrialFailed, match=r"non-finite loss nan at epoch 0, step 0"):
        run_trial(cfg, synth, out_dir=tmp_path / "run")


def test_learning_rate_schedules():
    t = TrainConfig(epochs=10, warmup_epochs=2, schedule="cosine")
    f = [lr_factor(e, t) for e in range(10)]
    assert f[0] < f[1] < f[2] == pytest.approx(1.0) and f[-1] < 0.1
    s = TrainConfig(epochs=10, schedule="step", step_size=3, gamma=0.5)
    assert [lr_factor(e, s) for e in (0, 2, 3, 6)] == [1.0, 1.0, 0.5, 0.25]
    assert lr_factor(4, TrainConfig(epochs=10, schedule="exp", gamma=0.9)) == pytest.approx(0.9 ** 4)


def test_mark_is_a_no_op_without_its_environment_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(TIMING_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    mark("first_step")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv(TIMING_ENV, str(tmp_path / "t.txt"))
    mark("a")
    mark("b")
    rows = [line.split() for line in (tmp_path / "t.txt").read_text().splitlines()]
    assert [r[1] for r in rows] == ["a", "b"] and float(rows[0][0]) <= float(rows[1][0])


def test_checkpoint_best_weights_are_linked_not_rewritten(tmp_path):
    from runners.trial import _link_or_copy, _save_new_file

    best = tmp_path / BEST_FILE
    _save_new_file({"w": torch.zeros(3)}, best)
    (tmp_path / "c1").mkdir()
    _link_or_copy(best, tmp_path / "c1" / BEST_FILE)
    assert (tmp_path / "c1" / BEST_FILE).stat().st_ino == best.stat().st_ino  # a link: no data written
    _save_new_file({"w": torch.ones(3)}, best)  # validation improved: a new file, the old checkpoint keeps its own
    assert torch.equal(torch.load(tmp_path / "c1" / BEST_FILE)["w"], torch.zeros(3))
    (tmp_path / "c2").mkdir()
    _link_or_copy(best, tmp_path / "c2" / BEST_FILE)
    assert torch.equal(torch.load(tmp_path / "c2" / BEST_FILE)["w"], torch.ones(3))
    assert not list(tmp_path.glob("*.tmp"))
