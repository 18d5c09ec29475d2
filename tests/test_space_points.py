"""Points of the shipped spaces: samples validate and build, presets are the fer_models presets, every
dimension is a real switch, validation errors name the dimension, value and expectation."""
from __future__ import annotations

import itertools
import random

import pytest
import torch

from fer_models import PRESETS, ModelConfig, build_model
from fer_models.cost import count_params
from fer_models.presets import PRESET_LOSS_WEIGHTING
from search_spaces import (SpaceError, TrialConfig, load_space, sample, smallest_image_size, validate)
from search_spaces.schema import ChoiceDim, IntDim

from _space_helpers import build_tiny, cost, repair

UNIFIED = load_space("unified")
POOL = sample(UNIFIED, 2000, seed=123)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy 2-core machine they cost 3x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_hundreds_of_samples_validate_and_never_hold_an_inactive_dimension():
    points = sample(UNIFIED, 600, seed=7)
    for i, p in enumerate(points):
        cfg = UNIFIED.validate(p, where=f"sample[{i}]")
        assert isinstance(cfg, TrialConfig)
        decided = {}
        for n in UNIFIED.order:  # exactly the active dimensions, nothing else
            assert (n in p) == UNIFIED.is_active(n, decided), (n, p)
            if n in p:
                decided[n] = p[n]
        assert set(p) <= set(UNIFIED.dimensions)
    # conditional dimensions are sometimes in, sometimes out
    for n, d in UNIFIED.dimensions.items():
        if d.condition:
            share = sum(n in p for p in points) / len(points)
            assert 0 < share < 1, n


def test_samples_are_seeded():
    assert sample(UNIFIED, 20, seed=5) == sample(UNIFIED, 20, seed=5)
    assert sample(UNIFIED, 20, seed=5) != sample(UNIFIED, 20, seed=6)
    assert sample(UNIFIED, 5, seed=5) == sample(UNIFIED, 20, seed=5)[:5]


def test_samples_reach_every_value_of_every_choice():
    for n, d in UNIFIED.dimensions.items():
        seen = {repr(p[n]) for p in POOL if n in p}
        if isinstance(d, ChoiceDim):
            assert seen == {repr(v) for v in d.values}, n
        else:
            assert len(seen) > 1, n


def _covering_points(n_total: int = 44):
    """Cheap points that together hold every value of every model choice dimension."""
    want = {(n, repr(v)) for n in UNIFIED.choice_dims() for v in UNIFIED.dimensions[n].values}
    pool = sorted(POOL, key=cost)
    chosen, covered = [], set()
    while want - covered:
        best = max(pool, key=lambda p: (len({(n, repr(v)) for n, v in p.items()} & (want - covered)), -cost(p)))
        chosen.append(best)
        covered |= {(n, repr(v)) for n, v in best.items()}
    rest = [p for p in pool if p not in chosen]
    chosen += rest[: max(0, n_total - len(chosen))]
    return chosen


COVER = _covering_points()


@pytest.mark.parametrize("i", range(len(COVER)))
def test_sampled_points_build_and_run_forward(i):
    p = COVER[i]
    cfg = UNIFIED.validate(p)
    built = build_tiny(cfg, at_least=32)
    assert built["logits"].shape == (2, cfg.model.num_classes)
    assert torch.isfinite(built["logits"]).all()
    assert (built["pose"] is not None) == cfg.model.pose_head


def test_the_built_points_cover_every_choice_value():
    for n in UNIFIED.choice_dims():
        seen = {repr(p[n]) for p in COVER if n in p}
        assert seen == {repr(v) for v in UNIFIED.dimensions[n].values}, n
    assert 40 <= len(COVER) <= 60


def test_fit_checks_agree_with_the_builder():
    """Where validation says a size does not fit, the model really fails at that size."""
    p = dict(UNIFIED.presets["scan_cci_shared"])
    cfg = UNIFIED.validate(p)
    size = smallest_image_size(cfg, at_least=32)
    model = build_model(cfg.model)
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
        with pytest.raises(ValueError):
            model(torch.randn(1, 3, size - 8, size - 8))


