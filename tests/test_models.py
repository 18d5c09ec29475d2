"""fer_models: presets, every switch, backbones, bad input, pretrained loading (CPU, small inputs)."""
from __future__ import annotations

import copy

import pytest
import timm
from pydantic import ValidationError
import torch

from fer_models import PRESETS, ModelConfig, UserError, UserPathError, build_model, preset_config
from fer_models.cost import count_macs, count_params
from fer_models.losses import build_loss
from fer_models.model import patch_bounds

# SCAN-CCI's 25 patches (ceil split) need a stage-2 map of at least 11 cells: 112 px at stride 8.
PRESET_SIZE = {"scan_cci": 112, "scan_cci_shared": 112}


def _fwd_bwd(model, size, batch=2, weighting="fixed"):
    torch.manual_seed(0)
    model.train()
    x = torch.randn(batch, model.cfg.in_chans, size, size)
    y = torch.randint(0, model.cfg.num_classes, (batch,))
    pose = torch.randint(0, model.cfg.num_pose_classes, (batch,)) if model.cfg.pose_head else None
    loss_fn = build_loss(model, weighting)
    out = model(x)
    res = loss_fn(out, y, pose)
    res.total.backward()
    return out, res, loss_fn


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_forward_backward_every_parameter_gets_a_gradient(name):
    model = build_model(preset_config(name))
    size = PRESET_SIZE.get(name, 64)
    out, res, loss_fn = _fwd_bwd(model, size)
    assert out.logits.shape == (2, 7)
    assert set(out.branch_logits) == set(model.branches)
    assert torch.isfinite(res.total)
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"{name}: parameters without gradient: {missing[:5]}"
    if model.cfg.pose_head:
        assert out.pose_logits.shape == (2, model.cfg.num_pose_classes)
        assert "pose" in res.parts
    else:
        assert out.pose_logits is None


# Parameter counts of the official code at 224x224, 7 classes (shared/FER_ARCHITECTURES.md).
OFFICIAL_PARAMS = {"ma_net": 50.55e6, "scan_cci": 70.2e6, "scan_cci_shared": 13.5e6}
OFFICIAL_GMACS = {"ma_net": 3.64, "scan_cci": 7.0, "scan_cci_shared": 7.0}


@pytest.mark.parametrize("name", list(OFFICIAL_PARAMS))
def test_preset_parameter_count_and_macs_match_the_official_code(name):
    model = build_model(preset_config(name), image_size=224)
    params = count_params(model)
    assert abs(params - OFFICIAL_PARAMS[name]) / OFFICIAL_PARAMS[name] < 0.02, params
    macs = count_macs(model, 224)
    assert abs(macs / 1e9 - OFFICIAL_GMACS[name]) / OFFICIAL_GMACS[name] < 0.02, macs


def test_preset_structures_follow_the_papers():
    ma = build_model(preset_config("ma_net"))
    assert ma.branches == ["global", "local"] and ma.fused_branches == ["global", "local"]
    assert len(ma.local_nets) == 4  # unshared per-patch copies
    # the deep local copy keeps stride 1 in its last stage: 14x14 patch -> 7x7 (MA-Net)
    patch = torch.randn(1, 128, 14, 14)
    assert ma.local_nets[0].eval()(patch).shape == (1, 512, 7, 7)
    scan = build_model(preset_config("scan_cci_shared"))
    assert scan.branches == ["global_local"] + [f"context_{j}" for j in range(4)]
    assert len(scan.local_nets) == 1 and len(scan.context_mlps) == 1
    assert [b - a for a, b in patch_bounds(28, 5, "ceil")] == [6, 6, 6, 6, 4]
    assert [b - a for a, b in patch_bounds(28, 2, "ceil")] == [14, 14]
    assert [b - a for a, b in patch_bounds(28, 5, "even")] == [6, 5, 6, 5, 6]
    pha = build_model(preset_config("phanet"))
    out = pha.eval()(torch.randn(2, 3, 64, 64))
    assert out.scale_weights.shape == (2, 3)
    assert torch.allclose(out.scale_weights.sum(1), torch.ones(2))
    lnl = build_model(preset_config("lnlnet"))
    out = lnl.eval()(torch.randn(2, 3, 64, 64))
    assert out.patch_weights.shape == (2, 9)
    assert torch.allclose(out.logits, (out.branch_logits["global"] + out.branch_logits["local"]) / 2, atol=1e-5)


