"""`fer-automl space show | sample | check` through runners.cli.main."""
from __future__ import annotations

import json

from runners.cli import main
from search_spaces import load_space


def test_show_unified(capsys):
    assert main(["space", "show", "unified"]) == 0
    out = capsys.readouterr().out
    for dim in ("attention", "num_scales", "num_patches", "loss_weighting", "local_weight", "local_aggregation",
                "local_kind", "local_shared", "context_branch", "pose_head", "backbone", "split_stage", "fusion",
                "optimizer", "lr", "backbone_lr_mult", "weight_decay", "batch_size", "schedule", "warmup_epochs",
                "label_smoothing", "aug_strength", "class_balance", "image_size", "epochs"):
        assert f"\n  {dim} " in out, dim
    assert "[when num_patches in [4, 9, 16, 25]]" in out
    assert "distinct architectures: 763,192,800" in out  # 14 backbones (compact ones, fercnn x 12)
    assert "presets: baseline, ma_net, scan_cci, scan_cci_shared, phanet, lnlnet" in out


def test_show_quickstart_with_its_search(capsys):
    assert main(["space", "show", "quickstart"]) == 0
    out = capsys.readouterr().out
    assert "distinct architectures: 24" in out and "search: tpe, scheduler asha, 6 samples" in out


def test_sample_json_is_seeded_and_valid(capsys):
    assert main(["space", "sample", "unified", "-n", "7", "--seed", "3", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["space", "sample", "unified", "-n", "7", "--seed", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == first
    assert main(["space", "sample", "unified", "-n", "7", "--seed", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) != first
    space = load_space("unified")
    assert len(first) == 7
    for p in first:
        space.validate(p)


def test_sample_text(capsys):
    assert main(["space", "sample", "quickstart", "-n", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("[0] attention=")


def test_check_shipped_files(capsys):
    assert main(["space", "check", "unified"]) == 0
    assert "unified.yaml: OK (48 dimensions, 6 presets valid)" in capsys.readouterr().out
    assert main(["space", "check", "quickstart"]) == 0
    assert "search section valid" in capsys.readouterr().out


def test_check_reports_a_preset_that_does_not_fit(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text("dimensions:\n  num_patches: {type: choice, values: [0, 25]}\n"
                 "  image_size: {type: choice, values: [32, 224]}\n"
                 "presets:\n  ok: {num_patches: 0, image_size: 32}\n  tiny: {num_patches: 25, image_size: 32}\n")
    assert main(["space", "check", str(p)]) == 2  # a fault of the file: a user error like any other
    err = capsys.readouterr().err
    assert f"{p}: presets.tiny: num_patches=25 at image_size=32" in err and "1 of 2 presets invalid" in err


def test_errors_exit_2_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dimensions:\n  num_patches: {type: choice, values: []}\n")
    assert main(["space", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: dimensions.num_patches.values: empty choice" in err and "Traceback" not in err
    assert main(["space", "show", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    notyaml = tmp_path / "x.yaml"
    notyaml.write_text("a: [1, 2\n")
    assert main(["space", "sample", str(notyaml)]) == 2
    assert "not a YAML file" in capsys.readouterr().err
    assert main(["space", "sample", "quickstart", "-n", "0"]) == 2
