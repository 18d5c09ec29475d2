"""Ensembles and flip TTA (`promote --ensemble K --tta flip`, runners/registry/ensemble.py): member selection in a real
SQLite MLflow store, the exported module on members of different sizes, and end to end on a real small search
(local Ray): the registered model equals the mean of the members' softmax computed here from their own
weights, and predict, evaluate and the pyfunc model use it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fer_models import ModelConfig, build_model
from fer_models.errors import UserError
from runners.cli import main


# --- member selection: refit runs first --------------------------------------------------------------

def _store_with_stages(tmp: Path, stages):
    """A search `st` in a real SQLite store: one finished trial per (stage, val_balanced_accuracy)."""
    import mlflow

    from runners.search.tracking import TAG_KIND, TAG_SEARCH, TAG_STATUS

    uri = f"sqlite:///{tmp}/m.db"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("st", artifact_location=str(tmp / "art"))
    parent = client.create_run(exp, tags={TAG_KIND: "search", TAG_SEARCH: "st"})
    ids = {}
    for i, (stage, value, status) in enumerate(stages):
        tags = {TAG_KIND: "trial", TAG_SEARCH: "st", TAG_STATUS: status, "mlflow.parentRunId": parent.info.run_id,
                "fer_automl.trial_id": f"t{i}"}
        if stage is not None:
            tags["fer_automl.stage"] = stage
        run = client.create_run(exp, tags=tags, start_time=1000 + i)
        client.log_metric(run.info.run_id, "val_balanced_accuracy", value / 2, step=0)
        client.log_metric(run.info.run_id, "val_balanced_accuracy", value, step=1)
        ids[f"t{i}"] = run.info.run_id
    return uri, client, ids


def test_members_come_from_the_refit_stage_when_a_search_has_one(tmp_path):
    from runners.registry.ensemble import top_k

    # the search stage's best figures are higher (a low-fidelity figure), yet the refit runs are the members
    uri, client, ids = _store_with_stages(tmp_path, [
        ("search", 0.9, "finished"), ("search", 0.8, "finished"),
        ("refit", 0.6, "finished"), ("refit", 0.7, "finished"), ("refit", 0.5, "finished"),
        ("refit", 0.95, "failed")])
    cands, stage = top_k(client, "st", "val_balanced_accuracy", 2, uri)
    assert stage == "refit"
    assert [c.run_id for c in cands] == [ids["t3"], ids["t2"]]
    assert [c.value for c in cands] == [0.7, 0.6] and cands[0].epoch == 1
    with pytest.raises(UserError, match=r"--ensemble 4: .* only 3 finished refit-stage trial"):
        top_k(client, "st", "val_balanced_accuracy", 4, uri)


def test_members_without_a_refit_stage_are_all_finished_trials(tmp_path):
    from runners.registry.ensemble import top_k

    # old runs carry no stage tag; ties go to the trial that started first, as promote ranks them
    uri, client, ids = _store_with_stages(tmp_path, [
        (None, 0.4, "finished"), ("search", 0.6, "finished"), (None, 0.6, "finished"), (None, 0.9, "failed")])
    cands, stage = top_k(client, "st", "val_balanced_accuracy", 3, uri)
    assert stage == "search"
    assert [c.run_id for c in cands] == [ids["t1"], ids["t2"], ids["t0"]]
    with pytest.raises(UserError, match="whole number >= 1"):
        top_k(client, "st", "val_balanced_accuracy", 0, uri)


# --- the module: members of different sizes and normalisations ----------------------------------------

def _member_dir(root: Path, size: int, mean, std, seed: int) -> Path:
    torch.manual_seed(seed)
    mcfg = ModelConfig(backbone="resnet10t")
    model = build_model(mcfg, image_size=size)
    with torch.no_grad():  # random weights with some spread, so the members disagree visibly
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    root.mkdir(parents=True)
    torch.save(model.state_dict(), root / "model.pt")
    (root / "model_config.json").write_text(json.dumps({
        "trial": {"data": {"image_size": size}}, "model": mcfg.model_dump(), "classes": ["a", "b", "c"],
        "normalization": {"mean": mean, "std": std}}))
    return root


def _alone(art: Path, images, flip=False) -> np.ndarray:
    """A member alone, as `predict` feeds it: each image resized to its own size (the datasets' resize)."""
    from runners.data.imageio import resize_to
    from runners.registry.packaging import build_inference_module

    module, meta = build_inference_module(art)
    s = meta["image_size"]
    x = np.stack([resize_to(im[:, ::-1] if flip else im, (s, s)) for im in images])
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def test_ensemble_module_averages_members_of_different_sizes(tmp_path):
    from runners.registry.ensemble import Member, build_ensemble
    from runners.registry.packaging import _example, build_inference_module, export_inference_module

    arts = [_member_dir(tmp_path / "m0", 48, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], 0),
            _member_dir(tmp_path / "m1", 48, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 1),
            _member_dir(tmp_path / "m2", 24, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], 2)]
    members = []
    for a in arts:
        module, meta = build_inference_module(a)
        members.append(Member(cand=None, art=a, module=module, meta=meta))
    rng = np.random.default_rng(3)
    # smooth images (an area resize of noise is the worst case for comparing two resize paths)
    small = rng.integers(0, 256, size=(5, 6, 6, 3)).astype(np.float32)
    images = [np.clip(np.kron(im, np.ones((8, 8, 1))), 0, 255).astype(np.uint8) for im in small]
    for tta in ("none", "flip"):
        ens, meta = build_ensemble(members, tta)
        assert meta["image_size"] == 48 and meta["ensemble"]["k"] == 3 and meta["ensemble"]["tta"] == tta
        with torch.no_grad():
            got = ens(torch.from_numpy(np.stack(images))).numpy()
        views = [False, True] if tta == "flip" else [False]
        want = np.mean([_alone(a, images, flip=f) for a in arts for f in views], axis=0)
        np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
        # the 48-px members see exactly their own pixels; the 24-px one the same area resize (8x8 blocks
        # become 4x4 blocks in both paths)
        np.testing.assert_allclose(got, want, atol=1e-5)
        spread = np.abs(_alone(arts[0], images) - _alone(arts[2], images)).max()
        assert spread > 1e-3, "the members agree: the test would not see a member left out"
        exported = export_inference_module(ens, _example(48), where="test")
        with torch.no_grad():
            again = exported.module()(torch.from_numpy(np.stack(images))).numpy()
        np.testing.assert_allclose(again, got, atol=1e-5)


