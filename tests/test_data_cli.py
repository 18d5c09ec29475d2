"""`fer-automl data`: inspect (--json, --sheet), formats, synth; in process and as a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2

from runners.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_synth_then_inspect_json_and_sheet(tmp_path, capsys):
    out = tmp_path / "faces"
    assert main(["data", "synth", str(out), "--n", "140", "--size", "32", "--seed", "1"]) == 0
    assert "wrote 140 synthetic faces" in capsys.readouterr().out
    sheet = tmp_path / "sheet.png"
    assert main(["data", "inspect", str(out / "manifest.csv"), "--format", "csv", "--json",
                 "--sheet", str(sheet)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"num_images", "classes", "poses", "splits", "fingerprint"} <= set(info)
    assert info["num_images"] == 140
    assert info["classes"] == {c: 20 for c in ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")}
    assert sum(info["poses"].values()) == 140 and len(info["poses"]) == 5
    assert sum(info["splits"].values()) == 140 and set(info["splits"]) == {"train", "val", "test"}
    assert len(info["fingerprint"]) == 64
    img = cv2.imread(str(sheet))
    assert img is not None and img.shape[0] == 7 * 64
    # the same images as an ImageFolder: no poses
    assert main(["data", "inspect", str(out), "--format", "imagefolder", "--json"]) == 0
    info2 = json.loads(capsys.readouterr().out)
    assert info2["poses"] == {} and info2["classes"] == info["classes"]


def test_inspect_table_and_formats(tmp_path, capsys):
    assert main(["data", "inspect", "--format", "synthetic", "-o", "n=70", "-o", "size=24"]) == 0
    text = capsys.readouterr().out
    assert "images: 70" in text and "fingerprint:" in text and "poses: frontal" in text
    assert main(["data", "formats"]) == 0
    listed = capsys.readouterr().out
    for name in ("fer2013", "ferplus", "rafdb", "affectnet", "kdef", "ckplus", "jaffe", "cmu_faces",
                 "imagefolder", "csv", "synthetic"):
        assert f"\n{name} " in "\n" + listed
    assert main(["data", "formats", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 11


def test_inspect_errors_exit_2_without_traceback(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "nope"), "--format", "imagefolder"]) == 2
    err = capsys.readouterr().err
    assert "nope does not exist" in err and "Traceback" not in err
    assert main(["data", "inspect", str(tmp_path), "--format", "nosuch"]) == 2
    assert "unknown dataset format 'nosuch'" in capsys.readouterr().err


def test_cli_as_subprocess(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               FER_AUTOML_CACHE_DIR=str(tmp_path / "cache"))
    out = tmp_path / "faces"
    r = subprocess.run([sys.executable, "-m", "runners.cli", "data", "synth", str(out), "--n", "70", "--size", "24"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "runners.cli", "data", "inspect", str(out), "--format", "csv", "--json"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["num_images"] == 70
    r = subprocess.run([sys.executable, "-m", "runners.cli", "data", "inspect", str(out / "missing.csv"),
                        "--format", "csv"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "missing.csv" in r.stderr and "Traceback" not in r.stderr
