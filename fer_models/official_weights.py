"""Official checkpoints of the published FER networks, read safely and mapped onto the presets.

Layouts (issue 12, item 2):

  ma_net             MA-Net's trained checkpoint (zengqunzhao/MA-Net main.py): `torch.save` of a dict
                     with 'state_dict' (the whole DataParallel MANet, 'module.'-prefixed), 'epoch',
                     'best_acc', 'optimizer' and a pickled `RecorderMeter` object -> the whole `ma_net`
                     preset (either cascade direction: the keys are the same).
  ma_net_msceleb     MA-Net's MS-Celeb-1M start point, {'state_dict': {'module.*'}} with a 12,666-way
                     classifier. The official main.py loads it strictly into MANet(num_classes=12666),
                     so it holds the whole MANet (then everything but the two classifiers maps); a plain
                     ResNet-18 of that form ('module.fc' 12666 x 512) maps onto the backbone.
  vggface2_resnet50  the VGGFace2 ResNet-50 weights `.pkl` (a Python-2 pickled dict of numpy arrays
                     named like torchvision's ResNet: conv1.weight, layer1.0.conv1.weight, ...,
                     fc 8631 x 2048, the names the public VGGFace2-pytorch conversion loads by) -> the
                     backbone of a resnet50 preset. Caffe's own names ('conv1/7x7_s2') are not read.
  scan_cci           SCAN-CCI's checkpoint (1980x/SCAN-CCI-FER main_*.py): `torch.save` of a dict with
                     'base_state_dict' (ResNet-50 to layer3), 'attention_state_dict' (the 25 local SCANs,
                     or one shared, the global SCAN, the FC), 'region_state_dict' (CCI: ECA + the MLP
                     'region_net', repeated as 'classifiers.j'), each 'module.'-prefixed -> the whole
                     `scan_cci` / `scan_cci_shared` preset. Read as one state dict with the prefixes
                     'base.', 'attention.', 'region.'.

Reading never runs pickled code: torch files go through `torch.load(weights_only=True)`, whose
unknown globals (found by a static scan of the pickle, never imported) are replaced by inert
`OfficialObject` placeholders; numpy pickles go through a `pickle.Unpickler` whose `find_class`
returns numpy's array reconstructors and placeholders for everything else.
"""
from __future__ import annotations

import _compat_pickle
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from .errors import UserError, UserPathError

LAYOUTS = ("ma_net", "ma_net_msceleb", "vggface2_resnet50", "scan_cci")
# SCAN-CCI saves its three networks side by side: read as one state dict under these prefixes
SCAN_PARTS = {"base_state_dict": "base.", "attention_state_dict": "attention.", "region_state_dict": "region."}
MSCELEB_CLASSES = 12666  # MA-Net's MS-Celeb-1M identities (MANet's default num_classes)


# ---- safe reading ------------------------------------------------------------------------------
class OfficialObject:
    """Stands in for a pickled object of a class this project does not know (MA-Net's
    RecorderMeter, ...): keeps the constructor arguments and the state, runs nothing."""

    _pickled_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args, self._kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self._state = state

    def __repr__(self) -> str:
        return f"<skipped {self._pickled_name}>"


def _placeholder(full_name: str) -> type:
    module, _, name = full_name.rpartition(".")
    return type(name or full_name, (OfficialObject,), {"_pickled_name": full_name, "__module__": "official." + module})


def _legacy_globals(path: Path) -> List[str]:
    """GLOBALs of a pre-1.6 (non-zip) torch file: its first four pickles, scanned, not run."""
    from torch import _weights_only_unpickler as wou

    found: set = set()
    with open(path, "rb") as f:
        for _ in range(4):  # magic number, protocol, sys info, the object
            found |= wou.get_globals_in_pkl(f)
    return sorted(found)


def _unsafe_globals(path: Path) -> List[str]:
    from torch import _weights_only_unpickler as wou

    if zipfile.is_zipfile(path):
        return torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    allowed = set(wou._get_allowed_globals()) | set(wou._get_user_allowed_globals())
    return [g for g in _legacy_globals(path) if g not in allowed]


def read_torch_checkpoint(path: Union[str, Path]) -> Tuple[Any, List[str]]:
    """(object, names of the classes skipped) of a `torch.save` file, read with weights_only=True;
    every class torch does not allow is an inert `OfficialObject`. Modules torch blocks outright
    (os, sys, ...) make the read fail: such a file is refused, not run."""
    p = Path(path)
    unknown = sorted(_unsafe_globals(p))
    holders = [(_placeholder(g), g) for g in unknown]
    with torch.serialization.safe_globals(holders):
        obj = torch.load(p, map_location="cpu", weights_only=True)
    return obj, unknown


