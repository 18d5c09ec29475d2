"""`fer-automl promote --weights FILE.pt --preset NAME` (issue 12, item 4): an imported state dict
registered as a model version that predict and evaluate use like a promoted trial's.

A real MLflow store (a SQLite file), state dicts made here with random values (a preset's model
on a small backbone, and an MA-Net checkpoint in the official layout through `models
import-weights`); the expected probabilities are computed here with the in-memory model and the
eval pipeline, independently of runners.registry.packaging.
"""
from __future__ import annotations

import hashlib
import json

import cv2
import mlflow
import numpy as np
import pytest
import torch

from _space_helpers import SEARCH_TEST_BACKBONE
from fer_models import ModelConfig, build_model
from runners.cli import main

MODEL = "fer-imported-test"
SIZE = 48
BASIC = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]


def random_weights(cfg: ModelConfig, seed: int) -> dict:
    """The model's state dict with every float tensor perturbed (running statistics included), so
    that nothing of it is a default a loader could produce without reading the file."""
    torch.manual_seed(seed)
    sd = build_model(cfg, image_size=SIZE).state_dict()
    out = {}
    for k, v in sd.items():
        if v.is_floating_point():
            v = v + 0.05 * torch.randn_like(v)
            if k.endswith("running_var"):
                v = v.abs() + 0.5
        out[k] = v
    return out


def in_memory_probabilities(cfg: ModelConfig, sd: dict, images) -> np.ndarray:
    from runners.data.transforms import build_eval_transform, normalization_for

    model = build_model(cfg, image_size=SIZE)
    model.load_state_dict(sd)
    model.eval()
    mean, std = normalization_for(cfg.backbone)
    tf = build_eval_transform(SIZE, mean, std)
    x = torch.stack([torch.from_numpy(tf(image=im)["image"]).permute(2, 0, 1) for im in images])
    with torch.no_grad():
        return model(x).logits.softmax(1).numpy()


def promote(uri: str, *args: str) -> int:
    return main(["promote", "--tracking-uri", uri, "--model-name", MODEL, *args])


@pytest.fixture(scope="module")
def imported(module_tmp):
    """A baseline-style model (backbone + linear head) on a small backbone, 7 classes, random
    weights, registered with `promote --weights` (no class list: the 7 basic expressions)."""
    tmp = module_tmp("promote-weights")
    cfg = ModelConfig(backbone=SEARCH_TEST_BACKBONE, num_classes=7)
    (tmp / "small.yaml").write_text(f"backbone: {SEARCH_TEST_BACKBONE}\n")
    sd = random_weights(cfg, seed=3)
    pt = tmp / "imported.pt"
    torch.save(sd, pt)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    rc = promote(uri, "--weights", str(pt), "--preset", str(tmp / "small.yaml"), "--image-size", str(SIZE))
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    return {"rc": rc, "uri": uri, "pt": pt, "sd": sd, "cfg": cfg, "client": client, "tmp": tmp,
            "yaml": tmp / "small.yaml"}


def test_promote_weights_registers_a_tagged_version_and_sets_the_alias(imported):
    assert imported["rc"] == 0
    client = imported["client"]
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert str(version.version) == "1"
    tags = version.tags
    sha = hashlib.sha256(imported["pt"].read_bytes()).hexdigest()
    assert tags["fer_automl.imported"] == "true"
    assert tags["fer_automl.source"] == f"{imported['pt'].resolve()} sha256:{sha}"
    assert tags["fer_automl.preset"] == str(imported["yaml"])
    assert "fer_automl.layout" not in tags  # a plain state dict: no import-weights record, no --layout
    assert json.loads(tags["fer_automl.classes"]) == BASIC
    assert tags["fer_automl.image_size"] == str(SIZE) and tags["fer_automl.serialization"] == "pt2"
    run = client.get_run(version.run_id)
    assert run.data.tags["fer_automl.kind"] == "import" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "fer-automl-imports"


