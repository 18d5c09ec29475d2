"""Synthetic faces (deterministic, balanced, fast), the fingerprint and the decode-once cache."""
from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from runners.data import BASIC_CLASSES, load_dataset, make_splits
from runners.data.cache import cache_root
from runners.data.imageio import decode_count
from runners.data.splits import subject_overlap
from runners.data.synth import POSE_CLASSES, generate, write_imagefolder


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_AUTOML_CACHE_DIR", str(tmp_path / "cache"))


def test_synth_deterministic_balanced_and_varied():
    a = generate(350, size=48, seed=3)
    b = generate(350, size=48, seed=3)
    c = generate(350, size=48, seed=4)
    assert a.images.shape == (350, 48, 48, 3) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images) and np.array_equal(a.poses, b.poses)
    assert not np.array_equal(a.images, c.images)
    assert np.bincount(a.labels, minlength=7).tolist() == [50] * 7
    assert np.bincount(a.poses, minlength=5).tolist() == [70] * 5
    # every identity shows every expression
    for s in np.unique(a.subjects):
        assert set(a.labels[a.subjects == s]) == set(range(7))
    # not blank, not all alike
    assert a.images.std() > 20 and len({im.tobytes() for im in a.images}) == 350


@pytest.mark.parametrize("size", [16, 100, 160])
def test_synth_any_resolution(size):
    b = generate(14, size=size, seed=0)
    assert b.images.shape == (14, size, size, 3)
    assert b.images.std() > 15


def test_synth_speed_64px():
    generate(64, size=64)                   # warm up
    n = 2000
    t = time.perf_counter()
    generate(n, size=64, seed=1)
    rate = n / (time.perf_counter() - t)
    # the target is 2,000 images/s on one core (README has the figure on the dev machine);
    # shared CI runners are slower and noisier, so the test keeps a margin
    assert rate > 800, f"{rate:.0f} images/s"


def test_synthetic_reader_subject_independent_split():
    ds = load_dataset("synthetic", n=700, image_size=32, seed=5)
    assert ds.classes == list(BASIC_CLASSES) and ds.pose_classes == list(POSE_CLASSES)
    assert ds.images.shape == (700, 32, 32, 3)
    assert subject_overlap(ds.subjects, ds.splits) == {}
    assert ds.num_subjects() == 14 and all(ds.num_subjects(s) >= 1 for s in ("train", "val", "test"))
    again = load_dataset("synthetic", n=700, image_size=32, seed=5)
    assert again.fingerprint == ds.fingerprint
    assert load_dataset("synthetic", n=700, image_size=32, seed=6).fingerprint != ds.fingerprint


def test_synthetic_reader_difficulty_options():
    hard = load_dataset("synthetic", n=140, image_size=32, seed=5)
    easy = load_dataset("synthetic", n=140, image_size=32, seed=5, occlusion=0.0, noise=0.0)
    assert easy.fingerprint != hard.fingerprint
    assert (easy.labels == hard.labels).all() and (easy.subjects == hard.subjects).all()
    # no sensor noise: flat background corners are one colour in every clean image
    corners = easy.images[:, :3, :3].reshape(len(easy), -1, 3)
    assert (corners.std(axis=1) < (hard.images[:, :3, :3].reshape(len(hard), -1, 3).std(axis=1) + 1e-9)).mean() > 0.8
    with pytest.raises(ValueError, match="occlusion=1.5"):
        load_dataset("synthetic", n=14, image_size=32, occlusion=1.5)


def test_synth_imagefolder_and_manifest_roundtrip(tmp_path):
    manifest = write_imagefolder(tmp_path / "synth", 140, size=32, seed=2)
    assert manifest == tmp_path / "synth" / "manifest.csv"
    assert sorted(p.name for p in (tmp_path / "synth").iterdir() if p.is_dir()) == sorted(BASIC_CLASSES)
    assert len(list((tmp_path / "synth" / "happy").glob("*.png"))) == 20
    ds = load_dataset("csv", manifest)
    assert len(ds) == 140 and ds.pose_classes == list(POSE_CLASSES) and ds.poses is not None
    assert subject_overlap(ds.subjects, ds.splits) == {}
    folder = load_dataset("imagefolder", tmp_path / "synth")
    assert folder.class_counts() == ds.class_counts()
    # PNG is lossless: what the reader gets back is what the generator drew
    ref = generate(140, size=32, seed=2)
    k = list(ds.keys).index([k for k in ds.keys if k.endswith("_000003.png")][0])
    assert np.array_equal(ds.images[k], ref.images[3])
    with pytest.raises(FileExistsError, match="not empty"):
        write_imagefolder(tmp_path / "synth", 14)


