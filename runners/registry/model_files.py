"""A model config from a preset name or a file, and the bounds of the sizes a model is built at:
what `fer-automl models` and the import of official weights (runners.registry.imported) share."""
from __future__ import annotations

# bounds of the describe flags: the sizes a trial trains at (data.image_size) and the classes a
# model config allows; beyond them a typo would allocate gigabytes before saying anything
IMAGE_SIZE_RANGE = (16, 1024)
NUM_CLASSES_RANGE = (2, 1000)


def check_range(flag: str, value: int, bounds: tuple) -> None:
    from fer_models.errors import UserError

    lo, hi = bounds
    if not lo <= value <= hi:
        raise UserError(f"{flag} must be in {lo}..{hi}, got {value}")


def load_model_config(name: str, num_classes: int):
    from pathlib import Path

    from pydantic import ValidationError

    from fer_models import PRESETS, ModelConfig, preset_config
    from fer_models.errors import UserError, UserPathError, user_error_from_validation
    from search_spaces.yamlio import load_yaml

    if name in PRESETS:
        return preset_config(name, num_classes=num_classes)
    path = Path(name)
    if not name or not path.exists():
        raise UserPathError(f"{name!r} is neither a preset ({', '.join(PRESETS)}) nor a model-config file")
    data = load_yaml(path, what="model-config file")
    nested = isinstance(data, dict) and "model" in data
    if nested:  # a trial config (model/train/data sections): its model section
        extra = sorted(str(k) for k in data if k not in ("model", "train", "data"))
        if extra:
            raise UserError(f"{path}: unknown top-level key(s) {', '.join(map(repr, extra))} beside 'model' "
                            "(a model config is either the model's keys, or a 'model:' section)")
        data = data["model"]
    where = f"{path}: model" if nested else str(path)
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"{type(data).__name__} {data!r:.60}"
        raise UserError(f"{where}: expected a mapping of model-config keys (backbone, attention, num_patches, "
                        f"...), got {got}")
    data = {"num_classes": num_classes, **data}
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise user_error_from_validation(exc, source=str(path), prefix="model." if nested else "",
                                         known=ModelConfig.model_fields) from None
