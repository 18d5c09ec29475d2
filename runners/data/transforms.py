"""Albumentations pipelines (2.x API) and the normalisation each timm backbone expects."""
from __future__ import annotations

from typing import Sequence, Union

import albumentations as A
import cv2
import numpy as np

from .imageio import resize_to

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Size = Union[int, Sequence[int]]


def _hw(image_size: Size) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def normalization_for(backbone: str, weights: str | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) from timm's pretrained config of the backbone (offline: no download);
    ImageNet's when timm does not know the name. `weights`: the tagged timm name of the weights
    the model loads (fer_models.pretrained.timm_weights_name), whose config wins."""
    try:
        import timm

        cfg = timm.get_pretrained_cfg(weights or backbone)
    except Exception:  # noqa: BLE001 - unknown names raise in some timm versions
        cfg = None
    if cfg is None or not getattr(cfg, "mean", None) or not getattr(cfg, "std", None):
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)


def build_train_transform(image_size: Size, strength: float = 0.5,
                          mean: Sequence[float] = IMAGENET_MEAN,
                          std: Sequence[float] = IMAGENET_STD) -> A.Compose:
    """Random resized crop, horizontal flip, affine (rotation, shift, scale: pose), colour
    jitter and coarse dropout (occlusion), every one scaled by `strength` in [0, 1];
    strength 0 is resize + normalise only (the eval pipeline)."""
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"augmentation strength={strength!r}; expected a number in [0, 1]")
    s = float(strength)
    h, w = _hw(image_size)
    if s == 0.0:
        return build_eval_transform((h, w), mean, std)
    return A.Compose([
        A.RandomResizedCrop(size=(h, w), scale=(1.0 - 0.35 * s, 1.0), ratio=(1 - 0.15 * s, 1 + 0.15 * s),
                            interpolation=cv2.INTER_LINEAR, p=1.0),
        A.HorizontalFlip(p=0.5),
        A.Affine(rotate=(-20 * s, 20 * s), translate_percent=(-0.08 * s, 0.08 * s),
                 scale=(1 - 0.12 * s, 1 + 0.12 * s), border_mode=cv2.BORDER_REFLECT_101, p=0.8 * s),
        A.ColorJitter(brightness=0.35 * s, contrast=0.35 * s, saturation=0.3 * s, hue=0.04 * s, p=0.8 * s),
        A.CoarseDropout(num_holes_range=(1, max(1, round(3 * s))), hole_height_range=(0.08, 0.08 + 0.17 * s),
                        hole_width_range=(0.08, 0.08 + 0.17 * s), fill=0, p=0.5 * s),
        A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
    ])


class ResizeTo(A.ImageOnlyTransform):
    """`runners.data.imageio.resize_to` as an albumentations step: the resize of dataset loading,
    `predict` and `evaluate` (INTER_AREA when shrinking, INTER_LINEAR when enlarging)."""

    def __init__(self, height: int, width: int, p: float = 1.0):
        super().__init__(p=p)
        self.height, self.width = int(height), int(width)

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        return resize_to(img, (self.height, self.width))

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("height", "width")


def build_eval_transform(image_size: Size, mean: Sequence[float] = IMAGENET_MEAN,
                         std: Sequence[float] = IMAGENET_STD) -> A.Compose:
    """Resize to the model's input (`resize_to`, as datasets and predict do) and normalise as the
    backbone expects."""
    h, w = _hw(image_size)
    return A.Compose([
        ResizeTo(h, w),
        A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
    ])
