"""runners.training.trial: one real trial on built-in synthetic faces (CPU, 32 px)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from _space_helpers import SEARCH_TEST_BACKBONE, first_conv_key
from fer_models import ModelConfig
from runners.training.trial import BEST_FILE, STATE_FILE, TIMING_ENV, DataSpec, TrialFailed, lr_factor, mark, run_trial
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
    held = []  # what each checkpoint holds when it is reported (the trial keeps only the latest)
    final = run_trial(_cfg(), synth, out_dir=tmp_path, report=lambda m, c: (
        reports.append((dict(m), c)), held.append({str(p.relative_to(c)) for p in c.rglob("*.pt")})))
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
    # every checkpoint holds the latest state and the best weights once: an epoch's as best_model.pt,
    # the final one as artifacts/model.pt (what tracking logs), not twice
    assert held == [{STATE_FILE, BEST_FILE}, {STATE_FILE, "artifacts/model.pt"}]
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
    from runners.training.trial import _link_or_copy, _save_new_file

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


def _scan_like_cfg():
    """SCAN-CCI's fixed weights (0.2 on the attention head, 0.8 on each of 4 context regions: they
    sum to 3.4) on a backbone small enough for a 32 px test."""
    from fer_models import preset_config

    model = preset_config("scan_cci_shared").model_copy(update={"backbone": SEARCH_TEST_BACKBONE, "num_patches": 4,
                                                                "context_hidden": 32})
    return TrialConfig(model=model, train=TrainConfig(epochs=1, batch_size=32, lr=3e-3, loss_weighting="fixed",
                                                      label_smoothing=0.1, class_balance="reweight"),
                       data=DataConfig(image_size=32, aug_strength=0.3))


def _uncertainty_cfg():
    cfg = _cfg(epochs=1, num_patches=0)  # two learned weights: the global branch and the pose head
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={
        "loss_weighting": "uncertainty", "label_smoothing": 0.1, "class_balance": "reweight"})})


@pytest.mark.parametrize("make_cfg", [_uncertainty_cfg, _scan_like_cfg], ids=["uncertainty", "scan-like-fixed"])
def test_val_loss_is_the_plain_cross_entropy_of_the_fused_prediction(make_cfg, synth, tmp_path):
    """Issue 10: val_loss is comparable across architectures and loss weightings: the fused
    prediction's cross-entropy (no label smoothing, no class weights); the weighted training
    objective is val_objective."""
    import torch.nn.functional as F

    from fer_models import build_model
    from runners.data.transforms import build_eval_transform, normalization_for

    cfg = make_cfg()
    seen = []

    def report(m, c):  # the weights validation ran with: the epoch's checkpoint, read before the next one
        seen.append((dict(m), torch.load(c / STATE_FILE, weights_only=False)["model"]))

    run_trial(cfg, synth, out_dir=tmp_path, report=report)
    metrics, weights = seen[-1]
    model = build_model(cfg.model.model_copy(update={"num_classes": len(synth.classes), "num_pose_classes":
                                                     len(synth.pose_classes) if cfg.model.pose_head else None}),
                        image_size=32)
    model.load_state_dict(weights)
    model.eval()
    tf = build_eval_transform(32, *normalization_for(cfg.model.backbone))
    idx = synth.indices("val")
    x = torch.stack([torch.as_tensor(tf(image=np.asarray(synth.images[i]))["image"]).permute(2, 0, 1) for i in idx])
    y = torch.as_tensor(synth.labels[idx], dtype=torch.long)
    with torch.no_grad():
        expected = float(F.cross_entropy(model(x.float()).logits.float(), y))
    assert metrics["val_loss"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # the weighted objective is still reported, under its own name, and it is another figure
    assert math.isfinite(metrics["val_objective"]) and abs(metrics["val_objective"] - metrics["val_loss"]) > 1e-3


def test_a_resumed_trial_trains_exactly_as_an_uninterrupted_one(synth, tmp_path):
    """Issue 10: stopped after epoch 1 of 2 and resumed from that checkpoint, a trial continues with the
    same random state (loader order and resampling, augmentation draws, dropout, DWA weights):
    per-epoch metrics equal an uninterrupted run on CPU."""
    cfg = _cfg(epochs=2, dropout=0.3, num_patches=0)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"class_balance": "resample"})})
    # image_epochs (issue 11): the compute count goes on from the checkpoint, not from zero
    keys = ("train_loss", "val_loss", "val_objective", "val_accuracy", "val_balanced_accuracy", "image_epochs")

    whole = []
    run_trial(cfg, synth, out_dir=tmp_path / "whole", report=lambda m, c: whole.append({k: m[k] for k in keys}))

    class Stop(Exception):
        pass

    ckpts, first = [], []

    def stop_after_first(m, c):
        first.append({k: m[k] for k in keys})
        ckpts.append(c)
        raise Stop

    with pytest.raises(Stop):
        run_trial(cfg, synth, out_dir=tmp_path / "a", report=stop_after_first)
    rest = []
    run_trial(cfg, synth, out_dir=tmp_path / "b", resume_from=ckpts[0],
              report=lambda m, c: rest.append({k: m[k] for k in keys}))
    assert first + rest == whole
    assert whole[0]["train_loss"] != whole[1]["train_loss"]  # the epochs differ: the equality is not vacuous


def test_a_seeded_model_does_not_depend_on_what_was_built_before():
    """The backbone's stage layout is probed once per process (a cached build): that build must not
    move the seeded RNG, or a trial's first model in a process differs from its next ones (a resumed
    trial runs in a fresh process)."""
    from fer_models import build_model
    from fer_models.model import stage_layout

    cfg = ModelConfig(backbone=SEARCH_TEST_BACKBONE, num_classes=7)
    stage_layout.cache_clear()
    torch.manual_seed(0)
    first = build_model(cfg, image_size=32).state_dict()
    torch.manual_seed(0)
    again = build_model(cfg, image_size=32).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_val_objective_is_minimised_like_a_loss():
    """val_objective (the weighted training objective) is lower-is-better wherever a metric's
    direction is decided: a search's default mode and promote's ranking."""
    from runners.registry.promote import higher_is_better
    from search_spaces import SearchSpec

    assert SearchSpec(metric="val_objective").mode == "min"
    assert not higher_is_better("val_objective") and not higher_is_better("val_loss")
    assert higher_is_better("val_balanced_accuracy")


def test_a_trial_without_a_reporter_keeps_only_its_latest_checkpoint(synth, tmp_path):
    """`fer-automl train` (no reporter): the out folder holds the final checkpoint and the best
    weights, not one model-plus-optimizer state per epoch."""
    run_trial(_cfg(epochs=2, num_patches=0, pose_head=False), synth, out_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [BEST_FILE, "checkpoint_0002"]
    assert (tmp_path / "checkpoint_0002" / "artifacts" / "model.pt").is_file()