# ---- presets ------------------------------------------------------------------------------------------------
UNUSED_UNLESS_FIXED = ("global_weight", "local_weight", "context_weight", "scale_weight", "pose_weight")


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_is_a_valid_point_and_builds_exactly_the_fer_models_preset(name):
    assert name in UNIFIED.presets
    cfg = UNIFIED.validate(UNIFIED.presets[name])
    ref = ModelConfig.model_validate(PRESETS[name])
    assert cfg.train.loss_weighting == PRESET_LOSS_WEIGHTING[name]
    mine, theirs = cfg.model.model_dump(), ref.model_dump()
    if cfg.train.loss_weighting != "fixed" and cfg.model.fusion == "mean":
        # the fixed branch weights do nothing under learned weighting and mean fusion: they are
        # not dimensions there (phanet keeps 0.5s in fer_models that no computation reads)
        for k in UNUSED_UNLESS_FIXED:
            mine.pop(k), theirs.pop(k)
    assert mine == theirs
    size = smallest_image_size(cfg, at_least=48)
    torch.manual_seed(0)
    a = build_model(cfg.model, image_size=size)
    torch.manual_seed(0)
    b = build_model(ref, image_size=size)
    assert count_params(a) == count_params(b)
    assert [(k, v.shape) for k, v in a.state_dict().items()] == [(k, v.shape) for k, v in b.state_dict().items()]
    a.eval(), b.eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        assert torch.allclose(a(x).logits, b(x).logits)


def test_quickstart_presets_and_samples_validate():
    qs = load_space("quickstart")
    for p in list(qs.presets.values()) + sample(qs, 50, seed=0):
        cfg = qs.validate(p)
        # the compact FER CNN (issue 11, item 6: a quick start that visibly learns on 2 CPUs)
        assert cfg.model.backbone == "fercnn" and cfg.train.epochs <= 6 and cfg.data.image_size <= 48


# ---- every dimension is a real switch -------------------------------------------------------------------------
def _other_values(dim, value):
    if isinstance(dim, ChoiceDim):
        return [v for v in dim.values if repr(v) != repr(value)]
    if isinstance(dim, IntDim):
        return [v for v in (dim.low, dim.high) if v != value]
    return [v for v in (dim.low, dim.high, (dim.low + dim.high) / 2) if abs(v - value) > 1e-9]


@pytest.mark.parametrize("name", list(UNIFIED.dimensions))
def test_each_dimension_changes_the_model_or_the_training_config(name):
    space, dim = UNIFIED, UNIFIED.dimensions[name]
    target = space.targets[name]
    section, field = target.split(".")
    candidates = sorted((p for p in POOL if name in p), key=cost)
    if name != "backbone":
        candidates = [p for p in candidates if p.get("backbone") == "resnet18"] or candidates
    rng = random.Random(0)
    # the cheapest bases first, then a few random ones (some switches act only in some regions:
    # patch_split cuts a 2x2 grid of an even-sized map the same either way)
    cheap, rand = candidates[:4], rng.sample(candidates[4:], min(8, len(candidates[4:])))
    bases = [p for pair in itertools.zip_longest(cheap, rand) for p in pair if p is not None]
    pairs = []
    for base in bases:
        for other in _other_values(dim, base[name]):
            changed = repair(space, {**base, name: other}, rng)
            a, b = space.validate(base), space.validate(changed)
            va, vb = getattr(getattr(a, section), field), getattr(getattr(b, section), field)
            if section != "model":
                assert va != vb, (name, va, vb)  # the trainer reads this field
                return
            if a.model != b.model:  # (equal e.g. when global_attention is set to attention's value)
                pairs.append((a, b))
    train_mode = name == "dropout"

    def differ(a, b, size) -> bool:
        ba = build_tiny(a.model_copy(update={"data": a.data.model_copy(update={"image_size": size})}), size, train_mode)
        bb = build_tiny(b.model_copy(update={"data": b.data.model_copy(update={"image_size": size})}), size, train_mode)
        return (ba["params"] != bb["params"] or ba["shapes"] != bb["shapes"] or ba["branches"] != bb["branches"]
                or ba["pose"] != bb["pose"] or ba["loss_weights"] != bb["loss_weights"]
                or not torch.allclose(ba["logits"], bb["logits"]))

    # tiny inputs first (an even and an odd map size: patch_split cuts an even map into 2 or 3
    # cells alike either way); the point's own size only as a last resort
    for real in (False, True):
        for a, b in pairs:
            tiny = max(smallest_image_size(a, 48), smallest_image_size(b, 48))
            for size in ([max(tiny, a.data.image_size)] if real else [tiny + 8, tiny]):
                if differ(a, b, size):
                    return
    tried = len(pairs)
    pytest.fail(f"dimension {name!r}: no change in the built model, its outputs or its loss weights "
                f"over {tried} tried pairs")


