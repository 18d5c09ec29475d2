"""The one in-memory form of every dataset, and the canonical expression classes."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import numpy as np

from .errors import UserError

#: Canonical expression classes, in this order (contempt only where a dataset has it).
CANONICAL_CLASSES: tuple[str, ...] = (
    "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral", "contempt")
BASIC_CLASSES: tuple[str, ...] = CANONICAL_CLASSES[:7]
SPLITS: tuple[str, ...] = ("train", "val", "test")

# Full-word spellings used by the public datasets and by people; two-letter codes are
# dataset-specific and live in their readers.
LABEL_ALIASES: dict[str, str] = {
    "angry": "angry", "anger": "angry", "mad": "angry",
    "disgust": "disgust", "disgusted": "disgust", "disgusting": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear", "scared": "fear",
    "happy": "happy", "happiness": "happy", "joy": "happy", "smile": "happy", "smiling": "happy",
    "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "surprised": "surprise", "surprize": "surprise",
    "neutral": "neutral", "calm": "neutral",
    "contempt": "contempt", "contemptuous": "contempt",
}


def canonical_label(value: str, *, where: str = "") -> str:
    """Map a class name or alias (any case) to its canonical name; ValueError otherwise."""
    key = str(value).strip().lower().replace("-", "").replace(" ", "")
    try:
        return LABEL_ALIASES[key]
    except KeyError:
        loc = f"{where}: " if where else ""
        raise UserError(
            f"{loc}unknown expression label {value!r}; expected one of "
            f"{', '.join(CANONICAL_CLASSES)} (or an alias such as happiness, anger, surprised)"
        ) from None


def canonical_order(names: Sequence[str]) -> list[str]:
    """The given canonical class names, deduplicated, in the canonical order."""
    present = set(names)
    unknown = present - set(CANONICAL_CLASSES)
    if unknown:
        raise ValueError(f"not canonical class names: {sorted(unknown)}")
    return [c for c in CANONICAL_CLASSES if c in present]


@dataclass
class FERDataset:
    """A dataset in memory (or memory-mapped from the decode cache).

    images:   N x H x W x 3 uint8 RGB (one size for all; np.memmap when read from the cache)
    labels:   N int64 indices into `classes` (canonical order)
    splits:   N strings, each 'train', 'val' or 'test'
    poses:    N int64 indices into `pose_classes`, or None when the set has no pose labels
    subjects: N subject ids (str), or None when the set has none
    keys:     N relative paths (or 'file.csv#row' for pixel-string rows): what the
              fingerprint hashes, and how errors name an image
    source_sizes: N x 2 int (height, width) of each image as decoded, before any resize, or
              None where unknown (the per-split size statistics of `runners.data.stats`)
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    splits: np.ndarray
    poses: Optional[np.ndarray] = None
    pose_classes: list[str] = field(default_factory=list)
    subjects: Optional[np.ndarray] = None
    keys: Optional[np.ndarray] = None
    name: str = ""
    fingerprint: str = ""
    source: str = ""
    format: str = ""
    num_skipped: int = 0
    from_cache: bool = False
    source_sizes: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        n = len(self.labels)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.splits = np.asarray(self.splits, dtype=object)
        if self.poses is not None:
            self.poses = np.asarray(self.poses, dtype=np.int64)
        if self.subjects is not None:
            self.subjects = np.asarray(self.subjects, dtype=object)
        if self.keys is not None:
            self.keys = np.asarray(self.keys, dtype=object)
        if self.source_sizes is not None:
            self.source_sizes = np.asarray(self.source_sizes, dtype=np.int64).reshape(-1, 2)
        for attr in ("images", "splits", "poses", "subjects", "keys", "source_sizes"):
            value = getattr(self, attr)
            if value is not None and len(value) != n:
                raise ValueError(f"FERDataset {self.name!r}: {attr} has {len(value)} entries, labels {n}")
        if self.classes != canonical_order(self.classes):
            raise ValueError(f"FERDataset {self.name!r}: classes {self.classes} not in canonical order")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[1:3])  # type: ignore[return-value]

    def indices(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        return np.flatnonzero(self.splits == split)

    def subset(self, split: str) -> "FERDataset":
        """The images of one split (a view of the same dataset; errors when it is empty)."""
        idx = self.indices(split)
        if len(idx) == 0:
            raise UserError(f"split {split!r} of dataset {self.name!r} ({self.source}) has no images")
        return self.take(idx)

    def take(self, idx: np.ndarray) -> "FERDataset":
        idx = np.asarray(idx, dtype=np.int64)
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return replace(
            self, images=self.images[idx], labels=self.labels[idx], splits=self.splits[idx],
            poses=pick(self.poses), subjects=pick(self.subjects), keys=pick(self.keys),
            source_sizes=pick(self.source_sizes))

    # --- counts --------------------------------------------------------------------------
    def class_counts(self, split: Optional[str] = None) -> dict[str, int]:
        labels = self.labels if split is None else self.labels[self.splits == split]
        counts = np.bincount(labels, minlength=len(self.classes))
        return {c: int(k) for c, k in zip(self.classes, counts)}

    def pose_counts(self, split: Optional[str] = None) -> dict[str, int]:
        if self.poses is None:
            return {}
        poses = self.poses if split is None else self.poses[self.splits == split]
        counts = np.bincount(poses, minlength=len(self.pose_classes))
        return {p: int(k) for p, k in zip(self.pose_classes, counts)}

    def split_counts(self) -> dict[str, int]:
        return {s: int(np.count_nonzero(self.splits == s)) for s in SPLITS}

    def num_subjects(self, split: Optional[str] = None) -> int:
        if self.subjects is None:
            return 0
        subj = self.subjects if split is None else self.subjects[self.splits == split]
        return len(set(subj.tolist()))

    def summary(self) -> dict:
        """What `fer-automl data inspect --json` prints (and what lineage records)."""
        return {
            "name": self.name,
            "format": self.format,
            "source": self.source,
            "num_images": len(self),
            "image_size": list(self.image_size),
            "classes": self.class_counts(),
            "poses": self.pose_counts(),
            "splits": self.split_counts(),
            "num_subjects": self.num_subjects(),
            "num_skipped": self.num_skipped,
            "fingerprint": self.fingerprint,
        }
