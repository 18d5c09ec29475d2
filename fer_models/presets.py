"""The four published architectures (and a plain baseline) as points of one builder.

Each preset is a `ModelConfig` dict; `build_model(PRESETS[name])` builds it. What is faithful and
what is approximated is recorded in docs/ARCHITECTURES.md (and the README table).
"""
from __future__ import annotations

from typing import Any, Dict

from .config import ModelConfig
from .errors import UserError

PRESETS: Dict[str, Dict[str, Any]] = {
    # backbone + linear head: ResNet-18, GAP, one classifier
    "baseline": dict(backbone="resnet18"),
    # MA-Net (Zhao et al., TIP 2021): ResNet-18 stem+layer1-2, 2x2 patches of the 28x28 map, each an
    # unshared layer3-4 copy with CBAM in every block (last stage stride 1), stitched + GAP; global
    # branch: 4-group bidirectional multi-scale layer3-4; loss and prediction 0.6 local / 0.4 global.
    "ma_net": dict(
        backbone="resnet18", split_stage=2, attention="cbam", global_attention="none",
        global_branch="multiscale", num_scales=4, multiscale_bidirectional=True,
        num_patches=4, patch_split="ceil", local_kind="deep", local_shared=False, local_aggregation="stitch",
        fusion="weighted", local_weight=0.6, global_weight=0.4),
    # SCAN-CCI (Gera & Balasubramanian, PRL 2021): ResNet-50 to layer3; 25 patches (6-6-6-6-4) of the
    # layer2 map, one SCAN per patch, max over patches; a global SCAN on the whole map; concat, L2,
    # FC; CCI on layer3 (ECA k=5, 2x2 regions, shared MLP 1024-256-C). Loss 0.2 att + 0.8 per region;
    # prediction: mean of the 5 logit sets.
    "scan_cci": dict(
        backbone="resnet50", split_stage=2, global_stage=2, attention="spatio_channel",
        num_patches=25, patch_split="ceil", local_kind="attention", local_shared=False, local_aggregation="max",
        head="concat_l2", context_branch=True, context_hidden=256, context_shared=True,
        fusion="mean", global_weight=0.2, context_weight=0.8),
    # SCAN-CCI as the official RAF-DB script runs it: one SCAN shared by the 25 patches.
    "scan_cci_shared": dict(
        backbone="resnet50", split_stage=2, global_stage=2, attention="spatio_channel",
        num_patches=25, patch_split="ceil", local_kind="attention", local_shared=True, local_aggregation="max",
        head="concat_l2", context_branch=True, context_hidden=256, context_shared=True,
        fusion="mean", global_weight=0.2, context_weight=0.8),
    # PhaNet (Liu et al., 2019), approximated (no method section or code is available): spatial
    # attention on ResNet-18 layer2-4, an auxiliary classifier per scale, a learned softmax gate
    # selecting scales, a head-pose classifier; trained with learned (uncertainty) loss weights.
    "phanet": dict(
        backbone="resnet18", attention="spatial", num_scales=3, pose_head=True, num_pose_classes=5,
        scale_weight=0.5, pose_weight=0.5),
    # LNLAttenNet (Shi et al., MIR 2024), approximated: a U-Net step merges layer4 into the layer2
    # map, 3x3 regions each with their own attention network + classifier, weighted by region scores
    # from a non-local attention network; a non-local global branch; logits averaged.
    "lnlnet": dict(
        backbone="resnet18", split_stage=2, attention="cbam", global_attention="non_local",
        num_patches=9, local_kind="attention", local_shared=False, local_aggregation="weighted",
        unet_fusion=True, fusion="mean"),
}

# Loss weighting each paper uses (the model config holds the weights; the weighting scheme is
# part of the training config).
PRESET_LOSS_WEIGHTING = {"baseline": "fixed", "ma_net": "fixed", "scan_cci": "fixed",
                         "scan_cci_shared": "fixed", "phanet": "uncertainty", "lnlnet": "fixed"}


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; valid: {', '.join(PRESETS)}")
    return ModelConfig.model_validate({**PRESETS[name], **overrides})