def test_members_must_share_classes(tmp_path):
    from runners.registry.ensemble import Member, check_compatible
    from runners.registry.packaging import build_inference_module

    a = _member_dir(tmp_path / "a", 32, [0.5] * 3, [0.5] * 3, 0)
    b = _member_dir(tmp_path / "b", 32, [0.5] * 3, [0.5] * 3, 1)
    cfg = json.loads((b / "model_config.json").read_text())
    cfg["classes"] = ["a", "c", "b"]
    (b / "model_config.json").write_text(json.dumps(cfg))

    class _Cand:
        def __init__(self, rid):
            self.run_id = rid

    ms = [Member(_Cand(n), d, *build_inference_module(d)) for n, d in (("ra", a), ("rb", b))]
    with pytest.raises(UserError, match="members must share their classes"):
        check_compatible(ms)


# --- end to end on a real search ---------------------------------------------------------------------

SEARCH = "ensemble-it"
MODEL = "fer-ensemble-it"
SPACE = {
    # as tests/test_registry.py: fixed learning rates give deterministic trials whose figures differ
    "dimensions": {"lr": {"type": "choice", "values": [0.02, 0.003, 0.00001]}},
    "constants": {"model.backbone": "resnet10t", "train.epochs": 1, "train.batch_size": 32, "train.optimizer": "adamw",
                  "data.image_size": 32, "data.aug_strength": 0.0},
    "search": {"name": SEARCH, "dataset": {"format": "synthetic", "n": 210, "image_size": 32},
               "algorithm": "grid", "scheduler": {"type": "fifo"}, "num_samples": 1, "max_concurrent": 2,
               "resources": {"cpu": 1, "gpu": 0}, "max_failures": 0},
}


