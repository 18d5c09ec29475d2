"""MA-Net's multi-scale block against a re-statement of its computation, and no in-place op in any
preset that rewrites a tensor kept for later (issue 10, item 2).

The reference below copies where the block may modify in place: it calls each submodule of the
block (conv, BN) itself and joins the raw BN outputs of each cascade, as the official MA-Net code
does (`out_1 = cat([bn(..), ...])`; ReLU only on what goes into the next group), then adds the
shortcut and applies ReLU. A ReLU applied in place to a tensor the join keeps changes the result;
autograd raises nothing (ReLU's backward reads its output), so only a comparison sees it.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fer_models import ATTENTION_REGISTRY, PRESETS, build_model, preset_config
from fer_models.blocks import MulScaleBlock


def reference_block(block: MulScaleBlock, x: torch.Tensor) -> torch.Tensor:
    """MA-Net's block from `block`'s own weights, never modifying a tensor in place."""
    identity = x.clone() if block.shortcut is None else block.shortcut(x)
    y = F.relu(block.bn1(block.conv1(x)))
    parts = [p.clone() for p in torch.split(y, block.widths, dim=1)]
    G = block.groups

    def cascade(convs, order):
        outs = {}
        prev = None
        for k in order:
            conv, bn = convs[k][0], convs[k][1]
            if prev is None:
                inp = parts[k]
            else:
                r = F.relu(prev)  # a new tensor: prev (the raw BN output) stays as it is for the join
                c = parts[k].shape[1]
                r = r[:, :c] if r.shape[1] >= c else F.pad(r, (0, 0, 0, 0, 0, c - r.shape[1]))
                inp = parts[k] + r
            prev = bn(conv(inp))
            outs[k] = prev
        return torch.cat([outs[k] for k in range(G)], 1)

    out = cascade(block.cascade_a, list(range(G)))
    if block.cascade_b is not None:
        order_b = list(range(G))[::-1] if block.bidirectional else list(range(G))
        out = out + cascade(block.cascade_b, order_b)
    return F.relu(out + identity)


def _randomize_bn(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Non-trivial BN statistics, so that BN outputs have both signs in eval mode too."""
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=gen))
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))


@pytest.mark.parametrize("bidirectional", [True, False], ids=["bidirectional-2023", "one-direction-2021"])
@pytest.mark.parametrize("cin,planes,stride,groups", [(16, 32, 2, 4), (32, 32, 1, 4), (16, 30, 1, 4), (8, 12, 1, 3)])
def test_multiscale_block_joins_the_raw_bn_outputs(bidirectional, cin, planes, stride, groups):
    gen = torch.Generator().manual_seed(0)
    block = MulScaleBlock(cin, planes, stride=stride, groups=groups, bidirectional=bidirectional).eval()
    _randomize_bn(block, gen)
    x = torch.randn(2, cin, 12, 12, generator=gen)
    with torch.no_grad():
        want = reference_block(block, x)
        got = block(x)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-6, rtol=1e-6), (got - want).abs().max().item()


def test_multiscale_block_gradient_matches_the_reference():
    """Training mode (batch statistics) and the gradient of the input, both directions."""
    for bidirectional in (True, False):
        torch.manual_seed(1)
        block = MulScaleBlock(16, 32, stride=1, groups=4, bidirectional=bidirectional).train()
        x = torch.randn(3, 16, 10, 10, requires_grad=True)
        g1, = torch.autograd.grad(block(x).square().sum(), x)
        g2, = torch.autograd.grad(reference_block(block, x).square().sum(), x)
        assert torch.allclose(g1, g2, atol=1e-5, rtol=1e-5), (g1 - g2).abs().max().item()


def _no_inplace(model: torch.nn.Module) -> int:
    n = 0
    for m in model.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
            n += 1
    return n


# beyond the presets: every attention type inside deep local blocks (timm's BasicBlock adds the
# shortcut in place after the attention) and on backbone stages shared with the patches; and in
# attention-kind patches of a shared module, with U-Net fusion, the context branch and the
# one-directional multi-scale branch reading the same split map
CONFIGS = {
    **{f"deep-local-{a}": dict(attention=a, global_attention=a, num_scales=2, num_patches=4, local_kind="deep",
                               local_blocks=1, local_aggregation="stitch") for a in ATTENTION_REGISTRY},
    **{f"shared-patches-unet-context-multiscale-{a}": dict(
        attention=a, global_attention=a, global_branch="multiscale", num_scales=3, multiscale_blocks=1,
        multiscale_bidirectional=False,
        num_patches=4, local_kind="attention", local_shared=True, local_aggregation="max", unet_fusion=True,
        context_branch=True, context_hidden=16) for a in ATTENTION_REGISTRY},
}


# scan_cci is left out (its ResNet-50 at 112 px is the slowest build): scan_cci_shared has the same
# modules, and per-patch modules are covered by the deep-local configs
@pytest.mark.parametrize("name", [p for p in PRESETS if p != "scan_cci"] + list(CONFIGS))
def test_no_inplace_op_changes_what_a_model_computes(name):
    """Every module that can act in place (ReLU, timm's activations, ...) switched to a copying
    version gives the same logits of every branch: no in-place op rewrites a tensor that another
    branch (global, patches, U-Net fusion, context, attention maps) still reads."""
    size = 112 if name.startswith("scan_cci") else 64
    torch.manual_seed(0)
    model = build_model(preset_config(name) if name in PRESETS else CONFIGS[name]).eval()
    _randomize_bn(model, torch.Generator().manual_seed(1))
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        a = model(x)
        assert _no_inplace(model) > 0
        b = model(x)
    for k in a.branch_logits:
        assert torch.allclose(a.branch_logits[k], b.branch_logits[k], atol=1e-5, rtol=1e-5), k
    assert torch.allclose(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    for k in a.attention_maps:
        assert torch.allclose(a.attention_maps[k], b.attention_maps[k], atol=1e-5, rtol=1e-5), k
