"""Official checkpoints (issue 12, item 2): files written in each official save format with random
values, read without running pickled code, mapped onto the presets tensor by tensor.

The key names and shapes below are test data derived from reading the official MA-Net network
(zengqunzhao/MA-Net, model/manet.py + model/attention.py) and the VGGFace2 ResNet-50 weights
loader (cydonia999/VGGFace2-pytorch): ResNet-18 stem and layer1-2; four patch copies of layer3-4
('layer3_1_pK', 'layer4_1_pK') whose blocks hold CBAM (Linear channel MLP 'mlp.1'/'mlp.3', a
7x7 'spatial' conv on (max, mean) + BN); the multi-scale 'layer3_2'/'layer4_2' blocks (conv1/bn1,
cascade convs 'convA_2_j'/'bnA_2_j', downsample); 'fc_1' (local) and 'fc_2' (global).
"""
from __future__ import annotations

import contextlib
import os
import pickle
import sys
from typing import Dict, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fer_models import build_model, preset_config
from fer_models.config import ModelConfig
from fer_models.errors import UserError
from fer_models.official_weights import detect_layout, import_official, read_official
from runners.cli import main

Shapes = Dict[str, Tuple[int, ...]]


# ---- the official layouts as key -> shape (test data) --------------------------------------
def _bn(s: Shapes, name: str, c: int) -> None:
    for p in ("weight", "bias", "running_mean", "running_var"):
        s[f"{name}.{p}"] = (c,)
    s[f"{name}.num_batches_tracked"] = ()


def _basic(s: Shapes, name: str, cin: int, cout: int, cbam: bool = False) -> None:
    s[f"{name}.conv1.weight"] = (cout, cin, 3, 3)
    _bn(s, f"{name}.bn1", cout)
    s[f"{name}.conv2.weight"] = (cout, cout, 3, 3)
    _bn(s, f"{name}.bn2", cout)
    if cbam:
        r = cout // 16
        s[f"{name}.cbam.ChannelGate.mlp.1.weight"] = (r, cout)
        s[f"{name}.cbam.ChannelGate.mlp.1.bias"] = (r,)
        s[f"{name}.cbam.ChannelGate.mlp.3.weight"] = (cout, r)
        s[f"{name}.cbam.ChannelGate.mlp.3.bias"] = (cout,)
        s[f"{name}.cbam.SpatialGate.spatial.conv.weight"] = (1, 2, 7, 7)
        _bn(s, f"{name}.cbam.SpatialGate.spatial.bn", 1)
    if cin != cout:
        s[f"{name}.downsample.0.weight"] = (cout, cin, 1, 1)
        _bn(s, f"{name}.downsample.1", cout)


def _stem_layer12(s: Shapes) -> None:
    s["conv1.weight"] = (64, 3, 7, 7)
    _bn(s, "bn1", 64)
    for b in (0, 1):
        _basic(s, f"layer1.{b}", 64, 64)
    _basic(s, "layer2.0", 64, 128)
    _basic(s, "layer2.1", 128, 128)


def manet_shapes(num_classes: int) -> Shapes:
    s: Shapes = {}
    _stem_layer12(s)
    for p in range(1, 5):
        for stage, cin, cout in ((3, 128, 256), (4, 256, 512)):
            _basic(s, f"layer{stage}_1_p{p}.0", cin, cout, cbam=True)
            _basic(s, f"layer{stage}_1_p{p}.1", cout, cout, cbam=True)
    for stage, cin, cout in ((3, 128, 256), (4, 256, 512)):
        for b in (0, 1):
            name, w = f"layer{stage}_2.{b}", cout // 4
            s[f"{name}.conv1.weight"] = (cout, cin if b == 0 else cout, 3, 3)
            _bn(s, f"{name}.bn1", cout)
            for a in (1, 2):
                for j in range(1, 5):
                    s[f"{name}.conv{a}_2_{j}.weight"] = (w, w, 3, 3)
                    _bn(s, f"{name}.bn{a}_2_{j}", w)
            if b == 0:
                s[f"{name}.downsample.0.weight"] = (cout, cin, 1, 1)
                _bn(s, f"{name}.downsample.1", cout)
    for f in ("fc_1", "fc_2"):
        s[f"{f}.weight"], s[f"{f}.bias"] = (num_classes, 512), (num_classes,)
    return s