@pytest.fixture(scope="module")
def ensemble(module_tmp):
    """A real 3-trial search in a SQLite store, then `promote --ensemble 2 --tta flip`."""
    import mlflow
    import ray

    from tests.conftest import search_runs

    tmp = module_tmp("ensemble-search")
    uri = f"sqlite:///{tmp}/mlflow.db"
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    try:
        rc = main(["search", str(space), "--tracking-uri", uri, "--storage-path", str(tmp / "ray")])
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert rc == 0
    client, exp, _, runs = search_runs(uri, SEARCH)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    rc = main(["promote", "--search", SEARCH, "--ensemble", "2", "--tta", "flip", "--model-name", MODEL,
               "--tracking-uri", uri])
    assert rc == 0
    version = client.get_model_version_by_alias(MODEL, "champion")
    return uri, client, tmp, runs, version


def _members_by_hand(client, run_ids, images, tmp: Path) -> np.ndarray:
    """Each member's softmax from its own weights through its trial's eval pipeline, on the image and
    its mirror, averaged: computed without runners.registry.ensemble or runners.registry.packaging."""
    from runners.data.transforms import build_eval_transform

    outs = []
    for rid in run_ids:
        dst = tmp / rid
        client.download_artifacts(rid, "trial", str(dst))
        cfg = json.loads((dst / "trial" / "model_config.json").read_text())
        size = int(cfg["trial"]["data"]["image_size"])
        model = build_model(ModelConfig(**cfg["model"]), image_size=size)
        model.load_state_dict(torch.load(dst / "trial" / "model.pt", weights_only=True))
        model.eval()
        tf = build_eval_transform(size, cfg["normalization"]["mean"], cfg["normalization"]["std"])
        for flip in (False, True):
            x = torch.stack([torch.from_numpy(tf(image=np.ascontiguousarray(im[:, ::-1] if flip else im))["image"])
                             .permute(2, 0, 1) for im in images])
            with torch.no_grad():
                outs.append(model(x).logits.softmax(1).numpy())
    return np.mean(outs, axis=0)


def _images(n=8):
    from runners.data import load_dataset

    ds = load_dataset("synthetic", None, image_size=32, n=210, size=32, seed=7, cache=False)
    return [np.ascontiguousarray(im) for im in ds.images[:n]]


@pytest.mark.slow
def test_promote_ensemble_registers_the_mean_of_the_top_two(ensemble, tmp_path):
    import mlflow

    from runners.registry.promote import selected_value
    from runners.search.tracking import using_store

    uri, client, tmp, runs, version = ensemble
    finished = [r for r in runs if r.data.tags["fer_automl.status"] == "finished"]
    assert len(finished) == 3
    ranked = sorted(finished, key=lambda r: (-selected_value(client, r, "val_balanced_accuracy"), r.info.start_time))
    top2 = [r.info.run_id for r in ranked[:2]]
    t = version.tags
    assert t["fer_automl.ensemble.k"] == "2" and t["fer_automl.ensemble.tta"] == "flip"
    assert t["fer_automl.ensemble.stage"] == "search"
    listed = json.loads(t["fer_automl.ensemble.members"])
    assert [m["run_id"] for m in listed] == top2
    best = selected_value(client, ranked[0], "val_balanced_accuracy")
    assert listed[0]["val_balanced_accuracy"] == pytest.approx(best)
    assert t["fer_automl.ensemble.member.1"].startswith(top2[1])
    assert "fer_automl.run_id" not in t  # a single promote of a member must not find the ensemble as its version
    images = _images()
    want = _members_by_hand(client, top2, images, tmp_path)
    with using_store(uri):
        pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version.version}")
    got = np.asarray(pyfunc.predict(np.stack(images)))
    assert got.shape == (8, 7) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    # not a single member, nor the ensemble without the mirror
    single = _members_by_hand(client, top2[:1], images, tmp_path / "one")
    assert np.abs(got - single).max() > 1e-4
    assert pyfunc.metadata.metadata["fer_automl"]["ensemble"]["members"][0]["model_uri"].startswith("models:/")


