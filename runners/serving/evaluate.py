"""Evaluate a logged FER model on a dataset split (`fer-automl evaluate`), and log it to MLflow.

Classes are matched by name, not by index: both sides go through the canonical names and
aliases of `runners.data` ('happiness' = 'happy', 'anger' = 'angry', any case), so a model
trained on one dataset can be evaluated on another. What one side lacks is reported:

- images whose true class the model does not know are left out of every metric (counted, by class);
- the model's classes that the data lacks stay predictable: the prediction is the argmax over
  all of the model's classes, so predicting one of them is simply wrong.

Metrics are those of the trial (`runners.training.metrics`): accuracy, balanced accuracy (mean recall
over the classes present) and macro-F1 (same classes), per-class recall, the confusion matrix
(rows: true class, columns: prediction, both in the model's class order), and when the data has
pose labels the accuracy per pose class.

The split is the reader's (`load_dataset`: by subject, seeded): loaded with the same data, seed
and fractions as in training, 'test' holds the same images. The model's metadata keeps the
training data's content fingerprint and a fingerprint of its split (which image on which side),
and the evaluation says whether both match.
"""
from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fer_models.errors import UserError, UserPathError

from runners.data.dataset import LABEL_ALIASES, FERDataset
from runners.data.splits import split_fingerprint
from runners.training.metrics import classification_metrics, confusion_matrix, per_class_report, plot_confusion_matrix

SPLIT_CHOICES = ("test", "val", "train", "all")
DEFAULT_EXPERIMENT = "fer-automl-evaluations"
TAG_PREFIX = "fer_automl."
CM_FILE = "confusion_matrix.png"
JSON_FILE = "evaluation.json"


# --- class matching ------------------------------------------------------------------------------

def class_key(name: str) -> str:
    """The canonical name of a class name or alias (any case, '-' and ' ' ignored); an unknown
    name matches only itself (lower-cased)."""
    key = str(name).strip().lower().replace("-", "").replace(" ", "").replace("_", "")
    return LABEL_ALIASES.get(key, key)


@dataclass
class ClassMatch:
    model_classes: List[str]
    data_classes: List[str]
    data_to_model: Dict[int, int]           # data class index -> model class index
    matched: List[Tuple[str, str]]           # (data name, model name)
    data_only: List[str]                     # data classes the model does not know
    model_only: List[str]                    # model classes the data does not have

    def describe(self) -> Dict[str, Any]:
        return {"matched": [{"data": d, "model": m} for d, m in self.matched],
                "data_only": self.data_only, "model_only": self.model_only}


def match_classes(model_classes: Sequence[str], data_classes: Sequence[str]) -> ClassMatch:
    def keys(names: Sequence[str], side: str) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for i, n in enumerate(names):
            k = class_key(n)
            if k in out:
                raise UserError(f"the {side} has two classes that mean the same: {names[out[k]]!r} and {n!r}")
            out[k] = i
        return out

    mk, dk = keys(model_classes, "model"), keys(data_classes, "data")
    d2m = {dk[k]: mk[k] for k in dk if k in mk}
    return ClassMatch(
        model_classes=list(model_classes), data_classes=list(data_classes), data_to_model=d2m,
        matched=[(data_classes[d], model_classes[m]) for d, m in sorted(d2m.items())],
        data_only=[data_classes[i] for k, i in dk.items() if k not in mk],
        model_only=[model_classes[i] for k, i in mk.items() if k not in dk])


# --- evaluation ----------------------------------------------------------------------------------

