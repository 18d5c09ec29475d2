"""Optimizers and learning-rate schedules of a trial: one registry each, so that a new one is one
factory plus one `register` line and `train.optimizer` / `train.schedule` accept it. The train
config fields an entry reads are declared with it (`settings=`).

An optimizer factory takes (parameter groups, train config) and returns a torch optimizer; a
schedule factory takes (epoch after warmup, epochs after warmup, train config) and returns the
multiplier of the base learning rate. The factories are torch's own optimizers, configured; the
schedules are one line each (a LambdaLR over them keeps warmup, resume and population-based
perturbation in one place: runners.training.trial).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List

import torch

from .extension import Registry

OPTIMIZERS = Registry("optimizer", "train.optimizer")
LR_SCHEDULES = Registry("learning-rate schedule", "train.schedule")


def _sgd(groups: List[Dict[str, Any]], train) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay,
                           nesterov=False)


def _adamw(groups: List[Dict[str, Any]], train) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=train.lr, weight_decay=train.weight_decay)


OPTIMIZERS.register("adamw", _adamw, doc="AdamW")
OPTIMIZERS.register("sgd", _sgd, settings={"momentum": "SGD momentum"}, doc="SGD with (Nesterov-free) momentum")


def _cosine(e: int, total: int, train) -> float:
    return 0.5 * (1 + math.cos(math.pi * e / total))


def _step(e: int, total: int, train) -> float:
    return train.gamma ** (e // max(int(train.step_size), 1))


def _exp(e: int, total: int, train) -> float:
    return train.gamma ** e


def _constant(e: int, total: int, train) -> float:
    return 1.0


LR_SCHEDULES.register("cosine", _cosine, doc="to 0 over the epochs after warmup")
LR_SCHEDULES.register("step", _step, settings={"step_size": "epochs between decays", "gamma": "decay factor per step"},
                      doc="x gamma every step_size epochs")
LR_SCHEDULES.register("exp", _exp, settings={"gamma": "decay factor per epoch"}, doc="x gamma every epoch")
LR_SCHEDULES.register("constant", _constant, doc="constant")


def build_optimizer(groups: List[Dict[str, Any]], train) -> torch.optim.Optimizer:
    return OPTIMIZERS[OPTIMIZERS.checked(train.optimizer)](groups, train)


def lr_factor(epoch: int, train) -> float:
    """Multiplier of the base learning rate for `epoch` (0-based): linear warmup from lr/10, then
    the schedule."""
    warm = int(train.warmup_epochs)
    if epoch < warm:
        return 0.1 + 0.9 * epoch / warm
    e, total = epoch - warm, max(int(train.epochs) - warm, 1)
    return float(LR_SCHEDULES[LR_SCHEDULES.checked(train.schedule)](e, total, train))
