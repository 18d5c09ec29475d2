"""A trial's selected weights as a self-contained MLflow model, and loading it back.

The logged model takes what a user has — RGB images as uint8, shape (N, S, S, 3) at the model's
input size S — and returns class probabilities (N, K) in the canonical class order of the
training data. Normalisation, layout and softmax are inside the model, so nothing else is needed
to use it (`mlflow models serve`, `mlflow.pyfunc.load_model`, `fer-automl predict`).

Serialisation: MLflow's pytorch flavour with `serialization_format="pt2"` (torch.export), and
nothing else: the graph and weights load without unpickling Python objects and without this
project's code, in an environment holding only the model's declared requirements (torch, mlflow,
numpy). A configuration that does not export is refused (`ModelExportError`, naming the config
and torch.export's error) instead of being logged in a format that would not load there. Every
preset and sampled point of the shipped spaces exports (tests/test_packaging.py checks the presets).

The model's metadata (`fer_automl` key of the MLmodel file) carries: classes, pose_classes,
image_size, normalisation, dataset name and fingerprint, serialisation format, and the trial
config, so `fer-automl predict`/`evaluate` know what the model expects.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fer_models.errors import UserError, UserPathError

log = logging.getLogger(__name__)

META_KEY = "fer_automl"
CONFIG_FILE = "model_config.json"
WEIGHTS_FILE = "model.pt"


class FERInference(nn.Module):
    """uint8 RGB images (N, H, W, 3) -> class probabilities (N, K).

    Same arithmetic as the eval pipeline's albumentations `Normalize(max_pixel_value=255)`:
    (x - 255 * mean) / (255 * std), in float32."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("offset", torch.tensor([255.0 * m for m in mean]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([1.0 / (255.0 * s) for s in std]).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        x = (x - self.offset) * self.scale
        return F.softmax(self.model(x).logits.float(), dim=1)


def read_model_config(artifacts_dir: Union[str, Path]) -> Dict[str, Any]:
    """The `model_config.json` a trial leaves beside its selected weights."""
    path = Path(artifacts_dir) / CONFIG_FILE
    if not path.is_file():
        raise UserPathError(f"{path}: no {CONFIG_FILE} (is {artifacts_dir} a trial's artifacts folder?)")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    for key in ("trial", "model", "classes", "normalization"):
        if key not in cfg:
            raise UserError(f"{path}: missing key {key!r}")
    return cfg


def build_inference_module(artifacts_dir: Union[str, Path]) -> tuple:
    """(FERInference in eval mode on CPU, metadata dict) from a trial's artifacts folder."""
    from fer_models import build_model
    from fer_models.config import ModelConfig
    from fer_models.pretrained import without_weights

    artifacts_dir = Path(artifacts_dir)
    cfg = read_model_config(artifacts_dir)
    weights = artifacts_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise UserPathError(f"{weights}: the trial's selected weights are missing")
    image_size = int(cfg["trial"]["data"]["image_size"])
    # the trial's own weights are loaded next: the timm pretrained ones need not (and offline cannot) be fetched
    model = build_model(without_weights(ModelConfig(**cfg["model"])), image_size=image_size)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.set_keep_attention_maps(False)
    norm = cfg["normalization"]
    module = FERInference(model, norm["mean"], norm["std"]).eval()
    meta = {
        "classes": list(cfg["classes"]),
        "pose_classes": list(cfg.get("pose_classes") or []),
        "image_size": image_size,
        "normalization": {"mean": list(norm["mean"]), "std": list(norm["std"])},
        "dataset": dict(cfg.get("dataset") or {}),
        "trial_config": cfg["trial"],
        "input": "uint8 RGB images, shape (N, image_size, image_size, 3)",
        "output": "class probabilities, shape (N, len(classes)), in the order of `classes`",
    }
    if cfg.get("imported"):  # promote --weights (runners.registry.imported): where the weights came from
        meta["imported"] = dict(cfg["imported"])
    return module, meta


def _signature(image_size: int, num_classes: int):
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, image_size, image_size, 3))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, num_classes))]))


def _example(image_size: int) -> np.ndarray:
    # batch of 2: torch.export specialises a batch dimension of 1 to a constant
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(2, image_size, image_size, 3), dtype=np.uint8)


class ModelExportError(UserError):
    """A model configuration that torch.export cannot trace: it cannot be logged (exit 2)."""