@dataclass
class Evaluation:
    model_uri: str
    split: str
    classes: List[str]                       # the model's, in its order
    match: ClassMatch
    dataset: Dict[str, Any]                  # name, format, source, fingerprint, split_fingerprint
    lineage: Dict[str, Any]                  # same_data, same_split, note
    num_images: int                          # evaluated
    excluded: Dict[str, int]                 # data-only class -> images left out
    y_true: np.ndarray                       # model class indices
    y_pred: np.ndarray
    metrics: Dict[str, float]                # accuracy, balanced_accuracy, macro_f1
    per_class: Dict[str, Dict[str, Optional[float]]]
    confusion: np.ndarray
    pose_accuracy: Dict[str, Dict[str, float]] = field(default_factory=dict)  # pose -> images, accuracy
    face_detection: Optional[Dict[str, Any]] = None   # with --detect-faces: cascade, margin, images, no-face keys

    @property
    def num_no_face(self) -> int:
        return len(self.face_detection["no_face"]) if self.face_detection else 0

    @property
    def num_excluded(self) -> int:
        return int(sum(self.excluded.values()))

    def mlflow_metrics(self) -> Dict[str, float]:
        """Flat metric names, prefixed with the split: test_accuracy, test_recall_happy, ..."""
        p = f"{self.split}_"
        out = {p + k: v for k, v in self.metrics.items()}
        for c, row in self.per_class.items():
            if row["recall"] is not None:
                out[f"{p}recall_{c}"] = float(row["recall"])
        for pose, row in self.pose_accuracy.items():
            out[f"{p}accuracy_pose_{pose}"] = row["accuracy"]
        out[f"{p}num_images"] = float(self.num_images)
        out[f"{p}num_excluded"] = float(self.num_excluded)
        if self.face_detection is not None:
            out[f"{p}num_no_face"] = float(self.num_no_face)
        return out

    def to_json(self) -> Dict[str, Any]:
        return {
            "model_uri": self.model_uri, "split": self.split, "dataset": self.dataset, "lineage": self.lineage,
            "classes": self.classes, "class_matching": self.match.describe(),
            "num_images": self.num_images, "num_excluded": self.num_excluded, "excluded_by_class": self.excluded,
            "metrics": self.metrics, "per_class": self.per_class, "confusion_matrix": self.confusion.tolist(),
            "pose_accuracy": self.pose_accuracy,
            "face_detection": self.face_detection,
            "num_no_face": self.num_no_face if self.face_detection is not None else None,
        }


def split_indices(ds: FERDataset, split: str) -> np.ndarray:
    if split not in SPLIT_CHOICES:
        raise UserError(f"--split {split!r}; expected one of {', '.join(SPLIT_CHOICES)}")
    idx = np.arange(len(ds)) if split == "all" else ds.indices(split)
    if len(idx) == 0:
        raise UserError(f"split {split!r} of dataset {ds.name!r} ({ds.source}) has no images")
    return idx


def lineage(meta: Dict[str, Any], ds: FERDataset) -> Dict[str, Any]:
    """Is this the model's training data, and is its split the training split?"""
    imported = meta.get("imported")
    if imported:  # `promote --weights` (runners.registry.imported): weights trained outside fer-automl
        what = f"layout {imported['layout']}" if imported.get("layout") else f"file {imported.get('file', '?')}"
        return {"same_data": False, "same_split": None, "imported": dict(imported),
                "note": f"imported weights ({what}, preset {imported.get('preset', '?')}): trained outside "
                        "fer-automl, on data it does not record"}
    trained = dict(meta.get("dataset") or {})
    fp = trained.get("fingerprint")
    here_split = split_fingerprint(ds.keys, ds.splits) if ds.keys is not None else None
    same_data = bool(fp) and fp == ds.fingerprint
    if not same_data:
        note = (f"not the training data (fingerprint {ds.fingerprint[:12]} vs the model's "
                f"{(fp or 'unrecorded')[:12]}, {trained.get('name', '?')})")
        return {"same_data": False, "same_split": None, "note": note}
    trained_split = trained.get("split_fingerprint")
    if trained_split is None or here_split is None:
        note = ("same data as training; the model does not record its split, so 'test' is the trial's test set "
                "only if --seed equals the training's dataset seed (default 0)")
        same_split = None
    elif trained_split == here_split:
        note = "same data and same split as training: 'test' holds exactly the images the trial tested on"
        same_split = True
    else:
        note = ("same data as training but a different split (--seed differs from the training's): 'test' is not "
                "the trial's test set and may hold images it trained on")
        same_split = False
    return {"same_data": True, "same_split": same_split, "note": note}


def crop_faces(detector, ds: FERDataset, idx: np.ndarray) -> Tuple[np.ndarray, List[np.ndarray], List[str]]:
    """(indices with a face, their face crops, keys of the images without one): the crop of
    `fer-automl predict --detect-faces` (largest face, margin) on each image as loaded."""
    found, crops, no_face = [], [], []
    for i in idx:
        crop, _ = detector.crop(np.asarray(ds.images[int(i)]))
        if crop is None:
            no_face.append(str(ds.keys[int(i)]) if ds.keys is not None else str(int(i)))
        else:
            found.append(int(i))
            crops.append(crop)
    return np.asarray(found, dtype=np.int64), crops, no_face


