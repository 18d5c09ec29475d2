"""`fer-automl predict` and `fer-automl evaluate` against a real MLflow server on 127.0.0.1.

One model for the whole module (logging takes seconds): a 1-epoch trial on synthetic faces,
logged with `log_fer_model` and registered as version 1 of a registered model with the alias
`champion`. Expected values are computed here, independently of runners.serving.evaluate.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest

from _space_helpers import SEARCH_TEST_BACKBONE
from conftest import run_cli
from fer_models import ModelConfig
from runners.cli import main
from runners.data import FERDataset, load_dataset
from runners.serving.evaluate import class_key, evaluate_dataset, match_classes
from runners.registry.packaging import load_fer_model, log_fer_model
from runners.training.trial import DataSpec, run_trial
from search_spaces import DataConfig, TrainConfig, TrialConfig

REPO = Path(__file__).resolve().parents[1]
NAME = "fer-predict-test"
SYNTH = DataSpec(format="synthetic", options={"n": 160, "size": 32}, seed=5)
SYNTH_ARGS = ["--format", "synthetic", "-o", "n=160", "-o", "size=32", "--seed", "5"]


def cmu_root() -> Path:
    env = os.environ.get("FER_AUTOML_SHARED_DATA")
    return (Path(env) if env else REPO.parent / "shared" / "data") / "cmu_faces"


def haar_available() -> bool:
    from runners.serving.predict import _cascade_class, find_cascade_file

    return _cascade_class() is not None and find_cascade_file() is not None


@pytest.fixture(scope="module")
def env(module_tmp):
    """Environment of the CLI runs: the decode cache in a temporary folder."""
    return {"FER_AUTOML_CACHE_DIR": str(module_tmp("cache"))}


@pytest.fixture(scope="module")
def model(module_tmp, mlflow_server, env):
    old_env = os.environ.get("FER_AUTOML_CACHE_DIR")
    os.environ["FER_AUTOML_CACHE_DIR"] = env["FER_AUTOML_CACHE_DIR"]
    ds = SYNTH.load(32)
    cfg = TrialConfig(model=ModelConfig(backbone=SEARCH_TEST_BACKBONE), train=TrainConfig(epochs=1, batch_size=32),
                      data=DataConfig(image_size=32, aug_strength=0.0))
    reports = []
    run_trial(cfg, ds, out_dir=module_tmp("trial"), report=lambda m, c: reports.append((m, c)))
    metrics, ckpt = reports[-1]
    old_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server.uri)
    client = mlflow.MlflowClient(mlflow_server.uri)
    # an experiment by id, not mlflow.set_experiment: that would leave this module's experiment
    # active for the modules after it (which use their own stores)
    exp = client.get_experiment_by_name("predict-evaluate-tests")
    exp_id = exp.experiment_id if exp else client.create_experiment("predict-evaluate-tests")
    with mlflow.start_run(experiment_id=exp_id):
        info = log_fer_model(ckpt / "artifacts")
    mv = mlflow.register_model(info.model_uri, NAME)
    client.set_registered_model_alias(NAME, "champion", mv.version)
    predictor = load_fer_model(f"models:/{NAME}/{mv.version}")
    yield {"ds": ds, "trial_metrics": metrics, "predictor": predictor, "version": str(mv.version), "art": ckpt / "artifacts",
           "uri": f"models:/{NAME}/{mv.version}", "alias_uri": f"models:/{NAME}@champion",
           "server": mlflow_server.uri, "client": client}
    mlflow.set_tracking_uri(old_uri)
    if old_env is None:
        os.environ.pop("FER_AUTOML_CACHE_DIR", None)
    else:
        os.environ["FER_AUTOML_CACHE_DIR"] = old_env


def write_png(path: Path, rgb: np.ndarray) -> Path:
    bgr = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    assert cv2.imwrite(str(path), bgr)
    return path


def three_images(ds, tmp_path):
    """Two colour images (one at twice the model's size) and a grayscale one, as PNG files."""
    a = np.asarray(ds.images[0])
    b = np.kron(np.asarray(ds.images[1]), np.ones((2, 2, 1), np.uint8))
    g = cv2.cvtColor(np.asarray(ds.images[2]), cv2.COLOR_RGB2GRAY)
    paths = [write_png(tmp_path / "a.png", a), write_png(tmp_path / "b.png", b), write_png(tmp_path / "gray.png", g)]
    return paths, [a, b, np.repeat(g[..., None], 3, axis=2)]


# --- predict -----------------------------------------------------------------------------------

def test_predict_lines_match_the_model(model, env, tmp_path):
    paths, arrays = three_images(model["ds"], tmp_path)
    want = model["predictor"].predict_proba(arrays)
    r = run_cli("predict", "--model", model["alias_uri"], "--tracking-uri", model["server"],
                *map(str, paths), env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3
    for line, path, p in zip(lines, paths, want):
        got_path, label, prob = line.split("\t")
        assert got_path == str(path)
        assert label == model["predictor"].classes[int(p.argmax())]
        assert float(prob) == pytest.approx(float(p.max()), abs=1e-5)


def test_predict_json_with_bad_files(model, env, tmp_path):
    paths, arrays = three_images(model["ds"], tmp_path)
    want = model["predictor"].predict_proba(arrays)
    missing = tmp_path / "missing.png"
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    args = [str(paths[0]), str(missing), str(paths[1]), str(junk), str(paths[2])]
    r = run_cli("predict", "--model", model["uri"], "--tracking-uri", model["server"], "--json", *args, env=env)
    assert r.returncode == 4, r.stderr
    assert "2 of 5 image(s) failed" in r.stderr
    out = json.loads(r.stdout)
    assert [o["path"] for o in out] == args
    assert set(out[1]) == {"path", "error"} and "no such file" in out[1]["error"]
    assert set(out[3]) == {"path", "error"} and "not a readable image" in out[3]["error"]
    classes = model["predictor"].classes
    for o, p in zip((out[0], out[2], out[4]), want):
        assert set(o) == {"path", "label", "probabilities"}
        assert list(o["probabilities"]) == classes
        np.testing.assert_allclose([o["probabilities"][c] for c in classes], p, atol=1e-5)
        assert o["label"] == classes[int(p.argmax())]


def test_predict_detect_faces_on_a_real_face(model, env, tmp_path):
    if not haar_available():
        pytest.skip("the installed OpenCV has no Haar cascade (OpenCV 5 wheels dropped it; pyproject asks for <5)")
    face = cmu_root() / "an2i" / "an2i_straight_neutral_open.pgm"
    if not face.is_file():
        pytest.skip(f"CMU Face Images not found at {cmu_root()} (set FER_AUTOML_SHARED_DATA)")
    from runners.serving.predict import FaceDetector, read_image

    blank = write_png(tmp_path / "blank.png", np.full((120, 128, 3), 128, np.uint8))
    r = run_cli("predict", "--model", model["uri"], "--tracking-uri", model["server"], "--detect-faces", "--json",
                str(face), str(blank), env=env)
    assert r.returncode == 4, r.stderr
    found, none = json.loads(r.stdout)
    assert none == {"path": str(blank), "error": "no face found"}
    box = found["face_box"]
    rgb = read_image(face)
    h, w = rgb.shape[:2]
    assert 24 <= box["width"] < w and 24 <= box["height"] < h          # a crop, not the whole image
    assert box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= w and box["y"] + box["height"] <= h
    assert box["x"] < w / 2 < box["x"] + box["width"] and box["y"] < h / 2 < box["y"] + box["height"]
    crop = rgb[box["y"]:box["y"] + box["height"], box["x"]:box["x"] + box["width"]]
    np.testing.assert_array_equal(FaceDetector().crop(rgb)[0], crop)
    want = model["predictor"].predict_proba([crop])[0]
    np.testing.assert_allclose([found["probabilities"][c] for c in model["predictor"].classes], want, atol=1e-5)


def test_predict_bad_usage(model, capsys, monkeypatch, tmp_path):
    with pytest.raises(SystemExit) as exc:          # no images: argparse's usage error
        main(["predict", "--model", model["uri"]])
    assert exc.value.code == 2
    capsys.readouterr()
    img = write_png(tmp_path / "a.png", np.asarray(model["ds"].images[0]))
    assert main(["predict", "--model", f"models:/{NAME}-nope/1", "--tracking-uri", model["server"], str(img)]) == 2
    assert f"models:/{NAME}-nope/1" in capsys.readouterr().err
    import runners.serving.predict as rp

    monkeypatch.setattr(rp, "_cascade_class", lambda: None)   # as with an OpenCV 5 wheel
    assert main(["predict", "--model", model["uri"], "--detect-faces", str(img)]) == 2
    assert "opencv-python-headless<5" in capsys.readouterr().err


def trial_eval_probabilities(art: Path, images) -> np.ndarray:
    """The trial's own evaluation: its eval transform, then its torch model, then softmax."""
    import torch

    from fer_models import build_model
    from runners.data.transforms import build_eval_transform
    from runners.registry.packaging import read_model_config

    cfg = read_model_config(art)
    size = int(cfg["trial"]["data"]["image_size"])
    net = build_model(ModelConfig(**cfg["model"]), image_size=size)
    net.load_state_dict(torch.load(art / "model.pt", weights_only=True))
    net.eval()
    tf = build_eval_transform(size, cfg["normalization"]["mean"], cfg["normalization"]["std"])
    x = torch.stack([torch.from_numpy(tf(image=np.asarray(im))["image"]).permute(2, 0, 1) for im in images])
    with torch.no_grad():
        return net(x).logits.softmax(1).numpy()


def test_predict_sees_the_pixels_of_the_trials_evaluation(model, tmp_path, capsys):
    """Issue 10: one decode (EXIF orientation applied) and one resize for the datasets, the trial's
    evaluation and predict. An EXIF-rotated JPEG and an image smaller than the model's input, read
    by `predict`, give the probabilities of the trial's own pipeline (dataset decode + eval
    transform + model) to 1e-5."""
    from PIL import Image

    from runners.data.synth import generate
    from runners.serving.predict import read_image

    faces = generate(3, size=48, seed=11).images
    upright = np.ascontiguousarray(faces[0][:, 6:42])              # 48 rows x 36 columns: orientation shows
    stored = np.ascontiguousarray(np.rot90(upright, 1))            # 36 x 48, as a camera held sideways stores it
    exif = Image.Exif()
    exif[0x0112] = 6                                               # "rotate 90 clockwise to display"
    Image.fromarray(stored).save(tmp_path / "rotated.jpg", quality=95, exif=exif.tobytes())
    small = cv2.resize(faces[1], (20, 20), interpolation=cv2.INTER_AREA)   # upscaled to 32 for the model
    write_png(tmp_path / "small.png", small)
    write_png(tmp_path / "big.png", faces[2])                      # downscaled
    (tmp_path / "manifest.csv").write_text("path,label,split\nrotated.jpg,happy,train\nsmall.png,sad,val\n"
                                           "big.png,angry,test\n")

    # the decode is upright: the shape of the upright image, its pixels up to JPEG's loss
    got = read_image(tmp_path / "rotated.jpg")
    assert got.shape == upright.shape
    assert float(np.abs(got.astype(int) - upright.astype(int)).mean()) < 4.0

    ds = load_dataset("csv", tmp_path / "manifest.csv", image_size=32, cache=False)   # the trial's data path
    order = [list(ds.keys).index(k) for k in ("rotated.jpg", "small.png", "big.png")]
    images = [np.asarray(ds.images[i]) for i in order]
    predictor = model["predictor"]
    for path, want in zip(("rotated.jpg", "small.png", "big.png"), images):   # the same pixels reach the model
        np.testing.assert_array_equal(predictor.prepare(read_image(tmp_path / path)), want)
    want = trial_eval_probabilities(model["art"], images)

    paths = [str(tmp_path / n) for n in ("rotated.jpg", "small.png", "big.png")]
    assert main(["predict", "--model", model["uri"], "--tracking-uri", model["server"], "--json", *paths]) == 0
    out = json.loads(capsys.readouterr().out)
    classes = predictor.classes
    got = np.array([[o["probabilities"][c] for c in classes] for o in out])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_predict_refuses_a_fifo_without_blocking(model, tmp_path, capsys):
    """A FIFO (or socket, device) is not read: opening it would wait for a writer forever. It is a
    per-image error like any unreadable file; the other images are predicted (exit 1)."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    img = write_png(tmp_path / "a.png", np.asarray(model["ds"].images[0]))
    assert main(["predict", "--model", model["uri"], "--tracking-uri", model["server"], str(fifo), str(img)]) == 4
    cap = capsys.readouterr()
    assert f"{fifo}\tERROR\tnot a regular file" in cap.out
    assert f"{img}\t" in cap.out and "1 of 2 image(s) failed" in cap.err


def _cmu_faces_in_frames(tmp_path: Path, n_faces: int = 8, n_blank: int = 3):
    """CMU frontal faces pasted into 256 x 256 gray frames (the face a small part of the photo, as in
    a lab set), and blank frames without a face; a CSV manifest over them."""
    from runners.serving.predict import FaceDetector

    detector = FaceDetector()
    tmp_path.mkdir(parents=True, exist_ok=True)
    rows, faces, blanks = ["path,label,split"], [], []
    rng = np.random.default_rng(0)
    splits = ["train", "val", "test"]
    for f in sorted(cmu_root().glob("*/*_straight_*_open.pgm")):
        if len(faces) == n_faces:
            break
        face = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        frame = np.full((256, 256), 110, np.uint8)
        y, x = int(rng.integers(0, 256 - face.shape[0])), int(rng.integers(0, 256 - face.shape[1]))
        frame[y:y + face.shape[0], x:x + face.shape[1]] = face
        rgb = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
        if detector.detect(rgb) is None:            # the test needs faces the cascade finds
            continue
        name = f"face{len(faces)}.png"
        write_png(tmp_path / name, rgb)
        faces.append((name, f.stem.split("_")[2], rgb))
        rows.append(f"{name},{faces[-1][1]},{splits[len(faces) % 3]}")
    for k in range(n_blank):
        name = f"blank{k}.png"
        write_png(tmp_path / name, np.full((256, 256, 3), 90 + 20 * k, np.uint8))
        blanks.append(name)
        rows.append(f"{name},neutral,{splits[k % 3]}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    assert len(faces) == n_faces
    return tmp_path / "manifest.csv", faces, blanks


def test_evaluate_detect_faces_crops_and_reports_images_without_a_face(model, env, tmp_path, capsys):
    """Issue 10: a model trained on face crops, evaluated on photos whose face is a small part of the
    frame, needs the face crop of predict. With --detect-faces each image is cropped to its face (at
    the image's own size), and images without a face are counted, listed and left out of the metrics."""
    if not haar_available():
        pytest.skip("the installed OpenCV has no Haar cascade")
    if not cmu_root().is_dir():
        pytest.skip(f"CMU Face Images not found at {cmu_root()} (set FER_AUTOML_SHARED_DATA)")
    from runners.serving.predict import FaceDetector

    manifest, faces, blanks = _cmu_faces_in_frames(tmp_path / "set")
    out_dir = tmp_path / "report"
    rc = main(["evaluate", "--model", model["uri"], "--tracking-uri", model["server"], "--format", "csv",
               "--data", str(manifest), "--split", "all", "--detect-faces", "--output-dir", str(out_dir)])
    text = capsys.readouterr().out
    assert rc == 0
    assert f"faces:   found in {len(faces)} of {len(faces) + len(blanks)} images" in text
    assert f"{len(blanks)} without a face are left out of every metric" in text
    report = json.loads((out_dir / "evaluation.json").read_text())
    assert report["num_no_face"] == len(blanks) and sorted(report["face_detection"]["no_face"]) == blanks
    assert report["num_images"] == len(faces)
    # the crops were applied: the metrics are those of predict --detect-faces on each face image
    predictor, detector = model["predictor"], FaceDetector()
    crops = [detector.crop(rgb)[0] for _, _, rgb in faces]
    assert all(c is not None and c.shape[0] < 256 for c in crops)
    p = predictor.predict_proba(crops).argmax(1)
    y = np.array([predictor.classes.index(label) for _, label, _ in faces])
    assert report["metrics"]["accuracy"] == pytest.approx(float(np.mean(p == y)), abs=1e-9)
    run_id = re.search(r"logged: run ([0-9a-f]+)", text).group(1)
    run = model["client"].get_run(run_id)
    assert run.data.metrics["all_num_no_face"] == len(blanks) and run.data.metrics["all_num_images"] == len(faces)
    assert run.data.params["detect_faces"] == "True"


# --- evaluate ----------------------------------------------------------------------------------

def independent_metrics(y, p, k):
    """accuracy, mean recall over the classes present, mean F1 over the same classes: by hand."""
    y, p = list(map(int, y)), list(map(int, p))
    present = sorted(set(y))
    recalls, f1s = [], []
    for c in present:
        tp = sum(1 for a, b in zip(y, p) if a == c and b == c)
        support = sum(1 for a in y if a == c)
        predicted = sum(1 for b in p if b == c)
        rec = tp / support
        prec = tp / predicted if predicted else 0.0
        recalls.append(rec)
        f1s.append(2 * prec * rec / (prec + rec) if prec + rec else 0.0)
    acc = sum(1 for a, b in zip(y, p) if a == b) / len(y)
    return {"accuracy": acc, "balanced_accuracy": sum(recalls) / len(recalls), "macro_f1": sum(f1s) / len(f1s)}


def test_evaluate_on_the_training_data(model, env, tmp_path):
    ds, predictor, client = model["ds"], model["predictor"], model["client"]
    r = run_cli("evaluate", "--model", model["uri"], *SYNTH_ARGS, "--tracking-uri", model["server"], "--json",
                "--output-dir", str(tmp_path / "out"), env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    idx = ds.indices("test")
    y = ds.labels[idx]
    p = predictor.predict_proba([np.asarray(ds.images[i]) for i in idx]).argmax(1)
    want = independent_metrics(y, p, len(ds.classes))
    for k, v in want.items():
        assert out["metrics"][k] == pytest.approx(v, abs=1e-9)
    # the same test images as the trial's own test: same fingerprint, same split, same accuracy
    assert out["lineage"]["same_data"] is True and out["lineage"]["same_split"] is True
    assert out["metrics"]["accuracy"] == pytest.approx(model["trial_metrics"]["test_accuracy"], abs=1e-6)
    assert out["num_images"] == len(idx) and out["num_excluded"] == 0
    assert out["class_matching"]["data_only"] == [] and out["class_matching"]["model_only"] == []
    assert set(out["pose_accuracy"]) == set(ds.pose_classes)
    assert (tmp_path / "out" / "confusion_matrix.png").is_file()

    run_id = out["mlflow"]["run_id"]
    run = client.get_run(run_id)
    assert client.get_experiment(run.info.experiment_id).name == "fer-automl-evaluations"
    tags = run.data.tags
    assert tags["fer_automl.kind"] == "evaluation"
    assert tags["fer_automl.registered_model_name"] == NAME
    assert tags["fer_automl.registered_model_version"] == model["version"]
    assert tags["fer_automl.model_uri"] == model["uri"]
    assert tags["fer_automl.dataset"] == ds.name and tags["fer_automl.dataset_fingerprint"] == ds.fingerprint
    assert tags["fer_automl.split"] == "test"
    for k, v in want.items():
        assert run.data.metrics[f"test_{k}"] == pytest.approx(v, abs=1e-9)
    for c in ds.classes:
        c_idx = ds.classes.index(c)
        rec = float(np.mean(p[y == c_idx] == c_idx))
        assert run.data.metrics[f"test_recall_{c}"] == pytest.approx(rec, abs=1e-9)
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"confusion_matrix.png", "evaluation.json"} <= names
    report = json.loads(Path(client.download_artifacts(run_id, "evaluation.json", str(tmp_path))).read_text())
    assert report["per_class"]["happy"]["support"] == int(np.sum(y == ds.classes.index("happy")))
    assert np.asarray(report["confusion_matrix"]).sum() == len(idx)
    mv = client.get_model_version(NAME, model["version"])
    assert mv.tags["fer_automl.eval.synthetic.test"] == run_id


def test_evaluate_cross_dataset_on_cmu_faces(model, env):
    root = cmu_root()
    if not root.is_dir():
        pytest.skip(f"CMU Face Images not found at {root} (set FER_AUTOML_SHARED_DATA)")
    predictor, client = model["predictor"], model["client"]
    r = run_cli("evaluate", "--model", model["alias_uri"], "--format", "cmu_faces", "--data", str(root),
                "--split", "all", "--tracking-uri", model["server"], env=env)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert "classes: matched angry, happy, sad, neutral" in text
    assert "the data has no disgust, fear, surprise" in text
    assert "not the training data" in text
    for pose in ("straight", "left", "right", "up"):
        assert f"\n{pose} " in text
    mv = client.get_model_version(NAME, model["version"])
    run_id = mv.tags["fer_automl.eval.cmu_faces_cmu_faces.all"]
    run = client.get_run(run_id)
    assert run_id in text
    assert run.data.params["model_only_classes"] == "disgust,fear,surprise"
    assert run.data.params["data_only_classes"] == "-"
    assert run.data.tags["fer_automl.eval.model_only_classes"] == "disgust,fear,surprise"
    assert run.data.tags["fer_automl.registered_model_alias"] == "champion"
    # independent: CMU at the model's size, every image, predictions over all 7 model classes
    ds = load_dataset("cmu_faces", root, image_size=predictor.image_size, cache_dir=env["FER_AUTOML_CACHE_DIR"])
    p = predictor.predict_proba(list(ds.images)).argmax(1)
    y = np.array([predictor.classes.index(ds.classes[int(lbl)]) for lbl in ds.labels])
    assert run.data.metrics["all_num_images"] == len(ds) == 624
    assert run.data.metrics["all_accuracy"] == pytest.approx(float(np.mean(p == y)), abs=1e-9)
    for j, pose in enumerate(ds.pose_classes):
        sel = ds.poses == j
        assert run.data.metrics[f"all_accuracy_pose_{pose}"] == pytest.approx(float(np.mean(p[sel] == y[sel])), abs=1e-9)


def test_evaluate_reports_classes_the_model_lacks(model, tmp_path, capsys):
    """A CSV set with aliases (happiness, anger) and contempt, which the model does not know."""
    ds = model["ds"]
    rows = ["path,label"]
    for i, label in enumerate(["happiness"] * 4 + ["anger"] * 4 + ["contempt"] * 3):
        write_png(tmp_path / f"{i}.png", np.asarray(ds.images[i]))
        rows.append(f"{i}.png,{label}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    rc = main(["evaluate", "--model", model["uri"], "--format", "csv", "--data", str(tmp_path / "manifest.csv"),
               "--split", "all", "--tracking-uri", model["server"], "--no-log"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "the model does not know contempt: 3 image(s) excluded from every metric (contempt 3)" in text
    assert "the data has no disgust, fear, sad, surprise, neutral" in text
    p = model["predictor"].predict_proba([np.asarray(ds.images[i]) for i in range(8)]).argmax(1)
    y = [model["predictor"].classes.index(c) for c in ["happy"] * 4 + ["angry"] * 4]
    acc = float(np.mean(p == np.array(y)))
    assert float(re.search(r"^accuracy +([0-9.]+)$", text, re.M).group(1)) == pytest.approx(acc, abs=1e-4)


def test_evaluate_bad_input_names_the_value(model, capsys, tmp_path):
    base = ["evaluate", "--model", model["uri"], "--tracking-uri", model["server"]]
    assert main(base + ["--format", "nope", "--data", str(tmp_path)]) == 2
    assert "unknown dataset format 'nope'" in capsys.readouterr().err
    assert main(base + ["--format", "cmu_faces", "--data", str(tmp_path / "absent")]) == 2
    assert str(tmp_path / "absent") in capsys.readouterr().err
    bad = ["evaluate", "--model", f"models:/{NAME}/99", "--tracking-uri", model["server"], *SYNTH_ARGS]
    assert main(bad) == 2
    assert f"models:/{NAME}/99" in capsys.readouterr().err
    assert main(["evaluate", "--model", "models:/no-such-model@champion", "--tracking-uri", model["server"],
                 *SYNTH_ARGS]) == 2
    assert "models:/no-such-model@champion" in capsys.readouterr().err


# --- class matching (no model) -----------------------------------------------------------------

def test_classes_match_by_name_and_alias():
    assert class_key("Happiness") == class_key("happy") == "happy"
    assert class_key("ANGER") == class_key("angry")
    m = match_classes(["anger", "disgust", "Happiness", "neutral"], ["angry", "happy", "sad"])
    assert m.matched == [("angry", "anger"), ("happy", "Happiness")]
    assert m.data_to_model == {0: 0, 1: 2}
    assert m.data_only == ["sad"] and m.model_only == ["disgust", "neutral"]
    with pytest.raises(ValueError, match="two classes that mean the same"):
        match_classes(["happy", "happiness"], ["happy"])


class _Fixed:
    """A predictor that always answers the same class: metrics are known by construction."""

    def __init__(self, classes, answer):
        self.classes, self.answer, self.uri, self.meta = classes, answer, "test:fixed", {}

    def predict_proba(self, images, batch_size=64):
        out = np.zeros((len(images), len(self.classes)), np.float32)
        out[:, self.classes.index(self.answer)] = 1.0
        return out


def test_excluded_and_extra_classes_in_the_metrics():
    classes = ["angry", "happy", "neutral", "contempt"]
    labels = np.array([0, 0, 1, 1, 1, 2, 3, 3])
    ds = FERDataset(images=np.zeros((8, 4, 4, 3), np.uint8), labels=labels, classes=classes,
                    splits=np.array(["test"] * 8), poses=np.array([0, 1, 0, 1, 0, 1, 0, 1]),
                    pose_classes=["frontal", "left"], keys=np.array([f"{i}.png" for i in range(8)]), name="toy")
    ev = evaluate_dataset(_Fixed(["happy", "angry", "surprise"], "happy"), ds, "test")
    assert ev.num_images == 5 and ev.excluded == {"neutral": 1, "contempt": 2}
    assert ev.match.model_only == ["surprise"]
    assert ev.metrics["accuracy"] == pytest.approx(3 / 5)
    assert ev.metrics["balanced_accuracy"] == pytest.approx((1.0 + 0.0) / 2)   # surprise: never true, not averaged
    assert ev.per_class["surprise"]["support"] == 0 and ev.per_class["surprise"]["recall"] is None
    assert ev.pose_accuracy == {"frontal": {"images": 3, "accuracy": pytest.approx(2 / 3)},
                                "left": {"images": 2, "accuracy": pytest.approx(1 / 2)}}
    assert ev.lineage["same_data"] is False
