"""Shared FER model builders. Knows nothing of Ray, MLflow or the runners."""
from .attention import ATTENTION_REGISTRY, make_attention
from .config import ModelConfig
from .errors import UserError, UserPathError
from .model import FERNet, FEROutput, build_model, load_pretrained
from .presets import PRESETS, preset_config

__all__ = ["ATTENTION_REGISTRY", "FERNet", "FEROutput", "ModelConfig", "PRESETS", "UserError", "UserPathError", "build_model",
           "load_pretrained", "make_attention", "preset_config"]
