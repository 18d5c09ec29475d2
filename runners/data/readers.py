"""Readers of the standard FER data layouts: one class each, one registry line each.

A reader lists the images of a dataset as `Item`s (key, file or in-memory content,
canonical label, pose, subject, official split); `runners.data.load.load_dataset` then
hashes, decodes, resizes, splits and fingerprints them, whatever the reader.
"""
from __future__ import annotations

import abc
import csv
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Optional, Sequence

from .dataset import BASIC_CLASSES, CANONICAL_CLASSES, canonical_label
from .imageio import Item, is_image, list_images
from .errors import NotAFolderError, UserError, UserPathError
from fer_models.extension import Registry

# name -> Reader subclass (`search.dataset.format`, `--format`); a new layout is one class + `@register`
READERS = Registry("dataset format", "search.dataset.format")


def register(name: str) -> Callable[[type["Reader"]], type["Reader"]]:
    def deco(cls: type["Reader"]) -> type["Reader"]:
        cls.name = name
        READERS.register(name, cls, doc=cls.description)
        return cls
    return deco


def get_reader(name: str) -> "Reader":
    try:
        return READERS[name]()
    except KeyError:
        raise UserError(
            f"unknown dataset format {name!r}; known formats: {', '.join(sorted(READERS))}") from None


@dataclass
class Listing:
    items: list[Item]
    classes: Optional[list[str]] = None        # the set's label vocabulary; None: those present
    pose_classes: Optional[list[str]] = None   # pose vocabulary in order; None: sorted present


class Reader(abc.ABC):
    """Base class. `read(root, **options) -> Listing`; `options` names the keyword options
    with their defaults (anything else is an error)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    layout: ClassVar[str] = ""
    options: ClassVar[dict] = {}
    needs_path: ClassVar[bool] = True
    cacheable: ClassVar[bool] = True      # False: generating is as cheap as reading a cache

    @abc.abstractmethod
    def read(self, root: Optional[Path], **opts) -> Listing:
        """The dataset's items under `root` (None for a reader that needs no path)."""


# --- helpers -------------------------------------------------------------------------------
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "publictest": "val", "dev": "val",
    "test": "test", "testing": "test", "privatetest": "test",
}


def split_name(value: str, *, where: str) -> str:
    key = str(value).strip().lower().replace("_", "").replace("-", "")
    try:
        return SPLIT_ALIASES[key]
    except KeyError:
        raise UserError(f"{where}: unknown split {value!r}; expected train, val or test "
                        f"(or Training, PublicTest, PrivateTest)") from None


def require_dir(path: Path, what: str = "dataset folder") -> Path:
    if not path.exists():
        raise UserPathError(f"{what} {path} does not exist")
    if not path.is_dir():
        raise NotAFolderError(f"{what} {path} is not a folder")
    return path


def require_file(path: Path, what: str = "label file") -> Path:
    if not path.exists():
        raise UserPathError(f"{what} {path} does not exist")
    if not path.is_file():  # a folder, or a FIFO / socket / device (reading a FIFO would block)
        raise UserPathError(f"{what} {path} is not a regular file")
    return path