def test_weighted_fusion_is_the_branch_weighted_sum():
    ma = build_model(preset_config("ma_net")).eval()
    out = ma(torch.randn(2, 3, 64, 64))
    expected = 0.6 * out.branch_logits["local"] + 0.4 * out.branch_logits["global"]
    assert torch.allclose(out.logits, expected, atol=1e-5)


def test_attention_maps_are_returned_by_name():
    out = build_model(preset_config("scan_cci_shared")).eval()(torch.randn(1, 3, 112, 112))
    assert "global_attn.2" in out.attention_maps and "context_eca" in out.attention_maps
    assert out.attention_maps["global_attn.2"].shape == (1, 14, 14)
    out = build_model(preset_config("ma_net")).eval()(torch.randn(1, 3, 64, 64))
    assert any(k.startswith("local_nets.") for k in out.attention_maps)


# --- every switch changes what is built or what is computed -----------------------------------------

BASE = dict(backbone="resnet18", num_patches=4, local_aggregation="mean")
SWITCHES = [
    # (base overrides, field, new value)
    ({}, "backbone", "mobilenetv3_large_100"),
    ({"backbone": "fercnn"}, "fercnn_width", 8),
    ({"backbone": "fercnn"}, "fercnn_depth", 2),
    ({}, "in_chans", 1),
    ({}, "num_classes", 8),
    ({}, "split_stage", 3),
    ({}, "attention", "cbam"),
    ({}, "global_attention", "se"),
    ({}, "global_branch", "multiscale"),
    ({}, "global_stage", 3),
    ({}, "num_scales", 2),
    ({"global_branch": "multiscale"}, "num_scales", 2),
    ({"global_branch": "multiscale", "num_scales": 4}, "multiscale_bidirectional", False),
    ({"global_branch": "multiscale"}, "multiscale_blocks", 1),
    ({}, "num_patches", 9),
    ({"num_patches": 9, "local_shared": True}, "patch_split", "ceil"),
    ({}, "local_kind", "deep"),
    ({}, "local_shared", True),
    ({}, "local_aggregation", "weighted"),
    ({"local_kind": "deep"}, "local_blocks", 1),
    ({}, "unet_fusion", True),
    ({}, "context_branch", True),
    ({"context_branch": True}, "context_hidden", 64),
    ({"context_branch": True}, "context_shared", False),
    ({}, "pose_head", True),
    ({"pose_head": True, "num_pose_classes": 3}, "num_pose_classes", 5),
    ({"local_aggregation": "max"}, "head", "concat_l2"),
    ({}, "dropout", 0.3),
    ({"local_weight": 0.6, "global_weight": 0.4}, "fusion", "weighted"),
    ({"fusion": "weighted"}, "global_weight", 0.25),
    ({"fusion": "weighted"}, "local_weight", 0.25),
    ({"fusion": "weighted", "context_branch": True}, "context_weight", 0.25),
]


def _cfg(over, **kw):
    d = {**BASE, **over, **kw}
    if d.get("pose_head") and "num_pose_classes" not in d:
        d["num_pose_classes"] = 3
    return ModelConfig.model_validate(d)


def test_every_config_field_has_a_switch_test():
    # init changes the starting weights only (loading a's weights into b makes them equal): tested in
    # tests/test_official_weights.py::test_init_official_kaiming_fan_out_outside_the_trunk
    tested = {field for _, field, _ in SWITCHES} | {"pretrained_path", "scale_weight", "pose_weight", "init"}
    tested |= {"pretrained", "pretrained_file"}  # they change the weights, not the model: tests/test_pretrained.py
    assert tested == set(ModelConfig.model_fields), set(ModelConfig.model_fields) ^ tested


