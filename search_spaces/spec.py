"""The `search:` section of a space file: the run settings of one search over that space.

`runners.search.driver` reads it (flags override it); it is validated with the space, so a typo in a
search setting fails when the file is loaded, not minutes into a search.
"""
from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, field_validator, model_validator

from fer_models.extension import Registry, registered_name

# What the trial reports every epoch (shared/DESIGN.md): the metric a search may optimise.
REPORTED_METRICS = ("val_balanced_accuracy", "val_accuracy", "val_macro_f1", "val_loss", "val_objective",
                    "train_loss", "pose_accuracy", "images_per_second")

# The metric each `second_objective` is reported under (every epoch, beside the metrics above).
SECOND_OBJECTIVE_METRICS = {"params": "params", "macs": "macs", "latency": "latency_ms"}


# Numbers are strict (`num_samples: true` or `"5"` is an error, not 1 or 5) and finite (no .nan, .inf).
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# Seeds go to numpy, Optuna and Python's random: 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1
# Most synthetic images a search generates (in memory, on the driver and in every trial).
MAX_SYNTHETIC_IMAGES = 200_000


def search_name_error(name: str) -> Optional[str]:
    """What is wrong with a search name, or None. The name is a folder under the storage path (and
    the MLflow experiment): it must be one path component, so that nothing is written outside it."""
    bad = [c for c in ("/", "\\", "\0") if c in name]
    if not name or not name.strip() or name in (".", "..") or bad:
        return (f"{name!r} is not a valid search name: it must be one folder name (not empty, not '.' or '..', "
                f"no '/', '\\' or NUL character){': it contains ' + ', '.join(map(repr, bad)) if bad else ''}")
    return None


def warm_start_source_error(entry: str) -> Optional[str]:
    """What is wrong with a `warm_start` entry (NAME or URI#NAME), or None."""
    name = entry.rsplit("#", 1)[1] if "#" in entry and "://" in entry.split("#", 1)[0] else entry
    why = search_name_error(name)
    return f"warm start source {entry!r}: {why}" if why else None


class DatasetSpec(_Strict):
    """Which data a search trains on (read by `runners.data`)."""

    format: str = Field(..., min_length=1, description="reader name: synthetic, or a dataset layout runners.data knows")
    path: Optional[str] = Field(None, description="dataset folder or file (not for synthetic)")
    image_size: Optional[StrictInt] = Field(
        None, ge=16, le=1024, description="size the reader stores images at (the trial resizes to data.image_size)")
    n: Optional[StrictInt] = Field(None, ge=14, le=MAX_SYNTHETIC_IMAGES, description="number of images (synthetic data only)")
    num_classes: Optional[StrictInt] = Field(
        None, ge=7, le=7, description="synthetic data: 7 (the synthetic faces have the 7 basic expressions)")
    pose: bool = Field(False, description="synthetic data: also generate head-pose labels")
    seed: StrictInt = Field(0, ge=0, le=MAX_SEED, description="split seed (synthetic data: also the generator's)")
    skip_corrupt: bool = Field(False, description="skip unreadable images (counted) instead of failing")

    @model_validator(mode="after")
    def _needs_path(self) -> "DatasetSpec":
        if self.format != "synthetic" and not self.path:
            raise ValueError(f"dataset format {self.format!r} needs a path")
        if self.format != "synthetic" and (self.n is not None or self.num_classes is not None or self.pose):
            raise ValueError("n, num_classes and pose apply to format 'synthetic' only")
        return self


# Ray Tune's trial schedulers and the search algorithms, by name. The implementations live in the
# search runner; here they are "module:function" strings, resolved on first use, so that this layer
# validates the names without importing Ray (fer_models.extension). A new one is a factory there
# plus one line here; `settings` are the SchedulerSpec fields it reads (any other is refused).
# meta population=True: the scheduler perturbs running trials' hyperparameters (Ray Tune refuses it
# beside a search algorithm such as Optuna's, so the population comes from Ray's own generator).
SCHEDULERS = Registry("scheduler", "search.scheduler.type")
SCHEDULERS.register("asha", "runners.search.schedulers:asha", population=False, doc="asynchronous successive halving",
                    settings={"grace_period": "", "max_t": "", "reduction_factor": "", "brackets": ""})
