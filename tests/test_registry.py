"""Promotion to the MLflow registry and serving: a real tiny search (local Ray), a real MLflow server on
127.0.0.1, the promoted model loaded in a fresh process and served by `mlflow models serve`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import yaml

from runners.cli import main
from tests.conftest import REPO, free_port, search_runs


pytestmark = pytest.mark.slow

SEARCH = "registry-it"
MODEL = "fer-expression-it"  # its own registered model: other tests may share the session's server
SPACE = {
    # three fixed learning rates: deterministic trials whose validation figures differ (a ResNet:
    # the ~1 M-parameter MobileNet of the other search tests predicts one class for all three here)
    "dimensions": {"lr": {"type": "choice", "values": [0.02, 0.003, 0.00001]}},
    "constants": {"model.backbone": "resnet10t", "train.epochs": 1, "train.batch_size": 32, "train.optimizer": "adamw",
                  "data.image_size": 32, "data.aug_strength": 0.0},
    "search": {"name": SEARCH, "dataset": {"format": "synthetic", "n": 210, "image_size": 32},
               "algorithm": "grid", "scheduler": {"type": "fifo"}, "num_samples": 1, "max_concurrent": 2,
               "resources": {"cpu": 1, "gpu": 0}, "max_failures": 0},
}


@pytest.fixture(scope="module")
def search(mlflow_server, module_tmp):
    """The finished trials of one real search: {run_id: val_balanced_accuracy}, plus the client."""
    import ray

    tmp = module_tmp("registry-search")
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    try:
        rc = main(["search", str(space), "--tracking-uri", mlflow_server.uri, "--storage-path", str(tmp / "ray")])
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert rc == 0
    client, exp, _, runs = search_runs(mlflow_server.uri, SEARCH)
    finished = {r.info.run_id: r for r in runs if r.data.tags["fer_automl.status"] == "finished"}
    assert len(finished) == 3
    return client, exp, finished


def promote(uri, *args):
    return main(["promote", "--tracking-uri", uri, "--model-name", MODEL, *args])


@pytest.fixture(scope="module")
def champion(search, mlflow_server):
    """The first promotion of the search (nothing held the alias yet)."""
    rc = promote(mlflow_server.uri, "--search", SEARCH)
    assert rc == 0
    client = search[0]
    return client.get_model_version_by_alias(MODEL, "champion")


def versions(client):
    return sorted(client.search_model_versions(f"name = '{MODEL}'"), key=lambda v: int(v.version))


def holder_artifacts(client, tmp_path) -> Path:
    """The current champion's trial artifacts (model.pt + model_config.json), downloaded."""
    holder = client.get_model_version_by_alias(MODEL, "champion")
    out = tmp_path / "holder"
    client.download_artifacts(holder.tags["fer_automl.run_id"], "trial", str(out))
    return out / "trial"


def trial_probabilities(art: Path, images):
    """What the trial's own evaluation computes: its eval pipeline, its model, softmax."""
    import torch

    from fer_models import ModelConfig, build_model
    from runners.data.transforms import build_eval_transform

    cfg = json.loads((art / "model_config.json").read_text())
    size = int(cfg["trial"]["data"]["image_size"])
    model = build_model(ModelConfig(**cfg["model"]), image_size=size)
    model.load_state_dict(torch.load(art / "model.pt", weights_only=True))
    model.eval()
    tf = build_eval_transform(size, cfg["normalization"]["mean"], cfg["normalization"]["std"])
    x = torch.stack([torch.from_numpy(tf(image=im)["image"]).permute(2, 0, 1) for im in images])
    with torch.no_grad():
        return model(x).logits.softmax(1).numpy()


def sample_images(n=10):
    from runners.data import load_dataset

    ds = load_dataset("synthetic", None, image_size=32, n=210, size=32, seed=7, cache=False)
    return [np.ascontiguousarray(im) for im in ds.images[:n]]


def test_promote_picks_the_best_trial_and_tags_the_version(search, champion, mlflow_server, capsys):
    client, exp, finished = search
    from runners.registry.promote import selected_value

    figures = {rid: selected_value(client, run, "val_balanced_accuracy") for rid, run in finished.items()}
    best = max(figures.values())
    # ties go to the trial that started first
    expected = min((r for rid, r in finished.items() if figures[rid] == best), key=lambda r: r.info.start_time)
    t = champion.tags
    assert t["fer_automl.run_id"] == expected.info.run_id
    assert t["fer_automl.search"] == SEARCH and t["fer_automl.trial_id"] == expected.data.tags["fer_automl.trial_id"]
    assert t["fer_automl.metric"] == "val_balanced_accuracy" and t["fer_automl.split"] == "validation"
    assert float(t["fer_automl.metric_value"]) == pytest.approx(best)
    assert float(t["fer_automl.metric.test_accuracy"]) == pytest.approx(expected.data.metrics["test_accuracy"])
    parent = client.get_run(expected.data.tags["mlflow.parentRunId"]).data.params
    assert t["fer_automl.dataset_fingerprint"] == parent["dataset.fingerprint"] != ""
    assert t["fer_automl.dataset_name"] == "synthetic"
    assert t["fer_automl.git_commit"] == parent["git_commit"]
    assert json.loads(t["fer_automl.trial_config"])["train"]["lr"] == float(expected.data.params["lr"])
    assert json.loads(t["fer_automl.classes"]) == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert t["fer_automl.image_size"] == "32" and t["fer_automl.serialization"] == "pt2"
    # the logged model lives in the search's experiment, linked to the trial's run (still FINISHED)
    assert champion.source.startswith("models:/m-")
    logged = client.get_logged_model(champion.source.split("/", 1)[1])
    assert logged.experiment_id == exp.experiment_id and logged.source_run_id == expected.info.run_id
    assert client.get_run(expected.info.run_id).info.status == "FINISHED"
    # promoting again: the same version, nothing logged
    before = versions(client)
    capsys.readouterr()
    assert promote(mlflow_server.uri, "--search", SEARCH) == 0
    out = capsys.readouterr().out
    assert f"version {champion.version} is already this run's model" in out
    assert [v.version for v in versions(client)] == [v.version for v in before]
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion.version


