"""Train / val / test splits: the official one where a set has it, otherwise seeded and
stratified; by subject whenever subject ids exist; validation always from the train side."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .dataset import SPLITS
from .errors import UserError

_SUBJECT_TRIES = 64   # candidate subject orders scored for class balance


def _carve_stratified(pool: np.ndarray, labels: np.ndarray, fraction: float,
                      rng: np.random.Generator) -> np.ndarray:
    """About `fraction` of each class of `pool` (at least one image of any class with 2+)."""
    chosen = []
    for c in np.unique(labels[pool]):
        idx = pool[labels[pool] == c]
        idx = idx[rng.permutation(len(idx))]
        k = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = 0
        chosen.append(idx[:k])
    out = np.concatenate(chosen) if chosen else np.empty(0, np.int64)
    if len(out) == 0 and len(pool) >= 2 and fraction > 0:
        out = pool[rng.permutation(len(pool))[:1]]
    return np.sort(out)


def _carve_subjects(pool: np.ndarray, labels: np.ndarray, subjects: np.ndarray, fraction: float,
                    rng: np.random.Generator) -> np.ndarray:
    """Whole subjects, about `fraction` of the pool's images, class mix close to the pool's:
    the best of several seeded subject orders (never every subject: one stays on the train side)."""
    subj = subjects[pool]
    names, inverse = np.unique(subj, return_inverse=True)
    if len(names) < 2 or fraction <= 0:
        return np.empty(0, np.int64)
    num_classes = int(labels.max()) + 1
    per_subject = np.zeros((len(names), num_classes))
    np.add.at(per_subject, (inverse, labels[pool]), 1)
    target_n = fraction * len(pool)
    pool_mix = per_subject.sum(0) / per_subject.sum()
    best, best_score = None, np.inf
    for _ in range(_SUBJECT_TRIES):
        order = rng.permutation(len(names))
        counts = per_subject[order].sum(1).cumsum()
        # smallest prefix reaching the target size, at least one subject, never all of them
        k = int(np.searchsorted(counts, target_n)) + 1
        k = min(max(k, 1), len(names) - 1)
        take = order[:k]
        got = per_subject[take].sum(0)
        score = abs(got.sum() - target_n) / max(target_n, 1) + np.abs(got / got.sum() - pool_mix).sum()
        if score < best_score:
            best, best_score = take, score
    return np.sort(pool[np.isin(inverse, best)])


def carve(pool: np.ndarray, labels: np.ndarray, subjects: Optional[np.ndarray], fraction: float,
          rng: np.random.Generator) -> np.ndarray:
    if subjects is not None:
        return _carve_subjects(pool, labels, subjects, fraction, rng)
    return _carve_stratified(pool, labels, fraction, rng)


def make_splits(labels: np.ndarray, *, subjects: Optional[np.ndarray] = None,
                official: Optional[np.ndarray] = None, seed: int = 0, val_fraction: float = 0.1,
                test_fraction: float = 0.2, source: str = "") -> np.ndarray:
    """An array of 'train'/'val'/'test', one per image.

    official: the set's own split per image ('train'/'val'/'test'), or None. Kept as it is;
    a missing test side is carved from train, and a missing val side is always carved from
    train (never from test). With subject ids every carve takes whole subjects.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise UserError(f"{name}={frac!r}; expected a fraction strictly between 0 and 1")
    rng = np.random.default_rng(seed)
    if official is not None:
        out = np.array(["train" if s is None else s for s in official], dtype=object)
        bad = set(out.tolist()) - set(SPLITS)
        if bad:
            raise UserError(f"{source}: unknown split names {sorted(bad)}")
        if not np.any(out == "train"):
            raise UserError(f"{source}: split 'train' has no images (official split "
                            f"{ {s: int(np.sum(out == s)) for s in SPLITS} })")
    else:
        out = np.full(n, "train", dtype=object)
    all_idx = np.arange(n)
    carved_val = not np.any(out == "val")
    if not np.any(out == "test"):
        out[carve(all_idx[out == "train"], labels, subjects, test_fraction, rng)] = "test"
    if not np.any(out == "val"):
        train = all_idx[out == "train"]
        # val_fraction is of the whole set; carve that share of the train side
        frac = min(0.9, val_fraction * n / max(len(train), 1))
        out[carve(train, labels, subjects, frac, rng)] = "val"
    for s in SPLITS:
        if not np.any(out == s):
            extra = f", {len(set(subjects.tolist()))} subjects" if subjects is not None else ""
            raise UserError(
                f"{source}: split {s!r} has no images ({n} images{extra}; val_fraction={val_fraction}, "
                f"test_fraction={test_fraction}): too few images or subjects to split")
    if subjects is not None:
        if official is None:
            assert_subject_independent(subjects, out, source=source)
        elif carved_val:   # an official split is kept as it is; what we carve is by subject
            both = subject_overlap(subjects, out).get("train/val")
            if both:
                raise ValueError(f"{source}: subjects on both train and val: {both}")
    return out


def subject_overlap(subjects: np.ndarray, splits: np.ndarray) -> dict[str, list[str]]:
    """Subjects found on more than one side: {'train/test': [...], ...}."""
    sides = {s: set(subjects[splits == s].tolist()) for s in SPLITS}
    out = {}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = sorted(sides[a] & sides[b])
        if both:
            out[f"{a}/{b}"] = both
    return out


def assert_subject_independent(subjects: np.ndarray, splits: np.ndarray, *, source: str = "") -> None:
    overlap = subject_overlap(np.asarray(subjects, dtype=object), np.asarray(splits, dtype=object))
    if overlap:
        raise ValueError(f"{source}: subjects on both sides of a split: {overlap}")


def split_fingerprint(keys, splits) -> str:
    """sha256 over the sorted (key, split) lines: which image is on which side.

    Two loads of the same data (same content fingerprint) with the same seed and fractions give
    the same value; the model's metadata keeps the one it was trained on, so an evaluation can
    tell whether its 'test' holds exactly the images the trial tested on."""
    import hashlib

    digest = hashlib.sha256()
    for line in sorted(f"{k}\t{s}\n" for k, s in zip(np.asarray(keys, dtype=object).tolist(),
                                                      np.asarray(splits, dtype=object).tolist())):
        digest.update(line.encode())
    return digest.hexdigest()
