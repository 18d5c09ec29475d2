"""Decode-once cache: a dataset decoded at one image size, as a memory-mapped uint8 .npy.

Keyed by the dataset fingerprint and the size, so every trial of a search on a machine
reads the same decoded array. Files appear atomically (a temporary name, then a rename):
concurrent trials either see the whole entry or none.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Optional, Union

import numpy as np

ENV_VAR = "FER_AUTOML_CACHE_DIR"
DEFAULT_DIR = Path("~/.cache/fer-automl/data")
FORMAT_VERSION = 2  # 2: EXIF orientation applied when decoding; source sizes kept


def cache_root(cache_dir: Union[str, Path, None] = None) -> Path:
    """The argument, else $FER_AUTOML_CACHE_DIR, else ~/.cache/fer-automl/data."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else DEFAULT_DIR.expanduser()


def size_key(size: Optional[tuple[int, int]]) -> str:
    return "native" if size is None else f"{size[0]}x{size[1]}"


def entry_paths(fingerprint: str, size: Optional[tuple[int, int]],
                cache_dir: Union[str, Path, None] = None) -> tuple[Path, Path]:
    stem = f"{fingerprint[:32]}_{size_key(size)}_v{FORMAT_VERSION}"
    root = cache_root(cache_dir)
    return root / f"{stem}.npy", root / f"{stem}.json"


def load(fingerprint: str, size: Optional[tuple[int, int]],
         cache_dir: Union[str, Path, None] = None) -> Optional[tuple[np.ndarray, dict]]:
    """(read-only memmap N x H x W x 3, metadata) or None when there is no complete entry."""
    npy, meta_path = entry_paths(fingerprint, size, cache_dir)
    if not (npy.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        arr = np.load(npy, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if meta.get("fingerprint") != fingerprint or arr.shape[0] != len(meta.get("kept", [])):
        return None
    return arr, meta


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


class Writer:
    """Decode straight into a memory-mapped temporary file; `commit` renames it in place."""

    def __init__(self, fingerprint: str, size: Optional[tuple[int, int]], n: int,
                 cache_dir: Union[str, Path, None] = None, hw: Optional[tuple[int, int]] = None):
        hw = hw or size
        assert hw is not None
        self.fingerprint = fingerprint
        self.npy, self.meta_path = entry_paths(fingerprint, size, cache_dir)
        self.npy.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = _tmp_name(self.npy)
        self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.uint8,
                                               shape=(n, hw[0], hw[1], 3))

    def commit(self, kept: list[int], skipped: list[str],
               kept_ids: Optional[list[int]] = None, sizes: Optional[list] = None) -> np.ndarray:
        """kept: rows of the array to keep; kept_ids: their item indices (default: kept);
        sizes: (height, width) of each kept image as decoded, before the resize."""
        arr = self.array
        if len(kept) != arr.shape[0]:          # corrupt images were skipped: compact
            compact_tmp = _tmp_name(self.npy)
            out = np.lib.format.open_memmap(compact_tmp, mode="w+", dtype=np.uint8,
                                            shape=(len(kept),) + arr.shape[1:])
            out[:] = arr[np.asarray(kept, dtype=np.int64)]
            out.flush()
            del out
            self.array = arr = None
            os.unlink(self.tmp)
            self.tmp = compact_tmp
        else:
            arr.flush()
            self.array = arr = None
        meta = {"fingerprint": self.fingerprint, "kept": kept if kept_ids is None else kept_ids, "skipped": skipped,
                "sizes": [list(map(int, hw)) for hw in sizes] if sizes is not None else None,
                "version": FORMAT_VERSION}
        meta_tmp = _tmp_name(self.meta_path)
        meta_tmp.write_text(json.dumps(meta))
        os.replace(self.tmp, self.npy)
        os.replace(meta_tmp, self.meta_path)
        return np.load(self.npy, mmap_mode="r")

    def abort(self) -> None:
        self.array = None
        try:
            os.unlink(self.tmp)
        except OSError:
            pass
