"""Compact backbones for 48-64 px faces (issue 11, item 8): timm's small nets and `fercnn`, the
mini-Xception-style FER CNN of fer_models/fercnn.py, under every branch type of the builder."""
from __future__ import annotations

import pytest
import timm
import torch

from fer_models import ModelConfig, UserError, build_model
from fer_models.backbone import Backbone
from fer_models.cost import count_params
from fer_models.losses import build_loss
from search_spaces import load_space

COMPACT = ["fercnn", "resnet10t", "mobilenetv3_small_100", "mobilenetv3_small_050", "lcnet_100", "lcnet_075",
           "lcnet_050", "ghostnet_100", "ghostnet_050"]
# the deep local branch (a copy of the later stages per patch) only where those are narrow, as in unified.yaml
DEEP_OK = {"fercnn", "resnet10t", "lcnet_100", "lcnet_075", "lcnet_050", "ghostnet_100", "ghostnet_050"}

# Four configurations that between them hold every branch type: local patches under each
# aggregation (stitch, max, mean, weighted), the deep local kind, the multi-scale (MA-Net) global
# branch, num_scales > 1 on the backbone's stages (PhaNet), the concat_l2 head, U-Net fusion,
# the SCAN-CCI context branch and the pose head.
BRANCH_SETS = {
    "stitch-deep-multiscale-context": dict(num_patches=4, local_aggregation="stitch", local_kind="deep",
                                           attention="cbam", global_branch="multiscale", num_scales=2,
                                           context_branch=True, context_hidden=16),
    "max-concat-scales-unet": dict(num_patches=4, local_aggregation="max", head="concat_l2", attention="se",
                                   num_scales=3, unet_fusion=True),
    "mean-scales-pose": dict(num_patches=4, local_aggregation="mean", attention="spatio_channel", num_scales=2,
                             pose_head=True, num_pose_classes=3),
    "weighted-context-pose": dict(num_patches=4, local_aggregation="weighted", attention="eca",
                                  context_branch=True, context_hidden=16, pose_head=True, num_pose_classes=5),
}


def _fwd_bwd(model: torch.nn.Module, size: int) -> None:
    torch.manual_seed(0)
    model.train()
    x = torch.randn(2, 3, size, size)
    y = torch.tensor([0, 1])
    pose = torch.tensor([0, 1]) if model.cfg.pose_head else None
    out = model(x)
    assert out.logits.shape == (2, 7)
    assert set(out.branch_logits) == set(model.branches)
    res = build_loss(model, "fixed")(out, y, pose)
    assert torch.isfinite(res.total)
    res.total.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without a gradient: {missing[:5]}"


@pytest.mark.parametrize("size", [48, 64])
@pytest.mark.parametrize("backbone", COMPACT)
def test_every_compact_backbone_builds_and_trains_under_every_branch_type(backbone, size):
    for name, fields in BRANCH_SETS.items():
        if fields.get("local_kind") == "deep" and backbone not in DEEP_OK:
            fields = {**fields, "local_kind": "attention"}
        model = build_model(ModelConfig(backbone=backbone, **fields), image_size=size)
        try:
            _fwd_bwd(model, size)
        except Exception as exc:  # noqa: BLE001 - name the branch set that broke
            raise AssertionError(f"{backbone} at {size} px, {name}: {exc}") from exc


@pytest.mark.parametrize("backbone", COMPACT)
def test_compact_backbones_are_truncated_to_the_stages_the_branches_read(backbone):
    """A split at stage 2 with a single-scale global branch on stage 3: stage 4 is not built, so no
    parameter idles without a gradient (and the counts are the truncated trunk's)."""
    kw = ModelConfig(backbone=backbone).backbone_kwargs
    whole = Backbone(backbone, [0, 1, 2, 3, 4], **kw)
    cut = Backbone(backbone, [2, 3], **kw)
    assert count_params(cut) < count_params(whole)
    feats = cut(torch.zeros(1, 3, 48, 48))
    assert sorted(feats) == [2, 3]
    assert feats[3].shape[1] == whole.all_channels[3]