def read_text(path: Path) -> str:
    """A text file as UTF-8 (a byte-order mark is dropped); a UserError naming the file, the line
    and the byte when it is not UTF-8."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise UserError(f"{path} line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column}); "
                        "save the file as UTF-8") from None


def read_csv(path: Path, required: Sequence[str], *, optional: Sequence[str] = ()) -> tuple[list[str], list[dict]]:
    """Rows of a CSV with a header; a UserError naming the file when a required column is missing
    (or the line when it is not UTF-8)."""
    require_file(path, "CSV file")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with io.StringIO(read_text(path), newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        missing = [c for c in required if c not in header]
        if missing:
            raise UserError(
                f"{path}: wrong CSV columns: missing {', '.join(missing)}; found "
                f"{', '.join(header) or '(no header)'}; expected {', '.join(required)}"
                + (f" and optionally {', '.join(optional)}" if optional else ""))
        return header, list(reader)


def check_missing(items: Sequence[Item], source: Path, limit: int = 5) -> None:
    missing = [it for it in items if it.path is not None and not it.path.is_file()]
    if missing:
        shown = ", ".join(str(it.path) for it in missing[:limit])
        raise UserPathError(
            f"{source}: {len(missing)} row(s) point to missing images, first: {shown}")


def class_folder_items(folder: Path, root: Path, *, split: Optional[str] = None,
                       subject_of: Optional[Callable[[Path], str]] = None) -> list[Item]:
    """<folder>/<class>/*.img -> items; the class folder name is resolved through the aliases;
    a class folder with no image is an error."""
    items: list[Item] = []
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise UserError(f"{folder}: no class folders (expected {folder}/<class>/<image>)")
    for sub in subdirs:
        label = canonical_label(sub.name, where=f"class folder {sub}")
        files = list_images(sub)
        if not files:
            raise UserError(f"class folder {sub} has no images (empty class {label!r})")
        for f in files:
            items.append(Item(key=f.relative_to(root).as_posix(), label=label, path=f, split=split,
                              subject=subject_of(f) if subject_of else None))
    return items


def _dir_or_file(root: Path, filename: str) -> Path:
    if root.exists() and not root.is_dir():
        return require_file(root, "file")      # a regular file; a FIFO, socket or device is refused
    return require_dir(root) / filename


# --- FER2013 -------------------------------------------------------------------------------
@register("fer2013")
class FER2013Reader(Reader):
    description = "FER2013: the Kaggle CSV or the per-image folder layout (48x48 gray)"
    layout = ("fer2013.csv (emotion,pixels,Usage: Training/PublicTest/PrivateTest) or "
              "train|test/<class>/*.jpg (Training_/PublicTest_/PrivateTest_ name prefixes kept)")
    USAGE = {"training": "train", "publictest": "val", "privatetest": "test"}

    def read(self, root: Path, **opts) -> Listing:
        if root.is_file() or (root.is_dir() and (root / "fer2013.csv").is_file()):
            return self._read_csv(_dir_or_file(root, "fer2013.csv"))
        require_dir(root)
        split_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name.lower() in SPLIT_ALIASES]
        if not split_dirs:
            raise UserPathError(
                f"{root}: neither fer2013.csv nor train/ and test/ folders (expected {self.layout})")
        items: list[Item] = []
        for d in split_dirs:
            items.extend(class_folder_items(d, root, split=split_name(d.name, where=str(d))))
        for it in items:  # Kaggle image names keep the original usage: PublicTest_123.jpg
            prefix = Path(it.key).name.split("_", 1)[0].lower()
            if prefix in self.USAGE:
                it.split = self.USAGE[prefix]
        return Listing(items, classes=list(BASIC_CLASSES))

    def _read_csv(self, path: Path) -> Listing:
        header, rows = read_csv(path, ["emotion", "pixels"], optional=["Usage"])
        items: list[Item] = []
        for i, row in enumerate(rows, start=2):
            where = f"{path} line {i}"
            value = (row.get("emotion") or "").strip()
            if not value.isdigit() or int(value) >= 7:
                raise UserError(f"{where}: unknown emotion label {value!r}; expected 0..6 "
                                f"({', '.join(BASIC_CLASSES)})")
            split = None
            if "Usage" in header:
                usage = (row.get("Usage") or "").strip()
                split = self.USAGE.get(usage.lower()) or split_name(usage, where=f"{where} column Usage")
            items.append(Item(key=f"{path.name}#{i}", label=BASIC_CLASSES[int(value)],
                              data=row.get("pixels") or "", split=split))
        return Listing(items, classes=list(BASIC_CLASSES))


# --- FERPlus -------------------------------------------------------------------------------
@register("ferplus")
class FERPlusReader(Reader):
    description = "FERPlus: FER2013 relabelled by 10 annotators; majority vote, 8 classes"
    layout = ("fer2013new.csv (Usage,Image name,neutral,...,contempt,unknown,NF vote counts) with "
              "fer2013.csv beside it (row-aligned pixels) or FER2013Train|Valid|Test/<Image name>.png")
    VOTES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
             "unknown", "NF"]
    FOLDERS = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}

    def read(self, root: Path, **opts) -> Listing:
        label_csv = _dir_or_file(root, "fer2013new.csv")
        header, rows = read_csv(label_csv, ["Usage", "Image name", *self.VOTES])
        base = label_csv.parent
        pixel_rows: Optional[list[dict]] = None
        if (base / "fer2013.csv").is_file():
            _, pixel_rows = read_csv(base / "fer2013.csv", ["pixels"])
            if len(pixel_rows) != len(rows):
                raise UserError(f"{label_csv}: {len(rows)} rows but {base / 'fer2013.csv'} has "
                                f"{len(pixel_rows)}; FERPlus labels are row-aligned with FER2013")
        items: list[Item] = []
        for i, row in enumerate(rows):
            where = f"{label_csv} line {i + 2}"
            name = (row.get("Image name") or "").strip()
            if not name:        # FERPlus blanks the images it removed
                continue
            try:
                votes = [float(row[c] or 0) for c in self.VOTES]
            except ValueError:
                raise UserError(f"{where}: vote counts must be numbers, got "
                                f"{[row[c] for c in self.VOTES]}") from None
            label = self.majority(votes)
            if label is None:
                continue
            split = split_name(row["Usage"], where=f"{where} column Usage")
            if pixel_rows is not None:
                items.append(Item(key=f"{label_csv.name}#{i + 2}:{name}", label=label,
                                  data=pixel_rows[i].get("pixels") or "", split=split))
            else:
                path = base / self.FOLDERS[split] / name
                items.append(Item(key=path.relative_to(base).as_posix(), label=label, path=path, split=split))
        if pixel_rows is None:
            check_missing(items, label_csv)
        return Listing(items, classes=list(CANONICAL_CLASSES))

    def majority(self, votes: list[float]) -> Optional[str]:
        """FERPlus 'majority' mode: single votes are outliers (zeroed); the top emotion needs
        more than half of the remaining votes (so ties drop out); unknown and NF drop out."""
        votes = [v if v > 1.0 else 0.0 for v in votes]
        total = sum(votes)
        if total <= 0:
            return None
        top = max(range(len(votes)), key=votes.__getitem__)
        if votes[top] <= 0.5 * total or self.VOTES[top] in ("unknown", "NF"):
            return None
        return canonical_label(self.VOTES[top])


# --- RAF-DB --------------------------------------------------------------------------------
@register("rafdb")
class RAFDBReader(Reader):
    description = "RAF-DB basic emotions (official train/test partition)"
    layout = "EmoLabel/list_patition_label.txt ('train_00001.jpg 5', 1-7) + Image/aligned/*_aligned.jpg"
    options = {"variant": "aligned"}
    LABELS = {1: "surprise", 2: "fear", 3: "disgust", 4: "happy", 5: "sad", 6: "angry", 7: "neutral"}

    def read(self, root: Path, variant: str = "aligned") -> Listing:
        require_dir(root)
        label_file = require_file(root / "EmoLabel" / "list_patition_label.txt")
        if variant not in ("aligned", "original"):
            raise UserError(f"rafdb option variant={variant!r}; expected aligned or original")
        items: list[Item] = []
        for n, line in enumerate(read_text(label_file).splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            where = f"{label_file} line {n}"
            if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) not in self.LABELS:
                raise UserError(f"{where}: expected '<image> <label 1-7>', got {line.strip()!r}")
            fname, code = parts[0], int(parts[1])
            stem = Path(fname).stem
            split = split_name(stem.split("_", 1)[0], where=where)
            rel = (Path("Image") / "aligned" / f"{stem}_aligned.jpg") if variant == "aligned" \
                else (Path("Image") / "original" / fname)
            items.append(Item(key=rel.as_posix(), label=self.LABELS[code], path=root / rel, split=split))
        check_missing(items, label_file)
        return Listing(items, classes=list(BASIC_CLASSES))


# --- AffectNet -----------------------------------------------------------------------------
@register("affectnet")
class AffectNetReader(Reader):
    description = "AffectNet manual annotations; 7 or 8 classes; the official validation set is the test set"
    layout = ("training.csv + validation.csv (subDirectory_filePath,...,expression) and "
              "Manually_Annotated_Images/<subDirectory_filePath>")
    options = {"num_classes": 7, "images_dir": None}
    CODES = {0: "neutral", 1: "happy", 2: "sad", 3: "surprise", 4: "fear", 5: "disgust", 6: "angry",
             7: "contempt"}  # 8 none, 9 uncertain, 10 no-face: not expressions, dropped

    def read(self, root: Path, num_classes: int = 7, images_dir: Optional[str] = None) -> Listing:
        require_dir(root)
        if int(num_classes) not in (7, 8):
            raise UserError(f"affectnet option num_classes={num_classes!r}; expected 7 or 8")
        lists = root / "Manually_Annotated_file_lists"
        list_dir = lists if lists.is_dir() else root
        if images_dir is not None:
            img_root = Path(images_dir)
        else:
            cands = [root / "Manually_Annotated_Images", root / "Manually_Annotated" / "Manually_Annotated_Images"]
            img_root = next((c for c in cands if c.is_dir()), cands[0])
        require_dir(img_root, "AffectNet image folder")
        items: list[Item] = []
        for fname, split in (("training.csv", "train"), ("validation.csv", "test")):
            path = list_dir / fname
            _, rows = read_csv(path, ["subDirectory_filePath", "expression"])
            for i, row in enumerate(rows, start=2):
                value = (row["expression"] or "").strip()
                if not value.lstrip("-").isdigit() or not 0 <= int(value) <= 10:
                    raise UserError(f"{path} line {i}: unknown expression code {value!r}; expected 0..10")
                code = int(value)
                if code > 7 or (code == 7 and int(num_classes) == 7):
                    continue
                rel = row["subDirectory_filePath"].strip()
                items.append(Item(key=rel, label=self.CODES[code], path=img_root / rel, split=split))
            check_missing([it for it in items if it.split == split], path)
        classes = list(BASIC_CLASSES) + (["contempt"] if int(num_classes) == 8 else [])
        return Listing(items, classes=classes)


# --- KDEF ----------------------------------------------------------------------------------
@register("kdef")
class KDEFReader(Reader):
    description = "KDEF: 70 subjects, 7 expressions, 5 head poses (from the file name)"
    layout = "<root>/**/AF01ANFL.JPG: session A|B, F|M + id, expression AF/AN/DI/HA/NE/SA/SU, pose FL/HL/S/HR/FR"
    NAME = re.compile(r"^([AB])([FM])(\d\d)(AF|AN|DI|HA|NE|SA|SU)(FL|HL|S|HR|FR)$", re.IGNORECASE)
    EXPR = {"AF": "fear", "AN": "angry", "DI": "disgust", "HA": "happy", "NE": "neutral", "SA": "sad",
            "SU": "surprise"}
    POSE = {"FL": "full_left", "HL": "half_left", "S": "frontal", "HR": "half_right", "FR": "full_right"}

    def read(self, root: Path, **opts) -> Listing:
        require_dir(root)
        items = []
        for f in list_images(root):
            m = self.NAME.match(f.stem)
            if not m:
                raise UserError(f"{f}: not a KDEF file name (expected e.g. AF01ANFL.JPG: {self.layout})")
            _, sex, num, expr, pose = (g.upper() for g in m.groups())
            items.append(Item(key=f.relative_to(root).as_posix(), label=self.EXPR[expr], path=f,
                              pose=self.POSE[pose], subject=f"{sex}{num}"))
        return Listing(items, classes=list(BASIC_CLASSES), pose_classes=list(self.POSE.values()))


