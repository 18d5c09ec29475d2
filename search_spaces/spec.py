"""The `search:` section of a space file: the run settings of one search over that space.

`runners.search` reads it (flags override it); it is validated with the space, so a typo in a
search setting fails when the file is loaded, not minutes into a search.
"""
from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# What the trial reports every epoch (shared/DESIGN.md): the metric a search may optimise.
REPORTED_METRICS = ("val_balanced_accuracy", "val_accuracy", "val_macro_f1", "val_loss", "val_objective",
                    "train_loss", "pose_accuracy", "images_per_second")

# The metric each `second_objective` is reported under (every epoch, beside the metrics above).
SECOND_OBJECTIVE_METRICS = {"params": "params", "macs": "macs", "latency": "latency_ms"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSpec(_Strict):
    """Which data a search trains on (read by `runners.data`)."""

    format: str = Field(..., min_length=1, description="reader name: synthetic, or a dataset layout runners.data knows")
    path: Optional[str] = Field(None, description="dataset folder or file (not for synthetic)")
    image_size: Optional[int] = Field(
        None, ge=16, le=1024, description="size the reader stores images at (the trial resizes to data.image_size)")
    n: Optional[int] = Field(None, ge=14, description="number of images (synthetic data only)")
    num_classes: Optional[int] = Field(None, ge=2, le=8, description="synthetic data: 7 or 8 (with contempt)")
    pose: bool = Field(False, description="synthetic data: also generate head-pose labels")
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _needs_path(self) -> "DatasetSpec":
        if self.format != "synthetic" and not self.path:
            raise ValueError(f"dataset format {self.format!r} needs a path")
        if self.format != "synthetic" and (self.n is not None or self.num_classes is not None or self.pose):
            raise ValueError("n, num_classes and pose apply to format 'synthetic' only")
        return self


class SchedulerSpec(_Strict):
    """Trial scheduler of Ray Tune. Times are in epochs (one report per epoch)."""

    type: Literal["asha", "hyperband", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1, description="asha: epochs every trial runs before it can be stopped")
    max_t: Optional[int] = Field(None, ge=1, description="most epochs a trial runs; None: the largest epochs of the space")
    reduction_factor: float = Field(3.0, gt=1.0)
    brackets: int = Field(1, ge=1, description="asha only")

    @model_validator(mode="after")
    def _bounds(self) -> "SchedulerSpec":
        if self.max_t is not None and self.grace_period > self.max_t:
            raise ValueError(f"grace_period={self.grace_period} is larger than max_t={self.max_t}")
        return self


class ResourcesSpec(_Strict):
    """Logical resources per trial (Ray): fractional GPUs let several trials share one GPU."""

    cpu: float = Field(1.0, gt=0.0)
    gpu: float = Field(0.0, ge=0.0)

    @field_validator("gpu")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError(f"gpu={v}: fractions are allowed below 1 only (Ray needs whole GPUs above one)")
        return v


class SearchSpec(_Strict):
    """Run settings of one search (issue 5). Every key is checked; unknown keys are errors."""

    name: Optional[str] = Field(None, min_length=1, description="experiment name (MLflow experiment, Ray run); default: the space file's stem")
    presets: List[str] = Field(default_factory=list, description="presets of this space evaluated first")
    dataset: Optional[DatasetSpec] = None
    algorithm: Literal["tpe", "random", "grid"] = "tpe"
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    num_samples: int = Field(10, ge=1, description="trials (grid: repeats of the whole grid)")
    max_concurrent: Optional[int] = Field(None, ge=1)
    time_budget_s: Optional[float] = Field(None, gt=0)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    metric: str = "val_balanced_accuracy"
    mode: Optional[Literal["max", "min"]] = Field(None, description="default: min for losses (and val_objective), max otherwise")
    second_objective: Optional[Literal["params", "macs", "latency"]] = Field(
        None, description="minimised beside the metric: a multi-objective search with a Pareto front")
    grid: Dict[str, List[Any]] = Field(
        default_factory=dict, description="algorithm grid: the values to try per dimension (float dimensions "
                                          "not listed are fixed at their midpoint; a list may narrow a choice)")
    storage_path: Optional[str] = None
    address: Optional[str] = Field(None, description="Ray: none = a local Ray; 'auto' or ray://host:port = that cluster")
    tracking_uri: Optional[str] = None
    max_failures: int = Field(1, ge=0, description="retries of a failed trial from its checkpoint")
    keep_checkpoints: int = Field(1, ge=1, description="checkpoints kept per trial in the storage, latest first "
                                                       "(each holds the latest state and the best weights)")
    seed: Optional[int] = Field(None, ge=0, description="seed of the search algorithm")

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_shorthand(cls, v):
        return {"type": v} if isinstance(v, str) else v

    @field_validator("metric")
    @classmethod
    def _reported(cls, v: str) -> str:
        if v not in REPORTED_METRICS:
            raise ValueError(f"metric {v!r} is not reported by trials; valid: {', '.join(REPORTED_METRICS)}")
        return v

    @model_validator(mode="after")
    def _default_mode(self) -> "SearchSpec":
        if self.mode is None:
            self.mode = "min" if self.metric.endswith(("loss", "objective")) else "max"
        if self.grid and self.algorithm != "grid":
            raise ValueError(f"grid: values per dimension apply to algorithm: grid only (algorithm is {self.algorithm!r})")
        return self

    @property
    def second_metric(self) -> Optional[str]:
        """The reported metric of the second objective (`params`, `macs`, `latency_ms`), or None."""
        return SECOND_OBJECTIVE_METRICS[self.second_objective] if self.second_objective else None
