"""Will a trial config build and run? Arithmetic on the backbone's stage layout, no model built.

The same checks `fer_models.FERNet` makes when it builds (stage ranges, the scale stages, the
context stage) and at forward time (the patch grid and the 2x2 context regions must fit the
feature maps at the trial's image size). `fer_models.model.stage_layout` builds each backbone once
(cached) to read its channels and reductions.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

from fer_models.errors import UserError

from .config import TrialConfig


def fit_errors(cfg: TrialConfig) -> Optional[Tuple[str, Dict[str, Any]]]:
    """None, or (what does not fit, the model/data fields involved)."""
    from fer_models.model import patch_bounds, stage_layout

    m, size = cfg.model, cfg.data.image_size
    try:
        chans, reds = stage_layout(m.backbone, m.in_chans, **m.backbone_kwargs)
    except ValueError as exc:
        return str(exc), {"backbone": m.backbone}
    last = len(chans) - 1
    split = m.split_stage
    uses_split = m.num_patches > 0 or m.global_branch == "multiscale" or m.context_branch
    if uses_split and not 1 <= split < last:
        return (f"split_stage={split} must be a stage with a later stage after it (1..{last - 1} for {m.backbone})",
                {"split_stage": split, "backbone": m.backbone})
    if m.global_branch == "backbone":
        g = m.global_stage if m.global_stage is not None else last
        if not 1 <= g <= last:
            return f"global_stage={g} is not a stage of {m.backbone} (1..{last})", {"global_stage": g, "backbone": m.backbone}
        if g - m.num_scales + 1 < 1:
            return (f"num_scales={m.num_scales} needs {m.num_scales} stages ending at stage {g}",
                    {"num_scales": m.num_scales, "global_stage": m.global_stage})
    if m.unet_fusion and m.num_patches == 0:
        return "unet_fusion needs num_patches > 0", {"unet_fusion": True, "num_patches": 0}
    if m.num_patches:
        side = math.ceil(size / reds[split])
        try:
            patch_bounds(side, m.grid, m.patch_split)
        except ValueError as exc:
            return (f"num_patches={m.num_patches} at image_size={size}: the stage-{split} map is {side}x{side}; {exc}",
                    {"num_patches": m.num_patches, "patch_split": m.patch_split, "split_stage": split, "image_size": size})
    if m.context_branch:
        side = math.ceil(size / reds[split + 1])
        if side < 2:
            return (f"context_branch needs a stage-{split + 1} map of at least 2x2; at image_size={size} it is {side}x{side}",
                    {"context_branch": True, "split_stage": split, "image_size": size})
    return None


def smallest_image_size(cfg: TrialConfig, at_least: int = 32, step: int = 8) -> int:
    """The smallest input size >= at_least (a multiple of `step`) at which the model fits: what
    tests use to build a point's model at a tiny input."""
    size = max(at_least, 16)
    while size <= 1024:
        if fit_errors(cfg.model_copy(update={"data": cfg.data.model_copy(update={"image_size": size})})) is None:
            return size
        size += step
    raise UserError(f"no input size up to 1024 fits {cfg.model}")
