"""Predict expressions of image files with a logged FER model (`fer-automl predict`).

Images are decoded as the datasets are (`runners.data.imageio.decode_bytes`: OpenCV, BGR -> RGB,
gray / gray+alpha / RGBA / 16-bit -> 8-bit RGB, Pillow for what OpenCV cannot read), optionally
cropped to the largest face found by OpenCV's Haar cascade, and fed to the model at its input
size. Every image gets its own result; one that cannot be read, or in which no face is found,
gets an error and the others are still predicted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from fer_models.errors import UserError, UserPathError

#: The cascade used for --detect-faces, as OpenCV's opencv-python(-headless) 4.x wheels bundle it.
CASCADE_FILE = "haarcascade_frontalface_default.xml"
#: Margin added on every side of the detected box, as a fraction of the box's width / height.
FACE_MARGIN = 0.2

Box = Tuple[int, int, int, int]  # x, y, width, height in pixels of the original image


class FaceDetectorUnavailable(UserError):
    """The installed OpenCV has no Haar cascade classifier or no cascade file (the user's install: exit 2)."""


@dataclass
class ImageResult:
    path: str
    label: Optional[str] = None
    probabilities: Dict[str, float] = field(default_factory=dict)
    face_box: Optional[Box] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def probability(self) -> Optional[float]:
        return self.probabilities.get(self.label) if self.label is not None else None

    def to_json(self, detect_faces: bool) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        out = {"path": self.path, "label": self.label, "probabilities": self.probabilities}
        if detect_faces:
            out["face_box"] = dict(zip(("x", "y", "width", "height"), self.face_box))
        return out


def read_image(path: Path) -> np.ndarray:
    """An image file -> H x W x 3 uint8 RGB, decoded as datasets are (`decode_bytes`: EXIF orientation
    applied); OSError / ValueError with the reason otherwise (a per-image error of `predict`).
    Only regular files are read: a FIFO, socket or device is refused without opening it."""
    from runners.data.imageio import CorruptImage, decode_bytes

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError("no such file")
    if path.is_dir():
        raise IsADirectoryError("a folder, not an image file")
    if not path.is_file():  # stat only: opening a FIFO would block until a writer comes
        raise OSError("not a regular file (a FIFO, socket or device), refused")
    try:
        return decode_bytes(path.read_bytes())
    except CorruptImage as exc:
        why = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc)).strip()
        if not why or why.startswith("cannot identify image file"):
            why = "neither OpenCV nor Pillow can decode it"
        raise ValueError(f"not a readable image ({why})") from None


# --- face detection ------------------------------------------------------------------------------

def _cascade_class():
    import cv2

    cls = getattr(cv2, "CascadeClassifier", None)
    if cls is None:  # OpenCV 5 moved it to the contrib module xobjdetect
        cls = getattr(getattr(cv2, "xobjdetect", None), "CascadeClassifier", None)
    return cls


def find_cascade_file() -> Optional[Path]:
    """OpenCV's bundled frontal-face cascade: cv2.data.haarcascades, else anywhere inside the cv2 package."""
    import cv2

    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if folder and (Path(folder) / CASCADE_FILE).is_file():
        return Path(folder) / CASCADE_FILE
    package = Path(cv2.__file__).resolve().parent
    found = sorted(package.rglob(CASCADE_FILE))
    return found[0] if found else None


