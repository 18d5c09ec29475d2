"""Exactly the official networks (issue 12, item 3): golden outputs of the official code.

The numbers below were printed by a scratch script (outside this repository) that ran the OFFICIAL
networks: MA-Net (zengqunzhao/MA-Net `model/manet.py`, 2023 HEAD `923fa6c` = bidirectional cascade,
and the 2021 upload `aaf8788` = one-directional) and SCAN-CCI (1980x/SCAN-CCI-FER `8011a10`,
ResNet-50 to layer3 + SharedAttentionBranch + RegionBranch), 7 classes, with every state-dict
tensor filled by `fill` below, in eval mode, on one seeded input. This file rebuilds the same
checkpoint from the key list (test data in test_official_weights.py, which that script checked
equal to the official state dicts' keys and shapes), loads it into the preset through
`fer-automl models import-weights` / `pretrained_path`, and compares with the printed numbers.
No official code is in this repository; only its outputs are.

Tolerance: |preset - official| <= 1e-5 + 1e-5 * |official| (absolute 1e-5, relative where the
MA-Net global logits reach ~12). The measured differences are ~1e-6 or less (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import pytest
import torch

from fer_models import build_model, preset_config
from runners.cli import main
from test_official_weights import manet_shapes, scan_parts

SEED, INPUT_SEED = 12, 34
TOL = dict(atol=1e-5, rtol=1e-5)


def fill(shapes: Dict[str, Tuple[int, ...]], g: torch.Generator) -> Dict[str, torch.Tensor]:
    """The fill rule of the golden script: keys in sorted order, one generator."""
    out = {}
    for k in sorted(shapes):
        shp = shapes[k]
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(0)
        elif k.endswith("running_var"):
            out[k] = 0.5 + torch.rand(shp, generator=g)
        elif k.endswith("running_mean"):
            out[k] = 0.1 * torch.randn(shp, generator=g)
        elif k.endswith("bias"):
            out[k] = 0.1 * torch.randn(shp, generator=g)
        elif len(shp) == 1:  # BN and PReLU weights
            out[k] = 1 + 0.1 * torch.randn(shp, generator=g)
        else:
            out[k] = torch.randn(shp, generator=g) / math.sqrt(math.prod(shp) // shp[0])
    return out


def golden_input() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(INPUT_SEED))


@pytest.fixture(autouse=True)
def one_thread():
    """CPU, float32, one thread: the summation order of the golden run, bar float noise."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run(model) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    model.eval()
    with torch.no_grad():
        out = model(golden_input())
    return out.logits, out.branch_logits


def close(got, want) -> bool:
    return torch.allclose(got, torch.tensor(want), **TOL)


# ---- MA-Net ------------------------------------------------------------------------------------
# fc_1 (the local branch) is the same code in both uploads; fc_2 (global, after the multi-scale
# stages) differs with the cascade direction; fused = 0.6 * fc_1 + 0.4 * fc_2 (main.py's beta).
MANET_FC1 = [[2.04218054, -1.16711605, 0.902342677, -0.749851346, -1.42672312, 0.816087663, -0.812740922],
             [2.03634238, -1.17667103, 0.913089573, -0.693047643, -1.41820776, 0.827686131, -0.798760474]]
MANET = {
    True: {  # 2023 HEAD 923fa6c: bidirectional cascade
        "fc_2": [[2.93222022, 11.5333939, 9.58002663, 9.26907349, 1.19122064, 4.75008059, 12.3919287],
                 [2.3205173, 11.6804323, 9.37585545, 9.66926479, 0.999708533, 4.93696356, 12.351409]],
        "fused": [[2.3981967, 3.91308784, 4.37341642, 3.25771856, -0.379545659, 2.38968492, 4.4691267],
                  [2.15001249, 3.96617031, 4.29819584, 3.45187736, -0.451041251, 2.47139716, 4.46130753]],
    },
    False: {  # 2021 upload aaf8788: both cascades run the same direction
        "fc_2": [[4.48853779, 9.51299953, 2.40652037, 4.21406603, -5.54034853, 8.81264591, 8.51556778],
                 [4.85473251, 9.57666302, 2.35631299, 4.33568811, -5.23927736, 8.81434822, 8.60517502]],
        "fused": [[3.02072358, 3.10493016, 1.50401378, 1.23571563, -3.0721736, 4.0147109, 2.91858244],
                  [3.16369843, 3.12466264, 1.49037898, 1.31844664, -2.94663572, 4.02235126, 2.96281362]],
    },
}


