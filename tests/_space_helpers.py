"""Helpers shared by the search-space tests: cheap model builds with a cache, point repair."""
from __future__ import annotations

import copy
import functools
import json
import random

import torch

from fer_models import ModelConfig, build_model
from fer_models.cost import count_params
from search_spaces import TrialConfig, smallest_image_size
from search_spaces.samplers import _draw

BACKBONE_COST = {"resnet18": 1, "resnet34": 2, "efficientnet_b0": 2, "mobilenetv3_large_100": 2, "resnet50": 6,
                 # the compact ones (issue 11, item 8): under a second to build and run
                 "resnet10t": 0.5, "mobilenetv3_small_100": 0.5, "mobilenetv3_small_050": 0.5, "lcnet_100": 0.5,
                 "lcnet_075": 0.5, "lcnet_050": 0.5, "ghostnet_100": 0.5, "ghostnet_050": 0.5, "fercnn": 0.5}


def cost(point: dict) -> float:
    """Rough build+forward cost of a unified.yaml point (to keep the tests fast)."""
    c = BACKBONE_COST.get(point.get("backbone", "resnet18"), 1)
    c += point.get("num_patches", 0) / 8 + (3 if point.get("local_kind") == "deep" else 0)
    c += (2 if point.get("global_branch") == "multiscale" else 0) + (1 if point.get("split_stage") == 1 else 0)
    return c


@functools.lru_cache(maxsize=256)
def _built(model_json: str, size: int, train_mode: bool):
    cfg = ModelConfig.model_validate_json(model_json)
    torch.manual_seed(0)
    model = build_model(cfg, image_size=size)
    model.train(train_mode)
    torch.manual_seed(1)
    x = torch.randn(2, cfg.in_chans, size, size)
    with torch.no_grad():
        out = model(x)
    shapes = tuple(sorted((k, tuple(v.shape)) for k, v in model.state_dict().items()))
    from fer_models.losses import build_loss

    weights = build_loss(model, "fixed").weighting.fixed
    return {"params": count_params(model), "shapes": shapes, "logits": out.logits.clone(),
            "branches": tuple(out.branch_logits), "pose": None if out.pose_logits is None else tuple(out.pose_logits.shape),
            "loss_weights": tuple(sorted(weights.items()))}


def build_tiny(cfg: TrialConfig, at_least: int = 32, train_mode: bool = False) -> dict:
    """Build the model of a config at the smallest input >= at_least that it fits, run a forward
    pass of batch 2; cached by (model config, size)."""
    size = smallest_image_size(cfg, at_least=at_least)
    return _built(cfg.model.model_dump_json(), size, train_mode)


def repair(space, point: dict, rng: random.Random) -> dict:
    """Re-decide a point after one value changed: keep what is still active, draw what became active."""
    out = {}
    for n in space.order:
        if space.is_active(n, out):
            out[n] = point[n] if n in point else _draw(space.dimensions[n], rng)
    return out


def key(cfg: TrialConfig) -> str:
    return json.dumps(cfg.model_dump(), sort_keys=True)


# The backbone of the end-to-end search tests: a real timm backbone the builders support, ~1 M
# parameters, so a search's checkpoints and logged weights stay small (a ResNet-18 checkpoint with
# its AdamW state is ~180 MB: a suite of searches filled a CI disk) and trials train fast.
SEARCH_TEST_BACKBONE = "mobilenetv3_small_100"


# The space of the end-to-end search tests: attention x local patches x lr, 2 epochs at 32 px on
# 210 synthetic faces, tpe + asha, 4 trials 2 at a time. `search_test_space(**search)` gives a copy
# with its `search:` section updated.
SEARCH_TEST_SPACE = {
    "dimensions": {
        "attention": {"type": "choice", "values": ["none", "se", "cbam"]},
        "num_patches": {"type": "choice", "values": [0, 4]},
        "local_aggregation": {"type": "choice", "values": ["max", "mean"], "condition": {"num_patches": [4]}},
        "lr": {"type": "float", "low": 1e-3, "high": 2e-2, "log": True},
    },
    "constants": {"model.backbone": SEARCH_TEST_BACKBONE, "train.epochs": 2, "train.batch_size": 32,
                  "data.image_size": 32, "train.optimizer": "adamw"},
    "presets": {"plain": {"attention": "none", "num_patches": 0, "lr": 0.005}},
    "search": {
        "name": "it-search", "presets": ["plain"],
        "dataset": {"format": "synthetic", "n": 210, "image_size": 32},
        "algorithm": "tpe", "scheduler": {"type": "asha", "grace_period": 1, "max_t": 2, "reduction_factor": 2},
        "num_samples": 4, "max_concurrent": 2, "resources": {"cpu": 1, "gpu": 0}, "max_failures": 0, "seed": 1,
    },
}


def search_test_space(**search) -> dict:
    """A deep copy of SEARCH_TEST_SPACE with `search` merged into its `search:` section."""
    d = copy.deepcopy(SEARCH_TEST_SPACE)
    d["search"].update(search)
    return d


def first_conv_key(state_dict) -> str:
    """The first convolution's weight in a model's state dict (to plant NaNs in, whatever the backbone)."""
    return next(k for k, v in state_dict.items() if k.endswith("weight") and v.dim() == 4)