class FaceDetector:
    """The largest frontal face by OpenCV's Haar cascade, cropped with a margin.

    Detection runs on the histogram-equalised gray image (scale step 1.1, 5 neighbours, faces
    at least 24 px or a tenth of the shorter side). The crop is the box grown by `margin` of its
    size on every side (FER training crops keep some forehead and chin), clipped to the image."""

    def __init__(self, cascade: Optional[str] = None, margin: float = FACE_MARGIN):
        import cv2

        cls = _cascade_class()
        if cls is None:
            raise FaceDetectorUnavailable(
                f"--detect-faces needs OpenCV's Haar cascade classifier, which OpenCV {cv2.__version__} does not "
                "have (OpenCV 5 moved it out of the main package together with its cascade files); "
                "install opencv-python-headless<5 (as this project's pyproject.toml asks)")
        path = Path(cascade) if cascade else find_cascade_file()
        if path is None:
            raise FaceDetectorUnavailable(
                f"--detect-faces: OpenCV {cv2.__version__} ships no {CASCADE_FILE} (looked in cv2.data.haarcascades "
                f"and in {Path(cv2.__file__).parent}); install opencv-python-headless<5 or give --cascade FILE.xml")
        if not path.exists():
            raise UserPathError(f"--cascade {str(path)!r}: no such file")
        if not path.is_file():
            raise UserPathError(f"--cascade {str(path)!r}: not a regular file (expected a Haar cascade .xml file)")
        try:
            self.classifier = cls(str(path))
            empty = self.classifier.empty()
        except Exception:  # noqa: BLE001 - OpenCV raises cv2.error or SystemError on a file it cannot parse
            empty = True
        if empty:
            raise UserError(f"--cascade {str(path)!r}: not a Haar cascade OpenCV can load (expected an OpenCV "
                            f"cascade XML such as {CASCADE_FILE})")
        self.path = path
        self.margin = float(margin)

    @classmethod
    def from_flags(cls, detect_faces: bool, cascade: Optional[str]) -> Optional["FaceDetector"]:
        """The detector `--detect-faces [--cascade FILE]` ask for, or None without --detect-faces."""
        if detect_faces:
            return cls(cascade)
        if cascade:
            raise UserError("--cascade is used only with --detect-faces")
        return None

    def detect(self, rgb: np.ndarray) -> Optional[Box]:
        """The largest face (x, y, w, h), or None."""
        import cv2

        gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        side = max(24, min(gray.shape) // 10)
        faces = self.classifier.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))
        if len(faces) == 0:
            return None
        x, y, w, h = max((tuple(int(v) for v in f) for f in faces), key=lambda b: b[2] * b[3])
        return (x, y, w, h)

    def crop_box(self, box: Box, shape: Sequence[int]) -> Box:
        """The detected box grown by the margin on every side, clipped to the image."""
        x, y, w, h = box
        dx, dy = int(round(self.margin * w)), int(round(self.margin * h))
        x0, y0 = max(0, x - dx), max(0, y - dy)
        x1, y1 = min(int(shape[1]), x + w + dx), min(int(shape[0]), y + h + dy)
        return (x0, y0, x1 - x0, y1 - y0)

    def crop(self, rgb: np.ndarray) -> Tuple[Optional[np.ndarray], Optional[Box]]:
        """(the face crop, its box in the image) or (None, None) when no face is found."""
        box = self.detect(rgb)
        if box is None:
            return None, None
        x, y, w, h = self.crop_box(box, rgb.shape)
        return np.ascontiguousarray(rgb[y:y + h, x:x + w]), (x, y, w, h)


# --- prediction ----------------------------------------------------------------------------------

def predict_files(predictor, paths: Sequence[str], detector: Optional[FaceDetector] = None,
                  batch_size: int = 64) -> List[ImageResult]:
    """One ImageResult per path, in order; unreadable files and faceless images get an error."""
    results = [ImageResult(path=str(p)) for p in paths]
    todo: List[int] = []
    images: List[np.ndarray] = []
    for i, r in enumerate(results):
        try:
            img = read_image(Path(r.path))
        except (OSError, ValueError) as exc:
            r.error = str(exc)
            continue
        if detector is not None:
            face, box = detector.crop(img)
            if face is None:
                r.error = "no face found"
                continue
            img, r.face_box = face, box
        todo.append(i)
        images.append(img)
    if images:
        probs = predictor.predict_proba(images, batch_size=batch_size)
        classes = list(predictor.classes)
        for i, p in zip(todo, probs):
            r = results[i]
            r.probabilities = {c: float(v) for c, v in zip(classes, p)}
            r.label = classes[int(np.argmax(p))]
    return results