# numpy's array reconstructors: what a pickled ndarray calls (numpy 1.x and 2.x module names)
_NUMPY_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # Python 2 byte strings under protocol 2 (the array's raw data)
    ("collections", "OrderedDict"),
}


class _NumpyUnpickler(pickle.Unpickler):
    """Numpy arrays and plain containers; any other class becomes an inert placeholder (never
    imported). Written here: pickle has no allow-list option, and torch's weights-only unpickler
    rejects numpy's reconstructors by default."""

    def __init__(self, f: Any) -> None:
        super().__init__(f, encoding="latin1")
        self.skipped: List[str] = []

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (a protocol-2 pickle): '__builtin__' -> 'builtins', as pickle itself maps them
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _NUMPY_ALLOWED:
            return super().find_class(module, name)
        self.skipped.append(f"{module}.{name}")
        return _placeholder(f"{module}.{name}")


def read_numpy_pickle(path: Union[str, Path]) -> Tuple[Any, List[str]]:
    with open(path, "rb") as f:
        up = _NumpyUnpickler(f)
        obj = up.load()
    return obj, up.skipped


def read_official(path: Union[str, Path]) -> Tuple[Dict[str, torch.Tensor], str, List[str]]:
    """(tensors by key with 'module.' stripped, 'torch' or 'numpy', classes skipped) of a checkpoint."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserPathError(f"{str(p)!r} is a folder, not a checkpoint file")
    if not p.is_file():
        raise UserPathError(f"{str(p)!r}: no such file")
    errors = []
    try:
        obj, skipped = read_torch_checkpoint(p)
        kind = "torch"
    except Exception as exc:  # noqa: BLE001 - any format error: try the numpy pickle next
        errors.append(f"torch.load(weights_only=True): {exc}".splitlines()[0])
        try:
            obj, skipped = read_numpy_pickle(p)
            kind = "numpy"
        except Exception as exc2:  # noqa: BLE001
            errors.append(f"numpy pickle: {exc2}".splitlines()[0])
            raise UserError(f"{str(p)!r} is not a checkpoint this project reads ({'; '.join(errors)})") from None
    return _state_dict_of(obj, p), kind, skipped


def _state_dict_of(obj: Any, p: Path) -> Dict[str, torch.Tensor]:
    if isinstance(obj, dict) and all(isinstance(obj.get(k), dict) for k in SCAN_PARTS):
        obj = {pre + (k[7:] if k.startswith("module.") else k): v
               for part, pre in SCAN_PARTS.items() for k, v in obj[part].items() if isinstance(k, str)}
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise UserError(f"{str(p)!r}: expected a dict of tensors or arrays (a state dict), got {type(obj).__name__}")
    sd: Dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        if isinstance(v, np.ndarray) and v.dtype != object:
            v = torch.from_numpy(np.ascontiguousarray(v))
        if isinstance(k, str) and isinstance(v, torch.Tensor):
            sd[k[7:] if k.startswith("module.") else k] = v
    if not sd:
        raise UserError(f"{str(p)!r}: holds no tensors or arrays (first keys: {list(obj)[:3]})")
    return sd


# ---- layouts ----------------------------------------------------------------------------------
def _is_manet(sd: Dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("layer3_1_p1.") for k in sd) and "fc_1.weight" in sd


def _is_scan(sd: Dict[str, torch.Tensor]) -> bool:
    return "attention.fc.weight" in sd and any(k.startswith("region.region_net.") for k in sd)


def _is_resnet(sd: Dict[str, torch.Tensor]) -> bool:
    return "conv1.weight" in sd and "layer1.0.conv1.weight" in sd


def detect_layout(sd: Dict[str, torch.Tensor], kind: str) -> Optional[str]:
    """The layout a state dict's keys and shapes say it is; None for anything else (this
    project's own keys, a timm state dict, ...)."""
    if _is_scan(sd):
        return "scan_cci"
    if _is_manet(sd):
        return "ma_net_msceleb" if sd["fc_1.weight"].shape[0] == MSCELEB_CLASSES else "ma_net"
    if _is_resnet(sd):
        fc = sd.get("fc.weight")
        if "layer1.0.conv3.weight" in sd and kind == "numpy":
            return "vggface2_resnet50"
        if fc is not None and fc.shape[0] == MSCELEB_CLASSES and "layer1.0.conv3.weight" not in sd:
            return "ma_net_msceleb"
    return None