def write_folder(root: Path, n_per_class: int = 8) -> Path:
    rng = np.random.default_rng(0)
    k = 0
    for c in ("angry", "happy", "sad"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for _ in range(n_per_class):
            cv2.imwrite(str(root / c / f"{k}.png"), rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)); k += 1
    return root


def test_fingerprint_is_content_not_time(tmp_path):
    root = write_folder(tmp_path / "set")
    fp = load_dataset("imagefolder", root).fingerprint
    f = root / "happy" / "10.png"
    os.utime(f, (1, 1))                          # times do not count
    assert load_dataset("imagefolder", root).fingerprint == fp
    data = bytearray(f.read_bytes())             # bytes do
    cv2.imwrite(str(f), np.zeros((20, 20, 3), np.uint8))
    assert load_dataset("imagefolder", root).fingerprint != fp
    f.write_bytes(bytes(data))
    assert load_dataset("imagefolder", root).fingerprint == fp
    (root / "happy" / "10.png").rename(root / "sad" / "10.png")   # labels do
    assert load_dataset("imagefolder", root).fingerprint != fp


def test_cache_is_written_once_and_reused(tmp_path):
    root = write_folder(tmp_path / "set")
    cache_dir = tmp_path / "mycache"
    before = decode_count()
    first = load_dataset("imagefolder", root, image_size=16, cache_dir=cache_dir)
    assert decode_count() - before == 24 and not first.from_cache
    files = sorted(p.name for p in cache_dir.iterdir())
    from runners.data.cache import FORMAT_VERSION

    v = f"_16x16_v{FORMAT_VERSION}"
    assert len(files) == 2 and files[0].endswith(v + ".json") and files[1].endswith(v + ".npy")
    assert not any(".tmp" in name for name in files)          # written atomically
    npy = next(cache_dir.glob("*.npy"))
    stamp = npy.stat().st_mtime_ns
    mid = decode_count()
    second = load_dataset("imagefolder", root, image_size=16, cache_dir=cache_dir)
    assert decode_count() == mid                                # nothing decoded
    assert second.from_cache and isinstance(second.images, np.memmap)
    assert npy.stat().st_mtime_ns == stamp
    assert np.array_equal(np.asarray(second.images), first.images)
    assert np.array_equal(second.labels, first.labels) and np.array_equal(second.splits, first.splits)
    # another size is another entry; a different content is another entry
    load_dataset("imagefolder", root, image_size=12, cache_dir=cache_dir)
    assert len(list(cache_dir.glob("*.npy"))) == 2
    # the environment variable picks the default folder
    assert cache_root() == tmp_path / "cache"
    load_dataset("imagefolder", root, image_size=16)
    assert len(list((tmp_path / "cache").glob(f"*_16x16_v{FORMAT_VERSION}.npy"))) == 1


def test_make_splits_official_test_kept_and_val_from_train():
    labels = np.repeat(np.arange(3), 20)
    official = np.array(["train"] * 45 + ["test"] * 15, dtype=object)
    out = make_splits(labels, official=official, seed=0, source="x")
    assert np.array_equal(out[45:], official[45:])                 # test untouched
    assert np.all(out[:45] != "test") and np.count_nonzero(out == "val") >= 1
    subjects = np.array([f"s{i // 4}" for i in range(60)], dtype=object)
    out2 = make_splits(labels, subjects=subjects, seed=0, source="x")
    assert subject_overlap(subjects, out2) == {}
    frac = np.count_nonzero(out2 == "test") / 60
    assert 0.1 <= frac <= 0.3
