"""Bad input: each case errors clearly, naming the path and what is wrong (or is converted)."""
from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from runners.data import load_dataset


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_AUTOML_CACHE_DIR", str(tmp_path / "cache"))


def img(seed: int, h: int = 16, w: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def folder(root: Path, classes=("angry", "happy", "sad"), per_class: int = 10) -> Path:
    k = 0
    for c in classes:
        for _ in range(per_class):
            write(root / c / f"{k:03d}.png", img(k)); k += 1
    return root


def manifest(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dataset path .*nowhere does not exist"):
        load_dataset("imagefolder", tmp_path / "nowhere")


def test_missing_label_file(tmp_path):
    (tmp_path / "Image" / "aligned").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"label file .*EmoLabel/list_patition_label.txt does not exist"):
        load_dataset("rafdb", tmp_path)


def test_fer2013_folder_without_csv_or_split_folders(tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(FileNotFoundError, match=r"neither fer2013.csv nor train/ and test/"):
        load_dataset("fer2013", tmp_path)


def test_wrong_csv_columns(tmp_path):
    p = manifest(tmp_path / "fer2013.csv", ["emotion", "pix", "Usage"], [[0, "1 2 3 4", "Training"]])
    with pytest.raises(ValueError, match=r"fer2013.csv: wrong CSV columns: missing pixels; found emotion, pix, Usage"):
        load_dataset("fer2013", p)
    m = manifest(tmp_path / "manifest.csv", ["file", "class"], [["a.png", "happy"]])
    with pytest.raises(ValueError, match=r"manifest.csv: wrong CSV columns: missing path, label"):
        load_dataset("csv", m)


def test_unknown_label_in_manifest_names_file_line_and_value(tmp_path):
    write(tmp_path / "a.png", img(0))
    m = manifest(tmp_path / "manifest.csv", ["path", "label"], [["a.png", "happy"], ["a.png", "bored"]])
    with pytest.raises(ValueError, match=r"manifest.csv line 3 column label: unknown expression label 'bored'"):
        load_dataset("csv", m)


def test_unknown_label_class_folder_and_fer2013_code(tmp_path):
    folder(tmp_path / "set", classes=("happy", "sleepy"), per_class=2)
    with pytest.raises(ValueError, match=r"class folder .*sleepy: unknown expression label 'sleepy'"):
        load_dataset("imagefolder", tmp_path / "set")
    p = manifest(tmp_path / "fer2013.csv", ["emotion", "pixels"], [[9, "0 0 0 0"]])
    with pytest.raises(ValueError, match=r"fer2013.csv line 2: unknown emotion label '9'"):
        load_dataset("fer2013", p)


def test_rows_pointing_to_missing_images(tmp_path):
    write(tmp_path / "a.png", img(0))
    m = manifest(tmp_path / "manifest.csv", ["path", "label"],
                 [["a.png", "happy"], ["gone/b.png", "sad"], ["gone/c.png", "sad"]])
    with pytest.raises(FileNotFoundError, match=r"manifest.csv: 2 row\(s\) point to missing images, first: .*gone/b.png"):
        load_dataset("csv", m)


@pytest.mark.parametrize("image_size", [None, 12])
def test_corrupt_image_errors_or_is_skipped(tmp_path, image_size):
    root = folder(tmp_path / "set")
    (root / "happy" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (root / "sad" / "empty.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"2 unreadable or corrupt image\(s\), first: happy/broken.jpg .*sad/empty.png"):
        load_dataset("imagefolder", root, image_size=image_size)
    ds = load_dataset("imagefolder", root, image_size=image_size, skip_corrupt=True)
    assert ds.num_skipped == 2 and len(ds) == 30
    assert "happy/broken.jpg" not in set(ds.keys)
    if image_size:       # the cache remembers what it skipped
        again = load_dataset("imagefolder", root, image_size=image_size, skip_corrupt=True)
        assert again.from_cache and again.num_skipped == 2 and len(again) == 30
        with pytest.raises(ValueError, match="unreadable"):
            load_dataset("imagefolder", root, image_size=image_size)


def test_corrupt_pixel_string(tmp_path):
    p = manifest(tmp_path / "fer2013.csv", ["emotion", "pixels"], [[0, "1 2 3"], [1, "1 2 x 4"]] +
                 [[k % 7, " ".join(["7"] * 16)] for k in range(30)])
    with pytest.raises(ValueError, match=r"2 unreadable .*fer2013.csv#2 \(3 pixel values, not a square image\)"):
        load_dataset("fer2013", p)
    assert len(load_dataset("fer2013", p, skip_corrupt=True)) == 30


def test_empty_class(tmp_path):
    root = folder(tmp_path / "set")
    (root / "fear").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*fear has no images \(empty class 'fear'\)"):
        load_dataset("imagefolder", root)


def test_split_with_no_images(tmp_path):
    rows = []
    for k in range(6):
        write(tmp_path / f"{k}.png", img(k))
        rows.append([f"{k}.png", "happy" if k % 2 else "sad", "test"])
    m = manifest(tmp_path / "manifest.csv", ["path", "label", "split"], rows)
    with pytest.raises(ValueError, match=r"manifest.csv: split 'train' has no images"):
        load_dataset("csv", m)
    tiny = folder(tmp_path / "tiny", classes=("happy",), per_class=2)
    with pytest.raises(ValueError, match=r"tiny: split 'val' has no images \(2 images"):
        load_dataset("imagefolder", tiny)


def test_subset_of_an_empty_split(tmp_path):
    ds = load_dataset("imagefolder", folder(tmp_path / "set"))
    ds.splits[:] = "train"
    with pytest.raises(ValueError, match=r"split 'test' of dataset .* has no images"):
        ds.subset("test")


def test_only_some_rows_with_subject(tmp_path):
    rows = []
    for k in range(8):
        write(tmp_path / f"{k}.png", img(k))
        rows.append([f"{k}.png", "happy", "s1" if k else ""])
    m = manifest(tmp_path / "manifest.csv", ["path", "label", "subject"], rows)
    with pytest.raises(ValueError, match=r"1 of 8 images have no subject \(first: 0.png\)"):
        load_dataset("csv", m)


def test_unknown_format_and_option(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset format 'fer2014'; known formats: affectnet, "):
        load_dataset("fer2014", tmp_path)
    with pytest.raises(ValueError, match=r"format 'imagefolder' takes no option\(s\) \['num_classes'\]"):
        load_dataset("imagefolder", tmp_path, num_classes=8)


def test_unparseable_dataset_file_names(tmp_path):
    write(tmp_path / "kdef" / "holiday.jpg", img(0))
    with pytest.raises(ValueError, match=r"holiday.jpg: not a KDEF file name"):
        load_dataset("kdef", tmp_path / "kdef")
    write(tmp_path / "jaffe" / "KA.XX1.39.tiff", img(0))
    with pytest.raises(ValueError, match=r"KA.XX1.39.tiff: not a JAFFE file name"):
        load_dataset("jaffe", tmp_path / "jaffe")
