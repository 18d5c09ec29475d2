"""What the official FER code does differently from this project's correct defaults (issue 12,
item 3), kept apart so that the builder's own path stays the plain one:

- `official_bottom_strip`: SCAN-CCI's patch cut (`patch_split: ceil_official`). Its code cuts the
  bottom strip of the map (rows after the last full cell, left of the corner) along the wrong
  axis: official patch j is the strip's row j, laid out as (g-1) windows of `step` columns,
  instead of the strip's j-th block of `step` columns. The other cells are cut correctly.
- `official_init` (`init: official`): kaiming-normal fan-out in the convolutions outside the
  backbone trunk, BN weight 1 / bias 0, and BN momentum 0.01 in CBAM's spatial gate, as the
  official MA-Net code initialises its network (zengqunzhao/MA-Net model/manet.py, attention.py);
  the trunk keeps timm's init or the pretrained weights.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import nn
from timm.layers.cbam import ChannelAttn, SpatialAttn


def official_bottom_strip(x: torch.Tensor, rows: Sequence[Tuple[int, int]],
                          cols: Sequence[Tuple[int, int]]) -> List[torch.Tensor]:
    """The g-1 bottom-strip cells (left to right in the grid) as SCAN-CCI's code cuts them: the
    strip x[r0:, :c0] of the last row (r0) left of the corner column (c0), h = g-1 rows high and
    (g-1)*step wide; cell j = strip row j reshaped to (g-1, step). patch_bounds('ceil_official')
    has checked that h == g-1, so each cell has the shape of the correct cut."""
    g = len(rows)
    r0, c0, step = rows[-1][0], cols[-1][0], cols[0][1] - cols[0][0]
    strip = x[..., r0:, :c0]
    return [strip[..., j, :].reshape(*strip.shape[:-2], g - 1, step) for j in range(g - 1)]


def official_init(model: nn.Module) -> None:
    """Re-initialise a FERNet's modules outside `backbone` as the official code does."""
    # CBAM's channel MLP is nn.Linear in the official code, which its kaiming loop skips (PyTorch's
    # default Linear init, the one timm's 1x1 convolutions standing for it already have)
    linear_like = {id(s) for m in model.modules() if isinstance(m, ChannelAttn) for s in m.modules()}
    for name, m in model.named_modules():
        if name == "backbone" or name.startswith("backbone.") or id(m) in linear_like:
            continue  # the trunk: timm's init or the pretrained weights, untouched
        if isinstance(m, nn.Conv2d):  # the weight only: the official loop leaves a bias as PyTorch made it
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        if isinstance(m, SpatialAttn):
            m.conv.bn.momentum = 0.01  # CBAM's spatial gate: BatchNorm2d(1, momentum=0.01) officially
