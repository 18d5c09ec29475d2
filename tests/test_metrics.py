"""runners.training.metrics against hand-computed values."""
from __future__ import annotations

import numpy as np
import pytest

from runners.training.metrics import classification_metrics, confusion_matrix, per_class_report, plot_confusion_matrix

CLASSES = ["angry", "happy", "sad"]


def test_metrics_by_hand():
    y = [0, 0, 0, 0, 1, 1, 2, 2]
    p = [0, 0, 0, 1, 1, 2, 2, 2]
    cm = confusion_matrix(y, p, 3)
    assert cm.tolist() == [[3, 1, 0], [0, 1, 1], [0, 0, 2]]
    m = classification_metrics(y, p, CLASSES, prefix="val_")
    assert m["val_accuracy"] == pytest.approx(6 / 8)
    assert m["val_balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)
    f1 = [2 * 1 * 0.75 / 1.75, 2 * 0.5 * 0.5 / 1.0, 2 * (2 / 3) * 1 / (5 / 3)]
    assert m["val_macro_f1"] == pytest.approx(np.mean(f1))


def test_absent_classes_are_reported_not_averaged():
    y, p = [0, 0, 1], [0, 1, 1]
    m = classification_metrics(y, p, CLASSES)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)
    rep = per_class_report(y, p, CLASSES)
    assert rep["sad"] == {"support": 0, "precision": None, "recall": None, "f1": None}
    assert rep["angry"]["recall"] == 0.5 and rep["happy"]["precision"] == 0.5


def test_bad_labels():
    with pytest.raises(ValueError, match="labels must be in 0..2"):
        confusion_matrix([0, 3], [0, 1], 3)
    with pytest.raises(ValueError, match="y_pred"):
        confusion_matrix([0, 1], [0], 3)


def test_confusion_png(tmp_path):
    path = tmp_path / "cm.png"
    plot_confusion_matrix(confusion_matrix([0, 1, 2], [0, 2, 2], 3), CLASSES, path, "val")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
