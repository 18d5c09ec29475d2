"""`fercnn`: a small FER CNN of depthwise-separable residual blocks, registered as a timm model.

In the style of mini-Xception (Arriaga et al. 2017, "Real-time Convolutional Neural Networks for
Emotion and Gender Classification": ~58k parameters, 65.7% on FER2013's private test at 48 px):
a two-convolution stem at full resolution, then four stages, each opening with a stride-2 block
whose main path is two separable 3x3 convolutions and a 3x3 max pool and whose shortcut is a
strided 1x1 convolution. `width` is the first stage's channels (doubled at every stage, the stem
has half of it); `depth` is the residual blocks per stage (the later ones keep the shape and an
identity shortcut). `width=16, depth=1` is mini-Xception's layout (~50k backbone parameters).

Feature stages (timm `feature_info`, the indices the FER branches read): 0 = stem (reduction 1),
1..4 = the stages (reductions 2, 4, 8, 16). Five stages, as the ResNets have, so that the unified
space's split/global stages and scale counts mean the same on it; the reductions are half of a
ResNet's, which keeps the split map of a 48-64 px face large enough for patches.

Registered with timm (`timm.create_model("fercnn", features_only=True, width=..., depth=...)`) so
that `fer_models.backbone.Backbone` builds and truncates it like any timm CNN. timm's own small
nets (mobilenetv3_small, lcnet, ghostnet) are ImageNet designs whose stems cut a 48 px face to 24
px at once; a FER-sized trunk at full resolution is not among them, hence this module. There are
no pretrained weights for it: it always trains from scratch.
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.layers import SelectAdaptivePool2d

# defaults and bounds of the two knobs (ModelConfig validates against these)
DEFAULT_WIDTH = 16
DEFAULT_DEPTH = 1
WIDTH_RANGE = (4, 256)
DEPTH_RANGE = (1, 8)


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> List[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


def _separable(cin: int, cout: int) -> List[nn.Module]:
    """Depthwise 3x3 then pointwise 1x1, one BatchNorm after (as Keras' SeparableConv2D + BN)."""
    return [nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout)]


class SeparableResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        main = [*_separable(cin, cout), nn.ReLU(inplace=True), *_separable(cout, cout)]
        if stride > 1:
            main.append(nn.MaxPool2d(3, stride, 1))
        self.main = nn.Sequential(*main)
        self.shortcut = (nn.Identity() if stride == 1 and cin == cout
                         else nn.Sequential(*_conv_bn(cin, cout, 1, stride)))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.main(x) + self.shortcut(x))


class FerCNN(nn.Module):
    def __init__(self, width: int = DEFAULT_WIDTH, depth: int = DEFAULT_DEPTH, in_chans: int = 3,
                 num_classes: int = 7, drop_rate: float = 0.0, global_pool: str = "avg", **_ignored):
        super().__init__()
        stem = max(2, width // 2)
        self.stem = nn.Sequential(*_conv_bn(in_chans, stem), nn.ReLU(inplace=True),
                                  *_conv_bn(stem, stem), nn.ReLU(inplace=True))
        self.feature_info = [dict(num_chs=stem, reduction=1, module=f"stem.{len(self.stem) - 1}")]
        stages, cin = [], stem
        for s in range(4):
            cout = width * 2 ** s
            stages.append(nn.Sequential(*(SeparableResidualBlock(cin if b == 0 else cout, cout, 2 if b == 0 else 1)
                                          for b in range(depth))))
            self.feature_info.append(dict(num_chs=cout, reduction=2 ** (s + 1), module=f"stages.{s}"))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.num_features = cin
        self.num_classes = num_classes
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(cin, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = generate_default_cfgs({
    # no weights anywhere (hf_hub_id / url empty): `pretrained=True` is refused by timm
    "fercnn": dict(num_classes=7, input_size=(3, 48, 48), pool_size=(3, 3), mean=(0.485, 0.456, 0.406),
                   std=(0.229, 0.224, 0.225), first_conv="stem.0", classifier="fc"),
})


@register_model
def fercnn(pretrained: bool = False, **kwargs) -> FerCNN:
    return build_model_with_cfg(FerCNN, "fercnn", pretrained,
                                feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3, 4)), **kwargs)