def resnet18_shapes(num_classes: int) -> Shapes:
    s: Shapes = {}
    _stem_layer12(s)
    for stage, cin, cout in ((3, 128, 256), (4, 256, 512)):
        _basic(s, f"layer{stage}.0", cin, cout)
        _basic(s, f"layer{stage}.1", cout, cout)
    s["fc.weight"], s["fc.bias"] = (num_classes, 512), (num_classes,)
    return s


def resnet50_shapes(num_classes: int = 8631) -> Shapes:
    """VGGFace2's ResNet-50 .pkl: torchvision names, caffe-converted (no num_batches_tracked)."""
    s: Shapes = {"conv1.weight": (64, 3, 7, 7)}
    bn = {}
    _bn(bn, "bn1", 64)
    cin = 64
    for li, (planes, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), 1):
        for b in range(blocks):
            n = f"layer{li}.{b}"
            s[f"{n}.conv1.weight"] = (planes, cin, 1, 1)
            _bn(bn, f"{n}.bn1", planes)
            s[f"{n}.conv2.weight"] = (planes, planes, 3, 3)
            _bn(bn, f"{n}.bn2", planes)
            s[f"{n}.conv3.weight"] = (planes * 4, planes, 1, 1)
            _bn(bn, f"{n}.bn3", planes * 4)
            if b == 0:
                s[f"{n}.downsample.0.weight"] = (planes * 4, cin, 1, 1)
                _bn(bn, f"{n}.downsample.1", planes * 4)
            cin = planes * 4
    s.update({k: v for k, v in bn.items() if not k.endswith("num_batches_tracked")})
    s["fc.weight"], s["fc.bias"] = (num_classes, 2048), (num_classes,)
    return s


def random_state(shapes: Shapes, seed: int = 0) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shp in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            out[k] = torch.rand(shp, generator=g) + 0.5
        else:
            out[k] = torch.randn(shp, generator=g)
    return out


# ---- a pickled object beside the state dict, as MA-Net's main.py saves its RecorderMeter ----------
RAN = []


class RecorderMeter:
    """Holds numpy arrays like MA-Net's; unpickling it (if anything did) would record a run."""

    def __init__(self, epochs: int):
        self.total_epoch = epochs
        self.epoch_losses = np.zeros((epochs, 2), dtype=np.float32)
        self.epoch_accuracy = np.zeros((epochs, 2), dtype=np.float32)

    def __setstate__(self, state):
        RAN.append("RecorderMeter.__setstate__")
        self.__dict__.update(state)


@contextlib.contextmanager
def as_main_script():
    """Pickle RecorderMeter the way `python main.py` does, as __main__.RecorderMeter. The class
    stays reachable there while the test reads the file, so a loader that imported pickled
    classes would find and run it."""
    main_mod, had = sys.modules["__main__"], hasattr(sys.modules["__main__"], "RecorderMeter")
    RecorderMeter.__module__ = "__main__"
    setattr(main_mod, "RecorderMeter", RecorderMeter)
    try:
        yield
    finally:
        if not had:
            delattr(main_mod, "RecorderMeter")


@pytest.fixture(scope="module")
def manet_file(tmp_path_factory):
    """MA-Net's trained checkpoint (RAF-DB, 7 classes), 'module.'-prefixed, with its extras."""
    sd = random_state(manet_shapes(7), seed=1)
    path = tmp_path_factory.mktemp("manet") / "model_best.pth"
    with as_main_script():
        torch.save({"epoch": 40, "state_dict": {"module." + k: v for k, v in sd.items()},
                    "best_acc": torch.tensor(90.4), "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
                    "recorder": RecorderMeter(40)}, path)
        yield path, sd


# ---- reading --------------------------------------------------------------------------------
def test_plain_weights_only_load_refuses_the_ma_net_file(manet_file):
    """Why the restricted reader exists: torch's own weights-only load stops at RecorderMeter."""
    with pytest.raises(Exception, match="RecorderMeter"):
        torch.load(manet_file[0], weights_only=True)


def test_the_ma_net_checkpoint_is_read_without_running_its_objects(manet_file):
    path, sd = manet_file
    RAN.clear()
    got, kind, skipped = read_official(path)
    assert not RAN, "a pickled class was imported and run"
    assert kind == "torch" and "__main__.RecorderMeter" in skipped
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)  # 'module.' stripped
    assert detect_layout(got, kind) == "ma_net"