@pytest.mark.parametrize("over,field,value", SWITCHES, ids=[f"{f}={v}" for _, f, v in SWITCHES])
def test_switch_changes_the_model(over, field, value):
    a = build_model(_cfg(over))
    b = build_model(_cfg(over, **{field: value}))
    sig_a = (count_params(a), a.branches, repr(a))
    sig_b = (count_params(b), b.branches, repr(b))
    if sig_a != sig_b:
        return  # structure changed
    # Same structure: the same weights must compute something else.
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, a.cfg.in_chans, 64, 64, generator=torch.Generator().manual_seed(1))
    a.eval(), b.eval()
    with torch.no_grad():
        assert not torch.allclose(a(x).logits, b(x).logits), f"{field}={value} changed nothing"


@pytest.mark.parametrize("field", ["scale_weight", "pose_weight"])
def test_aux_weights_change_the_loss(field):
    over = {"num_scales": 2, "pose_head": True, "num_pose_classes": 3}
    torch.manual_seed(0)
    a = build_model(_cfg(over))
    b = build_model(_cfg(over, **{field: 0.1}))
    b.load_state_dict(a.state_dict())
    x, y, p = torch.randn(2, 3, 64, 64), torch.tensor([0, 1]), torch.tensor([0, 2])
    la = build_loss(a)(a.eval()(x), y, p).total
    lb = build_loss(b)(b.eval()(x), y, p).total
    assert not torch.isclose(la, lb)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "mobilenetv3_large_100", "efficientnet_b0"])
def test_backbones_with_every_branch(backbone):
    cfg = ModelConfig(backbone=backbone, num_patches=4, local_kind="deep", local_aggregation="weighted",
                      global_branch="multiscale", num_scales=2, context_branch=True, pose_head=True,
                      num_pose_classes=4, attention="eca", local_blocks=1, multiscale_blocks=1)
    model = build_model(cfg, image_size=64)
    _fwd_bwd(model, 64)
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    # the backbone is built only to the stage the branches need (split + 1 for the context)
    full = timm.create_model(backbone, features_only=True)
    assert count_params(model.backbone) < count_params(full)
    hier = build_model(ModelConfig(backbone=backbone, num_scales=3, attention="spatial"))
    _fwd_bwd(hier, 64)
    assert hier.branches == ["scale_2", "scale_3", "scale_4", "global"]


# --- bad input ---------------------------------------------------------------------------------------

def test_unknown_attention_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown attention type 'transformer'.*cbam.*spatio_channel"):
        ModelConfig(attention="transformer")


def test_patch_count_not_a_grid():
    with pytest.raises(ValueError, match="num_patches=6 is not a square grid"):
        ModelConfig(num_patches=6)


def test_patch_grid_larger_than_the_feature_map_names_value_and_size():
    cfg = ModelConfig(num_patches=25, split_stage=3, local_aggregation="max")
    with pytest.raises(ValueError, match=r"num_patches=25 at image_size=32: the stage-3 map is 2x2"):
        build_model(cfg, image_size=32)
    model = build_model(cfg).eval()
    with pytest.raises(ValueError, match=r"num_patches=25 on the stage-3 map of 2x2"):
        model(torch.randn(1, 3, 32, 32))


def test_pose_head_without_pose_classes():
    with pytest.raises(ValueError, match="num_pose_classes is not set"):
        ModelConfig(pose_head=True)


def test_unknown_backbone_and_stage():
    with pytest.raises(ValueError, match="backbone 'resnet_nope'"):
        build_model(ModelConfig(backbone="resnet_nope"))
    with pytest.raises(ValueError, match="split_stage=4"):
        build_model(ModelConfig(num_patches=4, split_stage=4))
    with pytest.raises(ValueError, match="num_scales=5"):
        build_model(ModelConfig(num_scales=5))


def test_extra_key_is_an_error():
    with pytest.raises(ValueError, match="atention"):
        ModelConfig.model_validate({"atention": "se"})


# --- pretrained weights from a local file --------------------------------------------------------------

def test_pretrained_backbone_file_is_loaded_and_reported(tmp_path):
    ref = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    model = build_model(preset_config("ma_net", pretrained_path=str(path)))
    rep = model.pretrained_report
    assert "backbone.body.layer2.1.conv2.weight" in rep["loaded"]
    assert "layer4.0.conv1.weight" in rep["unexpected"] and "fc.weight" in rep["unexpected"]
    assert rep["missing"] == []  # the file covers the whole (truncated) backbone
    assert torch.equal(model.backbone.body.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)