@pytest.mark.slow
def test_promote_same_ensemble_again_reuses_the_version(ensemble, capsys):
    uri, client, tmp, runs, version = ensemble
    capsys.readouterr()
    rc = main(["promote", "--search", SEARCH, "--ensemble", "2", "--tta", "flip", "--model-name", MODEL,
               "--tracking-uri", uri])
    assert rc == 0
    assert "is already this ensemble: reused" in capsys.readouterr().out
    # a different ensemble (no TTA) is a new version, and the alias does not move to it without --force
    rc = main(["promote", "--search", SEARCH, "--ensemble", "2", "--model-name", MODEL, "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert rc == 3 and "has no val_balanced_accuracy figure of its own" in err
    assert client.get_model_version_by_alias(MODEL, "champion").version == version.version


@pytest.mark.slow
def test_predict_and_evaluate_use_the_ensemble(ensemble, tmp_path, capsys, monkeypatch):
    import cv2

    uri, client, tmp, runs, version = ensemble
    images = _images(3)
    paths = []
    for i, im in enumerate(images):
        p = tmp_path / f"f{i}.png"
        cv2.imwrite(str(p), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
        paths.append(str(p))
    member_ids = [m["run_id"] for m in json.loads(version.tags["fer_automl.ensemble.members"])]
    want = _members_by_hand(client, member_ids, images, tmp_path / "w")
    capsys.readouterr()
    rc = main(["predict", "--model", f"models:/{MODEL}@champion", "--tracking-uri", uri, "--json", *paths])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    rows = out if isinstance(out, list) else out["results"]
    classes = json.loads(version.tags["fer_automl.classes"])
    got = np.array([[r["probabilities"][c] for c in classes] for r in rows])
    np.testing.assert_allclose(got, want, atol=1e-4)

    rc = main(["evaluate", "--model", f"models:/{MODEL}@champion", "--format", "synthetic", "-o", "n=210",
               "-o", "size=32", "--tracking-uri", uri, "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    members = report["ensemble_members"]
    assert [m["run_id"] for m in members] == member_ids
    assert all(m["num_images"] == report["num_images"] for m in members)
    # each member's row is its own model on the same images: its test accuracy equals the trial's own
    # (same data, same split, same pixels) as logged on its run
    for m in members:
        assert m["metrics"]["accuracy"] == pytest.approx(client.get_run(m["run_id"]).data.metrics["test_accuracy"],
                                                         abs=1e-6)
    run = client.get_run(report["mlflow"]["run_id"])
    assert run.data.metrics["member1_test_macro_f1"] == pytest.approx(members[1]["metrics"]["macro_f1"])

    rc = main(["evaluate", "--model", f"models:/{MODEL}@champion", "--format", "synthetic", "-o", "n=210",
               "-o", "size=32", "--tracking-uri", uri, "--no-log"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "members and ensemble on the same" in text
    lines = [ln.strip() for ln in text.splitlines()]
    assert any(ln.startswith("member 0 trial") for ln in lines) and any(ln.startswith("member 1 trial") for ln in lines)
    ens_line = next(ln for ln in lines if ln.startswith("ensemble of 2 + flip TTA"))
    assert f"{report['metrics']['balanced_accuracy']:.4f}" in ens_line
