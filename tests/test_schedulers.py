"""Population-based training (issue 11, item 2): a trial resumed with other hyperparameters trains
with them; the scheduler registry; a real PBT search on a local Ray, tracked in MLflow."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import yaml

from _space_helpers import SEARCH_TEST_BACKBONE, search_test_space
from conftest import search_runs
from fer_models import ModelConfig
from fer_models.errors import UserError
from runners.training.trial import STATE_FILE, DataSpec, lr_factor, run_trial
from search_spaces import DataConfig, TrainConfig, TrialConfig


def _cfg(lr: float, weight_decay: float, aug: float = 0.2, schedule: str = "cosine", epochs: int = 4) -> TrialConfig:
    return TrialConfig(model=ModelConfig(backbone=SEARCH_TEST_BACKBONE),
                       train=TrainConfig(epochs=epochs, batch_size=32, lr=lr, weight_decay=weight_decay,
                                         optimizer="adamw", schedule=schedule, backbone_lr_mult=0.5),
                       data=DataConfig(image_size=32, aug_strength=aug))


@pytest.fixture(scope="module")
def synth():
    return DataSpec(format="synthetic", options={"n": 140, "size": 32}, seed=5).load(32)


def test_a_trial_resumed_with_another_lr_and_weight_decay_trains_with_them(synth, tmp_path):
    """PBT resumes a trial from a checkpoint with a perturbed lr and weight decay: the optimizer and
    LR-schedule state loaded from the checkpoint must not bring the old values back."""
    class Stop(Exception):
        pass

    ckpts = []

    def stop_after_first(m, c):
        ckpts.append(c)
        raise Stop

    old = _cfg(lr=1e-3, weight_decay=1e-4)
    with pytest.raises(Stop):
        run_trial(old, synth, out_dir=tmp_path / "a", report=stop_after_first)
    new = _cfg(lr=4e-3, weight_decay=3e-2)
    reports = []

    def stop_after_second(m, c):  # read now: the trial keeps its latest checkpoint only
        reports.append((m, torch.load(c / STATE_FILE, weights_only=False)))
        raise Stop

    with pytest.raises(Stop):
        run_trial(new, synth, out_dir=tmp_path / "b", resume_from=ckpts[0], report=stop_after_second)
    assert [m["epoch"] for m, _ in reports] == [2]
    # the lr reported after epoch 2 is the one the schedule gives the next epoch: the new base, cosine-scaled
    assert reports[0][0]["lr"] == pytest.approx(4e-3 * lr_factor(2, new.train), rel=1e-9)
    state = reports[0][1]
    groups = {g["name"]: g for g in state["optimizer"]["param_groups"]}
    assert groups["heads"]["initial_lr"] == pytest.approx(4e-3)
    assert groups["backbone"]["initial_lr"] == pytest.approx(2e-3)  # lr * backbone_lr_mult
    assert groups["heads"]["lr"] == pytest.approx(4e-3 * lr_factor(2, new.train))
    assert all(g["weight_decay"] == pytest.approx(3e-2) for g in groups.values())
    assert state["scheduler"]["base_lrs"] == pytest.approx([2e-3, 4e-3])


# --- the registry and its checks -------------------------------------------------------------------

def _space_obj(tmp: Path, dims: dict, **search):
    from search_spaces import load_space

    d = search_test_space(**search)
    d["dimensions"] = dims
    d["presets"] = {}
    d["search"]["presets"] = []
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(d))
    return load_space(str(path))


def test_the_registry_has_one_entry_per_scheduler():
    import runners.search.schedulers as rs
    from search_spaces.spec import SCHEDULERS, is_population_scheduler, scheduler_fields

    assert list(SCHEDULERS) == ["asha", "hyperband", "fifo", "pbt", "pb2"]
    for name in SCHEDULERS:  # each lazy "module:function" entry resolves to the factory in the runner
        assert SCHEDULERS[name] is getattr(rs, name)
        assert "type" in scheduler_fields(name)
    assert [n for n in SCHEDULERS if is_population_scheduler(n)] == ["pbt", "pb2"]


def test_pbt_perturbs_lr_weight_decay_and_aug_strength_and_keeps_them_in_their_space(tmp_path):
    from ray.tune.schedulers import PopulationBasedTraining

    from runners.search.schedulers import build_scheduler, perturbed_dimensions

    dims = {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "weight_decay": {"type": "choice", "values": [0.0, 1e-4, 1e-3]},
            "aug_strength": {"type": "float", "low": 0.0, "high": 0.6, "step": 0.1},
            "attention": {"type": "choice", "values": ["none", "se"]}}
    space = _space_obj(tmp_path, dims, algorithm="random", scheduler={"type": "pbt", "perturbation_interval": 1})
    assert perturbed_dimensions(space) == {"lr": "train.lr", "weight_decay": "train.weight_decay",
                                           "aug_strength": "data.aug_strength"}
    sched = build_scheduler(space.search, space, 2)
    assert isinstance(sched, PopulationBasedTraining)
    # a value pushed past its range comes back to it, onto the dimension's step; a choice stays a choice
    explore = sched._custom_explore_fn
    out = explore({"point": {"lr": 1e-2 * 1.2, "aug_strength": 0.2 * 1.2 + 0.5, "weight_decay": 1e-4,
                             "attention": "se"}})
    assert out["point"] == {"lr": 1e-2, "aug_strength": 0.6, "weight_decay": 1e-4, "attention": "se"}
    out = explore({"point": {"lr": 1e-3 * 0.8, "aug_strength": 0.24, "weight_decay": 1e-3, "attention": "none"}})
    assert out["point"]["lr"] == 1e-3 and out["point"]["aug_strength"] == pytest.approx(0.2)
    space.validate({k: v for k, v in out["point"].items()})


def test_pbt_on_a_space_with_nothing_to_perturb_is_refused(tmp_path):
    from runners.search.schedulers import check_scheduler

    space = _space_obj(tmp_path, {"attention": {"type": "choice", "values": ["none", "se"]}},
                       algorithm="random", scheduler="pbt")
    with pytest.raises(UserError, match="perturbs the dimensions that target train.lr"):
        check_scheduler(space.search, space)


def test_pb2_is_built_when_scikit_learn_is_there(tmp_path):
    pytest.importorskip("sklearn", reason="PB2 needs scikit-learn (pip install 'fer-automl[pb2]')")
    from ray.tune.schedulers.pb2 import PB2

    from runners.search.schedulers import build_scheduler, check_scheduler

    dims = {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
    space = _space_obj(tmp_path, dims, algorithm="random", scheduler={"type": "pb2", "perturbation_interval": 1})
    check_scheduler(space.search, space)
    sched = build_scheduler(space.search, space, 2)
    assert isinstance(sched, PB2)
    assert sched._hyperparam_bounds == {"point": {"lr": [1e-3, 1e-2]}}
    choice = _space_obj(tmp_path, {"lr": {"type": "choice", "values": [1e-3, 1e-2]}}, algorithm="random",
                        scheduler="pb2")
    with pytest.raises(UserError, match="pb2' models continuous ranges only"):
        check_scheduler(choice.search, choice)


def test_fit_point_puts_pb2_values_back_on_the_grid(tmp_path):
    from runners.search.schedulers import fit_point

    dims = {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "aug_strength": {"type": "float", "low": 0.0, "high": 0.6, "step": 0.2}}
    space = _space_obj(tmp_path, dims)
    assert fit_point(space, {"lr": 0.02, "aug_strength": 0.33}, ["lr", "aug_strength"]) == {
        "lr": 1e-2, "aug_strength": pytest.approx(0.4)}


# --- a real PBT search -----------------------------------------------------------------------------

def _pbt_space(tmp: Path, name: str) -> Path:
    """2 trials of 2 epochs, lr perturbed every epoch: the worse half clones the better after epoch 1
    (the last epoch's report stops a trial before PBT sees it: runners.search.schedulers.population_stopper)."""
    d = search_test_space(name=name, presets=[], algorithm="random", num_samples=2, max_concurrent=2, seed=3,
                          scheduler={"type": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5,
                                     "resample_probability": 0.0})
    d["dimensions"] = {"lr": {"type": "float", "low": 1e-3, "high": 2e-2, "log": True}}
    d["presets"] = {}
    d["constants"] = {**d["constants"], "train.epochs": 2, "train.schedule": "constant", "model.attention": "none"}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.fixture(scope="module")
def pbt_search(module_tmp):
    import ray

    from runners.search.driver import run_search

    tmp = module_tmp("pbt-search")
    uri = f"sqlite:///{tmp}/mlflow.db"
    old = os.getcwd()
    os.chdir(tmp)
    try:
        t0 = time.time()
        res = run_search(str(_pbt_space(tmp, "pbt-it")), storage_path=str(tmp / "ray"), tracking_uri=uri, verbose=0)
        print(f"\nPBT search of 2 trials x 2 epochs: {time.time() - t0:.1f} s")
        yield {"tmp": tmp, "uri": uri, "res": res}
    finally:
        os.chdir(old)
        if ray.is_initialized():
            ray.shutdown()


@pytest.mark.slow
def test_a_pbt_search_perturbs_the_lr_of_a_trial_from_a_checkpoint(pbt_search):
    res = pbt_search["res"]
    assert res.num_failed == 0
    assert sorted((r["status"], r["epoch"]) for r in res.leaderboard) == [("finished", 2), ("finished", 2)]
    client, _, parents, children = search_runs(pbt_search["uri"], "pbt-it")
    assert len(parents) == 1 and parents[0].data.params["scheduler"] == "pbt" and len(children) == 2
    changed = 0
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["fer_automl.status"] == "finished"
        # every epoch logged once, none lost: steps 1, 2 of each metric
        for metric in ("val_balanced_accuracy", "lr", "hp_lr"):
            hist = client.get_metric_history(run.info.run_id, metric)
            assert sorted(m.step for m in hist) == [1, 2], (metric, [(m.step, m.value) for m in hist])
        lrs = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "lr"), key=lambda m: m.step)]
        hp = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "hp_lr"), key=lambda m: m.step)]
        assert lrs == pytest.approx(hp)  # constant schedule: the optimizer trains with the point's lr
        assert hp[0] == pytest.approx(float(run.data.params["lr"]))  # it starts at the point it was given
        assert all(1e-3 <= v <= 2e-2 for v in hp)  # perturbed within the dimension's range
        changed += len(set(round(v, 12) for v in hp)) > 1
    assert changed >= 1  # at least one trial was perturbed: its lr changed between epochs
    # Tune's PBT log of the perturbations is in the search's storage
    assert list(Path(res.storage).glob("pbt_policy_*.txt")) or (Path(res.storage) / "pbt_global.txt").exists()
