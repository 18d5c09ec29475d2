"""`build_model(config)`: one builder whose points are MA-Net, SCAN-CCI, PhaNet, LNLAttenNet ...

Data flow (stage indices are timm's `feature_info` indices: 0 = stem, 1..4 = ResNet layer1..4):

    image -> timm backbone (only the stages the branches read)
      global branch  'backbone':   attention on each of the last `num_scales` stages up to
                                   `global_stage`, one classifier per scale, softmax gate
                                   (PhaNet-style hierarchical attention, scale selection)
                     'multiscale': MA-Net multi-scale stages on the split-stage map
      local branch   the split-stage map (optionally U-Net-merged with the deepest map) cut
                     into a grid of patches; per patch attention+pooling (SCAN) or a deep copy
                     of the later stages with attention in every block (MA-Net); aggregated
                     by stitching, max, mean or non-local region weights (LNLAttenNet)
      context        SCAN-CCI's CCI on the stage after the split: ECA, 2x2 regions, MLPs
      pose head      on the global features (PhaNet)
    -> branch logits by name -> fused logits (weighted sum or mean)
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import EcaModule, NonLocalAttn

from .attention import AttentionGate, attention_factory, make_attention
from .backbone import Backbone
from .blocks import attention_basic_stages, multiscale_stages
from .config import ModelConfig
from .errors import UserError, UserPathError
from .official_init import official_bottom_strip, official_init

log = logging.getLogger(__name__)


@dataclass
class FEROutput:
    """What every model returns. `logits` is the fused prediction."""

    logits: torch.Tensor
    branch_logits: Dict[str, torch.Tensor]
    pose_logits: Optional[torch.Tensor] = None
    attention_maps: Dict[str, torch.Tensor] = field(default_factory=dict)
    scale_weights: Optional[torch.Tensor] = None  # (B, num_scales) softmax gate, hierarchical global branch
    patch_weights: Optional[torch.Tensor] = None  # (B, num_patches) non-local region weights


def patch_bounds(size: int, grid: int, mode: str) -> List[Tuple[int, int]]:
    """Cell boundaries along one axis. 'ceil': ceil(size/grid) per cell, the last takes the rest
    (SCAN-CCI: 28 -> 6,6,6,6,4; MA-Net: 28 -> 14,14). 'even': sizes differ by at most one."""
    if grid > size:
        raise UserError(f"a {grid}x{grid} grid does not fit a feature map of {size}x{size}")
    if mode == "ceil_official":  # the same bounds; the bottom strip's cells are re-cut in FERNet._split
        bounds = patch_bounds(size, grid, "ceil")
        last = bounds[-1][1] - bounds[-1][0]
        if grid > 1 and last != grid - 1:
            raise UserError(f"patch_split='ceil_official' reproduces SCAN-CCI's cut, which cuts the bottom strip into "
                             f"its rows: the last cell must be grid-1 = {grid - 1} wide (SCAN-CCI: 28 in 5 leaves 4), "
                             f"but {size} in {grid} leaves {last}; use patch_split='ceil'")
        return bounds
    if mode == "ceil":
        step = math.ceil(size / grid)
        if step * (grid - 1) >= size:
            raise UserError(f"patch_split='ceil' cannot cut a map of {size} into {grid} cells of {step} "
                             f"(the last cell would be empty); use patch_split='even'")
        edges = [min(i * step, size) for i in range(grid)] + [size]
    else:
        edges = [round(i * size / grid) for i in range(grid + 1)]
    return list(zip(edges[:-1], edges[1:]))


def _gap(x: torch.Tensor) -> torch.Tensor:
    return x.mean((2, 3))


def _head(cin: int, cout: int, dropout: float) -> nn.Module:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(cin, cout)) if dropout > 0 else nn.Linear(cin, cout)


@functools.lru_cache(maxsize=None)
def stage_layout(backbone: str, in_chans: int = 3, **backbone_kwargs) -> Tuple[List[int], List[int]]:
    """(channels, reductions) of every feature stage of a timm backbone (built once, then cached);
    backbone_kwargs: ModelConfig.backbone_kwargs (fercnn's width and depth)."""
    # the probe's random init must not move the caller's RNG: a seeded model is then the same
    # whether or not this backbone was built before in the process
    with torch.random.fork_rng(devices=[]):
        probe = Backbone(backbone, [0], in_chans, **backbone_kwargs)
    return probe.all_channels, probe.all_reductions


class FERNet(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        K = cfg.num_classes
        chans, reds = stage_layout(cfg.backbone, cfg.in_chans, **cfg.backbone_kwargs)
        n = len(chans)
        self.stage_channels, self.stage_reductions = chans, reds
        last = n - 1
        split = cfg.split_stage
        uses_split = cfg.num_patches > 0 or cfg.global_branch == "multiscale"
        if uses_split and not 1 <= split < last:
            raise UserError(f"split_stage={split} must be a stage with a later stage after it: "
                             f"1..{last - 1} for backbone {cfg.backbone!r} (stages 0..{last})")
        keep = set()
        if uses_split:
            keep.add(split)
        # global branch
        if cfg.global_branch == "backbone":
            g = cfg.global_stage if cfg.global_stage is not None else last
            if not 1 <= g <= last:
                raise UserError(f"global_stage={g} is not a stage of {cfg.backbone!r} (1..{last})")
            first = g - cfg.num_scales + 1
            if first < 1:
                raise UserError(f"num_scales={cfg.num_scales} needs {cfg.num_scales} stages ending at stage {g}, "
                                 f"but {cfg.backbone!r} has only stages 1..{g} there")
            self.scale_stages = list(range(first, g + 1))
            keep.update(self.scale_stages)
        else:
            self.scale_stages = []
        if cfg.context_branch:
            if split + 1 > last:
                raise UserError(f"context_branch reads stage split_stage+1={split + 1}, beyond {cfg.backbone!r}'s last stage {last}")
            keep.add(split + 1)
        self.unet_stage = None
        if cfg.unet_fusion:
            if cfg.num_patches == 0:
                raise UserError("unet_fusion merges deeper features into the patch map: it needs num_patches > 0")
            self.unet_stage = max(keep | {split + 1})
            keep.add(self.unet_stage)
        self.backbone = Backbone(cfg.backbone, sorted(keep), cfg.in_chans, pretrained=cfg.pretrained,
                                 pretrained_file=cfg.pretrained_file, **cfg.backbone_kwargs)
        self.branch_weight: Dict[str, float] = {}
        global_dim = 0
        deeper_widths = chans[split + 1:]
        deeper_strides = [reds[i] // reds[i - 1] for i in range(split + 1, n)]

        # ---- global branch ----------------------------------------------------------------
        gatt = cfg.resolved_global_attention
        if cfg.global_branch == "backbone":
            self.global_attn = nn.ModuleDict({str(s): make_attention(gatt, chans[s]) for s in self.scale_stages})
            if cfg.head == "separate":
                self.scale_heads = nn.ModuleDict({str(s): _head(chans[s], K, cfg.dropout) for s in self.scale_stages})
            global_dim = sum(chans[s] for s in self.scale_stages)
            multi = len(self.scale_stages) > 1 and cfg.head == "separate"
            self.scale_gate = nn.Linear(global_dim, len(self.scale_stages)) if multi else None
        else:
            self.ms_stages = multiscale_stages(chans[split], deeper_widths, deeper_strides, cfg.multiscale_blocks,
                                               cfg.num_scales, cfg.multiscale_bidirectional)
            self.global_attn = nn.ModuleDict({"ms": make_attention(gatt, deeper_widths[-1])})
            global_dim = deeper_widths[-1]
            if cfg.head == "separate":
                self.global_head = _head(global_dim, K, cfg.dropout)
            self.scale_gate = None
        self.global_dim = global_dim

        # ---- local branch -----------------------------------------------------------------
        P = cfg.num_patches
        local_dim = 0
        if self.unet_stage is not None:
            self.unet_lateral = nn.Conv2d(chans[self.unet_stage], chans[split], 1)
            self.unet_merge = nn.Sequential(nn.Conv2d(chans[split], chans[split], 3, padding=1, bias=False),
                                            nn.BatchNorm2d(chans[split]), nn.ReLU(inplace=True))
        if P:
            copies = 1 if cfg.local_shared else P
            if cfg.local_kind == "attention":
                self.local_nets = nn.ModuleList(make_attention(cfg.attention, chans[split]) for _ in range(copies))
                local_dim = chans[split]
            else:
                local_strides = deeper_strides[:-1] + [1]  # MA-Net: the local copies' last stage keeps stride 1
                self.local_nets = nn.ModuleList(
                    attention_basic_stages(chans[split], deeper_widths, local_strides, cfg.local_blocks,
                                           attention_factory(cfg.attention)) for _ in range(copies))
                local_dim = deeper_widths[-1]
            if cfg.local_aggregation in ("mean", "weighted"):
                self.patch_heads = nn.ModuleList(_head(local_dim, K, cfg.dropout) for _ in range(copies))
            elif cfg.head == "separate":
                self.local_head = _head(local_dim, K, cfg.dropout)
            if cfg.local_aggregation == "weighted":
                # LNLAttenNet: a non-local attention network scores every region of the map
                self.region_scorer = nn.ModuleDict({
                    "nl": NonLocalAttn(chans[split]), "score": nn.Linear(chans[split], 1)})
        self.local_dim = local_dim
        if cfg.head == "concat_l2":
            self.joint_head = _head(global_dim + local_dim, K, cfg.dropout)

        # ---- context (CCI) and pose -------------------------------------------------------------
        if cfg.context_branch:
            c = chans[split + 1]
            self.context_eca = AttentionGate("eca", EcaModule(c, kernel_size=5))

            def mlp() -> nn.Module:
                return nn.Sequential(nn.Linear(c, cfg.context_hidden), nn.ReLU(inplace=True),
                                     nn.Dropout(cfg.dropout), nn.Linear(cfg.context_hidden, K))

            self.context_mlps = nn.ModuleList(mlp() for _ in range(1 if cfg.context_shared else 4))
        if cfg.pose_head:
            self.pose_head = _head(global_dim, cfg.num_pose_classes, cfg.dropout)

        self.branches = self._branch_names()
        if cfg.init == "official":
            official_init(self)

    # ------------------------------------------------------------------------------------------
    def _branch_names(self) -> List[str]:
        cfg = self.cfg
        names: List[str] = []
        if cfg.head == "concat_l2":
            names.append("global_local")
        else:
            if len(self.scale_stages) > 1:
                names += [f"scale_{s}" for s in self.scale_stages]
            names.append("global")
            if cfg.num_patches:
                if cfg.local_aggregation in ("mean", "weighted"):
                    names += [f"patch_{i}" for i in range(cfg.num_patches)]
                names.append("local")
        if cfg.context_branch:
            names += [f"context_{j}" for j in range(4)]
        return names

    @property
    def fused_branches(self) -> List[str]:
        """The branches whose logits make the prediction (auxiliary scale and patch heads do not)."""
        return [b for b in self.branches if not b.startswith(("scale_", "patch_"))]

    def branch_group(self, branch: str) -> str:
        return {"global_local": "global"}.get(branch, branch.split("_")[0])

    def group_weight(self, group: str) -> float:
        c = self.cfg
        return {"global": c.global_weight, "local": c.local_weight, "context": c.context_weight,
                "scale": c.scale_weight, "patch": c.local_weight, "pose": c.pose_weight}[group]

    def set_keep_attention_maps(self, on: bool) -> None:
        for m in self.modules():
            if isinstance(m, AttentionGate):
                m.keep_map = on and m.name != "none"

    # ------------------------------------------------------------------------------------------
    def _split(self, x: torch.Tensor) -> List[torch.Tensor]:
        g, mode = self.cfg.grid, self.cfg.patch_split
        h, w = x.shape[-2:]
        try:
            rows, cols = patch_bounds(h, g, mode), patch_bounds(w, g, mode)
        except ValueError as exc:
            raise UserError(f"num_patches={self.cfg.num_patches} on the stage-{self.cfg.split_stage} map of "
                             f"{h}x{w}: {exc}") from None
        cells = [x[..., r0:r1, c0:c1] for r0, r1 in rows for c0, c1 in cols]
        if mode == "ceil_official" and g > 1:
            cells[g * (g - 1):g * g - 1] = official_bottom_strip(x, rows, cols)
        return cells

    def _local_net(self, i: int) -> nn.Module:
        return self.local_nets[0 if self.cfg.local_shared else i]

    def _local(self, fmap: torch.Tensor, out: Dict[str, torch.Tensor]):
        cfg = self.cfg
        patches = self._split(fmap)
        P, g = len(patches), cfg.grid
        same = len({tuple(p.shape[-2:]) for p in patches}) == 1  # spatial only: the batch may be symbolic (torch.export)
        if cfg.local_shared and same:  # one batched call for all patches
            B = fmap.shape[0]
            ys = self.local_nets[0](torch.cat(patches, 0)).split(B, 0)
        else:
            ys = [self._local_net(i)(p) for i, p in enumerate(patches)]
        agg = cfg.local_aggregation
        if agg == "stitch":
            rows = [torch.cat(ys[r * g:(r + 1) * g], dim=3) for r in range(g)]
            return _gap(torch.cat(rows, dim=2)), None
        pooled = [_gap(y) for y in ys]
        if agg == "max":
            return torch.stack(pooled, 0).amax(0), None
        heads = [self.patch_heads[0 if cfg.local_shared else i] for i in range(P)]
        plog = [h(v) for h, v in zip(heads, pooled)]
        for i, lg in enumerate(plog):
            out[f"patch_{i}"] = lg
        stacked = torch.stack(plog, 1)  # B, P, K
        if agg == "mean":
            return None, (stacked.mean(1), None)
        nl = self.region_scorer["nl"](fmap)
        scores = torch.cat([self.region_scorer["score"](_gap(p)) for p in self._split(nl)], 1)  # B, P
        weights = scores.softmax(1)
        return None, ((stacked * weights.unsqueeze(-1)).sum(1), weights)

    def forward(self, x: torch.Tensor) -> FEROutput:
        cfg = self.cfg
        feats = self.backbone(x)
        logits: Dict[str, torch.Tensor] = {}
        scale_w = patch_w = None

        # global
        if cfg.global_branch == "backbone":
            pooled = [_gap(self.global_attn[str(s)](feats[s])) for s in self.scale_stages]
            gfeat = torch.cat(pooled, 1)
            if cfg.head == "separate":
                scale_logits = [self.scale_heads[str(s)](p) for s, p in zip(self.scale_stages, pooled)]
                if self.scale_gate is not None:
                    scale_w = self.scale_gate(gfeat).softmax(1)
                    for s, lg in zip(self.scale_stages, scale_logits):
                        logits[f"scale_{s}"] = lg
                    logits["global"] = (torch.stack(scale_logits, 1) * scale_w.unsqueeze(-1)).sum(1)
                else:
                    logits["global"] = scale_logits[0]
        else:
            gfeat = _gap(self.global_attn["ms"](self.ms_stages(feats[cfg.split_stage])))
            if cfg.head == "separate":
                logits["global"] = self.global_head(gfeat)

        # local
        if cfg.num_patches:
            fmap = feats[cfg.split_stage]
            if self.unet_stage is not None:
                deep = self.unet_lateral(feats[self.unet_stage])
                fmap = self.unet_merge(fmap + F.interpolate(deep, size=fmap.shape[-2:], mode="bilinear",
                                                            align_corners=False))
            lfeat, ens = self._local(fmap, logits)
            if ens is not None:
                logits["local"], patch_w = ens
            elif cfg.head == "separate":
                logits["local"] = self.local_head(lfeat)
            if cfg.head == "concat_l2":
                logits["global_local"] = self.joint_head(F.normalize(torch.cat([gfeat, lfeat], 1), dim=1))

        # context
        if cfg.context_branch:
            cmap = self.context_eca(feats[cfg.split_stage + 1])
            h, w = cmap.shape[-2:]
            if h < 2 or w < 2:
                raise UserError(f"context_branch needs a stage-{cfg.split_stage + 1} map of at least 2x2, got {h}x{w}")
            regions = [cmap[..., r0:r1, c0:c1] for r0, r1 in patch_bounds(h, 2, "even") for c0, c1 in patch_bounds(w, 2, "even")]
            for j, reg in enumerate(regions):
                logits[f"context_{j}"] = self.context_mlps[0 if cfg.context_shared else j](_gap(reg))

        fused_names = self.fused_branches
        stacked = torch.stack([logits[b] for b in fused_names], 0)
        if cfg.fusion == "mean":
            fused = stacked.mean(0)
        else:
            w = torch.tensor([self.group_weight(self.branch_group(b)) for b in fused_names],
                             dtype=stacked.dtype, device=stacked.device)
            fused = (stacked * w.view(-1, 1, 1)).sum(0) / w.sum().clamp_min(1e-12)
        pose = self.pose_head(gfeat) if cfg.pose_head else None
        maps = {}
        if not torch.compiler.is_compiling():
            maps = {name: m.last_map for name, m in self.named_modules()
                    if isinstance(m, AttentionGate) and m.keep_map and m.last_map is not None}
        return FEROutput(fused, {b: logits[b] for b in self.branches}, pose, maps, scale_w, patch_w)


def load_pretrained(model: FERNet, path: Union[str, Path]) -> Dict[str, List[str]]:
    """Load a local state dict into the model (keys of the whole model) or its backbone (keys of
    the timm model, e.g. a ResNet-18 checkpoint). Never downloads. Returns what did not match."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserPathError(f"pretrained_path {str(p)!r} is a folder, not a state-dict file")
    if not p.is_file():
        raise UserPathError(f"pretrained_path {str(p)!r}: no such file")
    from .official_weights import load_official  # issue 12: an official checkpoint maps itself

    official = load_official(model, p)
    if official is not None:
        return official
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling/format error is the file's fault
        raise UserError(f"pretrained_path {str(p)!r}: not a loadable state dict ({exc})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"pretrained_path {str(p)!r}: expected a dict of tensors (a state dict)")
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
    full = model.state_dict()
    if sum(k in full for k in sd) >= sum(f"backbone.body.{k}" in full for k in sd):
        target, prefix = full, ""
    else:
        target, prefix = full, "backbone.body."
    matched, mismatched, unexpected = {}, [], []
    for k, v in sd.items():
        tk = prefix + k
        if tk not in target:
            unexpected.append(k)
        elif target[tk].shape != v.shape:
            mismatched.append(f"{k}: file {tuple(v.shape)} vs model {tuple(target[tk].shape)}")
        else:
            matched[tk] = v
    if mismatched:
        raise UserError(f"pretrained_path {str(p)!r}: {len(mismatched)} tensors have the wrong shape for "
                         f"{model.cfg.backbone!r}, e.g. {'; '.join(mismatched[:3])}")
    if not matched:
        raise UserError(f"pretrained_path {str(p)!r}: none of its {len(sd)} keys match the model "
                         f"(first: {list(sd)[:3]}); is it a {model.cfg.backbone!r} checkpoint?")
    model.load_state_dict(matched, strict=False)
    scope = [k for k in full if k.startswith(prefix)]
    report = {"loaded": sorted(matched), "missing": sorted(k for k in scope if k not in matched),
              "unexpected": sorted(unexpected)}
    log.info("pretrained %s: %d tensors loaded, %d missing, %d unexpected", p, len(matched),
             len(report["missing"]), len(report["unexpected"]))
    return report


def build_model(config: Union[ModelConfig, dict], image_size: Optional[int] = None) -> FERNet:
    """Build the model a config describes. With `image_size`, also check that the patch grid and
    the context regions fit the feature maps at that size (else the error comes at forward)."""
    cfg = config if isinstance(config, ModelConfig) else ModelConfig.model_validate(config)
    model = FERNet(cfg)
    model.pretrained_report = load_pretrained(model, cfg.pretrained_path) if cfg.pretrained_path else None
    if image_size is not None:
        check_image_size(model, image_size)
    return model


def check_image_size(model: FERNet, image_size: int) -> None:
    cfg = model.cfg
    if cfg.num_patches:
        size = math.ceil(image_size / model.stage_reductions[cfg.split_stage])
        try:
            patch_bounds(size, cfg.grid, cfg.patch_split)
        except ValueError as exc:
            raise UserError(f"num_patches={cfg.num_patches} at image_size={image_size}: the stage-{cfg.split_stage} "
                             f"map is {size}x{size}; {exc}") from None