# --- CK+ -----------------------------------------------------------------------------------
@register("ckplus")
class CKPlusReader(Reader):
    description = "CK+ (peak frames in per-class folders, e.g. CK+48); subject from the file name"
    layout = "<root>/<class>/S010_004_00000017.png (classes anger, contempt, disgust, fear, happy, sadness, surprise[, neutral])"
    SUBJECT = re.compile(r"^(S\d+)_", re.IGNORECASE)

    def read(self, root: Path, **opts) -> Listing:
        require_dir(root)

        def subject_of(f: Path) -> str:
            m = self.SUBJECT.match(f.name)
            if not m:
                raise UserError(f"{f}: no CK+ subject prefix in the file name (expected S010_004_00000017.png)")
            return m.group(1).upper()

        return Listing(class_folder_items(root, root, subject_of=subject_of))


# --- JAFFE ---------------------------------------------------------------------------------
@register("jaffe")
class JAFFEReader(Reader):
    description = "JAFFE: 10 Japanese female subjects, 7 expressions"
    layout = "<root>/KA.AN1.39.tiff (subject . expression+index . number)"
    NAME = re.compile(r"^([A-Z]{2})\.([A-Z]{2})(\d*)\.(\d+)$", re.IGNORECASE)
    EXPR = {"AN": "angry", "DI": "disgust", "FE": "fear", "HA": "happy", "NE": "neutral", "SA": "sad",
            "SU": "surprise"}

    def read(self, root: Path, **opts) -> Listing:
        require_dir(root)
        items = []
        for f in list_images(root):
            m = self.NAME.match(f.stem)
            if not m or m.group(2).upper() not in self.EXPR:
                raise UserError(f"{f}: not a JAFFE file name with a known expression "
                                f"(expected e.g. KA.AN1.39.tiff, codes {', '.join(self.EXPR)})")
            items.append(Item(key=f.relative_to(root).as_posix(), label=self.EXPR[m.group(2).upper()],
                              path=f, subject=m.group(1).upper()))
        return Listing(items, classes=list(BASIC_CLASSES))