def test_pretrained_whole_model_round_trip(tmp_path):
    a = build_model(preset_config("lnlnet"))
    path = tmp_path / "lnl.pt"
    torch.save(a.state_dict(), path)
    b = build_model(preset_config("lnlnet", pretrained_path=str(path)))
    assert b.pretrained_report["missing"] == [] and b.pretrained_report["unexpected"] == []
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(a.eval()(x).logits, b.eval()(x).logits)


def test_pretrained_missing_and_mismatched_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model(ModelConfig(pretrained_path=str(tmp_path / "nope.pth")))
    r50 = tmp_path / "r50.pth"
    torch.save(timm.create_model("resnet50").state_dict(), r50)
    with pytest.raises(ValueError, match="wrong shape for 'resnet18'"):
        build_model(ModelConfig(pretrained_path=str(r50)))
    junk = tmp_path / "junk.pth"
    torch.save({"foo.weight": torch.zeros(3)}, junk)
    with pytest.raises(ValueError, match="none of its 1 keys match"):
        build_model(ModelConfig(pretrained_path=str(junk)))
    text = tmp_path / "text.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a loadable state dict"):
        build_model(ModelConfig(pretrained_path=str(text)))


def test_config_round_trips_through_dict():
    cfg = preset_config("scan_cci")
    again = ModelConfig.model_validate(copy.deepcopy(cfg.model_dump()))
    assert again == cfg


@pytest.mark.parametrize("field,value", [("num_classes", 10**9), ("num_pose_classes", 10**6), ("context_hidden", 10**7),
                                         ("in_chans", 10**5)])
def test_sizes_are_bounded_before_anything_is_allocated(field, value):
    """A typo in a model config must be an error naming the field, not terabytes of weights."""
    with pytest.raises(ValidationError, match=f"{field}\n  Input should be less than or equal to"):
        ModelConfig.model_validate({field: value, "pose_head": field == "num_pose_classes"})


def test_build_errors_are_user_errors(tmp_path):
    """What build_model refuses in a config is the user's fault (exit 2 in the CLI), the file named."""
    with pytest.raises(UserPathError, match="pretrained_path .*nope.pt.*: no such file"):
        build_model({"pretrained_path": str(tmp_path / "nope.pt")})
    with pytest.raises(UserError, match="backbone 'resnet_nope'"):
        build_model({"backbone": "resnet_nope"})
    with pytest.raises(UserError, match="split_stage=7"):
        build_model({"num_patches": 4, "split_stage": 7})
    with pytest.raises(UserError, match="unknown preset 'manet'"):
        preset_config("manet")


def test_a_backbone_with_nested_stage_modules_is_truncated():
    """ConvNeXt's stages are `stages.0..3` (flattened to `stages_0` by timm's feature wrapper):
    building it used to raise a bare ValueError ('stages.0' is not in list)."""
    cfg = ModelConfig(backbone="convnext_atto", split_stage=1, num_patches=4, local_aggregation="max",
                      context_branch=True, context_hidden=16, attention="se")
    model = build_model(cfg, image_size=64)
    _fwd_bwd(model, 64)
    assert not [n for n, p in model.named_parameters() if p.grad is None]
    assert model.backbone.keep == [1, 2, 3] and list(model.backbone.body.return_layers) == ["stages_1", "stages_2", "stages_3"]
    cut = build_model(ModelConfig(backbone="convnext_atto", num_scales=2, global_stage=2))
    assert list(cut.backbone.body.keys())[-1] == "stages_2"  # stage 3 is not built
    assert count_params(cut.backbone) < count_params(timm.create_model("convnext_atto", features_only=True))
    _fwd_bwd(cut, 64)


def test_a_fixed_input_size_backbone_is_refused():
    with pytest.raises(UserError, match=r"backbone 'vit_tiny_patch16_224' takes only a fixed 224x224 input"):
        build_model(ModelConfig(backbone="vit_tiny_patch16_224"))