@pytest.fixture(scope="module")
def manet_checkpoint(tmp_path_factory):
    """MA-Net's save format ({'state_dict': {'module.<key>': ...}}) with the golden values."""
    sd = fill(manet_shapes(7), torch.Generator().manual_seed(SEED))
    path = tmp_path_factory.mktemp("golden_manet") / "model_best.pth"
    torch.save({"epoch": 40, "state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    return path


def _check_manet(model, bidirectional):
    logits, branches = run(model)
    want = MANET[bidirectional]
    diffs = {"local": (branches["local"] - torch.tensor(MANET_FC1)).abs().max().item(),
             "global": (branches["global"] - torch.tensor(want["fc_2"])).abs().max().item(),
             "fused": (logits - torch.tensor(want["fused"])).abs().max().item()}
    assert close(branches["local"], MANET_FC1), diffs
    assert close(branches["global"], want["fc_2"]), diffs
    assert close(logits, want["fused"]), diffs
    return diffs


def test_ma_net_bidirectional_equals_the_official_2023_network(manet_checkpoint, tmp_path, capsys):
    """Through the CLI: import-weights writes the preset's state dict, pretrained_path loads it."""
    out = tmp_path / "ma_net.pt"
    assert main(["models", "import-weights", str(manet_checkpoint), "--from", "ma_net", "--preset", "ma_net",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    model = build_model(preset_config("ma_net", num_classes=7, multiscale_bidirectional=True,
                                      pretrained_path=str(out)))
    assert not model.pretrained_report["missing"]
    _check_manet(model, True)


def test_ma_net_one_directional_equals_the_official_2021_network_and_can_fail(manet_checkpoint):
    """Straight from the official file: pretrained_path detects the layout. Then not vacuous: the
    other cascade direction's numbers, or CBAM's spatial channels left unswapped (the official
    (max, mean) vs timm's (mean, max) mapping), miss."""
    model = build_model(preset_config("ma_net", num_classes=7, multiscale_bidirectional=False,
                                      pretrained_path=str(manet_checkpoint)))
    assert model.pretrained_report["layout"] == ["ma_net"] and not model.pretrained_report["missing"]
    _check_manet(model, False)
    _, branches = run(model)
    assert not close(branches["global"], MANET[True]["fc_2"])  # 2021 preset vs 2023 numbers
    sd = model.state_dict()
    spatial = [k for k in sd if k.endswith("se.module.spatial.conv.conv.weight")]
    assert len(spatial) == 16  # 4 patches x (2 layer3 + 2 layer4 blocks)
    model.load_state_dict({k: sd[k].flip(1) for k in spatial}, strict=False)
    _, branches = run(model)
    assert (branches["local"] - torch.tensor(MANET_FC1)).abs().max().item() > 1e-3


# ---- SCAN-CCI (one shared SCAN, the RAF-DB script's network) -------------------------------------
# attention = AttentionBranch's fc over [local, global]; region_j = RegionBranch's logits of
# region j; fused = the mean of the five (the official test-time average).
SCAN_SHARED = {
    "attention": [[-0.0358325765, -0.122476876, -0.0413320214, -0.00559186377, 0.0251904521, -0.0757962987, 0.0771550387],
                  [-0.0377261043, -0.122093856, -0.0407099351, -0.00695513003, 0.0268927403, -0.0761269629, 0.0757837892]],
    "region_0": [[1.97650003, 1.18483484, 0.291784018, 0.401526511, -0.387624919, -0.352944136, -2.74913859],
                 [2.01403308, 1.15535593, 0.195482582, 0.390856564, -0.399316967, -0.337673962, -2.76944375]],
    "region_1": [[1.99692059, 1.22768581, 0.340455651, 0.394524753, -0.30032742, -0.22645165, -2.77134633],
                 [2.05150867, 1.17340624, 0.335317075, 0.367365777, -0.269242883, -0.157473639, -2.81201863]],
    "region_2": [[1.95753479, 1.15660107, 0.203745067, 0.35651499, -0.434327245, -0.377256751, -2.7510705],
                 [1.96100879, 1.16263068, 0.190974653, 0.319131911, -0.410545647, -0.352186441, -2.72770977]],
    "region_3": [[2.02392316, 1.19395494, 0.277488708, 0.292651236, -0.233223245, -0.210304514, -2.66062284],
                 [2.03422284, 1.19423378, 0.33044827, 0.238695696, -0.236883506, -0.221928254, -2.73529363]],
    "fused": [[1.58380914, 0.928119957, 0.214428276, 0.287925094, -0.266062468, -0.248550653, -2.17100453],
              [1.60460949, 0.912706554, 0.20230253, 0.261818945, -0.257819265, -0.229077861, -2.19373655]],
}


def scan_checkpoint(path, shared: bool):
    """SCAN-CCI's save format, filled part by part (base, attention, region) from one generator;
    the region part's 'classifiers.j.*' are the same module as 'region_net.*' officially."""
    g = torch.Generator().manual_seed(SEED)
    parts = {}
    for name, tensors in scan_parts(shared=shared).items():
        shapes = {k: tuple(v.shape) for k, v in tensors.items() if not k.startswith("classifiers.")}
        sd = fill(shapes, g)
        for k in tensors:
            if k.startswith("classifiers."):
                sd[k] = sd["region_net." + k.split(".", 2)[2]]
        parts[name] = sd
    torch.save({"epoch": 12, **{f"{p}_state_dict": {"module." + k: v for k, v in sd.items()}
                                for p, sd in parts.items()}}, path)
    return path


def _scan_diffs(logits, branches, want):
    d = {"attention": (branches["global_local"] - torch.tensor(want["attention"])).abs().max().item(),
         "fused": (logits - torch.tensor(want["fused"])).abs().max().item()}
    d.update({f"region_{j}": (branches[f"context_{j}"] - torch.tensor(want[f"region_{j}"])).abs().max().item()
              for j in range(4)})
    return d


def test_scan_cci_shared_equals_the_official_network_and_can_fail(tmp_path):
    path = scan_checkpoint(tmp_path / "model_best.pth.tar", shared=True)
    model = build_model(preset_config("scan_cci_shared", num_classes=7, patch_split="ceil_official",
                                      pretrained_path=str(path)))
    assert model.pretrained_report["layout"] == ["scan_cci"] and not model.pretrained_report["missing"]
    logits, branches = run(model)
    d = _scan_diffs(logits, branches, SCAN_SHARED)
    assert close(branches["global_local"], SCAN_SHARED["attention"]), d
    for j in range(4):
        assert close(branches[f"context_{j}"], SCAN_SHARED[f"region_{j}"]), d
    assert close(logits, SCAN_SHARED["fused"]), d

    # not vacuous: the FC halves left in the official [local, global] order miss the numbers
    sd = model.state_dict()
    w = sd["joint_head.weight"]
    model.load_state_dict({"joint_head.weight": torch.cat(w.chunk(2, 1)[::-1], 1)}, strict=False)
    _, branches = run(model)
    assert not close(branches["global_local"], SCAN_SHARED["attention"])
    # and the correct cut (the default `ceil`) is not the published network
    correct = build_model(preset_config("scan_cci_shared", num_classes=7, pretrained_path=str(path)))
    _, branches = run(correct)
    assert not close(branches["global_local"], SCAN_SHARED["attention"])


# ---- SCAN-CCI with one SCAN per patch (25 attention masks: the other scripts' network) ----------
SCAN_PER_PATCH = {
    "attention": [[-0.0261193421, -0.104959868, -0.0441466868, 0.00900947861, 0.0545170754, -0.0833478421, 0.0758997202],
                  [-0.0262560621, -0.103634767, -0.042127952, 0.00639666058, 0.0546044633, -0.0847005174, 0.0755676478]],
    "region_0": [[-0.620370686, 0.863287926, -0.0205133967, 0.642122567, -0.0465175547, 0.660072148, 0.116408437],
                 [-0.633433878, 0.861636519, -0.0281147473, 0.630464256, -0.0514031537, 0.651350617, 0.119811445]],
    "region_1": [[-0.631712973, 0.87419951, -0.0470331348, 0.673627436, -0.0579566397, 0.634377599, 0.0981495678],
                 [-0.645544052, 0.882450581, -0.0531969182, 0.677418172, -0.0479745306, 0.642126143, 0.0986291766]],
    "region_2": [[-0.492289245, 0.877019882, 0.0236080624, 0.656003177, -0.037121091, 0.673902869, 0.104903221],
                 [-0.537174642, 0.901542664, 0.0229992606, 0.65244776, -0.0162544362, 0.665816665, 0.101195037]],
    "region_3": [[-0.497924387, 0.87161684, 0.00407629088, 0.680318415, -0.0456272103, 0.636138082, 0.0945484191],
                 [-0.522565484, 0.903650284, 0.00778606907, 0.70999366, -0.00436884537, 0.641033053, 0.0942790061]],
    "fused": [[-0.453683317, 0.676232874, -0.0168017745, 0.532216191, -0.0265410841, 0.504228592, 0.0979818776],
              [-0.472994864, 0.689129055, -0.0185308568, 0.535344064, -0.0130793005, 0.503125191, 0.0978964642]],
}


@pytest.mark.slow
def test_scan_cci_per_patch_equals_the_official_network(tmp_path):
    """Per-patch masks: official patch k lands on its grid cell (the 16 interior, then the right
    column, the bottom row, the corner); a wrong order would mix up the 25 masks' weights."""
    path = scan_checkpoint(tmp_path / "model_best.pth.tar", shared=False)
    model = build_model(preset_config("scan_cci", num_classes=7, patch_split="ceil_official",
                                      pretrained_path=str(path)))
    assert not model.pretrained_report["missing"]
    logits, branches = run(model)
    d = _scan_diffs(logits, branches, SCAN_PER_PATCH)
    assert close(branches["global_local"], SCAN_PER_PATCH["attention"]), d
    for j in range(4):
        assert close(branches[f"context_{j}"], SCAN_PER_PATCH[f"region_{j}"]), d
    assert close(logits, SCAN_PER_PATCH["fused"]), d
    # not vacuous: two masks in plain row-major places (official patch 4 is grid cell 5, patch 16
    # is cell 4: the right column's top), swapped as a row-major mapping would place patch 4
    sd = model.state_dict()
    a, b = "local_nets.4.", "local_nets.5."
    model.load_state_dict({**{a + k[len(b):]: v for k, v in sd.items() if k.startswith(b)},
                           **{b + k[len(a):]: v for k, v in sd.items() if k.startswith(a)}}, strict=False)
    _, branches = run(model)
    assert not close(branches["global_local"], SCAN_PER_PATCH["attention"])
