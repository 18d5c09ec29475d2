"""Pretrained backbones through timm's own loading (issue 12, item 1): `ModelConfig.pretrained`
(a timm tag or 'imagenet') and `pretrained_file` (timm's pretrained_cfg_overlay file=).

No test touches the network: every one runs with HF_HUB_OFFLINE=1 and a Hugging Face cache built
here in huggingface_hub's exact cache layout, holding random weights of a small timm model.
"""
from __future__ import annotations

import hashlib
import os

import pytest
import timm
import torch
from safetensors.torch import save_file

from fer_models import ModelConfig, build_model
from fer_models.errors import UserError, UserPathError
from fer_models.pretrained import available_tags, resolve, timm_weights_name
from runners.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalization_for

ARCH = "resnet10t"
TAG = "c3_in1k"  # timm's default (and only) tag of resnet10t
TIMM_NAME = f"{ARCH}.{TAG}"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline. huggingface_hub reads HF_HOME, HF_HUB_CACHE and
    HF_HUB_OFFLINE once, when `huggingface_hub.constants` is imported (timm imports it with
    itself), and its downloader reads `constants.HF_HUB_CACHE` / `constants.is_offline_mode()`
    at each call: so the environment (for child processes) and the constants (for this one) are
    both set."""
    from huggingface_hub import constants

    home = tmp_path / "hf"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def random_weights(arch: str = ARCH, seed: int = 7) -> dict:
    """A state dict of the whole timm classification model, every float tensor random (batch-norm
    statistics included, so that nothing equals timm's init by chance)."""
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False)
    sd = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            v = torch.rand_like(v) + 0.5 if k.endswith("running_var") else torch.randn_like(v)
        sd[k] = v.clone().contiguous()
    return sd