SCHEDULERS.register("hyperband", "runners.search.schedulers:hyperband", population=False, doc="HyperBand",
                    settings={"max_t": "", "reduction_factor": ""})
SCHEDULERS.register("fifo", "runners.search.schedulers:fifo", population=False, doc="every trial runs to the end")
SCHEDULERS.register("pbt", "runners.search.schedulers:pbt", population=True, doc="population-based training",
                    settings={"perturbation_interval": "", "quantile_fraction": "", "resample_probability": ""})
SCHEDULERS.register("pb2", "runners.search.schedulers:pb2", population=True, doc="PB2 (a GP-bandit PBT)",
                    settings={"perturbation_interval": "", "quantile_fraction": ""})
# meta learns: proposes from the figures of finished trials (warm start feeds it); population_ok:
# may run beside a population scheduler
ALGORITHMS = Registry("search algorithm", "search.algorithm")
ALGORITHMS.register("tpe", "runners.search.searchers:tpe_search", learns=True, population_ok=False,
                    doc="Optuna's TPE sampler")
ALGORITHMS.register("random", "runners.search.searchers:random_search", learns=False, population_ok=True,
                    doc="independent random points (Optuna's RandomSampler; Ray's generator under pbt/pb2)")
ALGORITHMS.register("grid", "runners.search.searchers:grid_search", learns=False, population_ok=True,
                    doc="every point of the grid (search.grid narrows it)")


def scheduler_fields(name: str) -> set:
    """The SchedulerSpec fields scheduler `name` takes (with `type`)."""
    return {"type", *SCHEDULERS.settings(name)}


def is_population_scheduler(name: str) -> bool:
    return bool(SCHEDULERS.meta(name, "population", False))


class SchedulerSpec(_Strict):
    """Trial scheduler of Ray Tune. Times are in epochs (one report per epoch)."""

    type: registered_name(SCHEDULERS) = "asha"
    grace_period: StrictInt = Field(1, ge=1, description="asha: epochs every trial runs before it can be stopped")
    max_t: Optional[StrictInt] = Field(None, ge=1, description="most epochs a trial runs; None: the largest epochs of the space")
    reduction_factor: StrictFloat = Field(3.0, gt=1.0)
    brackets: StrictInt = Field(1, ge=1, description="asha only")
    perturbation_interval: StrictInt = Field(
        2, ge=1, description="pbt, pb2: epochs between two exploit/explore steps of the population")
    quantile_fraction: StrictFloat = Field(
        0.25, ge=0.0, le=0.5, description="pbt, pb2: the bottom fraction of trials clones the top fraction")
    resample_probability: StrictFloat = Field(
        0.25, ge=0.0, le=1.0, description="pbt: chance a perturbed value is drawn afresh instead of scaled or shifted")

    @model_validator(mode="after")
    def _bounds(self) -> "SchedulerSpec":
        unused = sorted(self.model_fields_set - scheduler_fields(self.type))
        if unused:  # a setting the scheduler would ignore is an error, not a silent no-op
            raise ValueError(f"{', '.join(unused)}: not a setting of scheduler {self.type!r} (its settings: "
                             f"{', '.join(sorted(scheduler_fields(self.type) - {'type'})) or 'none'})")
        if self.max_t is not None and self.grace_period > self.max_t:
            raise ValueError(f"grace_period={self.grace_period} is larger than max_t={self.max_t}")
        return self