Mapped = Tuple[str, Callable[[torch.Tensor], torch.Tensor]]
_same: Callable[[torch.Tensor], torch.Tensor] = lambda t: t  # noqa: E731


def _cbam_key(rest: str) -> Optional[Mapped]:
    """An official CBAM key -> timm CbamModule key (inside this project's AttentionGate 'se.module')."""
    m = re.fullmatch(r"cbam\.ChannelGate\.mlp\.([13])\.(weight|bias)", rest)
    if m:
        fc = "fc1" if m.group(1) == "1" else "fc2"
        # official: nn.Linear (out, in); timm: 1x1 nn.Conv2d (out, in, 1, 1)
        fn = (lambda t: t.reshape(*t.shape, 1, 1)) if m.group(2) == "weight" else _same
        return f"se.module.channel.{fc}.{m.group(2)}", fn
    if rest == "cbam.SpatialGate.spatial.conv.weight":
        # official stacks (max, mean) along channels, timm (mean, max): swap the 2 input channels
        return "se.module.spatial.conv.conv.weight", lambda t: t.flip(1)
    m = re.fullmatch(r"cbam\.SpatialGate\.spatial\.bn\.(\w+)", rest)
    if m:
        return f"se.module.spatial.conv.bn.{m.group(1)}", _same
    return None


def _ma_net_key(k: str, local_blocks: int, ms_blocks: int, heads: bool) -> Optional[Mapped]:
    if re.match(r"(conv1|bn1|layer[12])\.", k):
        return "backbone.body." + k, _same
    m = re.fullmatch(r"layer([34])_1_p([1-4])\.(\d+)\.(.+)", k)
    if m:  # local branch: patch p's layer3 + layer4 copies -> local_nets[p-1], blocks in a row
        stage, patch, block, rest = int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
        idx = block + (local_blocks if stage == 4 else 0)
        cb = _cbam_key(rest) if rest.startswith("cbam.") else (rest, _same)
        return (f"local_nets.{patch - 1}.{idx}.{cb[0]}", cb[1]) if cb else None
    m = re.fullmatch(r"layer([34])_2\.(\d+)\.(.+)", k)
    if m:  # global branch: the multi-scale layer3 + layer4 -> ms_stages, blocks in a row
        stage, block, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        idx = block + (ms_blocks if stage == 4 else 0)
        c = re.fullmatch(r"(conv|bn)([12])_2_([1-9])\.(.+)", rest)
        if c:  # convA_2_j / bnA_2_j: cascade A (1) or B (2), group j (1-based), conv or its BN
            cascade = "cascade_a" if c.group(2) == "1" else "cascade_b"
            rest = f"{cascade}.{int(c.group(3)) - 1}.{0 if c.group(1) == 'conv' else 1}.{c.group(4)}"
        elif rest.startswith("downsample."):
            rest = "shortcut." + rest[len("downsample."):]
        return f"ms_stages.{idx}.{rest}", _same
    m = re.fullmatch(r"fc_([12])\.(weight|bias)", k)
    if m and heads:  # fc_1 classifies the stitched local patches, fc_2 the multi-scale branch
        return f"{'local_head' if m.group(1) == '1' else 'global_head'}.{m.group(2)}", _same
    return None


def scan_patch_index(k: int, grid: int) -> int:
    """Official SCAN patch k -> this project's row-major grid index: the official order is the
    (g-1)^2 interior cells (row-major), then the right column, the bottom row, the corner."""
    n = grid - 1
    if k < n * n:
        r, c = divmod(k, n)
    elif k < n * n + n:
        r, c = k - n * n, n
    elif k < n * n + 2 * n:
        r, c = n, k - n * n - n
    else:
        r = c = n
    return r * grid + c


_SCAN_MASK = {"0": "conv", "1": "act", "2": "bn"}  # Attentiomasknet: conv3x3, PReLU, BN (then sigmoid)


