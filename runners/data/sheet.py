"""Contact sheet: one row of sample images per class (PNG)."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import cv2
import numpy as np

from fer_models.errors import UserError, UserPathError

from .dataset import FERDataset


def check_sheet_path(out: Union[str, Path]) -> Path:
    """--sheet FILE.png: a .png whose folder exists; checked before a dataset is read."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"--sheet {str(out)!r}: expected a .png file name")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UserPathError(f"--sheet {str(out)!r}: folder {str(parent)!r} does not exist")
    if out.is_dir():
        raise UserPathError(f"--sheet {str(out)!r} is a folder; expected a .png file name")
    return out


def contact_sheet(ds: FERDataset, out: Union[str, Path], per_class: int = 8, tile: int = 64,
                  seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    label_w = 90
    rows = []
    for c, name in enumerate(ds.classes):
        idx = np.flatnonzero(ds.labels == c)
        pick = rng.choice(idx, size=min(per_class, len(idx)), replace=False) if len(idx) else []
        row = np.full((tile, label_w + per_class * tile, 3), 255, np.uint8)
        cv2.putText(row, name, (4, tile // 2 + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for j, i in enumerate(sorted(pick)):
            row[:, label_w + j * tile: label_w + (j + 1) * tile] = cv2.resize(
                np.asarray(ds.images[i]), (tile, tile), interpolation=cv2.INTER_AREA)
        rows.append(row)
    sheet = np.concatenate(rows, 0)
    out = check_sheet_path(out)
    if not cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise UserPathError(f"--sheet {str(out)!r}: cannot write a PNG there")
    return out