def test_fercnn_is_a_timm_model_with_five_feature_stages_and_no_weights():
    model = timm.create_model("fercnn", num_classes=7)
    assert model(torch.zeros(1, 3, 48, 48)).shape == (1, 7)
    b = Backbone("fercnn", [0, 1, 2, 3, 4], width=16, depth=1)
    assert b.all_channels == [8, 16, 32, 64, 128]
    assert b.all_reductions == [1, 2, 4, 8, 16]  # half a ResNet's: a 48 px face keeps a 12x12 split map
    # mini-Xception's size (Arriaga et al. 2017: ~58k with its classifier convolution)
    assert 30_000 < count_params(model) < 80_000
    with pytest.raises(RuntimeError, match="No pretrained weights"):
        timm.create_model("fercnn", pretrained=True)


def test_fercnn_width_and_depth_change_the_model():
    def params(**kw):
        return count_params(build_model(ModelConfig(backbone="fercnn", **kw), image_size=48))

    base = params()
    assert params(fercnn_width=16, fercnn_depth=1) == base  # None means the documented defaults
    assert params(fercnn_width=8) < base < params(fercnn_width=32)
    assert base < params(fercnn_depth=2) < params(fercnn_depth=3)
    wide = build_model(ModelConfig(backbone="fercnn", fercnn_width=32), image_size=48)
    assert wide.stage_channels == [16, 32, 64, 128, 256]


@pytest.mark.parametrize("fields, match", [
    (dict(backbone="resnet18", fercnn_width=16), "fercnn_width=16 applies to backbone 'fercnn' only"),
    (dict(backbone="lcnet_050", fercnn_depth=2), "fercnn_depth=2 applies to backbone 'fercnn' only"),
    (dict(backbone="fercnn", fercnn_width=3), "greater than or equal to 4"),
    (dict(backbone="fercnn", fercnn_width=512), "less than or equal to 256"),
    (dict(backbone="fercnn", fercnn_depth=0), "greater than or equal to 1"),
    (dict(backbone="fercnn", fercnn_depth=9), "less than or equal to 8"),
])
def test_bad_fercnn_width_and_depth_are_refused(fields, match):
    with pytest.raises((UserError, ValueError), match=match):
        ModelConfig(**fields)


def test_unified_space_offers_the_compact_backbones_and_fercnn_knobs_only_on_fercnn():
    space = load_space("unified")
    values = space.dimensions["backbone"].values
    assert set(COMPACT) <= set(values)
    on = {"backbone": "fercnn"}
    off = {"backbone": "lcnet_050"}
    assert space.is_active("fercnn_width", on) and space.is_active("fercnn_depth", on)
    assert not space.is_active("fercnn_width", off) and not space.is_active("fercnn_depth", off)
    # a sampled fercnn point carries its width and depth into the model it builds
    import random

    from _space_helpers import repair
    from search_spaces.samplers import _draw

    rng = random.Random(0)
    for _ in range(50):
        point = {}
        for n in space.order:
            if space.is_active(n, point):
                point[n] = _draw(space.dimensions[n], rng)
        point = repair(space, {**point, "backbone": "fercnn"}, rng)
        try:
            cfg = space.validate(point)
        except Exception:  # noqa: BLE001 - a combination that does not fit: draw again
            continue
        assert cfg.model.fercnn_width == point["fercnn_width"]
        assert cfg.model.fercnn_depth == point["fercnn_depth"]
        return
    pytest.fail("no valid fercnn point in 50 draws")


def test_a_fercnn_model_exports_for_serving():
    """The quick start promotes a fercnn trial: its model must pass torch.export like the presets."""
    import numpy as np

    from runners.registry.packaging import FERInference, export_inference_module

    model = build_model(ModelConfig(backbone="fercnn", num_patches=4, attention="cbam", num_scales=2,
                                    local_aggregation="max"), image_size=48)
    model.set_keep_attention_maps(False)
    module = FERInference(model, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).eval()
    export_inference_module(module, np.zeros((2, 48, 48, 3), np.uint8), where="fercnn")
