"""timm backbones as feature extractors, built only as deep as the branches need.

`timm.create_model(features_only=True)` returns every stage; the ResNet-style wrapper
(FeatureListNet) can drop later modules, the EfficientNet/MobileNet feature classes run all
their blocks whatever `out_indices` says. `Backbone` truncates both kinds so that no parameter is
left without a gradient (and the parameter counts match the papers' truncated trunks).
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Dict, List, Optional, Sequence

import timm
import torch
from torch import nn
from timm.models._features import FeatureDictNet

from . import fercnn  # noqa: F401 - registers the `fercnn` timm model
from .errors import UserError
from .pretrained import create_kwargs, fetch_errors

log = logging.getLogger(__name__)

# Backbones sized for 48-64 px faces on a CPU budget (issue 11, item 8): timm's small ImageNet nets
# and fercnn (fer_models/fercnn.py, width and depth in ModelConfig). All build through `Backbone`,
# truncated, under every branch type (tests/test_compact_backbones.py).
COMPACT_BACKBONES = ("fercnn", "resnet10t", "mobilenetv3_small_100", "mobilenetv3_small_050", "lcnet_100",
                     "lcnet_075", "lcnet_050", "ghostnet_100", "ghostnet_050")


class Backbone(nn.Module):
    def __init__(self, name: str, keep: Sequence[int], in_chans: int = 3, pretrained: Optional[str] = None,
                 pretrained_file: Optional[str] = None, **model_kwargs):
        super().__init__()
        # pretrained / pretrained_file: timm's own weight loading (hub, HF cache, local file), see
        # fer_models/pretrained.py; None for both: random init, no file or network touched
        timm_name, weight_kwargs, weights = create_kwargs(name, pretrained, pretrained_file)
        try:  # model_kwargs: the architecture knobs of a backbone that has them (fercnn's width, depth)
            with fetch_errors(name, pretrained, weights, pretrained_file) if weights else nullcontext():
                body = timm.create_model(timm_name, features_only=True, in_chans=in_chans, **weight_kwargs,
                                         **model_kwargs)
        except RuntimeError as exc:  # timm: "Unknown model (x)" / features_only unsupported
            raise UserError(f"backbone {name!r} cannot be built by timm with features_only=True: {exc}") from None
        if (getattr(body, "pretrained_cfg", None) or {}).get("fixed_input_size"):
            size = body.pretrained_cfg.get("input_size", (3, "?", "?"))[1:]
            raise UserError(f"backbone {name!r} takes only a fixed {size[0]}x{size[1]} input (a transformer or "
                            "MLP backbone); the FER branches cut and pool feature maps of any input size: use a "
                            "CNN (resnet18, resnet50, efficientnet_b0, mobilenetv3_large_100, convnext_atto, ...)")
        info = body.feature_info
        self.name = name
        self.all_channels: List[int] = list(info.channels())
        self.all_reductions: List[int] = list(info.reduction())
        self.num_stages = len(self.all_channels)
        keep = sorted(set(keep))
        bad = [k for k in keep if not 0 <= k < self.num_stages]
        if bad:
            raise UserError(
                f"backbone {name!r} has stages 0..{self.num_stages - 1} (reductions {self.all_reductions}); "
                f"stage {bad[0]} does not exist")
        self.keep = keep
        self._truncate(body, info.get_dicts(), keep)
        self.body = body

    @staticmethod
    def _truncate(body: nn.Module, infos: List[dict], keep: List[int]) -> None:
        deepest = max(keep)
        if isinstance(body, FeatureDictNet):
            # timm's own names of the feature modules, in stage order (a nested module is flattened:
            # 'stages.0' -> 'stages_0', so feature_info's dotted names are not always keys here)
            name_of = list(body.return_layers)
            body.return_layers = {name_of[i]: str(i) for i in keep}
            last = name_of[deepest]
            children = list(body.keys())
            for child in children[children.index(last) + 1:]:
                del body[child]
        elif hasattr(body, "_stage_out_idx") and isinstance(getattr(body, "blocks", None), nn.Sequential):
            stages = [infos[i]["stage"] for i in keep]
            body._stage_out_idx = {s: i for s, i in zip(stages, keep)}
            body.blocks = body.blocks[: max(stages)]
        else:  # other feature wrappers: correct output, but unused later stages stay built
            log.warning("backbone %s (%s): cannot truncate after stage %d; later stages stay built",
                        type(body).__name__, body, deepest)

    def forward(self, x: torch.Tensor) -> Dict[int, torch.Tensor]:
        feats = self.body(x)
        if len(feats) != len(self.keep):  # un-truncatable wrapper returned every stage
            feats = [feats[i] for i in self.keep]
        return dict(zip(self.keep, feats))