def _config_summary(model_cfg: Dict[str, Any]) -> str:
    """The fields of a model config that differ from `fer_models.ModelConfig`'s defaults, as JSON."""
    from fer_models.config import ModelConfig

    defaults = ModelConfig().model_dump()
    diff = {k: v for k, v in model_cfg.items() if defaults.get(k, object()) != v}
    return json.dumps(diff, sort_keys=True, default=str) if diff else "{} (all defaults)"


def export_inference_module(module: nn.Module, example: np.ndarray, *, where: str,
                            model_cfg: Optional[Dict[str, Any]] = None):
    """torch.export of the inference module (batch dimension dynamic); `ModelExportError` naming
    `where` (the config file), the config and torch.export's error when it does not trace."""
    try:
        return torch.export.export(module, (torch.from_numpy(example),), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    except Exception as exc:  # noqa: BLE001 - any failure means: this graph does not export
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        cfg = f" (model config: {_config_summary(model_cfg)})" if model_cfg is not None else ""
        raise ModelExportError(
            f"{where}: this model does not export with torch.export{cfg}: {type(exc).__name__}: {first}; "
            "fer-automl logs models only as exported graphs (pt2), which load with torch and mlflow alone") from None


def _requirements() -> List[str]:
    # explicit requirements: MLflow's inference of them imports the model and takes seconds
    from importlib import metadata

    reqs = []
    for pkg in ("torch", "mlflow", "numpy"):
        try:
            reqs.append(f"{pkg}=={metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            reqs.append(pkg)
    return reqs


def log_fer_model(artifacts_dir: Union[str, Path], *, name: str = "model", run_id: Optional[str] = None,
                  registered_model_name: Optional[str] = None):
    """Log a trial's selected weights as an MLflow model in the pt2 format (returns mlflow's ModelInfo).

    The model is exported here first, so a configuration that does not export (`ModelExportError`)
    leaves nothing half-logged in MLflow."""
    import mlflow

    module, meta = build_inference_module(artifacts_dir)
    size, k = meta["image_size"], len(meta["classes"])
    example = _example(size)
    export_inference_module(module, example, where=str(Path(artifacts_dir) / CONFIG_FILE),
                            model_cfg=read_model_config(artifacts_dir)["model"])
    meta["serialization"] = "pt2"
    common = dict(name=name, signature=_signature(size, k), input_example=example,
                  pip_requirements=_requirements(), registered_model_name=registered_model_name)
    if run_id is not None:
        common["run_id"] = run_id
    return mlflow.pytorch.log_model(module, serialization_format="pt2", metadata={META_KEY: meta}, **common)


# --- loading back ------------------------------------------------------------------------------

@dataclass
class FERPredictor:
    """A logged FER model loaded through pyfunc, with what it needs to be fed."""

    uri: str
    pyfunc: Any
    classes: List[str]
    image_size: int
    meta: Dict[str, Any]

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """One RGB uint8 image of any size -> (S, S, 3) uint8, resized with the datasets' resize
        (`runners.data.imageio.resize_to`), so a file gives the pixels a trial evaluated."""
        from runners.data.imageio import resize_to

        img = np.asarray(image)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        if img.ndim != 3 or img.shape[2] not in (3, 4):
            raise UserError(f"expected an RGB image (H, W, 3), got shape {img.shape}")
        img = img[..., :3]
        if img.dtype != np.uint8:
            raise UserError(f"expected uint8 pixels, got {img.dtype}")
        return np.ascontiguousarray(resize_to(img, (self.image_size, self.image_size)))

    def predict_proba(self, images: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        """Class probabilities (N, K) for RGB uint8 images of any size."""
        if len(images) == 0:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        out = []
        for i in range(0, len(images), batch_size):
            batch = np.stack([self.prepare(im) for im in images[i:i + batch_size]])
            out.append(np.asarray(self.pyfunc.predict(batch), dtype=np.float32))
        return np.concatenate(out, 0)


def load_fer_model(uri: str) -> FERPredictor:
    """Load a model that `log_fer_model` logged (any MLflow model URI: models:/name@alias, ...)."""
    import mlflow

    try:
        pyfunc = mlflow.pyfunc.load_model(uri)
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types for a bad URI
        raise UserError(f"cannot load the model {uri!r}: {exc}") from exc
    meta = (pyfunc.metadata.metadata or {}).get(META_KEY)
    if not meta:
        raise UserError(f"{uri!r} is not a fer-automl model (its MLmodel has no {META_KEY!r} metadata)")
    return FERPredictor(uri=uri, pyfunc=pyfunc, classes=list(meta["classes"]), image_size=int(meta["image_size"]),
                        meta=meta)
