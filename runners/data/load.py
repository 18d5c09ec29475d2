"""`load_dataset`: any reader -> hashed, decoded, resized, split and fingerprinted FERDataset."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Optional, Union

import numpy as np

from . import cache as cache_mod
from .dataset import FERDataset, canonical_order
from .imageio import CorruptImage, Item, content_hash, decode_item, fingerprint, parallel_map, resize_to
from .readers import get_reader
from .splits import make_splits

log = logging.getLogger(__name__)
SHOW_BAD = 10

SizeArg = Union[int, tuple[int, int], None]


def _size(image_size: SizeArg) -> Optional[tuple[int, int]]:
    if image_size is None:
        return None
    if isinstance(image_size, int):
        if image_size < 1:
            raise ValueError(f"image_size={image_size}; expected a positive number of pixels")
        return (image_size, image_size)
    h, w = image_size
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"image_size={image_size}; expected positive (height, width)")
    return (int(h), int(w))


def _hash(item: Item) -> str:
    try:
        return content_hash(item)
    except OSError as exc:          # unreadable file: reported as corrupt when decoded
        return f"unreadable:{type(exc).__name__}"


def _vocab(values: list[Optional[str]], what: str, source: str, keys: list[str]) -> bool:
    """True when every item has the field, False when none has; an error when only some do."""
    have = [v is not None for v in values]
    if all(have):
        return True
    if any(have):
        first = [k for k, h in zip(keys, have) if not h][:5]
        raise ValueError(f"{source}: {have.count(False)} of {len(values)} images have no {what} "
                         f"(first: {', '.join(first)}); give it for every image or for none")
    return False


def load_dataset(format: str, path: Union[str, Path, None] = None, *, image_size: SizeArg = None,
                 seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
                 skip_corrupt: bool = False, cache: Optional[bool] = None,
                 cache_dir: Union[str, Path, None] = None, threads: Optional[int] = None,
                 name: Optional[str] = None, **opts) -> FERDataset:
    """Read a dataset of any registered format.

    image_size: int or (h, w): every image resized to it; None keeps the most common size of
        the set (odd sizes are resized to it). Gray and RGBA images become RGB.
    seed, val_fraction, test_fraction: the split where the set has no official one
        (fractions of the whole set; by subject whenever subjects are known).
    skip_corrupt: False (default) errors listing the first unreadable images; True skips them
        and records how many in `num_skipped`.
    cache: decode once into the memory-mapped cache (default: on when image_size is given,
        except for generated sets);
        cache_dir overrides $FER_AUTOML_CACHE_DIR and ~/.cache/fer-automl/data.
    **opts: reader options (see `fer-automl data formats`).
    """
    reader = get_reader(format)
    unknown = set(opts) - set(reader.options)
    if unknown:
        raise ValueError(f"dataset format {format!r} takes no option(s) {sorted(unknown)}; "
                         f"its options: {sorted(reader.options) or 'none'}")
    size = _size(image_size)
    if "seed" in reader.options:
        opts.setdefault("seed", seed)
    if "size" in reader.options and size is not None:
        opts.setdefault("size", max(size))
    root: Optional[Path] = None
    if reader.needs_path:
        if path is None:
            raise ValueError(f"dataset format {format!r} needs a path ({reader.layout})")
        root = Path(path).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"dataset path {root} does not exist (format {format!r}: {reader.layout})")
    source = str(root) if root is not None else f"{format}:{opts}"
    listing = reader.read(root, **opts)
    items = listing.items
    if not items:
        raise ValueError(f"{source}: no images found (format {format!r} expects {reader.layout})")

    hashes = parallel_map(_hash, items, threads)
    fp = fingerprint(items, hashes)
    use_cache = (size is not None and reader.cacheable) if cache is None else bool(cache)

    images: Optional[np.ndarray] = None
    skipped: list[str] = []
    from_cache = False
    if use_cache:
        hit = cache_mod.load(fp, size, cache_dir)
        if hit is not None:
            images, meta = hit
            skipped = list(meta["skipped"])
            if skipped and not skip_corrupt:
                _raise_corrupt(source, [(k, "unreadable (cached)") for k in skipped])
            items = [items[i] for i in meta["kept"]]
            from_cache = True
    if images is None:
        images, kept, bad = _decode_all(items, size, use_cache, fp, cache_dir, skip_corrupt, source, threads)
        skipped = [items[i].key for i, _ in bad]
        if bad:
            log.warning("%s: skipped %d unreadable image(s), first: %s", source, len(bad),
                        ", ".join(items[i].key for i, _ in bad[:SHOW_BAD]))
        items = [items[i] for i in kept]
        if not items:
            raise ValueError(f"{source}: every image is unreadable ({len(skipped)} skipped)")

    keys = [it.key for it in items]
    classes = list(listing.classes) if listing.classes else canonical_order([it.label for it in items])
    extra = {it.label for it in items} - set(classes)
    if extra:
        raise ValueError(f"{source}: labels {sorted(extra)} are not classes of format {format!r} ({classes})")
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[it.label] for it in items], dtype=np.int64)

    poses = None
    pose_classes: list[str] = []
    if _vocab([it.pose for it in items], "pose label", source, keys):
        present = sorted({it.pose for it in items})
        pose_classes = list(listing.pose_classes) if listing.pose_classes else present
        unknown_poses = set(present) - set(pose_classes)
        if unknown_poses:
            raise ValueError(f"{source}: unknown pose labels {sorted(unknown_poses)}; expected {pose_classes}")
        pidx = {p: i for i, p in enumerate(pose_classes)}
        poses = np.array([pidx[it.pose] for it in items], dtype=np.int64)
    subjects = None
    if _vocab([it.subject for it in items], "subject", source, keys):
        subjects = np.array([it.subject for it in items], dtype=object)
    official = None
    if _vocab([it.split for it in items], "split", source, keys):
        official = np.array([it.split for it in items], dtype=object)

    splits = make_splits(labels, subjects=subjects, official=official, seed=seed,
                         val_fraction=val_fraction, test_fraction=test_fraction, source=source)
    return FERDataset(
        images=images, labels=labels, classes=classes, splits=splits, poses=poses,
        pose_classes=pose_classes, subjects=subjects, keys=np.array(keys, dtype=object),
        name=name or (f"{format}:{root.name}" if root is not None else format), fingerprint=fp,
        source=source, format=format, num_skipped=len(skipped), from_cache=from_cache)


def _raise_corrupt(source: str, bad: list[tuple[str, str]]) -> None:
    shown = "; ".join(f"{k} ({why})" for k, why in bad[:SHOW_BAD])
    from fer_models.errors import UserError

    raise UserError(f"{source}: {len(bad)} unreadable or corrupt image(s), first: {shown}; "
                     f"pass skip_corrupt=True (--skip-corrupt) to skip them")


def _decode_all(items: list[Item], size: Optional[tuple[int, int]], use_cache: bool, fp: str,
                cache_dir, skip_corrupt: bool, source: str, threads: Optional[int]):
    """-> (N' x H x W x 3 uint8 array, kept indices, [(index, reason)] of the bad ones)."""
    n = len(items)
    if size is None:        # native: decode, then bring odd sizes to the most common one
        decoded: list = parallel_map(_safe_decode, items, threads)
        bad = [(i, d) for i, d in enumerate(decoded) if isinstance(d, str)]
        if bad and not skip_corrupt:
            _raise_corrupt(source, [(items[i].key, why) for i, why in bad])
        kept = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
        if not kept:
            return np.empty((0, 1, 1, 3), np.uint8), kept, bad
        target = Counter(decoded[i].shape[:2] for i in kept).most_common(1)[0][0]
        writer = cache_mod.Writer(fp, None, len(kept), cache_dir, hw=target) if use_cache else None
        out = writer.array if writer is not None else np.empty((len(kept),) + tuple(target) + (3,), np.uint8)
        for j, i in enumerate(kept):
            out[j] = resize_to(decoded[i], target)
        if writer is not None:
            out = writer.commit(list(range(len(kept))), [items[i].key for i, _ in bad], kept_ids=kept)
        return out, kept, bad

    writer = cache_mod.Writer(fp, size, n, cache_dir) if use_cache else None
    out = writer.array if writer is not None else np.empty((n, size[0], size[1], 3), np.uint8)

    def work(i: int) -> Optional[str]:
        try:
            out[i] = resize_to(decode_item(items[i]), size)
            return None
        except CorruptImage as exc:
            return str(exc) or "cannot decode"

    try:
        results = parallel_map(work, list(range(n)), threads)
        bad = [(i, why) for i, why in enumerate(results) if why is not None]
        if bad and not skip_corrupt:
            _raise_corrupt(source, [(items[i].key, why) for i, why in bad])
        kept = [i for i, why in enumerate(results) if why is None]
        if writer is not None:
            arr = writer.commit(kept, [items[i].key for i, _ in bad])
            return arr, kept, bad
        return (out if not bad else out[kept]), kept, bad
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


def _safe_decode(item: Item):
    try:
        return decode_item(item)
    except CorruptImage as exc:
        return str(exc) or "cannot decode"
