"""Every extension point is a registry (fer_models.extension.Registry): the shipped space offers
what is registered, the settings an entry declares are config fields the space decides only for
that entry, and a new entry is one registration that the configs then accept."""
from __future__ import annotations


import pytest
import torch

from fer_models.attention import ATTENTION_REGISTRY
from fer_models.errors import UserError
from fer_models.extension import REGISTRIES, DuplicateRegistrationWarning, Registry
from fer_models.losses import WEIGHTINGS, LossWeighting, build_loss
from fer_models.optim import LR_SCHEDULES, OPTIMIZERS, lr_factor
from search_spaces import TrainConfig, load_space
from search_spaces.spec import ALGORITHMS, SCHEDULERS, SchedulerSpec, SearchSpec

UNIFIED = load_space("unified")

# registry -> the dimensions of unified.yaml whose values are its names
SPACE_DIMENSIONS = {
    "attention type": ["attention", "global_attention"],
    "loss weighting": ["loss_weighting"],
    "optimizer": ["optimizer"],
    "learning-rate schedule": ["schedule"],
}
# names registered but deliberately not offered by unified.yaml, with why (none today)
LEFT_OUT = {}


@pytest.mark.parametrize("kind", sorted(SPACE_DIMENSIONS))
def test_the_unified_space_offers_what_is_registered(kind):
    reg = REGISTRIES[kind]
    for dim in SPACE_DIMENSIONS[kind]:
        values = UNIFIED.dimensions[dim].values
        unknown = [v for v in values if v not in reg]
        assert not unknown, f"unified.yaml {dim}: {unknown} not registered as {kind}"
        missing = [n for n in reg if n not in values and n not in LEFT_OUT.get(kind, {})]
        assert not missing, (f"{kind} {missing} registered but not in unified.yaml {dim}: add them to its values "
                             f"or to LEFT_OUT with the reason")


@pytest.mark.parametrize("kind", ["loss weighting", "optimizer", "learning-rate schedule"])
def test_declared_settings_are_train_fields_decided_only_for_their_entry(kind):
    reg = REGISTRIES[kind]
    choice = SPACE_DIMENSIONS[kind][0]
    for name in reg:
        for setting in reg.settings(name):
            assert setting in TrainConfig.model_fields, f"{kind} {name!r} declares {setting!r}: not a train field"
            # the dimensions of the space that set this field are active only where `choice` is this entry
            dims = [d for d, t in UNIFIED.targets.items() if t == f"train.{setting}"]
            assert dims, f"{kind} {name!r}: its setting {setting!r} is no dimension of unified.yaml"
            for d in dims:
                allowed = UNIFIED.dimensions[d].condition.get(choice)
                assert allowed and set(allowed) <= {n for n in reg if setting in reg.settings(n)}, (d, allowed)


def test_scheduler_and_algorithm_entries_resolve_and_declare_spec_fields():
    import runners.search.schedulers as rs
    import runners.search.searchers as ss

    for name in SCHEDULERS:
        assert callable(SCHEDULERS[name]) and SCHEDULERS[name].__module__ == rs.__name__
        assert set(SCHEDULERS.settings(name)) <= set(SchedulerSpec.model_fields) - {"type"}
    for name in ALGORITHMS:
        assert callable(ALGORITHMS[name]) and ALGORITHMS[name].__module__ == ss.__name__
        assert isinstance(ALGORITHMS.meta(name, "learns"), bool)


def test_unknown_names_list_the_registered_ones_in_order():
    with pytest.raises(ValueError, match=r"unknown optimizer 'rmsprop'; valid: adamw, sgd"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match=r"unknown scheduler 'median'; valid: asha, hyperband, fifo, pbt, pb2"):
        SearchSpec(scheduler="median")
    with pytest.raises(UserError, match=r"train.loss_weighting: unknown loss weighting 'gradnorm'; "
                                        r"valid: fixed, uncertainty, dwa"):
        WEIGHTINGS.checked("gradnorm")
    # the JSON schema of a config names the registered values, as a Literal did
    assert TrainConfig.model_json_schema()["properties"]["schedule"]["enum"] == list(LR_SCHEDULES)