def test_a_malicious_reduce_is_not_executed(tmp_path):
    """Pickles whose __reduce__ would run a command or code: refused or made inert, never run."""
    marker = tmp_path / "pwned"

    class Shell:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    class Code:
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').write('x')",)

    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "x": Shell()}, tmp_path / "a.pth")
    with pytest.raises(UserError, match="a.pth"):
        read_official(tmp_path / "a.pth")  # os is a module torch blocks: the file is refused
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "x": Code()}, tmp_path / "b.pth")
    sd, _, skipped = read_official(tmp_path / "b.pth")  # exec: an inert placeholder
    assert "builtins.exec" in skipped and set(sd) == {"conv1.weight"}
    (tmp_path / "c.pkl").write_bytes(pickle.dumps({"conv1.weight": np.ones(3, np.float32), "x": Code()}, protocol=2))
    sd, kind, skipped = read_official(tmp_path / "c.pkl")  # a plain pickle: the numpy reader
    assert kind == "numpy" and "builtins.exec" in skipped and sd["conv1.weight"].tolist() == [1, 1, 1]
    (tmp_path / "d.pkl").write_bytes(pickle.dumps({"x": Shell()}, protocol=2))
    with pytest.raises(UserError):
        read_official(tmp_path / "d.pkl")  # no tensors left once the object is inert
    assert not marker.exists(), "pickled code ran"


def test_a_legacy_torch_file_is_read_too(tmp_path):
    """torch.save before 1.6 wrote a non-zip file: its pickled classes are skipped the same way."""
    p = tmp_path / "old.pth.tar"
    with as_main_script():
        torch.save({"state_dict": {"module.fc.weight": torch.ones(2, 2)}, "recorder": RecorderMeter(2)}, p,
                   _use_new_zipfile_serialization=False)
        RAN.clear()
        sd, kind, skipped = read_official(p)
    assert not RAN and "__main__.RecorderMeter" in skipped and sd["fc.weight"].sum() == 4


# ---- MA-Net: the whole preset, both cascade directions -----------------------------------------
@pytest.mark.parametrize("bidirectional", [True, False])
def test_ma_net_checkpoint_fills_the_whole_preset(manet_file, bidirectional):
    path, sd = manet_file
    model = build_model(preset_config("ma_net", multiscale_bidirectional=bidirectional))
    rep = import_official(path, None, model)
    assert rep.layout == "ma_net"
    assert len(rep.mapped) == len(sd) and not rep.left_in_file and not rep.left_in_model and not rep.outside_scope
    assert set(rep.state_dict) == set(model.state_dict())  # every tensor of the preset, once
    t = rep.state_dict
    # stem, trunk, heads
    assert torch.equal(t["backbone.body.layer2.0.downsample.0.weight"], sd["layer2.0.downsample.0.weight"])
    assert torch.equal(t["local_head.weight"], sd["fc_1.weight"]) and torch.equal(t["global_head.bias"], sd["fc_2.bias"])
    # patch 3's layer4 block 1 -> the third local copy's 4th block
    assert torch.equal(t["local_nets.2.3.conv1.weight"], sd["layer4_1_p3.1.conv1.weight"])
    # CBAM: Linear -> 1x1 conv, spatial conv's (max, mean) -> (mean, max)
    w = sd["layer3_1_p2.0.cbam.ChannelGate.mlp.1.weight"]
    assert torch.equal(t["local_nets.1.0.se.module.channel.fc1.weight"], w[:, :, None, None])
    sp = sd["layer4_1_p4.1.cbam.SpatialGate.spatial.conv.weight"]
    got = t["local_nets.3.3.se.module.spatial.conv.conv.weight"]
    assert torch.equal(got[:, 0], sp[:, 1]) and torch.equal(got[:, 1], sp[:, 0])
    assert torch.equal(t["local_nets.3.3.se.module.spatial.conv.bn.running_var"],
                       sd["layer4_1_p4.1.cbam.SpatialGate.spatial.bn.running_var"])
    # multi-scale: cascade A / B group j, the shortcut, layer4_2 after layer3_2's two blocks
    assert torch.equal(t["ms_stages.0.cascade_a.0.0.weight"], sd["layer3_2.0.conv1_2_1.weight"])
    assert torch.equal(t["ms_stages.3.cascade_b.3.1.bias"], sd["layer4_2.1.bn2_2_4.bias"])
    assert torch.equal(t["ms_stages.2.shortcut.1.running_mean"], sd["layer4_2.0.downsample.1.running_mean"])
    # and through pretrained_path (layout detected): the model holds exactly these tensors
    loaded = build_model(preset_config("ma_net", multiscale_bidirectional=bidirectional, pretrained_path=str(path)))
    assert loaded.pretrained_report["layout"] == ["ma_net"] and not loaded.pretrained_report["missing"]
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, t[k]), k


