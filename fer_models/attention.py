"""Attention types: one registry, one line per type.

Generic modules come from `timm.layers` (SE, ECA, CBAM, non-local, global context, CBAM's
spatial gate); only SCAN's spatio-channel attention is written here because no library has a
per-element (C x H x W) sigmoid mask.

Every attention module is wrapped in `AttentionGate`, which keeps a per-position map of the
effective gate (for plots) without changing the computation.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn
from timm.layers import EcaModule, GlobalContext, NonLocalAttn, SEModule
from timm.layers.cbam import CbamModule, SpatialAttn

from .extension import Registry


class SpatioChannelAttention(nn.Module):
    """SCAN (SCAN-CCI, Gera & Balasubramanian 2021): one sigmoid weight per channel per position.

    A = sigmoid(BN(PReLU(conv3x3(X)))), output X * A. The order (activation before BN) is the
    official code's. Written by hand: timm's attention layers all factor the mask into a channel
    vector and/or a spatial map.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.act = nn.PReLU(channels)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.bn(self.act(self.conv(x))))


class _Identity(nn.Identity):
    def __init__(self, channels: int):  # noqa: ARG002 - same signature as the others
        super().__init__()


# name -> factory(channels) -> nn.Module. A new attention type is one line here (and, to search
# over it, a value of `attention` in search_spaces/unified.yaml: tests/test_registries.py checks).
ATTENTION_REGISTRY = Registry("attention type")
ATTENTION_REGISTRY.register("none", _Identity, doc="no attention")
ATTENTION_REGISTRY.register("se", lambda c: SEModule(c, rd_ratio=1 / 16), doc="squeeze-and-excitation (timm), r=16")
ATTENTION_REGISTRY.register("eca", lambda c: EcaModule(c), doc="efficient channel attention (timm)")
# MA-Net: r=16, MLP with biases, 7x7 spatial
ATTENTION_REGISTRY.register("cbam", lambda c: CbamModule(c, rd_ratio=1 / 16, mlp_bias=True), doc="CBAM (timm)")
# CBAM's spatial gate alone (PhaNet-style spatial attention)
ATTENTION_REGISTRY.register("spatial", lambda c: SpatialAttn(kernel_size=7), doc="CBAM's 7x7 spatial gate (timm)")
ATTENTION_REGISTRY.register("non_local", lambda c: NonLocalAttn(c), doc="non-local block (timm)")
ATTENTION_REGISTRY.register("gc", lambda c: GlobalContext(c), doc="global context block (timm)")
ATTENTION_REGISTRY.register("spatio_channel", SpatioChannelAttention)


def check_attention(name: str) -> str:
    """The name, if registered; else an error listing the valid ones."""
    return ATTENTION_REGISTRY.checked(name)


def make_attention(name: str, channels: int) -> "AttentionGate":
    check_attention(name)
    return AttentionGate(name, ATTENTION_REGISTRY[name](channels))


class AttentionGate(nn.Module):
    """Runs an attention module and remembers where it looked.

    The map is the least-squares gate per position, sum_c(x*y) / sum_c(x*x): exactly the mask
    (averaged over channels, weighted by energy) for multiplicative gates, and a faithful
    "gain" map for residual ones such as non-local blocks. Computed without gradient, only
    while `keep_map` is true (the builder turns it off for export).
    """

    def __init__(self, name: str, module: nn.Module):
        super().__init__()
        self.name = name
        self.module = module
        self.keep_map = name != "none"
        self.last_map: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.module(x)
        if self.keep_map and not torch.compiler.is_compiling():
            with torch.no_grad():
                xf, yf = x.detach().float(), y.detach().float()
                self.last_map = (xf * yf).sum(1) / (xf * xf).sum(1).clamp_min(1e-6)
        return y


def attention_factory(name: str) -> Callable[[int], nn.Module]:
    """A `channels -> module` factory usable as timm's `attn_layer` argument."""
    check_attention(name)

    def factory(channels: int, **_: object) -> nn.Module:
        return make_attention(name, channels)

    return factory