def put_in_hub_cache(cache, repo_id: str, sd: dict, revision: str = "a" * 40):
    """Write `sd` as model.safetensors of `repo_id` in huggingface_hub's cache layout:
    models--{org}--{name}/blobs/<sha256>, snapshots/<commit>/model.safetensors (a relative symlink
    to the blob) and refs/main (the commit)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    tmp = repo / "tmp.safetensors"
    repo.mkdir(parents=True)
    save_file(sd, str(tmp))
    sha = hashlib.sha256(tmp.read_bytes()).hexdigest()
    (repo / "blobs").mkdir()
    tmp.rename(repo / "blobs" / sha)
    snap = repo / "snapshots" / revision
    snap.mkdir(parents=True)
    os.symlink(os.path.join("..", "..", "blobs", sha), snap / "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return snap / "model.safetensors"


def assert_backbone_equals(model, sd: dict) -> int:
    body = model.backbone.body.state_dict()
    assert body, "the backbone has no tensors"
    for k, v in body.items():
        assert k in sd, f"backbone key {k} is not in the saved weights"
        assert torch.equal(v, sd[k]), f"backbone tensor {k} differs from the saved one"
    return len(body)


@pytest.mark.parametrize("arch", [ARCH, "mobilenetv3_small_050"])
def test_hf_cache_offline_gives_exactly_the_saved_weights(offline_hub, arch):
    """Both kinds of timm feature wrapper: ResNet's FeatureListNet and MobileNetV3's own features
    class (which fer_models.backbone truncates after the weights are loaded)."""
    sd = random_weights(arch)
    timm_name = resolve(arch, "imagenet")
    tag = timm_name.split(".", 1)[1]
    assert timm.get_pretrained_cfg(timm_name).hf_hub_id == f"timm/{timm_name}"
    put_in_hub_cache(offline_hub, f"timm/{timm_name}", sd)
    for pretrained in ("imagenet", tag):  # the default tag, and the tag by name
        model = build_model({"backbone": arch, "pretrained": pretrained, "num_classes": 4}, image_size=32)
        n = assert_backbone_equals(model, sd)
        assert n > 50
    # from scratch the backbone is timm's random init, not the file's
    scratch = build_model({"backbone": arch, "num_classes": 4})
    first = next(iter(scratch.backbone.body.state_dict()))
    assert not torch.equal(scratch.backbone.body.state_dict()[first], sd[first])
    # and it runs
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).logits.shape == (2, 4)


def test_local_file_through_timm_overlay(offline_hub, tmp_path):
    """pretrained_file: timm's pretrained_cfg_overlay=dict(file=...), safetensors or torch.save,
    with the hub cache empty and offline (nothing is fetched)."""
    sd = random_weights(seed=11)
    st = tmp_path / "w.safetensors"
    save_file(sd, str(st))
    pth = tmp_path / "w.pth"
    torch.save({"state_dict": sd, "epoch": 3}, pth)  # a training checkpoint: timm unwraps state_dict
    for cfg in ({"pretrained_file": str(st)}, {"pretrained": "imagenet", "pretrained_file": str(st)},
                {"pretrained": TAG, "pretrained_file": str(pth)}):
        model = build_model({"backbone": ARCH, "num_classes": 4, **cfg})
        assert_backbone_equals(model, sd)
    assert not any(offline_hub.iterdir()), "a local file must not touch the hub cache"


def test_offline_empty_cache_is_one_clear_error(offline_hub):
    with pytest.raises(UserError) as ei:
        build_model({"backbone": ARCH, "pretrained": "imagenet", "num_classes": 4})
    msg = str(ei.value)
    for text in (repr(ARCH), TIMM_NAME, "HF_HUB_OFFLINE=1", str(offline_hub), "run once online",
                 "pretrained_file"):
        assert text in msg, (text, msg)
    assert ei.value.__cause__ is None and ei.value.__suppress_context__  # no hub stack trace chained


def test_offline_empty_cache_through_the_cli(offline_hub, tmp_path, capsys):
    from runners.cli import main

    cfg = tmp_path / "m.yaml"
    cfg.write_text(f"backbone: {ARCH}\npretrained: imagenet\n")
    rc = main(["models", "describe", str(cfg), "--image-size", "32"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and TIMM_NAME in err and "pretrained_file" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_unknown_tag_fercnn_and_clashes_are_refused(tmp_path):
    # config-time refusals are the validator's UserError wrapped in pydantic's ValidationError
    # (both ValueErrors; the CLI prints one line per field)
    with pytest.raises(ValueError) as ei:
        ModelConfig(backbone="resnet18", pretrained="in22k_nope")
    msg = str(ei.value)
    assert "'in22k_nope'" in msg and "'resnet18'" in msg and "a1_in1k" in msg and "tv_in1k" in msg, msg
    for cfg in ({"pretrained": "imagenet"}, {"pretrained_file": "w.pt"}):
        with pytest.raises(ValueError, match="backbone 'fercnn' has no pretrained weights"):
            ModelConfig(backbone="fercnn", **cfg)
    with pytest.raises(ValueError, match="give one"):
        ModelConfig(backbone=ARCH, pretrained="imagenet", pretrained_path="w.pt")
    with pytest.raises(ValueError, match="contradicts the tag"):
        ModelConfig(backbone="resnet18.a1_in1k", pretrained="tv_in1k")
    with pytest.raises(UserPathError, match="pretrained_file .*no such file"):
        build_model({"backbone": ARCH, "pretrained_file": str(tmp_path / "missing.safetensors")})
    bad = tmp_path / "bad.safetensors"
    save_file({"conv1.0.weight": torch.zeros(1)}, str(bad))  # not resnet10t's tensors
    with pytest.raises(UserError, match="pretrained_file .*bad.safetensors.*could not load"):
        build_model({"backbone": ARCH, "pretrained_file": str(bad)})
    # a from-scratch config is untouched
    assert ModelConfig(backbone="fercnn").pretrained is None


def test_tags_resolve_without_network():
    assert resolve(ARCH, "imagenet") == TIMM_NAME
    assert resolve("resnet18", "imagenet") == "resnet18." + timm.get_pretrained_cfg("resnet18").tag
    assert resolve("resnet18", "tv_in1k") == "resnet18.tv_in1k"
    assert resolve("resnet18.gluon_in1k", "imagenet") == "resnet18.gluon_in1k"  # the backbone's own tag
    assert resolve("resnet18", None) is None
    assert set(available_tags("resnet18")) >= {"a1_in1k", "tv_in1k"}


def test_normalization_follows_the_tag():
    """efficientnet_b0's default tag (ra_in1k) normalises with ImageNet's mean/std, its
    ra4_e3600_r224_in1k tag with 0.5/0.5: the trial normalises with the tag it loads."""
    default = ModelConfig(backbone="efficientnet_b0", pretrained="imagenet")
    ra4 = ModelConfig(backbone="efficientnet_b0", pretrained="ra4_e3600_r224_in1k")
    assert timm_weights_name(default) == "efficientnet_b0." + timm.get_pretrained_cfg("efficientnet_b0").tag
    assert normalization_for(default.backbone, timm_weights_name(default)) == (IMAGENET_MEAN, IMAGENET_STD)
    ra4_cfg = timm.get_pretrained_cfg("efficientnet_b0.ra4_e3600_r224_in1k")
    assert tuple(ra4_cfg.mean) != IMAGENET_MEAN  # so the two cases differ
    assert normalization_for(ra4.backbone, timm_weights_name(ra4)) == (tuple(ra4_cfg.mean), tuple(ra4_cfg.std))
    assert normalization_for("efficientnet_b0") == (IMAGENET_MEAN, IMAGENET_STD)  # as before: the default tag's


SPACE = """\
description: pretrained or not, a dimension
dimensions:
  backbone: {type: choice, values: [resnet10t, fercnn]}
  pretrained:
    type: choice
    values: [null, imagenet]
    condition: {backbone: [resnet10t]}
  lr: {type: float, low: 1e-3, high: 1e-2, log: true}
