"""search_spaces schema: loading, the YAML paths in errors, every bad input the issue lists."""
from __future__ import annotations

import textwrap

import pytest

from search_spaces import PACKAGE_DIR, SearchSpec, SpaceError, load_space, resolve_space_path

GOOD = """
dimensions:
  backbone: {type: choice, values: [resnet18]}
  num_patches: {type: choice, values: [0, 4]}
  local_aggregation:
    type: choice
    values: [max, mean]
    condition: {num_patches: [4]}
  local_weight:
    type: float
    low: 0.1
    high: 1.0
    condition: {local_aggregation: [mean]}
  lr: {type: float, low: 1e-4, high: 1e-1, log: true}
  epochs: {type: int, low: 2, high: 6, step: 2}
  image_size: {type: choice, values: [32, 48]}
constants:
  train.seed: 3
  data: {aug_strength: 0.1}
presets:
  small: {backbone: resnet18, num_patches: 0, lr: 0.01, epochs: 2, image_size: 32}
"""


def write(tmp_path, text, name="space.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def load_err(tmp_path, text) -> str:
    p = write(tmp_path, text)
    with pytest.raises(SpaceError) as ei:
        load_space(p)
    msg = str(ei.value)
    assert msg.startswith(str(p)), msg  # every error names the file
    return msg


def test_good_file_loads(tmp_path):
    space = load_space(write(tmp_path, GOOD))
    assert space.targets["local_weight"] == "model.local_weight"
    assert space.targets["image_size"] == "data.image_size"
    assert space.constants == {"train.seed": 3, "data.aug_strength": 0.1}
    # YAML 1.1 would read 1e-4 as a string: the loader reads it as a float
    assert space.dimensions["lr"].low == pytest.approx(1e-4)
    cfg = space.validate(space.presets["small"])
    assert cfg.train.seed == 3 and cfg.data.aug_strength == 0.1 and cfg.train.epochs == 2


def test_shipped_names_and_paths():
    assert resolve_space_path("unified") == PACKAGE_DIR / "unified.yaml"
    assert resolve_space_path("quickstart.yaml") == PACKAGE_DIR / "quickstart.yaml"
    assert load_space("quickstart").name == "quickstart"
    with pytest.raises(FileNotFoundError, match="no such file"):
        resolve_space_path("no_such_space")


# ---- bad input: each names the YAML path of the fault ----------------------------------------------
def test_unknown_key(tmp_path):
    msg = load_err(tmp_path, GOOD.replace("  epochs: {type: int,", "  epochs: {typo: 1, type: int,"))
    assert "dimensions.epochs.typo: unknown key" in msg


def test_unknown_section(tmp_path):
    msg = load_err(tmp_path, GOOD + "extras: {a: 1}\n")
    assert "extras: unknown key" in msg


def test_unknown_search_key(tmp_path):
    msg = load_err(tmp_path, GOOD + "search: {algorithm: tpe, num_sample: 3}\n")
    assert "search.num_sample: unknown key" in msg


def test_wrong_type(tmp_path):
    msg = load_err(tmp_path, GOOD.replace("low: 2, high: 6", "low: two, high: 6"))
    assert "dimensions.epochs.low" in msg and "integer" in msg


def test_wrong_type_of_value_for_its_field(tmp_path):
    msg = load_err(tmp_path, GOOD.replace("values: [resnet18]", "values: [resnet18, 3]"))
    assert "dimensions.backbone.values[1]" in msg and "model.backbone" in msg


def test_unknown_dimension_type(tmp_path):
    msg = load_err(tmp_path, GOOD.replace("backbone: {type: choice", "backbone: {type: categorical"))
    assert "dimensions.backbone" in msg and "unknown dimension type 'categorical'" in msg


def test_empty_choice(tmp_path):
    msg = load_err(tmp_path, GOOD.replace("values: [32, 48]", "values: []"))
    assert "dimensions.image_size.values: empty choice" in msg


def test_low_greater_than_high(tmp_path):
    msg = load_err(tmp_path, GOOD.replace("low: 0.1\n    high: 1.0", "low: 1.0\n    high: 0.1"))
    assert "dimensions.local_weight: low=1.0 > high=0.1" in msg


def test_log_range_with_nonpositive_low(tmp_path):
    msg = load_err(tmp_path, GOOD.replace("low: 1e-4, high: 1e-1, log: true", "low: 0.0, high: 1e-1, log: true"))
    assert "dimensions.lr: log range needs low > 0" in msg


def test_bound_outside_its_field(tmp_path):
    msg = load_err(tmp_path, GOOD.replace("low: 1e-4, high: 1e-1", "low: -1.0, high: 1e-1").replace(", log: true", ""))
    assert "dimensions.lr.low" in msg and "train.lr" in msg


def test_condition_on_unknown_dimension(tmp_path):
    msg = load_err(tmp_path, GOOD.replace("condition: {num_patches: [4]}", "condition: {num_patchez: [4]}"))
    assert "dimensions.local_aggregation.condition.num_patchez: condition on unknown dimension 'num_patchez'" in msg


def test_condition_value_outside_parent(tmp_path):
    msg = load_err(tmp_path, GOOD.replace("condition: {num_patches: [4]}", "condition: {num_patches: [9]}"))
    assert "dimensions.local_aggregation.condition.num_patches[0]" in msg and "not one of [0, 4]" in msg


def test_cycle_of_conditions(tmp_path):
    text = GOOD.replace("num_patches: {type: choice, values: [0, 4]}",
                        "num_patches: {type: choice, values: [0, 4], condition: {local_weight_gate: [true]}}")
    text = text.replace("constants:", "  local_weight_gate:\n    type: choice\n    values: [true, false]\n"
                                      "    maps_to: model.unet_fusion\n    condition: {local_aggregation: [mean]}\nconstants:")
    msg = load_err(tmp_path, text)
    assert "cycle of conditions" in msg
    assert "num_patches" in msg and "local_aggregation" in msg and "local_weight_gate" in msg


def test_preset_value_outside_its_dimension(tmp_path):
    msg = load_err(tmp_path, GOOD.replace("num_patches: 0, lr: 0.01", "num_patches: 9, lr: 0.01"))
    assert "presets.small.num_patches: dimension 'num_patches': 9 is not one of [0, 4]" in msg


def test_preset_float_outside_range(tmp_path):
    msg = load_err(tmp_path, GOOD.replace("lr: 0.01, epochs", "lr: 0.5, epochs"))
    assert "presets.small.lr" in msg and "outside" in msg


def test_point_missing_a_required_dimension(tmp_path):
    msg = load_err(tmp_path, GOOD.replace("lr: 0.01, ", ""))
    assert "presets.small: missing dimension 'lr'" in msg


def test_preset_with_inactive_dimension(tmp_path):
    msg = load_err(tmp_path, GOOD.replace("num_patches: 0, lr", "num_patches: 0, local_aggregation: max, lr"))
    assert "presets.small.local_aggregation" in msg and "inactive" in msg and "num_patches = 0" in msg


def test_not_yaml(tmp_path):
    p = write(tmp_path, "dimensions: [a, b\n  c: {\n")
    with pytest.raises(SpaceError, match=r"space.yaml: not a YAML file \(line"):
        load_space(p)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(SpaceError, match="not a YAML file"):
        load_space(binary)


def test_yaml_that_is_not_a_mapping(tmp_path):
    with pytest.raises(SpaceError, match="expected a mapping"):
        load_space(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(SpaceError, match="empty file"):
        load_space(write(tmp_path, ""))


def test_unsafe_yaml_tags_are_refused(tmp_path):
    msg = load_err(tmp_path, "dimensions: !!python/object/apply:os.system ['true']\n")
    assert "not a YAML file" in msg


def test_missing_dimensions(tmp_path):
    assert "dimensions: missing required key" in load_err(tmp_path, "constants: {train.seed: 1}\n")


def test_target_cannot_be_derived(tmp_path):
    msg = load_err(tmp_path, GOOD.replace("  epochs: {type: int", "  n_epochs: {type: int"))
    assert "dimensions.n_epochs: cannot derive the target" in msg and "maps_to" in msg


def test_bad_maps_to(tmp_path):
    msg = load_err(tmp_path, GOOD.replace("step: 2}", "step: 2, maps_to: train.epoch}"))
    assert "dimensions.epochs.maps_to: train config has no field 'epoch'" in msg


def test_float_dimension_on_an_int_field(tmp_path):
    msg = load_err(tmp_path, GOOD.replace("{type: int, low: 2, high: 6, step: 2}", "{type: float, low: 2, high: 6}"))
    assert "dimensions.epochs.type: train.epochs is an integer field" in msg


def test_constant_and_dimension_on_one_target(tmp_path):
    msg = load_err(tmp_path, GOOD.replace("train.seed: 3", "train.epochs: 3"))
    assert "constants.train.epochs" in msg and "'epochs'" in msg


def test_bad_constant(tmp_path):
    assert "constants.train.optimiser" in load_err(tmp_path, GOOD.replace("train.seed: 3", "train.optimiser: sgd"))
    assert "constants.train.seed" in load_err(tmp_path, GOOD.replace("train.seed: 3", "train.seed: -1"))


def test_two_dimensions_on_one_target_must_exclude_each_other(tmp_path):
    extra = "  lr2: {type: float, low: 0.1, high: 0.5, maps_to: train.lr, condition: {num_patches: [0]}}\n"
    msg = load_err(tmp_path, GOOD.replace("constants:", extra + "constants:"))
    assert "dimensions.lr2.maps_to: train.lr is also set by dimension 'lr'" in msg
    # with disjoint conditions it is fine
    ok = GOOD.replace("  lr: {type: float, low: 1e-4, high: 1e-1, log: true}",
                      "  lr: {type: float, low: 1e-4, high: 1e-1, log: true, condition: {num_patches: [4]}}")
    ok = ok.replace("constants:", extra + "constants:").replace("lr: 0.01, epochs", "lr2: 0.2, epochs")
    space = load_space(write(tmp_path, ok))
    assert space.validate(space.presets["small"]).train.lr == 0.2


def test_search_section(tmp_path):
    text = GOOD + textwrap.dedent("""
        search:
          presets: [small]
          dataset: {format: synthetic, n: 64, image_size: 32}
          scheduler: hyperband
          resources: {cpu: 1, gpu: 0.25}
          metric: val_loss
          second_objective: params
    """)
    spec = load_space(write(tmp_path, text)).search
    assert isinstance(spec, SearchSpec)
    assert spec.scheduler.type == "hyperband" and spec.resources.gpu == 0.25
    assert spec.mode == "min" and spec.algorithm == "tpe" and spec.second_objective == "params"


@pytest.mark.parametrize("snippet, expected", [
    ("search: {presets: [nope]}", "search.presets[0]: unknown preset 'nope'"),
    ("search: {algorithm: bayes}", "search.algorithm"),
    ("search: {scheduler: {type: bohb}}", "search.scheduler.type"),
    ("search: {metric: accuracy}", "search.metric: metric 'accuracy' is not reported"),
    ("search: {resources: {gpu: 1.5}}", "search.resources.gpu"),
    ("search: {dataset: {format: folder}}", "search.dataset: dataset format 'folder' needs a path"),
    ("search: {num_samples: 0}", "search.num_samples"),
    ("search: {second_objective: flops}", "search.second_objective"),
    ("search: {tpe: {n_startup_trials: -1}}", "search.tpe.n_startup_trials"),
    ("search: {tpe: {n_startup: 3}}", "search.tpe.n_startup"),
    ("search: {tpe: {multivariate: maybe}}", "search.tpe.multivariate"),
    ("search: {algorithm: random, tpe: {n_startup_trials: 3}}", "algorithm is 'random'; use algorithm: tpe"),
])
def test_bad_search_section(tmp_path, snippet, expected):
    assert expected in load_err(tmp_path, GOOD + snippet + "\n")


def test_every_error_is_reported_at_once(tmp_path):
    text = GOOD.replace("values: [32, 48]", "values: []").replace("low: 2, high: 6", "low: 8, high: 6")
    msg = load_err(tmp_path, text)
    assert "dimensions.image_size.values: empty choice" in msg and "dimensions.epochs: low=8 > high=6" in msg


def test_tpe_settings_reach_optunas_sampler(tmp_path):
    """search.tpe is handed to the TPESampler the search runs (runners.search.driver._searcher); left out,
    Optuna's own defaults hold."""
    from optuna.samplers import TPESampler

    from runners.search.driver import _searcher

    text = GOOD + "search: {seed: 1, tpe: {n_startup_trials: 3, multivariate: true, constant_liar: true}}\n"
    space = load_space(write(tmp_path, text))
    alg, _ = _searcher(space, space.search, max_epochs=2)
    sampler = alg._sampler
    assert isinstance(sampler, TPESampler)
    assert (sampler._n_startup_trials, sampler._multivariate, sampler._group, sampler._constant_liar) == (3, True, True, True)
    plain = load_space(write(tmp_path, GOOD + "search: {seed: 1}\n", name="plain.yaml"))
    sampler = _searcher(plain, plain.search, max_epochs=2)[0]._sampler
    default = TPESampler(seed=1)  # nothing given: nothing passed, Optuna's own defaults
    assert (sampler._n_startup_trials, sampler._multivariate, sampler._group, sampler._constant_liar) == \
        (default._n_startup_trials, default._multivariate, default._group, default._constant_liar)