class ConstraintsSpec(_Strict):
    """Limits a trial's model must meet; a point that breaks one is rejected before any epoch is
    trained (`runners.training.constraints`). Each limit is measured on the built model: parameters,
    multiply-accumulates of one image at the trial's image size, batch-1 latency on the device the
    trial runs on."""

    max_params: Optional[StrictInt] = Field(None, gt=0, description="most trainable parameters")
    max_macs: Optional[StrictInt] = Field(None, gt=0, description="most multiply-accumulates of one image")
    max_latency_ms: Optional[StrictFloat] = Field(None, gt=0.0, description="most milliseconds per image at batch 1")

    @model_validator(mode="after")
    def _one_limit(self) -> "ConstraintsSpec":
        if self.max_params is None and self.max_macs is None and self.max_latency_ms is None:
            raise ValueError("give at least one of max_params, max_macs, max_latency_ms (or leave constraints out)")
        return self

    def limits(self) -> Dict[str, float]:
        """The limits given: {max_params: N, ...}."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class TPESpec(_Strict):
    """Settings of Optuna's TPESampler (algorithm tpe). Left out: Optuna's defaults."""

    n_startup_trials: Optional[StrictInt] = Field(
        None, ge=0, description="trials drawn at random before TPE models the results (Optuna: 10); presets and "
                                "warm-start trials count. A search of few trials wants fewer: with 8 trials and "
                                "the default, TPE never runs")
    multivariate: Optional[StrictBool] = Field(
        None, description="true: model the dimensions jointly, with group=True for the space's conditional "
                          "dimensions; false: one by one (Optuna 5's default: joint for one objective)")
    constant_liar: Optional[StrictBool] = Field(
        None, description="treat running trials as bad results, so that trials started together are not "
                          "proposed at the same spot (Optuna 5's default: on)")

    def sampler_kwargs(self) -> Dict[str, Any]:
        kw = {k: v for k, v in self.model_dump().items() if v is not None}
        if kw.get("multivariate"):
            kw["group"] = True  # the space is conditional: TPE models each group of co-occurring dims
        return kw


class ResourcesSpec(_Strict):
    """Logical resources per trial (Ray): fractional GPUs let several trials share one GPU."""

    cpu: StrictFloat = Field(1.0, gt=0.0)
    gpu: StrictFloat = Field(0.0, ge=0.0)

    @field_validator("gpu")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError(f"gpu={v}: fractions are allowed below 1 only (Ray needs whole GPUs above one)")
        return v


class RefitSpec(_Strict):
    """The refit stage of a search with `fidelity`: its best configurations trained again at full
    fidelity (all training data, the point's own train.epochs and image size), several seeds each."""

    top_k: StrictInt = Field(3, ge=1, description="the best distinct configurations of the search stage (by the "
                                                  "search metric) that are refit")
    seeds: StrictInt = Field(2, ge=1, le=100, description="seeds per refit configuration: train.seed = 0 .. seeds-1 "
                                                          "(replacing the point's own train.seed)")


class FidelitySpec(_Strict):
    """Reduced fidelity for the search stage, and the refit stage at full fidelity (issue 11)."""

    train_fraction: StrictFloat = Field(
        1.0, gt=0.0, le=1.0, description="(0, 1]: search-stage trials train on this stratified subset of the training "
                                         "split, seeded by search.dataset.seed (the same subset for every trial); "
                                         "validation and test untouched")
    image_size: Optional[StrictInt] = Field(
        None, ge=16, le=1024, description="search-stage trials train and validate at this input size instead of the "
                                          "point's data.image_size (the smallest size >= it where the point's model "
                                          "fits, when it does not fit at it)")
    refit: Optional[RefitSpec] = Field(None, description="the refit stage; none: the search stage only")


class SearchSpec(_Strict):
    """Run settings of one search (issue 5). Every key is checked; unknown keys are errors."""

    name: Optional[str] = Field(None, min_length=1, description="experiment name (MLflow experiment, Ray run); default: the space file's stem")
    presets: List[str] = Field(default_factory=list, description="presets of this space evaluated first")
    dataset: Optional[DatasetSpec] = None
    algorithm: registered_name(ALGORITHMS) = "tpe"
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    num_samples: StrictInt = Field(10, ge=1, description="trials (grid: repeats of the whole grid)")
    max_concurrent: Optional[StrictInt] = Field(None, ge=1, description="most trials running at once")
    time_budget_s: Optional[StrictFloat] = Field(None, gt=0, description="seconds; no new trial starts after it")
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
    max_failures: StrictInt = Field(1, ge=0, description="retries of a failed trial from its checkpoint")
    keep_checkpoints: StrictInt = Field(1, ge=1, description="checkpoints kept per trial in the storage, latest first "
                                                             "(each holds the latest state and the best weights)")
    seed: Optional[StrictInt] = Field(None, ge=0, le=MAX_SEED, description="seed of the search algorithm")
    fidelity: Optional[FidelitySpec] = Field(
        None, description="two-stage search: trials at reduced fidelity (train_fraction, image_size), then the "
                          "top_k configurations refit at full fidelity with several seeds (refit:)")
    outage_timeout_s: float = Field(
        300.0, gt=0, allow_inf_nan=False,
        description="seconds a search waits for an unreachable tracking server (keeping its writes in memory) "
                    "before it stops (exit 7; --resume completes it)")
    warm_start: List[str] = Field(default_factory=list, description="earlier searches whose trials seed the tpe "
                                                                    "sampler: NAME (same MLflow store) or URI#NAME")

    @field_validator("warm_start")
    @classmethod
    def _warm_sources(cls, v: List[str]) -> List[str]:
        for entry in v:
            why = warm_start_source_error(entry)
            if why:
                raise ValueError(why)
        return v

    @model_validator(mode="after")
    def _warm_start_tpe(self) -> "SearchSpec":
        if self.warm_start and not ALGORITHMS.meta(self.algorithm, "learns"):
            learners = ", ".join(ALGORITHMS.where("learns"))
            raise ValueError(f"warm_start {self.warm_start}: warm start seeds the search algorithm with past trials; "
                             f"algorithm {self.algorithm!r} does not learn from them (random draws each point "
                             f"independently, grid enumerates a fixed list): use algorithm: {learners}")
        return self
    constraints: Optional[ConstraintsSpec] = Field(
        None, description="max_params, max_macs, max_latency_ms: points that break one are not trained")
    tpe: Optional[TPESpec] = Field(None, description="Optuna TPESampler settings (algorithm tpe only): "
                                                     "n_startup_trials, multivariate, constant_liar")

    @model_validator(mode="after")
    def _tpe_only(self) -> "SearchSpec":
        if self.tpe is not None and self.algorithm != "tpe":
            raise ValueError(f"tpe: {self.tpe.model_dump(exclude_none=True)} sets Optuna's TPE sampler, but "
                             f"algorithm is {self.algorithm!r}; use algorithm: tpe or remove the tpe section")
        return self

    @field_validator("name")
    @classmethod
    def _one_folder(cls, v: Optional[str]) -> Optional[str]:
        why = search_name_error(v) if v is not None else None
        if why:
            raise ValueError(why)
        return v

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
        refit = self.fidelity.refit if self.fidelity is not None else None
        if refit is not None and self.algorithm != "grid" and refit.top_k > self.num_samples:
            # a grid's trials are counted with the space (runners.search.driver checks it)
            raise ValueError(f"fidelity.refit.top_k={refit.top_k} is larger than num_samples={self.num_samples}, "
                             "the trials the search stage runs")
        if is_population_scheduler(self.scheduler.type) and not ALGORITHMS.meta(self.algorithm, "population_ok"):
            ok = " or ".join(ALGORITHMS.where("population_ok"))
            raise ValueError(f"scheduler {self.scheduler.type!r} needs algorithm: {ok} (Ray Tune runs "
                             "population-based training beside no search algorithm such as tpe: it perturbs "
                             "its own population)")
        return self

    @property
    def second_metric(self) -> Optional[str]:
        """The reported metric of the second objective (`params`, `macs`, `latency_ms`), or None."""
        return SECOND_OBJECTIVE_METRICS[self.second_objective] if self.second_objective else None