constants:
  train.epochs: 1
  data.image_size: 32
"""


def test_search_space_makes_pretrained_a_dimension(tmp_path):
    from search_spaces import SpaceError, load_space, sample

    p = tmp_path / "space.yaml"
    p.write_text(SPACE)
    space = load_space(p)
    assert space.targets["pretrained"] == "model.pretrained"
    cfg = space.validate({"backbone": "resnet10t", "pretrained": "imagenet", "lr": 0.005})
    assert cfg.model.pretrained == "imagenet"
    assert space.validate({"backbone": "resnet10t", "pretrained": None, "lr": 0.005}).model.pretrained is None
    points = sample(space, 12, seed=0)
    assert {pt.get("pretrained", "inactive") for pt in points} >= {None, "imagenet", "inactive"}
    for pt in points:
        space.validate(pt)
    # Optuna's define-by-run suggestions and the grid carry the null choice through
    import optuna

    from search_spaces import grid_points, to_optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    suggested = []
    for _ in range(40):
        trial = study.ask()
        suggested.append(to_optuna(space)(trial))
        study.tell(trial, 0.0)
    assert {pt.get("pretrained", "inactive") for pt in suggested} >= {None, "imagenet"}
    grid = grid_points(space, fixed={"lr": 0.005})
    assert len(grid) == 3 and {(pt["backbone"], pt.get("pretrained", "-")) for pt in grid} == {
        ("fercnn", "-"), ("resnet10t", None), ("resnet10t", "imagenet")}
    # a tag resnet10t does not have: refused at validation, naming the dimension and the tags
    p.write_text(SPACE.replace("[null, imagenet]", "[null, a1_in1k]"))
    bad_space = load_space(p)
    with pytest.raises(SpaceError) as ei:
        bad_space.validate({"backbone": "resnet10t", "pretrained": "a1_in1k", "lr": 0.005})
    assert "pretrained='a1_in1k'" in str(ei.value) and "its tags: c3_in1k" in str(ei.value), str(ei.value)
    # without the condition, fercnn with weights is refused
    p.write_text(SPACE.replace("    condition: {backbone: [resnet10t]}\n", ""))
    with pytest.raises(SpaceError, match="fercnn"):
        load_space(p).validate({"backbone": "fercnn", "pretrained": "imagenet", "lr": 0.005})


def test_a_trial_trains_from_cached_weights_and_its_export_needs_no_hub(offline_hub, tmp_path):
    """A trial with pretrained: its model starts from the cached weights, it records the tag's
    normalisation; rebuilding the trained model for export/predict loads the trial's own weights
    and needs no hub or cache (the cache is emptied before)."""
    import shutil

    from runners.registry.packaging import build_inference_module
    from runners.training.trial import DataSpec, run_trial
    from search_spaces import DataConfig, TrainConfig, TrialConfig

    sd = random_weights(seed=3)
    put_in_hub_cache(offline_hub, f"timm/{TIMM_NAME}", sd)
    data = DataSpec(format="synthetic", options={"n": 120, "size": 32}, seed=1).load(32)
    cfg = TrialConfig(model=ModelConfig(backbone=ARCH, pretrained="imagenet"),
                      train=TrainConfig(epochs=1, batch_size=32, lr=1e-3),
                      data=DataConfig(image_size=32, aug_strength=0.0))
    ckpts = []
    run_trial(cfg, data, out_dir=tmp_path / "trial", report=lambda m, c: ckpts.append(c))
    import json

    art = ckpts[-1] / "artifacts"
    meta = json.loads((art / "model_config.json").read_text())
    assert meta["model"]["pretrained"] == "imagenet"
    want = timm.get_pretrained_cfg(TIMM_NAME)
    assert tuple(meta["normalization"]["mean"]) == tuple(want.mean)
    assert tuple(meta["normalization"]["std"]) == tuple(want.std)
    shutil.rmtree(offline_hub)
    offline_hub.mkdir()
    trained = torch.load(art / "model.pt", weights_only=True)
    conv = "backbone.body.conv1.0.weight"
    # the trial started from the cached weights (a few small steps away from them, not timm's init)
    assert (trained[conv] - sd["conv1.0.weight"]).abs().mean() < 0.05 * sd["conv1.0.weight"].abs().mean()
    module, _ = build_inference_module(art)
    assert torch.equal(module.model.state_dict()[conv], trained[conv])


@pytest.mark.slow
def test_a_search_over_pretrained_or_not_reads_the_cache_in_its_ray_workers(tmp_path):
    """`fer-automl search` (a child process with its own local Ray) over a grid of pretrained
    null / imagenet, offline, with a Hugging Face cache built here: the Ray workers read the cache
    the environment names, both trials finish and MLflow records the dimension."""
    import yaml

    from _space_helpers import search_test_space
    from conftest import run_cli, search_runs

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    put_in_hub_cache(cache, f"timm/{TIMM_NAME}", random_weights(seed=5))
    d = search_test_space(name="pretrained-or-not", presets=[], algorithm="grid", num_samples=1,
                          scheduler={"type": "fifo"}, max_concurrent=2)
    d["search"]["dataset"] = {"format": "synthetic", "n": 70, "image_size": 32}
    d["dimensions"] = {"pretrained": {"type": "choice", "values": [None, "imagenet"]}}
    d["constants"] = {**d["constants"], "model.backbone": ARCH, "train.epochs": 1, "train.lr": 0.005}
    d["presets"] = {}
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(d))
    uri = f"sqlite:///{tmp_path}/m.db"
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "FER_AUTOML_CACHE_DIR": str(tmp_path / "cache")}
    r = run_cli("search", str(space), "--storage-path", str(tmp_path / "ray"), "--tracking-uri", uri, env=env,
                timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    _, _, parents, trials = search_runs(uri, "pretrained-or-not")
    assert len(trials) == 2, [t.data.tags for t in trials]
    assert sorted(t.data.params.get("pretrained", "?") for t in trials) == ["None", "imagenet"], \
        [t.data.params for t in trials]
    assert all(t.info.status == "FINISHED" for t in trials), [t.info.status for t in trials]


def test_cached_weights_of_another_model_are_one_clear_error(offline_hub):
    put_in_hub_cache(offline_hub, f"timm/{TIMM_NAME}", random_weights("mobilenetv3_small_050"))
    with pytest.raises(UserError) as ei:
        build_model({"backbone": ARCH, "pretrained": "imagenet"})
    msg = str(ei.value)
    assert TIMM_NAME in msg and "do not fit the model" in msg and f"models--timm--{TIMM_NAME}" in msg, msg
