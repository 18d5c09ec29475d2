"""Classification metrics shared by the trial, the search leaderboard and `fer-automl evaluate`.

numpy only. Written here (not sklearn.metrics) because the classes a split lacks must stay in the
confusion matrix and be reported as such, and the names must be the project's metric names.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.shape} labels but y_pred has {p.shape}")
    if t.size and (t.min() < 0 or t.max() >= num_classes or p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"labels must be in 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: List[str],
                           prefix: str = "") -> Dict[str, float]:
    """accuracy, balanced_accuracy (mean recall over the classes present), macro_f1 (same classes)."""
    cm = confusion_matrix(y_true, y_pred, len(classes)).astype(np.float64)
    support = cm.sum(1)
    present = support > 0
    total = cm.sum()
    tp = np.diag(cm)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    pred_count = cm.sum(0)
    precision = np.divide(tp, pred_count, out=np.zeros_like(tp), where=pred_count > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        f"{prefix}accuracy": float(tp.sum() / total) if total else float("nan"),
        f"{prefix}balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        f"{prefix}macro_f1": float(f1[present].mean()) if present.any() else float("nan"),
    }


def per_class_report(y_true: Sequence[int], y_pred: Sequence[int], classes: List[str]) -> Dict[str, Dict[str, Optional[float]]]:
    cm = confusion_matrix(y_true, y_pred, len(classes)).astype(np.float64)
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for i, c in enumerate(classes):
        support = cm[i].sum()
        predicted = cm[:, i].sum()
        recall = cm[i, i] / support if support else None
        precision = cm[i, i] / predicted if predicted else None
        f1 = (2 * precision * recall / (precision + recall)
              if precision is not None and recall is not None and precision + recall > 0 else
              (0.0 if support else None))
        out[c] = {"support": int(support), "precision": precision, "recall": recall, "f1": f1}
    return out


def plot_confusion_matrix(cm: np.ndarray, classes: List[str], path, title: str = "") -> None:
    """Row-normalised confusion matrix PNG (counts in the cells)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=np.float64), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(classes), 0.8 + 0.8 * len(classes)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