# --- CMU Face Images -----------------------------------------------------------------------
@register("cmu_faces")
class CMUFacesReader(Reader):
    description = ("CMU Face Images (T. Mitchell, Machine Learning, 1997; UCI): 20 subjects, "
                   "4 expressions, 4 real head poses, sunglasses")
    layout = "<root>/<subject>/<subject>_<pose>_<expression>_<eyes>[_2|_4].pgm"
    options = {"scale": 1}
    NAME = re.compile(r"^([a-z0-9]+)_(straight|left|right|up)_(neutral|happy|sad|angry)_(open|sunglasses)(?:_([24]))?$")
    POSES = ["straight", "left", "right", "up"]

    def read(self, root: Path, scale: int = 1) -> Listing:
        require_dir(root)
        if int(scale) not in (1, 2, 4):
            raise UserError(f"cmu_faces option scale={scale!r}; expected 1 (128x120), 2 (64x60) or 4 (32x30)")
        items = []
        for f in list_images(root):
            m = self.NAME.match(f.stem)
            if not m:
                raise UserError(f"{f}: not a CMU Face Images file name (expected {self.layout})")
            subject, pose, expr, _eyes, sc = m.groups()
            if int(sc or 1) != int(scale):
                continue
            items.append(Item(key=f.relative_to(root).as_posix(), label=canonical_label(expr), path=f,
                              pose=pose, subject=subject))
        return Listing(items, pose_classes=list(self.POSES))