def evaluate_dataset(predictor, ds: FERDataset, split: str = "test", batch_size: int = 64,
                     detector=None) -> Evaluation:
    """Predict every image of the split whose class the model knows; metrics over the model's classes.

    detector: a `runners.serving.predict.FaceDetector` (`--detect-faces`): each image is cropped to its
    largest face first (load the dataset at its native size for this, as `predict` reads files),
    and images where no face is found are counted, listed and left out of every metric."""
    idx = split_indices(ds, split)
    match = match_classes(predictor.classes, ds.classes)
    data_labels = ds.labels[idx]
    known = np.array([int(lbl) in match.data_to_model for lbl in data_labels], dtype=bool)
    excluded: Dict[str, int] = {}
    for lbl in data_labels[~known]:
        name = ds.classes[int(lbl)]
        excluded[name] = excluded.get(name, 0) + 1
    keep = idx[known]
    if len(keep) == 0:
        raise UserError(
            f"split {split!r} of {ds.name!r} has no image of a class the model knows (model classes "
            f"{', '.join(predictor.classes)}; data classes {', '.join(ds.classes)})")
    faces = None
    if detector is not None:
        keep, images, no_face = crop_faces(detector, ds, keep)
        faces = {"cascade": str(detector.path), "margin": detector.margin, "images": int(len(keep) + len(no_face)),
                 "found": int(len(keep)), "no_face": no_face}
        if len(keep) == 0:
            raise UserError(f"--detect-faces: no face found in any of the {len(no_face)} image(s) of split {split!r} "
                            f"of {ds.name!r} (first: {', '.join(no_face[:5])}); drop --detect-faces for face crops")
    else:
        images = [np.asarray(ds.images[i]) for i in keep]
    probs = predictor.predict_proba(images, batch_size=batch_size)
    y_true = np.array([match.data_to_model[int(lbl)] for lbl in ds.labels[keep]], dtype=np.int64)
    y_pred = probs.argmax(1).astype(np.int64)
    classes = list(predictor.classes)
    metrics = classification_metrics(y_true, y_pred, classes)
    pose_acc: Dict[str, Dict[str, float]] = {}
    if ds.poses is not None:
        poses = ds.poses[keep]
        for j, name in enumerate(ds.pose_classes):
            sel = poses == j
            if sel.any():
                pose_acc[name] = {"images": int(sel.sum()), "accuracy": float((y_true[sel] == y_pred[sel]).mean())}
    return Evaluation(
        model_uri=predictor.uri, split=split, classes=classes, match=match,
        dataset={"name": ds.name, "format": ds.format, "source": ds.source, "fingerprint": ds.fingerprint,
                 "split_fingerprint": split_fingerprint(ds.keys, ds.splits) if ds.keys is not None else None},
        lineage=lineage(predictor.meta, ds), num_images=int(len(keep)), excluded=excluded,
        y_true=y_true, y_pred=y_pred, metrics=metrics, per_class=per_class_report(y_true, y_pred, classes),
        confusion=confusion_matrix(y_true, y_pred, len(classes)), pose_accuracy=pose_acc, face_detection=faces)