# ---- validation errors -----------------------------------------------------------------------------------------
def _err(point, space=UNIFIED) -> str:
    with pytest.raises(SpaceError) as ei:
        space.validate(point)
    return str(ei.value)


def test_validate_errors_name_the_dimension_value_and_expectation():
    base = dict(UNIFIED.presets["ma_net"])
    assert "point.num_patches: dimension 'num_patches': 3 is not one of [0, 4, 9, 16, 25]" in _err({**base, "num_patches": 3})
    assert "point.lr: dimension 'lr': 0.5 is outside [0.0001, 0.1]" in _err({**base, "lr": 0.5})
    assert "point.epochs: dimension 'epochs': 15 is not on the grid 10, 20" in _err({**base, "epochs": 15})
    assert "point.epochs" in _err({**base, "epochs": "ten"})
    assert "point.flavour: unknown dimension 'flavour'" in _err({**base, "flavour": 1})
    missing = dict(base)
    del missing["local_aggregation"]
    assert "missing dimension 'local_aggregation' (choice stitch, max, mean, weighted), active because num_patches in [4, 9, 16, 25]" in _err(missing)
    assert "point.gamma" in _err({**base, "schedule": "cosine"}) and "inactive" in _err({**base, "schedule": "cosine"})
    assert "a point is a mapping" in _err([1, 2])
    assert "point.pose_head: dimension 'pose_head': 1 is not one of [False, True]" in _err({**base, "pose_head": 1})


def test_validate_reports_config_errors_by_dimension(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("dimensions:\n"
                 "  num_patches: {type: choice, values: [0, 4, 25]}\n"
                 "  head: {type: choice, values: [separate, concat_l2]}\n"
                 "  epochs: {type: int, low: 1, high: 5}\n"
                 "  warmup_epochs: {type: int, low: 0, high: 5}\n"
                 "  image_size: {type: choice, values: [32, 224]}\n")
    sp = load_space(p)
    msg = _err({"num_patches": 0, "head": "concat_l2", "epochs": 3, "warmup_epochs": 0, "image_size": 224}, sp)
    assert "model config (num_patches=0, head='concat_l2')" in msg and "needs num_patches > 0" in msg
    msg = _err({"num_patches": 0, "head": "separate", "epochs": 3, "warmup_epochs": 4, "image_size": 224}, sp)
    assert "warmup_epochs=4 must be less than epochs=3" in msg
    msg = _err({"num_patches": 25, "head": "separate", "epochs": 3, "warmup_epochs": 0, "image_size": 32}, sp)
    assert "num_patches=25 at image_size=32" in msg and "num_patches=25" in msg and "image_size=32" in msg


def test_module_level_validate_defaults_to_unified():
    cfg = validate(UNIFIED.presets["lnlnet"])
    assert cfg.model.num_patches == 9 and cfg.model.global_attention == "non_local"
    assert validate(UNIFIED.presets["scan_cci"]).model.global_attention is None  # same as attention
