"""`fer-automl models list | describe` as a user runs them."""
from __future__ import annotations

import json

import pytest

from runners.cli import main


def test_models_list(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for name in ["baseline", "ma_net", "scan_cci", "scan_cci_shared", "phanet", "lnlnet", "spatio_channel"]:
        assert name in out
    assert "compact backbones" in out and "fercnn" in out and "lcnet_050" in out


def test_models_describe_on_a_compact_backbone(capsys):
    """--backbone puts a preset on another backbone: the compact ones cost a fraction of resnet18."""
    sizes = {}
    for backbone in ("resnet18", "lcnet_050", "fercnn"):
        assert main(["models", "describe", "baseline", "--backbone", backbone, "--image-size", "48", "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["config"]["backbone"] == backbone
        sizes[backbone] = info["params"]
    assert sizes["fercnn"] < 100_000 < sizes["lcnet_050"] < 1_000_000 < 10_000_000 < sizes["resnet18"]


def test_models_describe_json_in_a_child_process(cli):
    res = cli("models", "describe", "ma_net", "--image-size", "224", "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["name"] == "ma_net" and info["image_size"] == 224 and info["num_classes"] == 7
    assert isinstance(info["params"], int) and abs(info["params"] - 50.55e6) / 50.55e6 < 0.02
    assert isinstance(info["macs"], int) and 3.5e9 < info["macs"] < 3.8e9
    assert info["branches"] == ["global", "local"]


def test_models_describe_options_change_the_figures(capsys):
    assert main(["models", "describe", "phanet", "--image-size", "112", "--num-classes", "8", "--json"]) == 0
    small = json.loads(capsys.readouterr().out)
    assert main(["models", "describe", "phanet", "--image-size", "224", "--json"]) == 0
    big = json.loads(capsys.readouterr().out)
    assert small["num_classes"] == 8 and small["params"] > big["params"]  # 3 heads x 1 more class
    assert 3 * small["macs"] < big["macs"] < 4.2 * small["macs"]  # conv cost follows the map areas
    assert small["branches"] == ["scale_2", "scale_3", "scale_4", "global"]
    assert small["pose_classes"] == 5


def test_models_describe_a_config_file(tmp_path, capsys):
    f = tmp_path / "m.yaml"
    f.write_text("model:\n  backbone: resnet18\n  num_patches: 4\n  local_aggregation: max\n")
    assert main(["models", "describe", str(f), "--image-size", "64"]) == 0
    assert "branches: global, local" in capsys.readouterr().out


def test_models_describe_bad_input(tmp_path, capsys):
    assert main(["models", "describe", "nope"]) == 2
    assert "'nope' is neither a preset" in capsys.readouterr().err
    f = tmp_path / "bad.yaml"
    f.write_text("attention: transformer\n")
    assert main(["models", "describe", str(f)]) == 2
    assert "unknown attention type 'transformer'" in capsys.readouterr().err
    assert main(["models", "describe", "scan_cci", "--image-size", "32"]) == 2
    assert "num_patches=25 at image_size=32" in capsys.readouterr().err


def test_a_bad_model_config_is_one_line_per_field(tmp_path, capsys):
    """Issue 10: not pydantic's "N validation errors for ModelConfig ... For further information
    visit ..." block, but file, field, value and what is allowed, one line each."""
    f = tmp_path / "m.yaml"
    f.write_text("model:\n  attention: transformer\n  num_patches: 5\n  dropout: 1.5\n  num_patch: 4\n")
    assert main(["models", "describe", str(f)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"fer-automl: error: {f}: model.attention: 'transformer': unknown attention type 'transformer'; "
        "valid: none, se, eca, cbam, spatial, non_local, gc, spatio_channel",
        f"fer-automl: error: {f}: model.num_patches: 5: num_patches=5 is not a square grid (valid: 0, 4, 9, 16, 25, ...)",
        f"fer-automl: error: {f}: model.dropout: 1.5: Input should be less than 1",
        f"fer-automl: error: {f}: model.num_patch: unknown key (value 4); did you mean 'num_patches'?",
    ]
    f.write_text("pose_head: true\nhead: concat_l2\nnum_patches: 4\nlocal_aggregation: max\n")
    assert main(["models", "describe", str(f)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"fer-automl: error: {f}: pose_head is true but num_pose_classes is not set (need >= 2 pose classes)"]


def test_a_json_config_with_a_syntax_error_names_line_and_column(tmp_path, capsys):
    f = tmp_path / "m.json"
    f.write_text('{\n  "backbone": "resnet18",\n  "num_patches": 4\n  "attention": "se"\n}\n')
    assert main(["models", "describe", str(f)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"fer-automl: error: {f}: not a JSON file (line 4, column 3): Expecting ',' delimiter"]
    f.write_text('{"backbone": "resnet18", "num_patches": 4, "local_aggregation": "max"}')
    assert main(["models", "describe", str(f), "--image-size", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["branches"] == ["global", "local"]


@pytest.mark.parametrize("flag,value,bounds", [("--image-size", "100000", "16..1024"), ("--image-size", "15", "16..1024"),
                                               ("--num-classes", "1", "2..1000"), ("--num-classes", "10000000", "2..1000")])
def test_describe_flags_are_bounded(flag, value, bounds, capsys):
    """--image-size 100000 used to allocate a 120 GB input before saying anything."""
    assert main(["models", "describe", "ma_net", flag, value]) == 2
    assert capsys.readouterr().err == f"fer-automl: error: {flag} must be in {bounds}, got {value}\n"
