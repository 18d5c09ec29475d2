"""fer_models.losses: fixed weights by hand, uncertainty weights learn, DWA follows its formula."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fer_models import build_model, preset_config
from fer_models.losses import build_loss


def _batch(model, n=4, size=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, model.cfg.num_classes, (n,), generator=g)
    return x, y


def test_fixed_ma_net_equals_hand_computation():
    model = build_model(preset_config("ma_net")).eval()
    x, y = _batch(model)
    out = model(x)
    res = build_loss(model, "fixed")(out, y)
    hand = 0.6 * F.cross_entropy(out.branch_logits["local"], y) + 0.4 * F.cross_entropy(out.branch_logits["global"], y)
    assert torch.allclose(res.total, hand)
    assert set(res.parts) == {"global", "local"}


def test_fixed_scan_cci_sums_the_regions_with_label_smoothing_and_class_weights():
    model = build_model(preset_config("scan_cci_shared")).eval()
    x, y = _batch(model, size=112)
    out = model(x)
    cw = torch.linspace(0.5, 2.0, 7)
    res = build_loss(model, "fixed", label_smoothing=0.1, class_weights=cw)(out, y)

    def ce(b):
        return F.cross_entropy(out.branch_logits[b], y, weight=cw, label_smoothing=0.1)

    hand = 0.2 * ce("global_local") + 0.8 * sum(ce(f"context_{j}") for j in range(4))
    assert torch.allclose(res.total, hand)


def test_pose_term_ignores_unknown_pose_labels():
    model = build_model(preset_config("phanet")).eval()
    x, y = _batch(model)
    out = model(x)
    loss = build_loss(model, "fixed")
    pose = torch.tensor([0, -1, 3, -1])
    res = loss(out, y, pose)
    known = pose >= 0
    assert torch.allclose(res.parts["pose"], F.cross_entropy(out.pose_logits[known], pose[known]))
    assert "pose" not in loss(out, y, torch.full((4,), -1)).parts
    assert "pose" not in loss(out, y, None).parts


def test_uncertainty_weights_are_parameters_that_receive_gradients():
    model = build_model(preset_config("phanet"))
    x, y = _batch(model)
    loss = build_loss(model, "uncertainty")
    names = {n for n, _ in loss.named_parameters()}
    assert names == {f"weighting.log_vars.{t}" for t in ["scale_2", "scale_3", "scale_4", "global", "pose"]}
    res = loss(model(x), y, torch.tensor([0, 1, 2, 3]))
    res.total.backward()
    for n, p in loss.named_parameters():
        assert p.grad is not None and p.grad.abs() > 0, n
    # at s=0: total = sum of parts (+ sum of s = 0)
    assert torch.allclose(res.total, sum(res.parts.values()))
    # one optimizer step moves the weights
    opt = torch.optim.SGD(loss.parameters(), lr=0.5)
    opt.step()
    assert any(float(p.detach()) != 0.0 for p in loss.parameters())


def test_dwa_follows_its_formula_over_epochs():
    model = build_model(preset_config("ma_net")).train()
    loss = build_loss(model, "dwa", dwa_temperature=2.0)
    w = loss.weighting
    # drive the epoch means directly through end_epoch's bookkeeping
    history = [{"global": 2.0, "local": 2.0}, {"global": 1.0, "local": 1.6}, {"global": 0.9, "local": 0.8}]
    seen = []
    for means in history:
        seen.append(dict(w.current))
        w.end_epoch(means)
    assert seen[0] == {"global": 1.0, "local": 1.0} and seen[1] == {"global": 1.0, "local": 1.0}
    # weights used in epoch 3 come from epochs 1 and 2
    r = {"global": 1.0 / 2.0, "local": 1.6 / 2.0}
    z = sum(math.exp(v / 2.0) for v in r.values())
    expected = {k: 2 * math.exp(v / 2.0) / z for k, v in r.items()}
    for k in expected:
        assert seen[2][k] == pytest.approx(expected[k])
    assert sum(seen[2].values()) == pytest.approx(2.0)
    # a term that falls more slowly (local) gets the larger weight
    assert seen[2]["local"] > seen[2]["global"]
    # epoch 4 from epochs 2 and 3: local now falls faster (0.8/1.6 vs 0.9/1.0)
    assert w.current["global"] > w.current["local"]


def test_dwa_uses_the_epoch_means_of_real_steps():
    model = build_model(preset_config("ma_net")).train()
    loss = build_loss(model, "dwa")
    x, y = _batch(model)
    for _ in range(3):
        res = loss(model(x), y)
        assert res.weights == {"global": 1.0, "local": 1.0} or len(loss.weighting.history) >= 2
        means = loss.end_epoch()
        assert set(means) == {"global", "local"} and all(v > 0 for v in means.values())
    assert len(loss.weighting.history) == 3


def test_unknown_weighting_is_an_error():
    model = build_model(preset_config("baseline"))
    with pytest.raises(ValueError, match="unknown loss weighting 'gradnorm'; valid: fixed, uncertainty, dwa"):
        build_loss(model, "gradnorm")