def test_cbam_with_the_imported_tensors_computes_the_official_gate(manet_file):
    """The CBAM of block 0 of patch 1, run by the preset, equals CBAM as the paper/official code
    define it (channel MLP on avg and max pooling; 7x7 conv on the (max, mean) channel maps + BN)."""
    path, sd = manet_file
    model = build_model(preset_config("ma_net", pretrained_path=str(path))).eval()
    gate = model.local_nets[0][0].se
    p = "layer3_1_p1.0.cbam."
    x = torch.randn(2, 256, 7, 7)

    def mlp(v):
        h = F.relu(F.linear(v, sd[p + "ChannelGate.mlp.1.weight"], sd[p + "ChannelGate.mlp.1.bias"]))
        return F.linear(h, sd[p + "ChannelGate.mlp.3.weight"], sd[p + "ChannelGate.mlp.3.bias"])

    y = x * torch.sigmoid(mlp(x.mean((2, 3))) + mlp(x.amax((2, 3))))[:, :, None, None]
    pooled = torch.cat([y.amax(1, keepdim=True), y.mean(1, keepdim=True)], 1)
    z = F.conv2d(pooled, sd[p + "SpatialGate.spatial.conv.weight"], padding=3)
    bn = p + "SpatialGate.spatial.bn."
    z = F.batch_norm(z, sd[bn + "running_mean"], sd[bn + "running_var"], sd[bn + "weight"], sd[bn + "bias"], False, 0.0, 1e-5)
    expected = y * torch.sigmoid(z)
    with torch.no_grad():
        # random N(0, 1) weights sum 256 products: float32 rounding reaches ~1e-5
        torch.testing.assert_close(gate(x), expected, rtol=1e-4, atol=1e-4)


def test_a_partial_file_is_refused_unless_asked(manet_file, tmp_path):
    path, sd = manet_file
    cut = {"state_dict": {"module." + k: v for k, v in sd.items() if not k.startswith("layer4_2.")}}
    f = tmp_path / "cut.pth"
    torch.save(cut, f)
    model = build_model(preset_config("ma_net"))
    with pytest.raises(UserError, match=r"cut\.pth.*'ma_net'.*ms_stages\.2\.conv1\.weight.*--partial"):
        import_official(f, "ma_net", model)
    rep = import_official(f, "ma_net", model, partial=True)
    assert rep.left_in_model and all(k.startswith(("ms_stages.2.", "ms_stages.3.")) for k in rep.left_in_model)
    with pytest.raises(UserError, match="--partial"):  # pretrained_path never loads part of an official file
        build_model(preset_config("ma_net", pretrained_path=str(f)))


# ---- MA-Net's MS-Celeb start point -----------------------------------------------------------
def test_msceleb_manet_form_fills_all_but_the_classifiers(tmp_path):
    sd = random_state(manet_shapes(12666), seed=2)
    f = tmp_path / "Pretrained_on_MSCeleb.pth.tar"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, f)
    model = build_model(preset_config("ma_net"))
    rep = import_official(f, None, model)
    assert rep.layout == "ma_net_msceleb"
    assert sorted(rep.left_in_file) == ["fc_1.bias", "fc_1.weight", "fc_2.bias", "fc_2.weight"]
    assert not rep.left_in_model and sorted(rep.outside_scope) == [
        "global_head.bias", "global_head.weight", "local_head.bias", "local_head.weight"]
    assert len(rep.mapped) == len(sd) - 4
    loaded = build_model(preset_config("ma_net", pretrained_path=str(f)))
    assert torch.equal(loaded.state_dict()["ms_stages.1.cascade_b.2.0.weight"], sd["layer3_2.1.conv2_2_3.weight"])


def test_msceleb_resnet18_form_fills_the_backbone(tmp_path):
    sd = random_state(resnet18_shapes(12666), seed=3)
    f = tmp_path / "msceleb_resnet18.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, f)
    full = import_official(f, None, build_model(preset_config("baseline")))
    assert full.layout == "ma_net_msceleb" and full.left_in_file == ["fc.weight", "fc.bias"]
    assert len(full.mapped) == len(sd) - 2 and not full.left_in_model
    trunk = import_official(f, "ma_net_msceleb", build_model(preset_config("ma_net")))  # stem + layer1-2 only
    assert not trunk.left_in_model and all(k.startswith("backbone.body.") for k in trunk.state_dict)
    assert {k.split(".")[0] for k in trunk.left_in_file} == {"layer3", "layer4", "fc"}
    assert torch.equal(trunk.state_dict["backbone.body.layer2.1.bn2.weight"], sd["layer2.1.bn2.weight"])


