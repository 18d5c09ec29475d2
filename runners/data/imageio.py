"""Listing items, content hashes, the one decode (cv2, Pillow as fallback) to uint8 RGB, and the
one resize.

Every path from a file to a model input goes through `decode_bytes` and `resize_to`: dataset
loading (and its cache), the trial's eval transform, `fer-automl evaluate`, `fer-automl predict`
and `FERPredictor.prepare` (what the served model is fed). So a model sees the same pixels in
training and in use.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm",
                    ".pnm", ".webp", ".gif")

# How many images have been decoded in this process (the cache test reads it).
_DECODES = 0


def decode_count() -> int:
    return _DECODES


class CorruptImage(Exception):
    pass


@dataclass
class Item:
    """One image as a reader lists it, before decoding.

    key:  relative path under the dataset root (or 'file.csv#row' for pixel rows)
    path: the file to read, or None when `data` holds the content (a pixel string, an array)
    label/pose/subject/split: canonical label name, pose name, subject id, official split
    """

    key: str
    label: str
    path: Optional[Path] = None
    data: Any = None
    pose: Optional[str] = None
    subject: Optional[str] = None
    split: Optional[str] = None


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: Path, recursive: bool = True) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and is_image(p))


def num_threads() -> int:
    return max(1, min(8, (os.cpu_count() or 1)))


def parallel_map(fn: Callable, items: Sequence, threads: Optional[int] = None) -> list:
    """fn over items in a thread pool (cv2 and hashlib release the GIL); order kept."""
    threads = threads or num_threads()
    if threads == 1 or len(items) < 64:
        return [fn(x) for x in items]
    chunk = max(16, len(items) // (threads * 8))
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items, chunksize=chunk))


def _raw(item: Item) -> bytes:
    if item.path is not None:
        return item.path.read_bytes()
    if isinstance(item.data, np.ndarray):
        return np.ascontiguousarray(item.data).tobytes() + repr(item.data.shape).encode()
    if isinstance(item.data, str):
        return item.data.encode()
    if isinstance(item.data, (bytes, bytearray)):
        return bytes(item.data)
    raise TypeError(f"{item.key}: item has neither a path nor data")


def content_hash(item: Item) -> str:
    """sha256 of the file's bytes (or of the in-memory content)."""
    return hashlib.sha256(_raw(item)).hexdigest()


def to_rgb_uint8(img: np.ndarray, *, bgr: bool = True) -> np.ndarray:
    """Gray, gray+alpha, BGR, BGRA, 16-bit or float -> H x W x 3 uint8 RGB."""
    if img.dtype != np.uint8:
        if img.dtype == np.uint16:
            img = (img >> 8).astype(np.uint8)
        elif np.issubdtype(img.dtype, np.floating):
            scale = 255.0 if float(np.nanmax(img)) <= 1.0 else 1.0
            img = np.clip(np.nan_to_num(img) * scale, 0, 255).astype(np.uint8)
        else:
            img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    c = img.shape[2]
    if c == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    if c == 2:
        return cv2.cvtColor(np.ascontiguousarray(img[:, :, 0]), cv2.COLOR_GRAY2RGB)
    if c == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if bgr else np.ascontiguousarray(img)
    if c == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    raise CorruptImage(f"{c} channels")


def _pgm_maxval(buf: bytes) -> Optional[int]:
    """maxval of a PGM header (P2/P5); OpenCV keeps the raw values, so a PGM whose maxval is
    below 255 would come out dark: we stretch it to 0..255."""
    if buf[:2] not in (b"P2", b"P5"):
        return None
    tokens: list[bytes] = []
    for line in buf[:256].split(b"\n"):
        line = line.split(b"#", 1)[0]
        tokens.extend(line.split())
        if len(tokens) >= 4:
            break
    try:
        return int(tokens[3])
    except (IndexError, ValueError):
        return None


#: OpenCV flags of the one decode: any bit depth and any channel count (16-bit and gray are
#: converted by `to_rgb_uint8`), and, unlike IMREAD_UNCHANGED, the EXIF orientation applied
#: (JPEG, PNG, WebP, TIFF): a photo tagged "rotate 90" is read upright, as Pillow's
#: ImageOps.exif_transpose and every image viewer show it. Alpha is dropped (not composited).
DECODE_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


def decode_bytes(buf: bytes) -> np.ndarray:
    """The bytes of an image file -> H x W x 3 uint8 RGB, upright (EXIF orientation applied)."""
    if not buf:
        raise CorruptImage("empty file")
    try:
        arr = cv2.imdecode(np.frombuffer(buf, np.uint8), DECODE_FLAGS)
    except cv2.error:
        arr = None
    if arr is not None and arr.size:
        maxval = _pgm_maxval(buf)
        if maxval is not None and 0 < maxval < 255 and arr.dtype == np.uint8:
            arr = np.clip(arr.astype(np.uint16) * 255 // maxval, 0, 255).astype(np.uint8)
        return to_rgb_uint8(arr)
    try:  # formats this OpenCV build lacks (e.g. GIF)
        import io

        from PIL import Image, ImageOps

        with Image.open(io.BytesIO(buf)) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - any failure means unreadable
        raise CorruptImage(str(exc) or type(exc).__name__) from None


def parse_pixels(pixels: str) -> np.ndarray:
    """A FER2013-style pixel string (space-separated gray values of a square image)."""
    try:
        values = np.array(pixels.split(), dtype=np.int64)
    except ValueError:
        raise CorruptImage("pixel string holds non-integer values") from None
    side = int(round(len(values) ** 0.5))
    if len(values) == 0 or side * side != len(values):
        raise CorruptImage(f"{len(values)} pixel values, not a square image")
    if values.min() < 0 or values.max() > 255:
        raise CorruptImage("pixel values outside 0..255")
    return values.astype(np.uint8).reshape(side, side)


def decode_item(item: Item, raw: Optional[bytes] = None) -> np.ndarray:
    """Decode one item to H x W x 3 uint8 RGB; CorruptImage when it cannot be read."""
    global _DECODES
    _DECODES += 1
    if item.path is not None:
        if raw is None:
            try:
                raw = item.path.read_bytes()
            except OSError as exc:
                raise CorruptImage(str(exc)) from None
        return decode_bytes(raw)
    if isinstance(item.data, str):
        return to_rgb_uint8(parse_pixels(item.data))
    if isinstance(item.data, np.ndarray):
        return to_rgb_uint8(item.data, bgr=False)
    if isinstance(item.data, (bytes, bytearray)):
        return decode_bytes(bytes(item.data))
    raise CorruptImage("no content")


def resize_to(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The one resize, to (height, width): INTER_AREA when either side shrinks, else INTER_LINEAR.

    Datasets are resized with it when loaded (and cached), the eval transform and
    `FERPredictor.prepare` call it too, so `predict`, `evaluate` and a trial's own evaluation
    feed the model the same pixels from the same file."""
    h, w = size
    if img.shape[:2] == (h, w):
        return img
    interp = cv2.INTER_AREA if (img.shape[0] > h or img.shape[1] > w) else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def fingerprint(items: Iterable[Item], hashes: Sequence[str]) -> str:
    """sha256 over the sorted (key, content sha256, label, pose, subject, official split)
    lines: the file list, the bytes and the labels; never times."""
    lines = sorted(
        f"{it.key}\t{h}\t{it.label}\t{it.pose or ''}\t{it.subject or ''}\t{it.split or ''}\n"
        for it, h in zip(items, hashes))
    digest = hashlib.sha256()
    for line in lines:
        digest.update(line.encode())
    return digest.hexdigest()