def check_output_dir(folder: Path) -> Path:
    """--output-dir: a folder, or a path where one can be made (no file in the way); checked before
    anything is loaded or computed."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserPathError(f"--output-dir {str(folder)!r} is a file, not a folder")
    parent = folder
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserPathError(f"--output-dir {str(folder)!r}: {str(parent)!r} is a file, not a folder")
    return folder


def write_artifacts(ev: Evaluation, folder: Path) -> List[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    png, js = folder / CM_FILE, folder / JSON_FILE
    plot_confusion_matrix(ev.confusion, ev.classes, png,
                          f"{ev.dataset['name']} / {ev.split} ({ev.num_images} images)")
    js.write_text(json.dumps(ev.to_json(), indent=1))
    return [png, js]


# --- the model behind a URI, and tracking ---------------------------------------------------------

@dataclass
class ModelRef:
    uri: str
    name: Optional[str] = None       # registered model name (registry URIs)
    version: Optional[str] = None
    alias: Optional[str] = None
    run_id: Optional[str] = None     # the run that logged the model, where known
    model_id: Optional[str] = None   # MLflow logged-model id, where known


def resolve_model_ref(client, uri: str) -> ModelRef:
    """Which registered model version (or run) a URI points at; ValueError naming the URI when the
    registry has no such model, version or alias."""
    ref = ModelRef(uri=uri)
    m = re.match(r"^models:/([^/@]+)(?:@([^/]+)|/([^/]+))$", uri)
    try:
        if m:
            name, alias, version = m.groups()
            if alias is not None:
                mv = client.get_model_version_by_alias(name, alias)
                ref.alias = alias
            elif version.isdigit():
                mv = client.get_model_version(name, version)
            elif version.lower() == "latest":
                versions = client.search_model_versions(f"name='{name}'")
                if not versions:
                    raise ValueError("no versions")
                mv = max(versions, key=lambda v: int(v.version))
            else:  # a stage name (deprecated in MLflow): not linked
                return ref
            ref.name, ref.version, ref.run_id = mv.name, str(mv.version), mv.run_id
            ref.model_id = getattr(mv, "model_id", None)
            return ref
        m = re.match(r"^models:/([^/@]+)$", uri)
        if m:
            ref.model_id = m.group(1)
            ref.run_id = getattr(client.get_logged_model(ref.model_id), "source_run_id", None)
            return ref
        m = re.match(r"^runs:/([^/]+)/", uri)
        if m:
            ref.run_id = m.group(1)
    except ValueError as exc:
        raise UserError(f"model {uri!r}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - MlflowException and friends
        raise UserError(f"model {uri!r} not found in the registry ({str(exc).splitlines()[0][:300]})") from None
    return ref


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "dataset"


def eval_tag_key(ev: Evaluation) -> str:
    """The model-version tag that points at the latest evaluation on this dataset and split."""
    return f"{TAG_PREFIX}eval.{_safe(ev.dataset['name'])}.{ev.split}"


def log_evaluation(ev: Evaluation, ref: ModelRef, *, tracking_uri: str, experiment: str = DEFAULT_EXPERIMENT,
                   params: Optional[Dict[str, Any]] = None, artifacts_dir: Optional[Path] = None,
                   extra_metrics: Optional[Dict[str, float]] = None) -> Dict[str, str]:
    """One evaluation run (tag fer_automl.kind=evaluation) with the metrics, tags linking the model
    version and the dataset, the confusion matrix PNG and the JSON report; for registry URIs a tag
    on the model version names the run. Returns {'run_id', 'experiment_id', 'model_version_tag'}."""
    from mlflow.tracking import MlflowClient

    from runners.search.tracking import TAG_KIND, RunWriter, get_or_create_experiment

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    exp_id = get_or_create_experiment(client, experiment)
    model_label = f"{ref.name} v{ref.version}" if ref.name else ev.model_uri
    tags = {
        TAG_KIND: "evaluation",
        f"{TAG_PREFIX}model_uri": ev.model_uri,
        f"{TAG_PREFIX}dataset": ev.dataset["name"],
        f"{TAG_PREFIX}dataset_format": ev.dataset["format"],
        f"{TAG_PREFIX}dataset_fingerprint": ev.dataset["fingerprint"],
        f"{TAG_PREFIX}split": ev.split,
        f"{TAG_PREFIX}eval.same_data_as_training": str(ev.lineage["same_data"]).lower(),
        f"{TAG_PREFIX}eval.same_split_as_training": ("unknown" if ev.lineage["same_split"] is None
                                                     else str(ev.lineage["same_split"]).lower()),
        f"{TAG_PREFIX}eval.data_only_classes": ",".join(ev.match.data_only) or "-",
        f"{TAG_PREFIX}eval.model_only_classes": ",".join(ev.match.model_only) or "-",
        "mlflow.note.content": f"Evaluation of {model_label} on {ev.dataset['name']} ({ev.split}). {ev.lineage['note']}.",
    }
    for key, value in (("registered_model_name", ref.name), ("registered_model_version", ref.version),
                       ("registered_model_alias", ref.alias), ("model_run_id", ref.run_id),
                       ("model_id", ref.model_id)):
        if value:
            tags[TAG_PREFIX + key] = str(value)
    run = client.create_run(exp_id, run_name=f"eval {model_label} on {ev.dataset['name']} {ev.split}")
    run_id = run.info.run_id
    writer = RunWriter(client)
    try:
        writer.tags(run_id, tags)
        all_params = {
            "model_uri": ev.model_uri, "split": ev.split, "dataset": ev.dataset["name"],
            "dataset_source": ev.dataset["source"], "model_classes": ",".join(ev.classes),
            "data_classes": ",".join(ev.match.data_classes),
            "matched_classes": ",".join(d if d == m else f"{d}={m}" for d, m in ev.match.matched),
            "data_only_classes": ",".join(ev.match.data_only) or "-",
            "model_only_classes": ",".join(ev.match.model_only) or "-",
            "excluded_images": ",".join(f"{c}:{k}" for c, k in ev.excluded.items()) or "0",
            **{k: str(v) for k, v in (params or {}).items()},
        }
        writer.params(run_id, {k: str(v)[:6000] for k, v in all_params.items()})
        writer.metric(run_id, {**ev.mlflow_metrics(), **(extra_metrics or {})}, step=0)  # extra: an ensemble's members
        writer.flush(run_id)
        with tempfile.TemporaryDirectory(prefix="fer-eval-") as tmp:
            for f in write_artifacts(ev, Path(artifacts_dir) if artifacts_dir else Path(tmp)):
                client.log_artifact(run_id, str(f))
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    out = {"run_id": run_id, "experiment_id": exp_id, "model_version_tag": ""}
    if ref.name and ref.version:
        key = eval_tag_key(ev)
        client.set_model_version_tag(ref.name, ref.version, key, run_id)
        out["model_version_tag"] = key
    return out
