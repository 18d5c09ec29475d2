"""Per-split image statistics and the warning for splits preprocessed differently (issue 10).

The case of the issue: a FER2013 folder dump whose training images are all heavily blurred and
whose test images are sharp. Here: synthetic faces written as an ImageFolder with train/ and
test/ folders, the train folder blurred (or not), read by `data inspect` and by the search's
start-up check (`runners.data.stats.check_splits`, called by runners.search.driver before Ray starts).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from runners.cli import main
from runners.data import BASIC_CLASSES, load_dataset
from runners.data.stats import MIN_SUBJECTS, SAMPLE, THRESHOLDS, check_splits, split_stats, split_warnings
from runners.data.synth import generate


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_AUTOML_CACHE_DIR", str(tmp_path / "cache"))


def write_split_folders(root: Path, *, blur_train: bool = False, darken_test: bool = False,
                        small_test: bool = False, n: int = 70) -> Path:
    """root/train/<class>/*.png and root/test/<class>/*.png, 48 px synthetic faces (n per split)."""
    for split, seed in (("train", 1), ("test", 2)):
        batch = generate(n, size=48, seed=seed, noise=1.0)
        for k, (img, y) in enumerate(zip(batch.images, batch.labels)):
            if split == "train" and blur_train:
                img = cv2.GaussianBlur(img, (0, 0), 3.0)
            if split == "test" and darken_test:
                img = (img.astype(np.float32) * 0.45).astype(np.uint8)
            if split == "test" and small_test:
                img = cv2.resize(img, (20, 20), interpolation=cv2.INTER_AREA)
            path = root / split / BASIC_CLASSES[int(y)] / f"{k:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return root


def test_blurred_train_split_warns_in_data_inspect(tmp_path, capsys):
    root = write_split_folders(tmp_path / "dump", blur_train=True)
    assert main(["data", "inspect", str(root), "--format", "imagefolder", "--json"]) == 0   # a warning, not an error
    cap = capsys.readouterr()
    info = json.loads(cap.out)
    stats = info["image_stats"]
    assert set(stats) == {"train", "val", "test"}          # val is carved from the (blurred) train folder
    assert stats["train"]["sampled"] + stats["val"]["sampled"] == 70 and stats["train"]["height"] == 48
    assert stats["test"]["sharpness"] > 4 * stats["train"]["sharpness"]
    assert len(info["warnings"]) == 2                        # train vs test, val vs test; not train vs val
    assert "splits val and test differ in sharpness" in info["warnings"][1]
    warning = info["warnings"][0]
    for text in ("train", "test", "sharpness", f"{stats['train']['sharpness']:.1f}", f"{stats['test']['sharpness']:.1f}"):
        assert text in warning
    assert "warning: splits train and test differ in sharpness" in cap.err
    # the text report prints the statistics per split and the warning
    assert main(["data", "inspect", str(root), "--format", "imagefolder"]) == 0
    text = capsys.readouterr().out
    assert "sharpness" in text and "  train " in text and "  test " in text
    assert "warning: splits train and test differ in sharpness" in text


def test_consistent_splits_do_not_warn(tmp_path, capsys):
    root = write_split_folders(tmp_path / "ok")
    assert main(["data", "inspect", str(root), "--format", "imagefolder", "--json"]) == 0
    cap = capsys.readouterr()
    info = json.loads(cap.out)
    assert info["warnings"] == [] and "warning" not in cap.err
    s = info["image_stats"]
    assert s["train"]["sharpness"] / s["test"]["sharpness"] < 2 and abs(s["train"]["brightness"] - s["test"]["brightness"]) < 10


def test_the_search_check_warns_on_blur_darkness_and_size(tmp_path):
    lines = []
    blurred = load_dataset("imagefolder", write_split_folders(tmp_path / "b", blur_train=True), image_size=48)
    got = check_splits(blurred, echo=lines.append)
    assert len(got) == 2 and all("sharpness" in w for w in got)
    assert lines == [f"warning: data {blurred.name}: {w} (a warning, not an error: training goes on)" for w in got]

    dark = load_dataset("imagefolder", write_split_folders(tmp_path / "d", darken_test=True), image_size=48)
    got = check_splits(dark, echo=None)
    assert any("brightness" in w and "levels apart" in w for w in got), got

    # sizes as decoded (before the load's resize to 48): 20 px test images upscaled
    small = load_dataset("imagefolder", write_split_folders(tmp_path / "s", small_test=True), image_size=48)
    assert small.images.shape[1:3] == (48, 48)
    got = check_splits(small, echo=None)
    assert any("image size" in w and "48x48 vs test 20x20" in w for w in got), got

    fine = load_dataset("imagefolder", write_split_folders(tmp_path / "f"), image_size=48)
    assert check_splits(fine, echo=None) == []
    # the cache keeps the sizes as decoded: a second load maps the array and warns the same
    again = load_dataset("imagefolder", tmp_path / "s", image_size=48)
    assert again.from_cache and check_splits(again, echo=None) == check_splits(small, echo=None)


def test_statistics_are_bounded_and_thresholds_stated():
    ds = load_dataset("synthetic", n=700, size=24, seed=0)
    stats = split_stats(ds)
    assert stats["train"]["images"] > SAMPLE and stats["train"]["sampled"] == SAMPLE
    assert THRESHOLDS == {"sharpness_ratio": 4.0, "brightness_diff": 25.0, "contrast_ratio": 2.0, "size_ratio": 2.0}
    base = {"brightness": 100.0, "contrast": 40.0, "sharpness": 500.0, "height": 48.0, "width": 48.0}
    assert split_warnings({"train": base, "test": dict(base, sharpness=1999.0)}) == []      # 4.0x: not above
    assert len(split_warnings({"train": base, "test": dict(base, sharpness=2001.0)})) == 1
    assert split_warnings({"train": base, "val": dict(base, brightness=125.0)}) == []
    assert "contrast" in split_warnings({"train": base, "val": dict(base, contrast=81.0)})[0]


def test_few_subjects_do_not_make_a_brightness_warning():
    """The quick start's data: its validation split holds 2 synthetic identities, 36 gray levels
    brighter than the 3 of its test split: people, not a preprocessing; no warning. The same
    figures between splits of many subjects (or unknown subjects) warn."""
    ds = load_dataset("synthetic", n=700, size=48, seed=0)
    stats = split_stats(ds)
    assert stats["val"]["subjects"] < MIN_SUBJECTS and abs(stats["val"]["brightness"] - stats["test"]["brightness"]) > 25
    assert check_splits(ds, echo=None) == []
    many = {k: dict(v, subjects=MIN_SUBJECTS) for k, v in stats.items()}
    assert any("brightness" in w for w in split_warnings(many))
    unknown = {k: dict(v, subjects=None) for k, v in stats.items()}
    assert any("brightness" in w for w in split_warnings(unknown))