# ---- VGGFace2 ResNet-50 .pkl ------------------------------------------------------------------
def test_vggface2_pickle_fills_a_resnet50_backbone(tmp_path):
    sd = random_state(resnet50_shapes(), seed=4)
    f = tmp_path / "resnet50_ft_weight.pkl"
    # a Python-2 style protocol-2 pickle of float32 numpy arrays, as the conversion wrote it
    f.write_bytes(pickle.dumps({k: v.numpy() for k, v in sd.items()}, protocol=2))
    model = build_model(preset_config("scan_cci"))  # resnet50 to layer3
    rep = import_official(f, None, model)
    assert rep.layout == "vggface2_resnet50" and not rep.left_in_model
    assert {k.split(".")[0] for k in rep.left_in_file} == {"layer4", "fc"}
    body = {k for k in model.state_dict() if k.startswith("backbone.body.") and not k.endswith("num_batches_tracked")}
    assert set(rep.state_dict) == body
    assert torch.equal(rep.state_dict["backbone.body.layer3.5.conv3.weight"], sd["layer3.5.conv3.weight"])
    loaded = build_model(preset_config("scan_cci_shared", pretrained_path=str(f)))
    assert torch.equal(loaded.state_dict()["backbone.body.bn1.running_var"], sd["bn1.running_var"])