def test_registering_a_name_twice_warns_and_replaces():
    reg = Registry("test thing")
    try:
        reg.register("a", int)
        with pytest.warns(DuplicateRegistrationWarning, match=r"test thing 'a' registered twice.*builtins.int"):
            reg.register("a", float)
        assert reg["a"] is float and list(reg) == ["a"]
        with pytest.raises(ValueError, match="non-empty string"):
            reg.register(" b", int)
    finally:
        REGISTRIES.pop("test thing", None)


def test_a_lazy_entry_resolves_on_first_use():
    reg = Registry("lazy thing")
    try:
        reg.register("join", "os.path:join")
        assert reg.entry("join").target == "os.path:join"  # nothing imported yet
        import os.path

        assert reg["join"] is os.path.join
    finally:
        REGISTRIES.pop("lazy thing", None)


class _Equal(LossWeighting):
    """Every term weighted 1."""

    def combine(self, parts):
        return sum(parts.values()), {k: 1.0 for k in parts}


def test_a_new_loss_weighting_is_one_class_and_one_line(tmp_path):
    from fer_models import build_model, preset_config

    WEIGHTINGS.register("equal", _Equal)
    try:
        train = TrainConfig(loss_weighting="equal")  # the config accepts it: no Literal to edit
        model = build_model(preset_config("ma_net", num_classes=3).model_copy(update={"backbone": "resnet10t"}))
        loss = build_loss(model, train.loss_weighting, settings=train)
        out = model.eval()(torch.randn(2, 3, 64, 64))
        res = loss(out, torch.tensor([0, 2]))
        assert set(res.weights.values()) == {1.0}
        assert float(res.total.detach()) == pytest.approx(float(sum(res.parts.values()).detach()))
    finally:
        WEIGHTINGS.unregister("equal")
    with pytest.raises(ValueError, match="unknown loss weighting 'equal'"):
        TrainConfig(loss_weighting="equal")


def test_the_abstract_base_refuses_an_incomplete_weighting():
    class Half(LossWeighting):
        pass

    with pytest.raises(TypeError, match="abstract"):
        Half(["global"], {"global": 1.0})


def test_declared_settings_reach_the_entry():
    # dwa declares dwa_temperature: the trainer hands the train config over, the registry reads it
    from fer_models import build_model, preset_config

    model = build_model(preset_config("baseline", num_classes=3).model_copy(update={"backbone": "resnet10t"}))
    loss = build_loss(model, "dwa", settings=TrainConfig(loss_weighting="dwa", dwa_temperature=7.5))
    assert loss.weighting.temperature == 7.5


def test_a_new_schedule_and_optimizer_are_one_line_each():
    LR_SCHEDULES.register("linear", lambda e, total, train: 1.0 - e / total)
    OPTIMIZERS.register("sgd_nesterov", lambda groups, train: torch.optim.SGD(groups, lr=train.lr, momentum=0.9,
                                                                               nesterov=True))
    try:
        train = TrainConfig(schedule="linear", optimizer="sgd_nesterov", epochs=4)
        assert [lr_factor(e, train) for e in range(4)] == [1.0, 0.75, 0.5, 0.25]
        from fer_models.optim import build_optimizer

        opt = build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))]}], train)
        assert opt.defaults["nesterov"] is True
    finally:
        LR_SCHEDULES.unregister("linear")
        OPTIMIZERS.unregister("sgd_nesterov")


def test_a_new_attention_type_builds_a_model():
    ATTENTION_REGISTRY.register("identity_test", lambda c: torch.nn.Identity())
    try:
        from fer_models import ModelConfig, build_model

        cfg = ModelConfig(backbone="resnet10t", num_classes=3, attention="identity_test", num_patches=4)
        out = build_model(cfg).eval()(torch.randn(1, 3, 64, 64))
        assert out.logits.shape == (1, 3)
    finally:
        ATTENTION_REGISTRY.unregister("identity_test")


def test_reader_base_class_is_abstract():
    from runners.data.readers import READERS, Reader

    assert "synthetic" in READERS and READERS.kind == "dataset format"
    with pytest.raises(TypeError, match="abstract"):
        Reader()