def _scan_key(k: str, model: torch.nn.Module) -> Optional[Mapped]:
    cfg = model.cfg
    if k.startswith("base."):
        return _backbone_key(k[5:])
    m = re.fullmatch(r"attention\.local_attention_masks\.(?:(\d+)\.)?attention\.([012])\.(.+)", k)
    if m:  # one SCAN per patch ('local_attention_masks.k.'), or one shared (no index)
        idx = 0 if m.group(1) is None else scan_patch_index(int(m.group(1)), cfg.grid)
        return f"local_nets.{idx}.module.{_SCAN_MASK[m.group(2)]}.{m.group(3)}", _same
    m = re.fullmatch(r"attention\.global_attention_mask\.attention\.([012])\.(.+)", k)
    if m and len(getattr(model, "scale_stages", [])) == 1:
        return f"global_attn.{model.scale_stages[0]}.module.{_SCAN_MASK[m.group(1)]}.{m.group(2)}", _same
    m = re.fullmatch(r"attention\.fc\.(weight|bias)", k)
    if m:  # the official FC reads [local, global], the preset's joint head [global, local]: swap the halves
        head = "joint_head.1." if isinstance(getattr(model, "joint_head", None), torch.nn.Sequential) else "joint_head."
        fn = (lambda t: t.roll(t.shape[1] // 2, dims=1)) if m.group(1) == "weight" else _same
        return head + m.group(1), fn
    if k == "region.eca.conv.weight":
        return "context_eca.module.conv.weight", _same
    m = re.fullmatch(r"region\.(?:region_net|classifiers\.(\d))\.([02])\.(weight|bias)", k)
    if m:  # CCI's MLP (Linear, ReLU, Linear); 'classifiers.j' is the same module as 'region_net' again
        j = 0 if m.group(1) is None or cfg.context_shared else int(m.group(1))
        return f"context_mlps.{j}.{0 if m.group(2) == '0' else 3}.{m.group(3)}", _same
    return None


def _backbone_key(k: str) -> Optional[Mapped]:
    return ("backbone.body." + k, _same) if not k.startswith("fc.") else None


@dataclass
class ImportReport:
    layout: str
    state_dict: Dict[str, torch.Tensor]          # this project's keys -> tensors, ready for load_state_dict
    mapped: Dict[str, str]                       # file key -> model key
    left_in_file: List[str]                      # file keys that map nowhere (fc of 12,666 identities, ...)
    left_in_model: List[str]                     # model keys in the layout's scope that got nothing
    outside_scope: List[str] = field(default_factory=list)  # model keys the layout never fills (new heads)
    skipped_objects: List[str] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(t.numel() for k, t in self.state_dict.items() if not k.endswith("num_batches_tracked"))

    def summary(self) -> str:
        return (f"{self.layout}: {len(self.mapped)} tensors mapped ({self.params:,} values); "
                f"{len(self.left_in_file)} left over in the file, {len(self.left_in_model)} of the model's "
                f"{self.layout} scope not filled, {len(self.outside_scope)} outside it (trained anew)")


def map_state_dict(sd: Dict[str, torch.Tensor], layout: str, model: torch.nn.Module,
                   source: str = "the file", kind: str = "torch") -> ImportReport:
    """Map an official state dict onto `model` (a FERNet). Shape mismatches are errors; what is
    left over either side is reported (the caller refuses an incomplete map unless partial)."""
    if layout not in LAYOUTS:
        raise UserError(f"{source}: unknown layout --from {layout!r}; valid: {', '.join(LAYOUTS)}")
    cfg = model.cfg
    target = model.state_dict()
    manet_form = _is_manet(sd)
    if layout in ("ma_net", "ma_net_msceleb") and manet_form:
        heads = layout == "ma_net"

        def key_fn(k: str) -> Optional[Mapped]:
            return _ma_net_key(k, cfg.local_blocks, cfg.multiscale_blocks, heads)

        def in_scope(k: str) -> bool:
            return heads or not k.startswith(("local_head.", "global_head."))
    elif layout == "scan_cci" and _is_scan(sd):

        def key_fn(k: str) -> Optional[Mapped]:
            return _scan_key(k, model)

        def in_scope(k: str) -> bool:
            return True  # the whole preset
    elif layout in ("ma_net_msceleb", "vggface2_resnet50") and _is_resnet(sd) and not manet_form:
        key_fn = _backbone_key

        def in_scope(k: str) -> bool:
            return k.startswith("backbone.body.")
    else:
        first = ", ".join(list(sd)[:3])
        raise UserError(f"{source}: its keys ({first}, ...) are not the {layout!r} layout "
                        f"(its keys say: {detect_layout(sd, kind) or 'no known layout'})")
    out: Dict[str, torch.Tensor] = {}
    mapped: Dict[str, str] = {}
    left_file: List[str] = []
    wrong: List[str] = []
    for k, v in sd.items():
        hit = key_fn(k)
        if hit is None or hit[0] not in target:
            left_file.append(k)
            continue
        tk, fn = hit
        t = fn(v)
        if tuple(t.shape) != tuple(target[tk].shape):
            wrong.append(f"{k} {tuple(v.shape)} -> {tk} {tuple(target[tk].shape)}")
            continue
        out[tk] = t.to(target[tk].dtype).contiguous()
        mapped[k] = tk
    if wrong:
        raise UserError(f"{source}: {len(wrong)} tensors of layout {layout!r} do not fit the model "
                        f"({cfg.backbone}, num_classes={cfg.num_classes}): {'; '.join(wrong[:3])}")
    # num_batches_tracked: a training counter, absent from caffe conversions; never required
    left_model = [k for k in target if in_scope(k) and k not in out and not k.endswith("num_batches_tracked")]
    outside = [k for k in target if not in_scope(k)]
    return ImportReport(layout, out, mapped, left_file, left_model, outside)


def import_official(path: Union[str, Path], layout: Optional[str], model: torch.nn.Module,
                    partial: bool = False) -> ImportReport:
    """Read `path`, map it with `layout` (None: detect it) onto `model`; refuse a map that leaves
    part of the layout's scope empty unless `partial`."""
    sd, kind, skipped = read_official(path)
    return import_state_dict(sd, kind, skipped, str(path), layout, model, partial)


def import_state_dict(sd: Dict[str, torch.Tensor], kind: str, skipped: List[str], src: str,
                      layout: Optional[str], model: torch.nn.Module, partial: bool) -> ImportReport:
    """`import_official` on a state dict `read_official` returned."""
    if layout is None:
        layout = detect_layout(sd, kind)
        if layout is None:
            raise UserError(f"{src!r}: not a known official layout (first keys: {', '.join(list(sd)[:3])}); "
                            f"name one with --from ({', '.join(LAYOUTS)})")
    rep = map_state_dict(sd, layout, model, source=repr(src), kind=kind)
    rep.skipped_objects = skipped
    if not rep.mapped:
        raise UserError(f"{src!r}: no tensor of layout {layout!r} maps onto the model")
    if layout == "scan_cci" and rep.left_in_file and not partial:
        # the file is the whole published network: a tensor with no place in the model is a mismatch
        # (25 per-patch SCANs onto the shared preset would run patch 0's SCAN everywhere)
        hint = ("; its SCANs are one per patch: use preset scan_cci (local_shared: false)"
                if any(k.startswith("attention.local_attention_masks.1.") for k in rep.left_in_file) else "")
        raise UserError(f"{src!r} (layout 'scan_cci'): {len(rep.left_in_file)} of its tensors have no place in the "
                        f"model, first {', '.join(rep.left_in_file[:3])}{hint}; pass --partial to load the rest anyway")
    if rep.left_in_model and not partial:
        raise UserError(f"{src!r} (layout {layout!r}) fills only {len(rep.mapped)} tensors: "
                        f"{len(rep.left_in_model)} of the model stay empty, first "
                        f"{', '.join(rep.left_in_model[:3])}; pass --partial to load it anyway")
    return rep


def load_official(model: torch.nn.Module, path: Union[str, Path]) -> Optional[Dict[str, List[str]]]:
    """`pretrained_path` hook: load an official checkpoint whose layout its keys reveal, whole
    (no partial load here); None when the file is not one (then the plain state-dict path runs)."""
    try:
        sd, kind, skipped = read_official(path)
    except UserError:
        return None  # not readable here: the plain loader says what is wrong
    layout = detect_layout(sd, kind)
    if layout is None:
        return None
    try:
        rep = import_state_dict(sd, kind, skipped, str(path), layout, model, partial=False)
    except UserError as exc:
        raise UserError(f"pretrained_path: {exc}; or convert it with `fer-automl models import-weights "
                        f"{path} --from {layout} --preset NAME --partial --out FILE.pt`") from None
    model.load_state_dict(rep.state_dict, strict=False)
    scope = [k for k in model.state_dict() if k not in rep.outside_scope]
    return {"loaded": sorted(rep.state_dict), "missing": sorted(k for k in scope if k not in rep.state_dict),
            "unexpected": sorted(rep.left_in_file), "layout": [layout]}


def save_imported(rep: ImportReport, out: Union[str, Path]) -> Path:
    p = Path(out).expanduser()
    if p.is_dir():
        raise UserPathError(f"--out {str(p)!r} is a folder; name the .pt file to write")
    if not p.parent.is_dir():
        raise UserPathError(f"--out {str(p)!r}: folder {str(p.parent)!r} does not exist")
    torch.save(rep.state_dict, p)
    return p