# --- generic ImageFolder -------------------------------------------------------------------
@register("imagefolder")
class ImageFolderReader(Reader):
    description = "generic ImageFolder: one folder per class, optionally inside train/val/test folders"
    layout = "<root>/<class>/*.img or <root>/train|val|test/<class>/*.img (class names or aliases)"

    def read(self, root: Path, **opts) -> Listing:
        require_dir(root)
        subdirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
        if subdirs and all(d.name.lower() in SPLIT_ALIASES for d in subdirs):
            items: list[Item] = []
            for d in subdirs:
                items.extend(class_folder_items(d, root, split=split_name(d.name, where=str(d))))
            return Listing(items)
        return Listing(class_folder_items(root, root))


# --- generic CSV manifest ------------------------------------------------------------------
@register("csv")
class CSVManifestReader(Reader):
    description = "generic CSV manifest: path,label[,pose][,subject][,split] (paths relative to the CSV)"
    layout = "manifest.csv with columns path,label and optionally pose, subject, split"
    options = {"pose_classes": None}

    def read(self, root: Path, pose_classes: Optional[Sequence[str]] = None) -> Listing:
        path = _dir_or_file(root, "manifest.csv")
        header, rows = read_csv(path, ["path", "label"], optional=["pose", "subject", "split"])
        base = path.parent
        items = []
        for i, row in enumerate(rows, start=2):
            where = f"{path} line {i}"
            rel = (row["path"] or "").strip()
            if not rel:
                raise UserError(f"{where}: empty path")
            p = Path(rel) if Path(rel).is_absolute() else base / rel
            split = (row.get("split") or "").strip()
            items.append(Item(
                key=rel, label=canonical_label(row["label"] or "", where=f"{where} column label"), path=p,
                pose=(row.get("pose") or "").strip() or None,
                subject=(row.get("subject") or "").strip() or None,
                split=split_name(split, where=f"{where} column split") if split else None))
        check_missing(items, path)
        if pose_classes is None:
            from .synth import POSE_CLASSES
            present = {it.pose for it in items if it.pose}
            if present and present <= set(POSE_CLASSES):
                pose_classes = POSE_CLASSES
        return Listing(items, pose_classes=list(pose_classes) if pose_classes else None)


