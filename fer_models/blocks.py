"""FER-specific building blocks: MA-Net's multi-scale block and the stages built from blocks.

The deep local branch reuses timm's ResNet `BasicBlock` (its `attn_layer` sits after the second
BN, before the residual add: exactly where MA-Net puts CBAM). The multi-scale block is written
here: timm's Res2Net block has one same-direction cascade between 1x1 convolutions, MA-Net's has
two 3x3 cascades in (optionally) opposite directions and no 1x1 convolutions.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import torch
from torch import nn
from timm.models.resnet import BasicBlock

from .errors import UserError


def _shortcut(cin: int, cout: int, stride: int) -> Optional[nn.Module]:
    if cin == cout and stride == 1:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


def _match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Slice or zero-pad x along channels (groups of unequal width when planes % groups != 0)."""
    c = x.shape[1]
    if c == channels:
        return x
    if c > channels:
        return x[:, :channels]
    return nn.functional.pad(x, (0, 0, 0, 0, 0, channels - c))


class MulScaleBlock(nn.Module):
    """MA-Net's multi-scale block (Zhao et al., TIP 2021), `groups` = number of scales.

    conv3x3(stride) -> BN -> ReLU -> split into `groups` channel groups -> two Res2Net-style
    cascades (group k gets ReLU(previous output) + its own split, then conv3x3 + BN) -> the two
    concatenations of the raw BN outputs (no ReLU) summed -> + shortcut -> ReLU. `bidirectional`
    runs the second cascade from the last group to the first (2023 code); False runs both 1->G
    (2021 upload). groups=1 is a plain residual block (one 3x3 convolution after the first).
    """

    def __init__(self, cin: int, planes: int, stride: int = 1, groups: int = 4, bidirectional: bool = True):
        super().__init__()
        if groups < 1 or groups > planes:
            raise UserError(f"multi-scale block: groups={groups} must be in 1..{planes} (the block's width)")
        self.conv1 = nn.Conv2d(cin, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        # in place only on tensors nothing else keeps (bn1's output, the final sum); the cascade's
        # outputs are kept for the join, so the ReLU between groups copies (see _run)
        self.relu = nn.ReLU(inplace=True)
        self.widths = [t.numel() for t in torch.arange(planes).tensor_split(groups)]
        self.groups = groups
        self.bidirectional = bidirectional

        def cascade() -> nn.ModuleList:
            return nn.ModuleList(
                nn.Sequential(nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)) for w in self.widths)

        self.cascade_a = cascade()
        self.cascade_b = cascade() if groups > 1 else None
        self.shortcut = _shortcut(cin, planes, stride)

    def _run(self, parts: Sequence[torch.Tensor], convs: nn.ModuleList, order: Sequence[int]) -> List[torch.Tensor]:
        outs: List[Optional[torch.Tensor]] = [None] * len(parts)
        prev = None
        for k in order:
            # torch.relu, not self.relu: prev is also outs[k-1], and the join takes the raw BN output
            # (MA-Net's out_1 = cat(bn(...), ...)); an in-place ReLU here rewrote it unnoticed
            inp = parts[k] if prev is None else parts[k] + _match_channels(torch.relu(prev), parts[k].shape[1])
            prev = convs[k](inp)
            outs[k] = prev
        return outs  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        y = self.relu(self.bn1(self.conv1(x)))
        parts = torch.split(y, self.widths, dim=1)
        fwd = list(range(self.groups))
        out = torch.cat(self._run(parts, self.cascade_a, fwd), 1)
        if self.cascade_b is not None:
            order_b = fwd[::-1] if self.bidirectional else fwd
            out = out + torch.cat(self._run(parts, self.cascade_b, order_b), 1)
        return self.relu(out + identity)


def multiscale_stages(cin: int, widths: Sequence[int], strides: Sequence[int], blocks: int,
                      groups: int, bidirectional: bool) -> nn.Sequential:
    layers: List[nn.Module] = []
    for w, s in zip(widths, strides):
        for b in range(blocks):
            layers.append(MulScaleBlock(cin, w, s if b == 0 else 1, groups, bidirectional))
            cin = w
    return nn.Sequential(*layers)


def attention_basic_stages(cin: int, widths: Sequence[int], strides: Sequence[int], blocks: int,
                           attn_layer: Callable[..., nn.Module]) -> nn.Sequential:
    """ResNet BasicBlock stages with an attention module in every block (MA-Net's local branch)."""
    layers: List[nn.Module] = []
    for w, s in zip(widths, strides):
        for b in range(blocks):
            stride = s if b == 0 else 1
            layers.append(BasicBlock(cin, w, stride=stride, downsample=_shortcut(cin, w, stride), attn_layer=attn_layer))
            cin = w
    return nn.Sequential(*layers)
