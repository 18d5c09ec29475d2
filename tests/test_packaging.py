"""runners.registry.packaging: a trial's weights as a self-contained MLflow model (pt2), loaded back."""
from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest
import torch

from fer_models import ModelConfig, build_model
from runners.data.transforms import build_eval_transform
from fer_models.errors import UserError
from runners.registry.packaging import (FERInference, ModelExportError, build_inference_module, export_inference_module,
                                        load_fer_model, log_fer_model, read_model_config)
from runners.training.trial import DataSpec, run_trial
from search_spaces import DataConfig, TrainConfig, TrialConfig


@pytest.fixture(scope="module")
def trained(module_tmp):
    """A real 1-epoch trial with local patches (the branch that once broke torch.export)."""
    ds = DataSpec(format="synthetic", options={"n": 160, "size": 32}, seed=5).load(32)
    cfg = TrialConfig(model=ModelConfig(num_patches=4, local_aggregation="mean", attention="cbam"),
                      train=TrainConfig(epochs=1, batch_size=32), data=DataConfig(image_size=32, aug_strength=0.0))
    out = module_tmp("trial")
    ckpts = []
    run_trial(cfg, ds, out_dir=out, report=lambda m, c: ckpts.append(c))
    return ds, ckpts[-1] / "artifacts"


def _trial_probabilities(art, images):
    """What the trial's own evaluation computes: the eval pipeline, then the model, then softmax."""
    cfg = read_model_config(art)
    model = build_model(ModelConfig(**cfg["model"]), image_size=32)
    model.load_state_dict(torch.load(art / "model.pt", weights_only=True))
    model.eval()
    tf = build_eval_transform(32, cfg["normalization"]["mean"], cfg["normalization"]["std"])
    x = torch.stack([torch.from_numpy(tf(image=im)["image"]).permute(2, 0, 1) for im in images])
    with torch.no_grad():
        return model(x).logits.softmax(1).numpy()


def test_logged_model_is_pt2_and_matches_the_trial(trained, tmp_path):
    ds, art = trained
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    with mlflow.start_run():
        info = log_fer_model(art)
    predictor = load_fer_model(info.model_uri)
    assert predictor.meta["serialization"] == "pt2"
    assert predictor.classes == list(ds.classes)
    assert predictor.meta["dataset"]["fingerprint"] == ds.fingerprint
    images = list(ds.images[:12])
    got = predictor.predict_proba(images)
    want = _trial_probabilities(art, images)
    assert got.shape == (12, len(ds.classes))
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # any image size: resized as the eval pipeline does
    big = [np.kron(im, np.ones((3, 3, 1), dtype=np.uint8)) for im in images[:3]]
    assert predictor.predict_proba(big).shape == (3, len(ds.classes))


def test_bad_inputs_are_named(trained, tmp_path):
    ds, art = trained
    with pytest.raises(FileNotFoundError, match="model_config.json"):
        build_inference_module(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_config.json").write_text(json.dumps({"trial": {}}))
    with pytest.raises(ValueError, match="missing key 'model'"):
        read_model_config(broken)
    with pytest.raises(TypeError, match="serialization"):          # no format to choose: pt2 only
        log_fer_model(art, serialization="pickle")
    module, meta = build_inference_module(art)
    with pytest.raises(ValueError, match="cannot load the model"):
        load_fer_model(f"file://{tmp_path}/nothing-here")


class _DataDependent(torch.nn.Module):
    """A real model torch.export cannot trace: its forward branches on a value of its input."""

    def forward(self, x):
        class Out:
            pass

        out = Out()
        out.logits = x.mean((2, 3)) if float(x.sum()) > 0 else -x.mean((2, 3))
        return out


def test_a_model_that_does_not_export_is_refused_naming_the_config():
    """The pickle fallback is gone (issue 10: it could not load outside a fer-automl environment):
    a model that torch.export cannot trace is an error naming the config and the export error."""
    module = FERInference(_DataDependent(), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).eval()
    example = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ModelExportError) as exc:
        export_inference_module(module, example, where="run-x/model_config.json",
                                model_cfg={**ModelConfig().model_dump(), "attention": "cbam", "num_patches": 4})
    msg = str(exc.value)
    assert isinstance(exc.value, UserError)                     # exit 2 from the CLI
    assert "run-x/model_config.json" in msg and "does not export with torch.export" in msg
    assert '"attention": "cbam"' in msg and '"num_patches": 4' in msg   # the config, by its non-default fields
    assert "GuardOnDataDependentSymNode" in msg                 # torch.export's error type and first line


@pytest.mark.parametrize("preset", ["baseline", "ma_net", "scan_cci", "scan_cci_shared", "phanet", "lnlnet"])
def test_every_preset_exports(preset):
    """Why the pickle fallback could go: every preset of the unified space exports (at its own image
    size; the sampled points of the spaces did too when this was checked: 12 of unified, 4 of quickstart)."""
    from search_spaces import load_space

    torch.set_num_threads(1)
    space = load_space("unified")
    cfg = space.validate(space.presets[preset])
    size = int(cfg.data.image_size)
    model = build_model(cfg.model, image_size=size)
    model.set_keep_attention_maps(False)
    module = FERInference(model, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)).eval()
    export_inference_module(module, np.zeros((2, size, size, 3), np.uint8), where=preset)
