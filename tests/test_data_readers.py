"""Every reader against small fixtures written in the real file formats and layouts."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from runners.data import BASIC_CLASSES, load_dataset
from runners.data.splits import subject_overlap

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    env = os.environ.get("FER_AUTOML_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_AUTOML_CACHE_DIR", str(tmp_path / "cache"))


def img(seed: int, h: int = 24, w: int = 24, gray: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w) if gray else (h, w, 3), dtype=np.uint8)
    return cv2.GaussianBlur(a, (3, 3), 0)


def write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array), path
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def pixels(seed: int, side: int = 48) -> str:
    return " ".join(str(v) for v in img(seed, side, side, gray=True).ravel())


def assert_subject_independent(ds):
    assert ds.subjects is not None
    assert subject_overlap(ds.subjects, ds.splits) == {}


# --- FER2013 ---------------------------------------------------------------------------
def test_fer2013_csv(tmp_path):
    usage = ["Training"] * 4 + ["PublicTest", "PrivateTest"]
    rows = [[c, pixels(10 * c + k), usage[k]] for c in range(7) for k in range(6)]
    path = write_csv(tmp_path / "fer2013.csv", ["emotion", "pixels", "Usage"], rows)
    for target in (path, tmp_path):          # the file itself or its folder
        ds = load_dataset("fer2013", target)
        assert len(ds) == 42 and ds.classes == list(BASIC_CLASSES)
        assert ds.images.shape == (42, 48, 48, 3) and ds.images.dtype == np.uint8
        assert np.array_equal(ds.images[..., 0], ds.images[..., 2])       # gray -> RGB
        assert ds.split_counts() == {"train": 28, "val": 7, "test": 7}   # PublicTest = val
        assert ds.class_counts() == {c: 6 for c in BASIC_CLASSES}
        first = np.array(rows[0][1].split(), dtype=np.uint8).reshape(48, 48)
        assert np.array_equal(ds.images[0, :, :, 1], first)
        assert ds.labels[6] == 1 and ds.keys[0] == "fer2013.csv#2"


def test_fer2013_folder_layout_keeps_usage_prefixes(tmp_path):
    k = 0
    for c in BASIC_CLASSES:
        for i in range(3):
            write(tmp_path / "train" / c / f"Training_{k}.jpg", img(k, 48, 48, gray=True)); k += 1
        write(tmp_path / "test" / c / f"PublicTest_{k}.jpg", img(k, 48, 48, gray=True)); k += 1
        write(tmp_path / "test" / c / f"PrivateTest_{k}.jpg", img(k, 48, 48, gray=True)); k += 1
    ds = load_dataset("fer2013", tmp_path)
    assert ds.split_counts() == {"train": 21, "val": 7, "test": 7}
    test_keys = ds.keys[ds.splits == "test"]
    assert all("PrivateTest_" in k for k in test_keys)
    assert ds.class_counts("test") == {c: 1 for c in BASIC_CLASSES}


# --- FERPlus ---------------------------------------------------------------------------
FERPLUS_HEADER = ["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger",
                  "disgust", "fear", "contempt", "unknown", "NF"]


def ferplus_rows():
    return [  # usage, name, votes -> expected
        ["Training", "fer0000000.png", 4, 0, 0, 1, 3, 2, 0, 0, 0, 0],   # single vote zeroed; neutral 4 of 9: no majority
        ["Training", "fer0000001.png", 0, 10, 0, 0, 0, 0, 0, 0, 0, 0],  # happy
        ["Training", "fer0000002.png", 5, 5, 0, 0, 0, 0, 0, 0, 0, 0],   # tie: dropped
        ["Training", "", 0, 0, 10, 0, 0, 0, 0, 0, 0, 0],                # removed image: dropped
        ["Training", "fer0000004.png", 0, 0, 0, 0, 0, 0, 0, 0, 8, 2],   # unknown: dropped
        ["Training", "fer0000005.png", 0, 0, 0, 0, 0, 0, 0, 9, 1, 0],   # contempt
        ["PublicTest", "fer0000006.png", 1, 0, 7, 0, 0, 0, 2, 0, 0, 0], # surprise (7/9 after outlier)
        ["PrivateTest", "fer0000007.png", 0, 0, 0, 6, 1, 0, 0, 0, 0, 3],  # sad 6/9
    ]


def test_ferplus_majority_with_fer2013_pixels(tmp_path):
    rows = ferplus_rows()
    write_csv(tmp_path / "fer2013new.csv", FERPLUS_HEADER, rows)
    write_csv(tmp_path / "fer2013.csv", ["emotion", "pixels", "Usage"],
              [[0, pixels(i), r[0]] for i, r in enumerate(rows)])
    # pad with more clear happy/neutral rows so every split can be made
    ds = load_dataset("ferplus", tmp_path, val_fraction=0.2)
    labels = [ds.classes[i] for i in ds.labels]
    # row 0: votes 4,0,0,1,3,2 -> the single vote zeroed -> 4 of 9: not a majority
    assert labels == ["happy", "contempt", "surprise", "sad"]
    assert ds.classes[-1] == "contempt" and len(ds.classes) == 8
    assert ds.split_counts() == {"train": 2, "val": 1, "test": 1}


def test_ferplus_image_folders(tmp_path):
    rows = ferplus_rows()
    write_csv(tmp_path / "fer2013new.csv", FERPLUS_HEADER, rows)
    folders = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
    for i, r in enumerate(rows):
        if r[1]:
            write(tmp_path / folders[r[0]] / r[1], img(i, 48, 48, gray=True))
    ds = load_dataset("ferplus", tmp_path)
    assert len(ds) == 4
    assert sorted(ds.keys) == ["FER2013Test/fer0000007.png", "FER2013Train/fer0000001.png",
                               "FER2013Train/fer0000005.png", "FER2013Valid/fer0000006.png"]


# --- RAF-DB ----------------------------------------------------------------------------
def test_rafdb(tmp_path):
    lines = []
    for i in range(28):
        split = "train" if i < 21 else "test"
        name = f"{split}_{i:05d}.jpg"
        code = i % 7 + 1
        lines.append(f"{name} {code}")
        write(tmp_path / "Image" / "aligned" / f"{split}_{i:05d}_aligned.jpg", img(i, 40, 40))
    (tmp_path / "EmoLabel").mkdir()
    (tmp_path / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    ds = load_dataset("rafdb", tmp_path)
    assert ds.classes == list(BASIC_CLASSES)
    by_key = dict(zip(ds.keys, (ds.classes[i] for i in ds.labels)))
    assert by_key["Image/aligned/train_00000_aligned.jpg"] == "surprise"   # 1
    assert by_key["Image/aligned/train_00003_aligned.jpg"] == "happy"      # 4
    assert by_key["Image/aligned/train_00006_aligned.jpg"] == "neutral"    # 7
    assert ds.split_counts()["test"] == 7                                   # official test kept
    assert set(ds.keys[ds.splits == "test"]) == {f"Image/aligned/test_{i:05d}_aligned.jpg" for i in range(21, 28)}
    assert ds.split_counts()["val"] >= 1                                    # carved from train


# --- AffectNet -------------------------------------------------------------------------
def test_affectnet_7_and_8_classes(tmp_path):
    header = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
              "facial_landmarks", "expression", "valence", "arousal"]
    lists = tmp_path / "Manually_Annotated_file_lists"
    for fname, codes in (("training.csv", list(range(11)) * 2), ("validation.csv", list(range(11)))):
        rows = []
        for j, code in enumerate(codes):
            rel = f"{j % 3 + 1}/{fname[:5]}_{j}.jpg"
            write(tmp_path / "Manually_Annotated_Images" / rel, img(j, 30, 30))
            rows.append([rel, 0, 0, 30, 30, "1;2", code, 0.1, -0.2])
        write_csv(lists / fname, header, rows)
    ds7 = load_dataset("affectnet", tmp_path)
    assert len(ds7.classes) == 7 and len(ds7) == 3 * 7
    assert ds7.split_counts()["test"] == 7                          # the official validation set
    assert ds7.class_counts()["neutral"] == 3 and ds7.class_counts()["angry"] == 3
    ds8 = load_dataset("affectnet", tmp_path, num_classes=8)
    assert ds8.classes[-1] == "contempt" and len(ds8) == 3 * 8
    assert ds8.fingerprint != ds7.fingerprint


# --- KDEF ------------------------------------------------------------------------------
def test_kdef_expression_pose_subject_from_name(tmp_path):
    k = 0
    for sex, num in (("F", "01"), ("M", "02"), ("F", "03"), ("M", "04")):
        for expr in ("AF", "AN", "DI", "HA", "NE", "SA", "SU"):
            for pose in ("FL", "HL", "S", "HR", "FR"):
                write(tmp_path / f"A{sex}{num}" / f"A{sex}{num}{expr}{pose}.JPG", img(k, 20, 16)); k += 1
    ds = load_dataset("kdef", tmp_path, image_size=16)
    assert len(ds) == 140 and ds.images.shape == (140, 16, 16, 3)
    assert ds.pose_classes == ["full_left", "half_left", "frontal", "half_right", "full_right"]
    assert ds.pose_counts() == {p: 28 for p in ds.pose_classes}
    i = list(ds.keys).index("AF01/AF01HAS.JPG")
    assert ds.classes[ds.labels[i]] == "happy" and ds.pose_classes[ds.poses[i]] == "frontal"
    assert ds.subjects[i] == "F01"
    assert_subject_independent(ds)


# --- CK+ and JAFFE ---------------------------------------------------------------------
def test_ckplus_class_folders_subject_split(tmp_path):
    k = 0
    for folder in ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"):
        for s in (10, 11, 22, 35, 42):
            write(tmp_path / folder / f"S{s:03d}_004_{k:08d}.png", img(k, 48, 48, gray=True)); k += 1
    ds = load_dataset("ckplus", tmp_path)
    assert ds.classes == ["angry", "disgust", "fear", "happy", "sad", "surprise", "contempt"]
    assert set(ds.subjects) == {"S010", "S011", "S022", "S035", "S042"}
    assert_subject_independent(ds)


def test_jaffe_tiff(tmp_path):
    k = 0
    for subj in ("KA", "KL", "KM", "KR", "MK"):
        for expr in ("AN", "DI", "FE", "HA", "NE", "SA", "SU"):
            write(tmp_path / f"{subj}.{expr}1.{k + 30}.tiff", img(k, 32, 32, gray=True)); k += 1
    ds = load_dataset("jaffe", tmp_path)
    assert len(ds) == 35 and ds.images.shape[1:] == (32, 32, 3)
    i = list(ds.keys).index("KA.HA1.33.tiff")
    assert ds.classes[ds.labels[i]] == "happy" and ds.subjects[i] == "KA"
    assert_subject_independent(ds)


# --- CMU Face Images -------------------------------------------------------------------
def write_pgm(path: Path, a: np.ndarray, ascii_: bool, maxval: int = 255) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = a.shape
    if ascii_:
        body = "\n".join(" ".join(str(v) for v in row) for row in a)
        path.write_text(f"P2\n{w} {h}\n{maxval}\n{body}\n")
    else:
        path.write_bytes(f"P5\n{w} {h}\n{maxval}\n".encode() + a.astype(np.uint8).tobytes())


def test_cmu_faces_fixture_pgm_p2_p5(tmp_path):
    k = 0
    for subj in ("an2i", "at33", "boland", "bpm"):
        for pose in ("straight", "left", "right", "up"):
            for expr in ("neutral", "happy", "sad", "angry"):
                a = (img(k, 30, 32, gray=True) // 2)
                write_pgm(tmp_path / subj / f"{subj}_{pose}_{expr}_open.pgm", a, ascii_=True, maxval=127)
                write_pgm(tmp_path / subj / f"{subj}_{pose}_{expr}_open_2.pgm", a[::2, ::2], ascii_=False)
                k += 1
    full = load_dataset("cmu_faces", tmp_path)
    assert len(full) == 64 and full.images.shape[1:] == (30, 32, 3)
    assert full.images.max() > 200            # maxval 127 stretched to 0..255
    half = load_dataset("cmu_faces", tmp_path, scale=2)
    assert len(half) == 64 and half.images.shape[1:] == (15, 16, 3)
    assert full.classes == ["angry", "happy", "sad", "neutral"]
    assert full.pose_classes == ["straight", "left", "right", "up"]
    assert_subject_independent(full)


def test_cmu_faces_real_data():
    root = shared_data() / "cmu_faces"
    if not root.is_dir():
        pytest.skip(f"CMU Face Images not found at {root} (set FER_AUTOML_SHARED_DATA)")
    ds = load_dataset("cmu_faces", root)
    assert len(ds) == 624
    assert ds.image_size == (120, 128)
    assert ds.pose_classes == ["straight", "left", "right", "up"] and len(ds.pose_counts()) == 4
    assert all(v >= 150 for v in ds.pose_counts().values())
    assert ds.classes == ["angry", "happy", "sad", "neutral"]
    assert ds.num_subjects() == 20
    assert_subject_independent(ds)
    assert all(ds.num_subjects(s) >= 1 for s in ("train", "val", "test"))
    assert ds.fingerprint == load_dataset("cmu_faces", root).fingerprint


# --- generic ImageFolder and CSV manifest ----------------------------------------------
def test_imagefolder_mixed_gray_rgb_rgba_and_odd_sizes(tmp_path):
    k = 0
    for c in ("anger", "Happiness", "surprised", "neutral"):       # aliases resolve
        for i in range(6):
            kind = i % 3
            if kind == 0:
                a = img(k, 40, 40, gray=True)
            elif kind == 1:
                a = img(k, 40, 40)
            else:
                a = np.dstack([img(k, 33, 27), np.full((33, 27), 255, np.uint8)])   # odd size, RGBA
            write(tmp_path / c / f"{k}.png", a); k += 1
    ds = load_dataset("imagefolder", tmp_path)
    assert ds.classes == ["angry", "happy", "surprise", "neutral"]
    assert ds.images.shape == (24, 40, 40, 3)          # most common size; odd ones resized
    ds32 = load_dataset("imagefolder", tmp_path, image_size=32)
    assert ds32.images.shape == (24, 32, 32, 3)
    assert ds32.fingerprint == ds.fingerprint          # content, not decoding options


def test_imagefolder_with_split_folders(tmp_path):
    k = 0
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        for c in ("sad", "happy"):
            for _ in range(n):
                write(tmp_path / split / c / f"{k}.jpg", img(k)); k += 1
    ds = load_dataset("imagefolder", tmp_path)
    assert ds.split_counts() == {"train": 12, "val": 4, "test": 4}
    assert ds.class_counts("val") == {"happy": 2, "sad": 2}


def test_csv_manifest_with_pose_subject_split(tmp_path):
    rows = []
    k = 0
    for subj in ("a", "b", "c", "d"):
        for c in ("angry", "happiness", "sad"):
            for pose in ("frontal", "left"):
                rel = f"imgs/{subj}_{k}.png"
                write(tmp_path / rel, img(k))
                rows.append([rel, c, pose, subj, ""]); k += 1
    write_csv(tmp_path / "manifest.csv", ["path", "label", "pose", "subject", "split"], rows)
    ds = load_dataset("csv", tmp_path / "manifest.csv")
    assert ds.classes == ["angry", "happy", "sad"]
    # poses within the synthetic vocabulary keep its full order (a pose head sees 5 classes)
    assert ds.pose_classes == ["frontal", "left", "right", "up", "down"]
    assert ds.pose_counts() == {"frontal": 12, "left": 12, "right": 0, "up": 0, "down": 0}
    assert_subject_independent(ds)
    # an explicit split column is the official split
    for r in rows:
        r[4] = "test" if r[3] == "d" else ("val" if r[3] == "c" else "train")
    write_csv(tmp_path / "manifest.csv", ["path", "label", "pose", "subject", "split"], rows)
    ds2 = load_dataset("csv", tmp_path)
    assert set(ds2.subjects[ds2.splits == "test"]) == {"d"}
    assert set(ds2.subjects[ds2.splits == "val"]) == {"c"}
    assert ds2.fingerprint != ds.fingerprint


def test_stratified_split_without_subjects_is_seeded(tmp_path):
    k = 0
    for c in ("angry", "happy", "sad"):
        for _ in range(20):
            write(tmp_path / c / f"{k}.png", img(k, 8, 8)); k += 1
    a = load_dataset("imagefolder", tmp_path, seed=1)
    b = load_dataset("imagefolder", tmp_path, seed=1)
    c = load_dataset("imagefolder", tmp_path, seed=2)
    assert np.array_equal(a.splits, b.splits) and not np.array_equal(a.splits, c.splits)
    assert a.class_counts("test") == {"angry": 4, "happy": 4, "sad": 4}     # 20% per class
    assert a.class_counts("val") == {"angry": 2, "happy": 2, "sad": 2}      # 10% of the whole