def test_predict_on_the_alias_gives_the_in_memory_models_probabilities(imported, tmp_path, capsys):
    from runners.data import load_dataset

    ds = load_dataset("synthetic", None, image_size=SIZE, n=70, size=SIZE, seed=11, cache=False)
    images = [np.ascontiguousarray(im) for im in ds.images[:5]]
    paths = []
    for i, im in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        assert cv2.imwrite(paths[-1], cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    capsys.readouterr()
    assert main(["predict", "--model", f"models:/{MODEL}@champion", "--tracking-uri", imported["uri"],
                 "--json", *paths]) == 0
    got = json.loads(capsys.readouterr().out)
    probs = np.array([[o["probabilities"][c] for c in BASIC] for o in got])
    want = in_memory_probabilities(imported["cfg"], imported["sd"], images)
    # the exported graph (pt2) against eager PyTorch: equal up to float32 rounding
    np.testing.assert_allclose(probs, want, atol=1e-5)
    assert [o["label"] for o in got] == [BASIC[i] for i in want.argmax(1)]
    assert len(set(want.argmax(1))) > 1 or want.max() < 0.9  # random weights, not a constant answer


def test_evaluate_runs_on_the_imported_version_and_says_imported(imported, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FER_AUTOML_CACHE_DIR", str(tmp_path / "cache"))
    capsys.readouterr()
    assert main(["evaluate", "--model", f"models:/{MODEL}@champion", "--tracking-uri", imported["uri"],
                 "--format", "synthetic", "-o", "n=70", "-o", f"size={SIZE}"]) == 0
    out = capsys.readouterr().out
    assert f"({MODEL} version 1)  [imported]" in out
    assert "lineage: imported weights" in out and "balanced_accuracy" in out
    version = imported["client"].get_model_version(MODEL, "1")
    assert "fer_automl.eval.synthetic.test" in version.tags  # the evaluation is linked to the version


def test_a_second_import_is_registered_but_leaves_a_held_alias(imported, capsys):
    """Custom classes in the checkpoint's own order; the alias is held, and an imported version has
    no figures to beat the holder with: registered, alias unchanged, exit 3; --force moves it."""
    classes = "happy,surprised,sad,neutral"  # an alias (surprised) and a non-canonical order
    cfg = ModelConfig(backbone=SEARCH_TEST_BACKBONE, num_classes=4)
    pt = imported["tmp"] / "four.pt"
    torch.save(random_weights(cfg, seed=4), pt)
    # an import-weights record of another file beside it (the .pt was overwritten since): not used
    (imported["tmp"] / "four.pt.import.json").write_text(json.dumps(
        {"layout": "vggface2_resnet50", "preset": "scan_cci", "num_classes": 7, "sha256": "0" * 64}))
    capsys.readouterr()
    rc = promote(imported["uri"], "--weights", str(pt), "--preset", str(imported["yaml"]), "--classes", classes,
                 "--image-size", str(SIZE), "--layout", "ma_net")
    cap = capsys.readouterr()
    assert rc == 3, cap.err
    assert "four.pt.import.json describes another file" in cap.out
    assert "refused: alias 'champion' stays on version 1" in cap.err and "version 2 stays registered" in cap.err.lower()
    client = imported["client"]
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    v2 = client.get_model_version(MODEL, "2")
    assert v2.tags["fer_automl.imported"] == "true" and v2.tags["fer_automl.layout"] == "ma_net"
    assert json.loads(v2.tags["fer_automl.classes"]) == ["happy", "surprise", "sad", "neutral"]
    from runners.registry.packaging import load_fer_model
    from runners.search.tracking import using_store

    with using_store(imported["uri"]):
        pred = load_fer_model(f"models:/{MODEL}/2")
    assert pred.classes == ["happy", "surprise", "sad", "neutral"] and pred.meta["imported"]["layout"] == "ma_net"

    # the same file as the same model again: version 2 reused, nothing logged; --force --reason moves
    # the held alias anyway and records why and over what
    capsys.readouterr()
    assert promote(imported["uri"], "--weights", str(pt), "--preset", str(imported["yaml"]), "--classes", classes,
                   "--image-size", str(SIZE), "--force", "--reason", "the published network") == 0
    assert "version 2 is already this file as this model: reused" in capsys.readouterr().out
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 2
    v2 = client.get_model_version_by_alias(MODEL, "champion")
    assert str(v2.version) == "2" and v2.tags["fer_automl.force_reason"] == "the published network"
    assert v2.tags["fer_automl.forced_over"].startswith("champion: version 1")


def test_a_partial_import_is_refused_in_one_line(tmp_path, capsys):
    """`models import-weights --partial` output leaves part of the model empty: promote refuses it,
    naming the file, the preset and the first missing tensors, and writes nothing."""
    from test_official_weights import manet_shapes, random_state

    sd = random_state(manet_shapes(7), seed=2)
    cut = tmp_path / "cut.pth"
    torch.save({"state_dict": {k: v for k, v in sd.items() if not k.startswith("layer3_1_p4.")}}, cut)
    assert main(["models", "import-weights", str(cut), "--preset", "ma_net", "--partial",
                 "--out", str(tmp_path / "cut.pt")]) == 0
    assert (tmp_path / "cut.pt.import.json").is_file()
    capsys.readouterr()
    db = tmp_path / "m.db"
    assert promote(f"sqlite:///{db}", "--weights", str(tmp_path / "cut.pt"), "--preset", "ma_net") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "cut.pt" in err and "does not fit --preset 'ma_net'" in err and "local_nets.3.0.conv1.weight" in err
    assert not db.exists()


@pytest.mark.slow
def test_an_official_ma_net_checkpoint_is_registered_with_its_layout(tmp_path, capsys):
    """The whole path of issue 12: an MA-Net checkpoint in the official layout -> import-weights ->
    promote --weights (the layout comes from import-weights' record) -> predict equals the model
    built with pretrained_path on the imported file."""
    from test_official_weights import manet_shapes, random_state

    from fer_models import preset_config

    sd = random_state(manet_shapes(7), seed=1)
    official = tmp_path / "model_best.pth"
    torch.save({"epoch": 40, "state_dict": {"module." + k: v for k, v in sd.items()}}, official)
    pt = tmp_path / "ma_net_rafdb.pt"
    assert main(["models", "import-weights", str(official), "--preset", "ma_net", "--out", str(pt)]) == 0
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    rafdb = "surprise,fear,disgust,happy,sad,angry,neutral"  # RAF-DB's label order, as the checkpoint's outputs
    assert promote(uri, "--weights", str(pt), "--preset", "ma_net", "--classes", rafdb,
                   "--image-size", "64", "--alias", "published") == 0
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    v = client.get_model_version_by_alias(MODEL, "published")
    assert v.tags["fer_automl.layout"] == "ma_net" and v.tags["fer_automl.preset"] == "ma_net"
    osha = hashlib.sha256(official.read_bytes()).hexdigest()
    assert v.tags["fer_automl.official_file"] == f"{official.resolve()} sha256:{osha}"

    from runners.registry.packaging import load_fer_model
    from runners.search.tracking import using_store

    with using_store(uri):
        pred = load_fer_model(f"models:/{MODEL}@published")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 64, 64, 3), dtype=np.uint8)
    got = pred.predict_proba(list(images))
    from runners.data.transforms import build_eval_transform, normalization_for

    model = build_model(preset_config("ma_net", pretrained_path=str(pt)), image_size=64).eval()
    tf = build_eval_transform(64, *normalization_for("resnet18"))
    x = torch.stack([torch.from_numpy(tf(image=im)["image"]).permute(2, 0, 1) for im in images])
    with torch.no_grad():
        want = model(x).logits.softmax(1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert pred.classes == rafdb.split(",")
