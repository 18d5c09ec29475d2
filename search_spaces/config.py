"""The typed configuration of one trial: model part + training part + data part.

A point of a search space validates into one `TrialConfig` (see `search_spaces.space`); the
model builder takes `config.model` as it is (`fer_models.build_model(config.model)`), the
trainer takes `config.train` and `config.data`. Unknown keys are errors everywhere.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fer_models import ModelConfig
from fer_models.errors import UserError
from fer_models.extension import registered_name
from fer_models.losses import WEIGHTINGS
from fer_models.optim import LR_SCHEDULES, OPTIMIZERS

SECTIONS = ("model", "train", "data")


class TrainConfig(BaseModel):
    """How one trial trains. Every field is read by the trainer (runners.training.trial)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # optimizer, schedule, loss_weighting: names of the registries in fer_models.optim and fer_models.losses
    optimizer: registered_name(OPTIMIZERS) = Field("adamw", description="sgd: SGD with (Nesterov-free) momentum; adamw: AdamW")
    lr: float = Field(1e-3, gt=0.0, le=10.0, description="base learning rate (heads and new modules)")
    backbone_lr_mult: float = Field(
        1.0, ge=0.0, le=10.0, description="backbone learning rate = lr * this (SCAN-CCI: 0.01); 0 freezes the backbone")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum (sgd only)")
    weight_decay: float = Field(1e-4, ge=0.0, le=1.0)
    batch_size: int = Field(64, ge=1, le=4096)
    epochs: int = Field(30, ge=1, le=1000)
    schedule: registered_name(LR_SCHEDULES) = Field(
        "cosine", description="cosine: to 0 over the epochs after warmup; step: x gamma every step_size epochs; "
                              "exp: x gamma every epoch; constant")
    step_size: int = Field(10, ge=1, description="epochs between decays (schedule=step)")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="decay factor (schedule=step: per step; exp: per epoch)")
    warmup_epochs: int = Field(0, ge=0, description="linear warmup from lr/10 over these epochs")
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    loss_weighting: registered_name(WEIGHTINGS) = Field(
        "fixed", description="how branch losses are combined (fer_models.losses): the model's fixed branch weights, "
                             "learned uncertainty weights, or dynamic weight averaging")
    dwa_temperature: float = Field(2.0, gt=0.0, description="temperature of dynamic weight averaging (dwa only)")
    class_balance: Literal["none", "resample", "reweight"] = Field(
        "none", description="resample: class-balanced sampler; reweight: inverse-frequency class weights in the loss")
    grad_clip: float = Field(0.0, ge=0.0, description="max gradient norm; 0 = no clipping")
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.warmup_epochs >= self.epochs:
            raise UserError(f"warmup_epochs={self.warmup_epochs} must be less than epochs={self.epochs}")
        return self


class DataConfig(BaseModel):
    """How one trial sees its data. The dataset itself, its splits and the loader settings belong
    to the search spec (`search.dataset`) and the runner, not to a point."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    image_size: int = Field(112, ge=16, le=1024, description="square input size the trial trains and evaluates at")
    aug_strength: float = Field(
        0.5, ge=0.0, le=1.0, description="0 = no augmentation; 1 = the strongest random crop / colour jitter / erasing")


class TrialConfig(BaseModel):
    """Everything one trial needs: `model` goes to `fer_models.build_model`, `train`/`data` to the trainer."""

    model_config = ConfigDict(extra="forbid")

    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    data: DataConfig = Field(default_factory=DataConfig)


SECTION_CLASSES = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}
