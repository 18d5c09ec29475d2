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
