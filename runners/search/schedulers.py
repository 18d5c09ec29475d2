"""The trial schedulers of a search, one registry entry each: `search.scheduler.type` -> a builder
of the Ray Tune scheduler.

asha, hyperband and fifo stop or run trials; pbt and pb2 (population-based training) also change
the hyperparameters of running trials: every `perturbation_interval` epochs the bottom
`quantile_fraction` of the population clones the checkpoint of a top trial and goes on with a
perturbed learning rate, weight decay and augmentation strength (the space's dimensions that target
`train.lr`, `train.weight_decay`, `data.aug_strength`). `runners.training.trial.run_trial`, resumed from the
cloned checkpoint with the new values, trains with them (not with the optimizer state's old ones).

Both run Ray Tune's schedulers (`PopulationBasedTraining`, `PB2`) unchanged; what is written here is
only what our config layout needs: the point sits under `config["point"]` (Ray's random and grid
generators; Tune refuses PBT beside a search algorithm such as OptunaSearch), and a perturbed value
must stay a valid value of its dimension (in its bounds, on its step), which Ray's multiplicative
perturbation does not promise.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping

from fer_models.errors import UserError

# the fields population-based training perturbs (issue 11): learning rate, weight decay, augmentation
PERTURBED_TARGETS = ("train.lr", "train.weight_decay", "data.aug_strength")
# synchronous PBT: the whole population is perturbed at the same epoch, so a trial that clones
# another takes a checkpoint of the very epoch it reached itself: its MLflow history goes on at the
# next epoch, none lost or logged twice (asynchronous PBT may clone a checkpoint a few epochs
# ahead or behind)
SYNCH = True
# PBT clones checkpoints of other trials: Ray warns that keeping 2 or fewer per trial can delete one
# before it is cloned
MIN_CHECKPOINTS_PBT = 3


def perturbed_dimensions(space) -> Dict[str, str]:
    """The dimensions pbt/pb2 perturb: name -> target, for the space's dimensions that target
    `PERTURBED_TARGETS` and hold in every point (a conditional dimension is missing from some
    points, where Ray's PBT could not perturb it)."""
    out = {}
    for name in space.order:
        target = space.targets.get(name)
        if target in PERTURBED_TARGETS and not space.dimensions[name].condition:
            out[name] = target
    return out


def check_population_space(space, kind: str) -> Dict[str, str]:
    """The dimensions a pbt/pb2 search perturbs; refused when there are none (nothing to perturb)
    or, for pb2, when one is a choice (PB2 models continuous ranges only)."""
    dims = perturbed_dimensions(space)
    if not dims:
        raise UserError(f"{space.where}: search.scheduler {kind!r} perturbs the dimensions that target "
                        f"{', '.join(PERTURBED_TARGETS)}, and this space has none (or only conditional ones): "
                        "make one of them a dimension, or use asha, hyperband or fifo")
    if kind == "pb2":
        choices = [n for n in dims if space.dimensions[n].type == "choice"]
        if choices:
            raise UserError(f"{space.where}: search.scheduler 'pb2' models continuous ranges only: dimension(s) "
                            f"{', '.join(choices)} are choices; make them float dimensions or use pbt")
    return dims


def fit_value(dim, value: Any) -> Any:
    """`value` moved to the nearest valid value of `dim`: into [low, high], onto its step, an int
    for an int dimension, the nearest listed value of a numeric choice."""
    if dim.type == "choice":
        if any(v == value for v in dim.values):
            return value
        numeric = [v for v in dim.values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return min(numeric, key=lambda v: abs(float(v) - float(value))) if numeric else dim.values[0]
    x = min(max(float(value), float(dim.low)), float(dim.high))
    if dim.step is not None:
        x = dim.low + round((x - dim.low) / dim.step) * dim.step
        x = min(max(x, dim.low), dim.high)
    if dim.type == "int":
        return int(round(x))
    return float(x)


def fit_point(space, point: Mapping[str, Any], names) -> Dict[str, Any]:
    """`point` with the values of `names` made valid values of their dimensions (`fit_value`)."""
    out = dict(point)
    for n in names:
        if n in out and out[n] is not None:
            out[n] = fit_value(space.dimensions[n], out[n])
    return out


class FitToSpace:
    """PBT's `custom_explore_fn`: keeps a perturbed point in its space (a learning rate x1.2 at the
    top of its range stays at the top). A class, not a closure: Tune pickles the scheduler with the
    search's state."""

    def __init__(self, space, names: List[str], key: str):
        self.dims = {n: space.dimensions[n] for n in names}
        self.key = key

    def __call__(self, config: Dict[str, Any]) -> Dict[str, Any]:
        point = config.get(self.key)
        if isinstance(point, dict):
            for n, dim in self.dims.items():
                if point.get(n) is not None:
                    point[n] = fit_value(dim, point[n])
        return config


def _mutation(dim):
    """How PBT perturbs one dimension: a list (a choice shifts to a neighbouring value) or a Tune
    domain (a float or int is scaled by 0.8 or 1.2, or drawn afresh from the domain)."""
    from ray import tune

    if dim.type == "choice":
        return list(dim.values)
    if dim.type == "int":
        return tune.lograndint(dim.low, dim.high + 1) if dim.log else tune.randint(dim.low, dim.high + 1)
    return tune.loguniform(dim.low, dim.high) if dim.log else tune.uniform(dim.low, dim.high)


# --- the schedulers (registered by name in search_spaces.spec.SCHEDULERS) ----------------------------

def asha(spec, space, max_epochs: int):
    from ray.tune.schedulers import ASHAScheduler

    s = spec.scheduler
    return ASHAScheduler(time_attr="training_iteration", max_t=s.max_t or max_epochs, grace_period=s.grace_period,
                         reduction_factor=s.reduction_factor, brackets=s.brackets)


def hyperband(spec, space, max_epochs: int):
    from ray.tune.schedulers import HyperBandScheduler

    s = spec.scheduler
    return HyperBandScheduler(time_attr="training_iteration", max_t=s.max_t or max_epochs,
                              reduction_factor=s.reduction_factor)


def fifo(spec, space, max_epochs: int):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def pbt(spec, space, max_epochs: int):
    from ray.tune.schedulers import PopulationBasedTraining

    from search_spaces import POINT_KEY

    s = spec.scheduler
    dims = check_population_space(space, "pbt")
    # time in our own `epoch` (restored with the checkpoint a trial clones), not Tune's iteration count
    return PopulationBasedTraining(
        time_attr="epoch", perturbation_interval=s.perturbation_interval, quantile_fraction=s.quantile_fraction,
        resample_probability=s.resample_probability,
        hyperparam_mutations={POINT_KEY: {n: _mutation(space.dimensions[n]) for n in dims}},
        custom_explore_fn=FitToSpace(space, list(dims), POINT_KEY), synch=SYNCH)


PB2_MISSING = ("search.scheduler 'pb2' needs scikit-learn (Ray Tune's PB2 fits its Gaussian process with it): "
               "pip install 'fer-automl[pb2]' (or scikit-learn), or use pbt")


def pb2_available() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def pb2(spec, space, max_epochs: int):
    if not pb2_available():
        raise UserError(f"{space.where}: {PB2_MISSING}")
    from ray.tune.schedulers.pb2 import PB2

    from search_spaces import POINT_KEY

    s = spec.scheduler
    dims = check_population_space(space, "pb2")
    # PB2 draws within [low, high] (a log range too: it models the value, not its log); the trainable
    # puts an int or stepped value back on its grid (`fit_point`)
    bounds = {n: [float(space.dimensions[n].low), float(space.dimensions[n].high)] for n in dims}
    return PB2(time_attr="epoch", perturbation_interval=s.perturbation_interval,
               quantile_fraction=s.quantile_fraction, hyperparam_bounds={POINT_KEY: bounds}, synch=SYNCH)


def build_scheduler(spec, space, max_epochs: int):
    """The Ray Tune scheduler `spec.scheduler` names (search_spaces.spec.SCHEDULERS: a function above)."""
    from search_spaces.spec import SCHEDULERS

    return SCHEDULERS[SCHEDULERS.checked(spec.scheduler.type)](spec, space, max_epochs)


def is_population(spec) -> bool:
    """Whether the search's scheduler perturbs running trials (pbt, pb2: meta population)."""
    from search_spaces.spec import is_population_scheduler

    return is_population_scheduler(spec.scheduler.type)


def population_checkpoints(spec) -> int:
    """The checkpoints kept per trial: `keep_checkpoints`, at least MIN_CHECKPOINTS_PBT under pbt/pb2."""
    return max(spec.keep_checkpoints, MIN_CHECKPOINTS_PBT) if is_population(spec) else spec.keep_checkpoints


def check_scheduler(spec, space) -> None:
    """What the scheduler needs of the space and of this machine, checked before anything is written."""
    if spec.scheduler.type == "pb2" and not pb2_available():
        raise UserError(f"{space.where}: {PB2_MISSING}")
    if is_population(spec):
        check_population_space(space, spec.scheduler.type)


TRIAL_EPOCHS_KEY = "trial_epochs"  # what a pbt/pb2 trial reports beside its epoch: its own train.epochs


def population_stopper():
    """A Tune stopper for pbt/pb2: a trial's last report (its own last epoch, or an infeasible
    point's only one) stops it before the scheduler sees it. Without it PBT may exploit on the last
    epoch: the trial would restart from another trial's final checkpoint with nothing left to train,
    and end holding that trial's weights."""
    from ray.tune.stopper import Stopper

    from runners.training.constraints import is_infeasible

    class LastEpoch(Stopper):
        def __call__(self, trial_id: str, result: Dict[str, Any]) -> bool:
            total = result.get(TRIAL_EPOCHS_KEY)
            return is_infeasible(result) or (total is not None and result.get("epoch", 0) >= total)

        def stop_all(self) -> bool:
            return False

    return LastEpoch()
