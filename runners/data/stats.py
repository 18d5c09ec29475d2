"""Per-split image statistics, and a warning when the splits look preprocessed differently.

A dataset whose splits were prepared differently (every training image blurred, the test images
sharp; one split darker, or upscaled from smaller originals) trains without an error and scores
at chance on the other split. `split_stats` measures, on a bounded seeded sample of each split
(`SAMPLE` images: cheap on any dataset), the median of

- brightness: mean gray level (0-255),
- contrast: standard deviation of the gray levels,
- sharpness: variance of the Laplacian of the gray image (OpenCV's `cv2.Laplacian`, 64-bit),
- size: height and width of the images as decoded, before any resize (as loaded when unknown),

and `split_warnings` names every pair of splits that differs beyond `THRESHOLDS`. A warning,
never an error: the user may mean it (a robustness test set, say). Brightness and contrast are
compared only between splits of at least `MIN_SUBJECTS` subjects each where subjects are known:
a split of two people shows their skin tone and lighting, not a preprocessing (the quick
start's synthetic validation split has 2 identities and is 36 gray levels brighter than its
test split). Sharpness and size are compared whatever the number of subjects.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import cv2
import numpy as np

from .dataset import SPLITS, FERDataset

#: Images measured per split (a seeded sample when a split has more).
SAMPLE = 200

#: Splits differ when, for their medians: sharpness ratio > 4, brightness difference > 25 gray
#: levels, contrast ratio > 2, or ratio of the image sides (sqrt(height * width)) > 2.
THRESHOLDS = {"sharpness_ratio": 4.0, "brightness_diff": 25.0, "contrast_ratio": 2.0, "size_ratio": 2.0}

#: Fewest subjects per split (where subjects are known) for brightness and contrast to be compared.
MIN_SUBJECTS = 5

# ratios of near-flat images are meaningless: sharpness and contrast below these floors count as these
_FLOOR = {"sharpness": 1.0, "contrast": 1.0}


def image_stats(rgb: np.ndarray) -> tuple[float, float, float]:
    """(brightness, contrast, sharpness) of one uint8 RGB image."""
    gray = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    return (float(gray.mean()), float(gray.std()), float(cv2.Laplacian(gray, cv2.CV_64F).var()))


def split_stats(ds: FERDataset, sample: int = SAMPLE, seed: int = 0) -> Dict[str, Dict[str, float]]:
    """{split: {images, sampled, subjects, brightness, contrast, sharpness, height, width}} (medians;
    subjects None where unknown) for every split that has images, in the order train, val, test."""
    rng = np.random.default_rng(seed)
    out: Dict[str, Dict[str, float]] = {}
    for split in SPLITS:
        idx = ds.indices(split)
        if len(idx) == 0:
            continue
        pick = np.sort(rng.choice(idx, size=sample, replace=False)) if len(idx) > sample else idx
        values = np.array([image_stats(np.asarray(ds.images[i])) for i in pick])
        if ds.source_sizes is not None:
            hw = np.asarray(ds.source_sizes)[pick]
        else:
            hw = np.tile(np.asarray(ds.image_size), (len(pick), 1))
        out[split] = {
            "images": int(len(idx)), "sampled": int(len(pick)),
            "subjects": ds.num_subjects(split) if ds.subjects is not None else None,
            "brightness": round(float(np.median(values[:, 0])), 2),
            "contrast": round(float(np.median(values[:, 1])), 2),
            "sharpness": round(float(np.median(values[:, 2])), 2),
            "height": float(np.median(hw[:, 0])), "width": float(np.median(hw[:, 1])),
        }
    return out


def _ratio(a: float, b: float, floor: float = 1e-9) -> float:
    a, b = max(a, floor), max(b, floor)
    return max(a, b) / min(a, b)


def split_warnings(stats: Dict[str, Dict[str, float]], thresholds: Optional[Dict[str, float]] = None) -> List[str]:
    """One line per pair of splits and statistic beyond the thresholds, naming both figures."""
    t = {**THRESHOLDS, **(thresholds or {})}
    names = list(stats)
    lines = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            sa, sb = stats[a], stats[b]
            r = _ratio(sa["sharpness"], sb["sharpness"], _FLOOR["sharpness"])
            if r > t["sharpness_ratio"]:
                lines.append(f"splits {a} and {b} differ in sharpness (median variance of the Laplacian): "
                             f"{a} {sa['sharpness']:.1f} vs {b} {sb['sharpness']:.1f}, {r:.1f}x "
                             f"(more than {t['sharpness_ratio']:g}x): one split may be blurred or upscaled")
            few = any((x.get("subjects") is not None and x["subjects"] < MIN_SUBJECTS) for x in (sa, sb))
            d = abs(sa["brightness"] - sb["brightness"])
            if d > t["brightness_diff"] and not few:
                lines.append(f"splits {a} and {b} differ in brightness (median mean gray level): "
                             f"{a} {sa['brightness']:.1f} vs {b} {sb['brightness']:.1f}, {d:.1f} levels apart "
                             f"(more than {t['brightness_diff']:g})")
            r = _ratio(sa["contrast"], sb["contrast"], _FLOOR["contrast"])
            if r > t["contrast_ratio"] and not few:
                lines.append(f"splits {a} and {b} differ in contrast (median std of gray levels): "
                             f"{a} {sa['contrast']:.1f} vs {b} {sb['contrast']:.1f}, {r:.1f}x "
                             f"(more than {t['contrast_ratio']:g}x)")
            side_a, side_b = (sa["height"] * sa["width"]) ** 0.5, (sb["height"] * sb["width"]) ** 0.5
            r = _ratio(side_a, side_b)
            if r > t["size_ratio"]:
                lines.append(f"splits {a} and {b} differ in image size (median, as decoded): "
                             f"{a} {sa['height']:g}x{sa['width']:g} vs {b} {sb['height']:g}x{sb['width']:g}, "
                             f"{r:.1f}x (more than {t['size_ratio']:g}x)")
    return lines


def check_splits(ds: FERDataset, echo: Optional[Callable[[str], None]] = print,
                 sample: int = SAMPLE) -> List[str]:
    """The warnings of `split_warnings` for a dataset (printed with `echo` as `warning: data: ...`);
    what a search's start-up data check calls."""
    lines = split_warnings(split_stats(ds, sample=sample))
    if echo is not None:
        for line in lines:
            echo(f"warning: data {ds.name}: {line} (a warning, not an error: training goes on)")
    return lines