# ---- the CLI ----------------------------------------------------------------------------------
def test_cli_import_weights_end_to_end(manet_file, tmp_path, capsys):
    path, sd = manet_file
    out = tmp_path / "ma_net_rafdb.pt"
    assert main(["models", "import-weights", str(path), "--from", "ma_net", "--preset", "ma_net",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"ma_net: {len(sd)} tensors mapped" in text and "0 left over in the file" in text
    assert "__main__.RecorderMeter" in text
    written = torch.load(out, weights_only=True)  # a plain state dict of this project's keys
    model = build_model(preset_config("ma_net", multiscale_bidirectional=False, pretrained_path=str(out)))
    assert model.pretrained_report["loaded"] == sorted(written) and not model.pretrained_report["missing"]
    assert torch.equal(model.state_dict()["local_nets.0.0.se.module.channel.fc2.weight"],
                       sd["layer3_1_p1.0.cbam.ChannelGate.mlp.3.weight"][:, :, None, None])

    cut = tmp_path / "cut.pth"
    torch.save({"state_dict": {k: v for k, v in sd.items() if not k.startswith("layer3_1_p4.")}}, cut)
    assert main(["models", "import-weights", str(cut), "--preset", "ma_net", "--out", str(tmp_path / "c.pt")]) == 2
    err = capsys.readouterr().err
    assert "cut.pth" in err and "'ma_net'" in err and "local_nets.3.0.conv1.weight" in err and "--partial" in err
    assert not (tmp_path / "c.pt").exists()
    assert main(["models", "import-weights", str(cut), "--preset", "ma_net", "--partial", "--list",
                 "--out", str(tmp_path / "c.pt")]) == 0
    text = capsys.readouterr().out
    assert "PARTIAL" in text and "model only local_nets.3.0.conv1.weight" in text
    assert "mapped   layer3_1_p1.0.cbam.SpatialGate.spatial.conv.weight -> " \
           "local_nets.0.0.se.module.spatial.conv.conv.weight" in text


# ---- SCAN-CCI: three state dicts -> the whole scan_cci / scan_cci_shared preset ------------------
# Test data from reading the official SCAN-CCI code (1980x/SCAN-CCI-FER, models/attentionnet.py,
# models/resnet.py, main_*.py): 'base_state_dict' = torchvision-named ResNet-50 to layer3;
# 'attention_state_dict' = 'local_attention_masks.K.attention.{0 conv3x3, 1 PReLU, 2 BN}' (no K when
# shared), 'global_attention_mask.attention.*', 'fc' (C x 2*512 over [local, global]);
# 'region_state_dict' = 'eca.conv' (1D, k=5), 'region_net.{0,2}' (1024-256-C) and the same MLP
# again as 'classifiers.{0..3}.*'; every part 'module.'-prefixed (DataParallel).
def _mask(s: Shapes, name: str, c: int) -> None:
    s[f"{name}.attention.0.weight"] = (c, c, 3, 3)
    s[f"{name}.attention.1.weight"] = (c,)
    _bn(s, f"{name}.attention.2", c)


def scan_parts(shared: bool, num_classes: int = 7, base: str = "resnet50") -> Dict[str, Dict[str, torch.Tensor]]:
    if base == "resnet50":
        b = {k: v for k, v in resnet50_shapes().items() if not k.startswith(("layer4.", "fc."))}
        b.update({k[:-len("running_var")] + "num_batches_tracked": () for k in b if k.endswith("running_var")})
        c, c3 = 512, 1024
    else:  # a ResNet-18 base: the same official key names at 1/4 the width (fast per-patch tests)
        b = {k: v for k, v in resnet18_shapes(2).items() if not k.startswith(("layer4.", "fc."))}
        c, c3 = 128, 256
    a: Shapes = {}
    for k in ([None] if shared else range(25)):
        _mask(a, "local_attention_masks" + ("" if k is None else f".{k}"), c)
    _mask(a, "global_attention_mask", c)
    a["fc.weight"], a["fc.bias"] = (num_classes, 2 * c), (num_classes,)
    h = 256  # the official 1024 // 4 (the preset's context_hidden)
    r: Shapes = {"eca.conv.weight": (1, 1, 5), "region_net.0.weight": (h, c3), "region_net.0.bias": (h,),
                 "region_net.2.weight": (num_classes, h), "region_net.2.bias": (num_classes,)}
    parts = {"base": random_state(b, 5), "attention": random_state(a, 6), "region": random_state(r, 7)}
    for j in range(4):  # the shared module under its 4 other names: the same tensors
        parts["region"].update({f"classifiers.{j}.{k[len('region_net.'):]}": v
                                for k, v in list(parts["region"].items()) if k.startswith("region_net.")})
    return parts


def save_scan(parts, path, drop=()):
    torch.save({"epoch": 12, "best_prec1": torch.tensor(89.5), "optimizer": {"state": {}, "param_groups": []},
                **{f"{p}_state_dict": {"module." + k: v for k, v in sd.items() if f"{p}.{k}" not in drop}
                   for p, sd in parts.items()}}, path)
    return path


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    parts = scan_parts(shared=True, num_classes=8)  # AffectNet's 8 classes: the CLI reads them from the FC
    return save_scan(parts, tmp_path_factory.mktemp("scan") / "model_best.pth.tar"), parts


def test_scan_cci_checkpoint_fills_the_whole_shared_preset(scan_file, tmp_path, capsys):
    path, parts = scan_file
    model = build_model(preset_config("scan_cci_shared", num_classes=8))
    rep = import_official(path, None, model)
    assert rep.layout == "scan_cci" and not rep.left_in_file and not rep.left_in_model and not rep.outside_scope
    assert len(rep.mapped) == sum(len(p) for p in parts.values())
    assert set(rep.state_dict) == set(model.state_dict())  # every tensor of the preset
    t, att, reg = rep.state_dict, parts["attention"], parts["region"]
    assert torch.equal(t["backbone.body.layer3.5.bn3.running_mean"], parts["base"]["layer3.5.bn3.running_mean"])
    assert torch.equal(t["local_nets.0.module.conv.weight"], att["local_attention_masks.attention.0.weight"])
    assert torch.equal(t["local_nets.0.module.act.weight"], att["local_attention_masks.attention.1.weight"])
    assert torch.equal(t["global_attn.2.module.bn.running_var"], att["global_attention_mask.attention.2.running_var"])
    assert torch.equal(t["context_eca.module.conv.weight"], reg["eca.conv.weight"])
    assert torch.equal(t["context_mlps.0.3.weight"], reg["region_net.2.weight"])
    # the official FC reads [local, global], the preset's joint head [global, local]: same function
    w, b = att["fc.weight"], att["fc.bias"]
    loc, glo = torch.randn(3, 512), torch.randn(3, 512)
    head = model.joint_head
    head.load_state_dict({"weight": t["joint_head.weight"], "bias": t["joint_head.bias"]})
    with torch.no_grad():  # N(0, 1) weights over 1,024 inputs: float32 summation order differs ~1e-5
        torch.testing.assert_close(head(torch.cat([glo, loc], 1)), F.linear(torch.cat([loc, glo], 1), w, b),
                                   rtol=1e-4, atol=1e-4)
    # pretrained_path detects the layout and loads all of it
    loaded = build_model(preset_config("scan_cci_shared", num_classes=8, pretrained_path=str(path)))
    assert loaded.pretrained_report["layout"] == ["scan_cci"] and not loaded.pretrained_report["missing"]
    assert torch.equal(loaded.state_dict()["local_nets.0.module.bn.bias"], att["local_attention_masks.attention.2.bias"])
    # the CLI: the counts, then a plain state dict of this project's keys
    out = tmp_path / "scan.pt"
    assert main(["models", "import-weights", str(path), "--from", "scan_cci", "--preset", "scan_cci_shared",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "num_classes=8" in text and f"scan_cci: {len(rep.mapped)} tensors mapped" in text
    assert "patch_split: ceil_official" in text
    assert set(torch.load(out, weights_only=True)) == set(model.state_dict())


def test_scan_cci_per_patch_order_and_context(tmp_path):
    """Official patch k (16 interior row-major, then the right column, the bottom row, the corner)
    -> row-major grid index; a per-region preset (context_shared=False) gets the MLP 4 times."""
    parts = scan_parts(shared=False, base="resnet18")
    f = save_scan(parts, tmp_path / "scan_r18.pth")
    model = build_model(preset_config("scan_cci", backbone="resnet18", context_shared=False))
    rep = import_official(f, "scan_cci", model)
    assert not rep.left_in_model and not rep.left_in_file
    att = parts["attention"]
    # (official k, grid index): interior (1,1) and (3,3); right column row 0 and 3; bottom row col 0 and 3; corner
    for k, idx in ((5, 6), (15, 18), (16, 4), (19, 19), (20, 20), (23, 23), (24, 24), (0, 0), (3, 3), (4, 5)):
        assert torch.equal(rep.state_dict[f"local_nets.{idx}.module.conv.weight"],
                           att[f"local_attention_masks.{k}.attention.0.weight"]), (k, idx)
    for j in range(4):
        assert torch.equal(rep.state_dict[f"context_mlps.{j}.0.bias"], parts["region"]["region_net.0.bias"])


def test_scan_cci_partial_and_mismatched_files_are_refused(tmp_path):
    parts = scan_parts(shared=False, base="resnet18")
    cut = save_scan(parts, tmp_path / "cut.pth", drop={"region.eca.conv.weight"})
    model = build_model(preset_config("scan_cci", backbone="resnet18"))
    with pytest.raises(UserError, match=r"cut\.pth.*'scan_cci'.*context_eca\.module\.conv\.weight.*--partial"):
        import_official(cut, None, model)
    assert import_official(cut, None, model, partial=True).left_in_model == ["context_eca.module.conv.weight"]
    # a shared-SCAN file onto the per-patch preset: 24 local SCANs would stay empty
    shared = save_scan(scan_parts(shared=True, base="resnet18"), tmp_path / "shared.pth")
    with pytest.raises(UserError, match=r"local_nets\.1\.module\.conv\.weight.*--partial"):
        import_official(shared, "scan_cci", model)
    # the other way round: 24 of the file's SCANs would be dropped, refused too
    per_patch = save_scan(parts, tmp_path / "per_patch.pth")
    shared_model = build_model(preset_config("scan_cci_shared", backbone="resnet18"))
    with pytest.raises(UserError, match=r"168 of its tensors have no place.*use preset scan_cci.*--partial"):
        import_official(per_patch, None, shared_model)
    assert len(import_official(per_patch, None, shared_model, partial=True).left_in_file) == 24 * 7
    # the three parts, but only a ResNet inside: not this layout
    base_only = save_scan({"base": parts["base"], "attention": {}, "region": {}}, tmp_path / "base.pth")
    with pytest.raises(UserError, match="not the 'scan_cci' layout"):
        import_official(base_only, "scan_cci", model)


# ---- patch_split: ceil_official (issue 12, item 3) -----------------------------------------------
def _official_cut(x: torch.Tensor):
    """SCAN-CCI's 25 cells of a 28x28 map, described independently, in row-major grid order:
    6x6 cells, a 6x4 right column, a 4x4 corner, and a bottom strip whose cell j is the strip's
    row j (28 - 4 = 24..27) read as 4 windows of 6 columns."""
    cells = {}
    for r in range(4):
        for c in range(4):
            cells[r * 5 + c] = x[..., 6 * r:6 * r + 6, 6 * c:6 * c + 6]
        cells[r * 5 + 4] = x[..., 6 * r:6 * r + 6, 24:28]
    for j in range(4):
        row = x[..., 24 + j, 0:24]  # B, C, 24
        cells[20 + j] = torch.stack([row[..., 6 * a:6 * a + 6] for a in range(4)], dim=-2)  # B, C, 4, 6
    cells[24] = x[..., 24:28, 24:28]
    return [cells[i] for i in range(25)]


def test_ceil_official_cuts_like_the_official_code_and_ceil_stays_correct():
    x = torch.randn(2, 3, 28, 28)
    cfg = dict(backbone="resnet10t", num_patches=25, local_shared=True, local_aggregation="max")
    official = build_model({**cfg, "patch_split": "ceil_official"})._split(x)
    correct = build_model({**cfg, "patch_split": "ceil"})._split(x)
    expected = _official_cut(x)
    for i in range(25):
        assert torch.equal(official[i], expected[i]), i
        same = torch.equal(correct[i], expected[i])
        assert same == (i not in (20, 21, 22, 23)), i  # the correct cut differs on the bottom strip only
    assert torch.equal(correct[21], x[..., 24:28, 6:12])
    # a whole forward: resnet10t's layer2 map at 224 px is 28x28, the per-patch SCANs take the official cells
    model = build_model({**cfg, "patch_split": "ceil_official", "local_shared": False, "attention": "spatio_channel"},
                        image_size=224).eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 224, 224)).logits).all()
    assert ModelConfig().patch_split == "even" and preset_config("scan_cci").patch_split == "ceil"


def test_ceil_official_refuses_a_map_it_cannot_cut():
    from fer_models.model import patch_bounds

    assert patch_bounds(28, 5, "ceil_official") == patch_bounds(28, 5, "ceil")
    assert [b - a for a, b in patch_bounds(8, 3, "ceil_official")] == [3, 3, 2]  # last cell 2 = grid - 1: cuttable
    with pytest.raises(UserError, match=r"ceil_official.*14 in 5 leaves 2.*patch_split='ceil'"):
        patch_bounds(14, 5, "ceil_official")
    with pytest.raises(UserError, match="image_size=112"):  # resnet50 layer2 at 112 px: 14x14
        build_model(preset_config("scan_cci_shared", patch_split="ceil_official"), image_size=112)


# ---- init: official (issue 12, item 3) -------------------------------------------------------------
def test_init_official_kaiming_fan_out_outside_the_trunk():
    cfg = dict(backbone="resnet18", attention="cbam", num_patches=4, patch_split="ceil", local_kind="deep",
               local_shared=True, local_aggregation="stitch", global_branch="multiscale", num_scales=4)
    torch.manual_seed(0)
    plain = build_model(cfg)
    torch.manual_seed(0)
    off = build_model({**cfg, "init": "official"})
    # the trunk is untouched: the same seed gives the same backbone
    trunk = {k: v for k, v in off.state_dict().items() if k.startswith("backbone.")}
    assert trunk and all(torch.equal(v, plain.state_dict()[k]) for k, v in trunk.items())
    # a 3x3 conv of a local copy: std sqrt(2 / fan_out), fan_out = 256 * 9 (default init: ~1/sqrt(3 fan_in))
    w = off.local_nets[0][0].conv1.weight
    assert tuple(w.shape) == (256, 128, 3, 3)
    expected = (2 / (256 * 9)) ** 0.5
    assert abs(w.std().item() / expected - 1) < 0.03, (w.std().item(), expected)
    assert abs(plain.local_nets[0][0].conv1.weight.std().item() / expected - 1) > 0.2
    ms = off.ms_stages[0].cascade_a[0][0].weight  # the multi-scale branch too
    assert abs(ms.std().item() / (2 / (ms.shape[0] * 9)) ** 0.5 - 1) < 0.1
    # CBAM: spatial gate's BN momentum 0.01 (timm: 0.1); its channel MLP (Linear officially) keeps the default
    sp = off.local_nets[0][0].se.module.spatial.conv.bn
    assert sp.momentum == 0.01 and plain.local_nets[0][0].se.module.spatial.conv.bn.momentum == 0.1
    fc1 = off.local_nets[0][0].se.module.channel.fc1.weight
    assert torch.equal(fc1, plain.local_nets[0][0].se.module.channel.fc1.weight)