def test_champion_loads_in_a_fresh_process_and_predicts_as_the_trial(search, champion, mlflow_server, tmp_path):
    import cv2

    client = search[0]
    images = sample_images()
    for i, im in enumerate(images):
        assert cv2.imwrite(str(tmp_path / f"face_{i}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    script = (
        "import glob, json, sys, cv2\n"
        "from runners.registry.packaging import load_fer_model\n"
        f"m = load_fer_model('models:/{MODEL}@champion')\n"
        "paths = sorted(glob.glob(sys.argv[1] + '/face_*.png'), key=lambda p: int(p.rsplit('_', 1)[1][:-4]))\n"
        "imgs = [cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2RGB) for p in paths]\n"
        "print(json.dumps({'classes': m.classes, 'serialization': m.meta['serialization'],"
        " 'probs': m.predict_proba(imgs).tolist()}))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": mlflow_server.uri}
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=300, cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["serialization"] == "pt2" and got["classes"][0] == "angry"
    want = trial_probabilities(holder_artifacts(client, tmp_path), images)
    probs = np.asarray(got["probs"])
    assert probs.shape == want.shape == (len(images), 7)
    np.testing.assert_array_equal(probs.argmax(1), want.argmax(1))
    np.testing.assert_allclose(probs, want, atol=1e-5)


def test_a_worse_run_is_refused_then_forced(search, champion, mlflow_server, capsys):
    client, exp, finished = search
    champ_value = float(champion.tags["fer_automl.metric_value"])
    from runners.registry.promote import selected_value

    worse = [(selected_value(client, r, "val_balanced_accuracy"), rid) for rid, r in finished.items()]
    worse = sorted(w for w in worse if w[0] < champ_value)
    assert worse, "the three learning rates gave no lower figure"
    value, rid = worse[0]
    n_before = len(versions(client))
    capsys.readouterr()
    assert promote(mlflow_server.uri, "--run", rid) == 3
    err = capsys.readouterr().err
    assert "refused" in err and f"{value:.4f}" in err and f"{champ_value:.4f}" in err, err
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion.version
    new = versions(client)
    assert len(new) == n_before + 1 and new[-1].tags["fer_automl.run_id"] == rid  # registered, alias kept
    # twice: the same version, still refused
    assert promote(mlflow_server.uri, "--run", rid) == 3
    assert len(versions(client)) == n_before + 1
    # forced: the alias moves, the reason is recorded
    assert promote(mlflow_server.uri, "--run", rid, "--force", "--reason", "check the forced path") == 0
    moved = client.get_model_version_by_alias(MODEL, "champion")
    assert moved.version == new[-1].version
    assert moved.tags["fer_automl.force_reason"] == "check the forced path"
    assert f"version {champion.version}" in moved.tags["fer_automl.forced_over"]
    assert len(versions(client)) == n_before + 1
    # and back, for the tests after this one: the better version beats the forced one
    assert promote(mlflow_server.uri, "--search", SEARCH) == 0
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion.version


def test_mlflow_models_serve_answers_with_the_trials_predictions(search, champion, mlflow_server, tmp_path):
    client = search[0]
    images = sample_images(4)
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL}@champion",
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                            env=env, cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            try:
                with urllib.request.urlopen(base + "/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, "mlflow models serve exited: " + proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "mlflow models serve did not answer /ping in 240 s"
            time.sleep(1)
        body = json.dumps({"inputs": np.stack(images).tolist()}).encode()
        req = urllib.request.Request(base + "/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            got = np.asarray(json.loads(r.read())["predictions"])
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # only the process group this test started
            proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    want = trial_probabilities(holder_artifacts(client, tmp_path), images)
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_bad_input_is_named(search, mlflow_server, capsys):
    client, exp, finished = search
    uri = mlflow_server.uri
    failed = client.create_run(exp.experiment_id, tags={"fer_automl.kind": "trial", "fer_automl.status": "failed",
                                                        "fer_automl.search": SEARCH}).info.run_id
    client.set_terminated(failed, "FAILED")
    cases = [
        (["--search", "no-such-search"], "'no-such-search'"),
        (["--run", "0123456789abcdef0123456789abcdef"], "'0123456789abcdef0123456789abcdef': no such run"),
        (["--run", failed], "is a failed trial"),
        (["--search", SEARCH, "--metric", "val_auc"], "metric 'val_auc' is not logged"),
        (["--search", SEARCH, "--metric", "train_loss"], "--metric 'train_loss'"),
        (["--search", SEARCH, "--force"], "--force needs --reason"),
    ]
    n_before = len(versions(client))
    for args, expect in cases:
        capsys.readouterr()
        assert promote(uri, *args) == 2, args
        err = capsys.readouterr().err
        assert expect in err, (args, err)
    assert len(versions(client)) == n_before