# --- built-in synthetic faces --------------------------------------------------------------
@register("synthetic")
class SyntheticReader(Reader):
    description = "built-in procedural faces (7 expressions, 5 head poses, occlusions); no files"
    layout = "(no path) options n, size, num_subjects, seed, occlusion, noise"
    options = {"n": 2000, "size": 64, "num_subjects": None, "seed": 0, "occlusion": 0.45, "noise": 1.0}
    needs_path = False
    cacheable = False

    def read(self, root: Optional[Path], n: int = 2000, size: int = 64,
             num_subjects: Optional[int] = None, seed: int = 0, occlusion: float = 0.45,
             noise: float = 1.0) -> Listing:
        from .synth import POSE_CLASSES, generate

        if not (0.0 <= float(occlusion) <= 1.0) or float(noise) < 0.0:
            raise UserError(f"synthetic faces: occlusion={occlusion!r} (expected 0..1), noise={noise!r} "
                            "(expected >= 0)")
        batch = generate(int(n), size=int(size), seed=int(seed), num_subjects=num_subjects,
                         occlusion=float(occlusion), noise=float(noise))
        items = [Item(key=f"synthetic/{i:06d}", label=BASIC_CLASSES[int(y)], data=img,
                      pose=POSE_CLASSES[int(p)], subject=f"s{int(s):04d}")
                 for i, (img, y, p, s) in enumerate(zip(batch.images, batch.labels, batch.poses, batch.subjects))]
        return Listing(items, classes=list(BASIC_CLASSES), pose_classes=list(POSE_CLASSES))


def describe() -> list[dict]:
    """One row per reader: name, description, layout, options (for `data formats` and the README)."""
    return [{"name": n, "description": c.description, "layout": c.layout, "options": dict(c.options)}
            for n, c in sorted(READERS.items())]


__all__ = ["READERS", "Reader", "Listing", "register", "get_reader", "describe", "is_image"]
