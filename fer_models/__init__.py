"""Shared FER model builders. Knows nothing of Ray, MLflow or the runners.

The names below are imported on first use (PEP 562), so that `fer_models.errors` (the user-error
family every layer raises) costs no torch/timm import: the CLI's `--help` and argparse's usage
errors stay instant.
"""
from __future__ import annotations

import importlib
from typing import Any, List

from .errors import UserError, UserPathError

_LAZY = {
    "ATTENTION_REGISTRY": ".attention", "make_attention": ".attention",
    "ModelConfig": ".config",
    "FERNet": ".model", "FEROutput": ".model", "build_model": ".model", "load_pretrained": ".model",
    "PRESETS": ".presets", "preset_config": ".presets",
}

__all__ = ["ATTENTION_REGISTRY", "FERNet", "FEROutput", "ModelConfig", "PRESETS", "UserError", "UserPathError",
           "build_model", "load_pretrained", "make_attention", "preset_config"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))
