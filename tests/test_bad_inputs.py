"""The bad-input battery: every command, fed what a new user gets wrong.

Each case runs `fer-automl` in this process (`runners.cli.main`) in an empty working folder,
with MLflow, the data cache and Ray's storage pointed into it, and checks:
- the exit code (2 for a user error; argparse's own usage errors are 2 too),
- that stderr names what is wrong (every string of `says`, case-insensitive),
- that no traceback was printed (a user error is one clear message),
- that nothing was written in the folder (unless the case says `writes=True`).

A case is `Case(id, argv, says, setup=None, rc=2, writes=False)`. `argv` may hold `{name}`
fields filled from the dict `setup(tmp)` returns (files it made for the case) and `{tmp}`.
The cases are grouped by area, one list each, so that each area's rows stay together.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import pytest

from runners.cli import main

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FER_AUTOML_SHARED_DATA", REPO.parent / "shared" / "data"))


@dataclass
class Case:
    id: str
    argv: Sequence[str]
    says: Sequence[str]
    setup: Optional[Callable[[Path], Dict[str, str]]] = None
    rc: int = 2
    writes: bool = False
    needs: Optional[Path] = None        # a path that must exist (real data), else skipped

    def param(self):
        return pytest.param(self, id=self.id)


# --- files the cases share --------------------------------------------------------------------
def write(path: Path, text: str, mode: str = "w") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if "b" in mode:
        path.write_bytes(text)  # type: ignore[arg-type]
    else:
        path.write_text(text)
    return path


def files(**specs: str) -> Callable[[Path], Dict[str, str]]:
    """A setup writing text files: `files(cfg="cfg.yaml:model: {attention: x}")` -> {cfg: path}."""
    def setup(tmp: Path) -> Dict[str, str]:
        out = {}
        for key, spec in specs.items():
            name, _, text = spec.partition(":")
            out[key] = str(write(tmp / name, text))
        return out
    return setup


# --- the cases, by area -----------------------------------------------------------------------
CASES_CLI: List[Case] = [
    Case("no-group", [], ["the following arguments are required"]),
    Case("unknown-group", ["frobnicate"], ["invalid choice", "frobnicate"]),
    Case("models-describe-unknown", ["models", "describe", "nope"], ["nope", "neither a preset"]),
    # argparse's own usage errors: exit 2, the flag or argument named
    Case("cli-models-no-command", ["models"], ["required", "CMD"]),
    Case("cli-space-unknown-command", ["space", "frob", "unified"], ["invalid choice", "frob"]),
    Case("cli-models-describe-no-name", ["models", "describe"], ["required", "name"]),
    Case("cli-image-size-not-a-number", ["models", "describe", "baseline", "--image-size", "big"],
         ["--image-size", "invalid int value", "big"]),
    Case("cli-sample-n-not-a-number", ["space", "sample", "unified", "-n", "five"], ["-n", "invalid int value"]),
    Case("cli-seed-not-an-integer", ["space", "sample", "unified", "--seed", "1.5"], ["--seed", "1.5"]),
    Case("cli-unknown-flag", ["space", "show", "unified", "--verbose"], ["unrecognized arguments", "--verbose"]),
    Case("cli-train-without-config", ["train"], ["--config", "required"]),
    Case("cli-search-unknown-flag", ["search", "quickstart", "--epochs", "3"], ["unrecognized arguments", "--epochs"]),
    Case("cli-promote-without-search-or-run", ["promote"], ["one of the arguments --search --run is required"]),
]

def _not_utf8(name: str) -> Callable[[Path], Dict[str, str]]:
    def setup(tmp: Path) -> Dict[str, str]:
        return {"f": str(write(tmp / name, b"backbone: resnet18\nattention: \xff\xfe\n", "wb"))}
    return setup


SPACE_OK = "dimensions:\n  num_patches: {type: choice, values: [0, 4]}\n  lr: {type: float, low: 1.0e-4, high: 0.1, log: true}\n"

CASES_MODELS_SPACES: List[Case] = [
    Case("space-check-missing-file", ["space", "check", "{tmp}/missing.yaml"], ["missing.yaml"]),
    # models describe: flags
    Case("models-describe-image-size-huge", ["models", "describe", "baseline", "--image-size", "100000"],
         ["--image-size", "16..1024", "100000"]),
    Case("models-describe-image-size-tiny", ["models", "describe", "baseline", "--image-size", "4"],
         ["--image-size", "16..1024", "got 4"]),
    Case("models-describe-one-class", ["models", "describe", "ma_net", "--num-classes", "1"],
         ["--num-classes", "2..1000", "got 1"]),
    Case("models-describe-billion-classes", ["models", "describe", "baseline", "--num-classes", "1000000000"],
         ["--num-classes", "2..1000"]),
    Case("models-describe-preset-too-small-input", ["models", "describe", "scan_cci", "--image-size", "32"],
         ["num_patches=25 at image_size=32"]),
    # models describe: config files
    Case("models-describe-json-syntax", ["models", "describe", "{f}"], ["bad.json", "line 3, column 1", "not a JSON file"],
         setup=files(f='bad.json:{"backbone": "resnet18",\n "num_patches": 4,\n}')),
    Case("models-describe-yaml-syntax", ["models", "describe", "{f}"], ["m.yaml", "line 3, column 1", "not a YAML file"],
         setup=files(f="m.yaml:backbone: resnet18\nnum_patches: [4\n")),
    Case("models-describe-unknown-key", ["models", "describe", "{f}"],
         ["m.yaml", "num_patch", "unknown key", "did you mean 'num_patches'"], setup=files(f="m.yaml:num_patch: 4\n")),
    Case("models-describe-bad-values", ["models", "describe", "{f}"],
         ["m.yaml: model.attention: 'transformer'", "valid: cbam", "model.global_branch: 'x'", "'backbone' or 'multiscale'",
          "model.dropout: 1.5", "less than 1"],
         setup=files(f="m.yaml:model:\n  attention: transformer\n  global_branch: x\n  dropout: 1.5\n")),
    Case("models-describe-duplicate-key", ["models", "describe", "{f}"],
         ["m.yaml", "duplicate key 'attention'", "line 3", "first at line 1"],
         setup=files(f="m.yaml:attention: cbam\nnum_patches: 4\nattention: eca\n")),
    Case("models-describe-json-duplicate-key", ["models", "describe", "{f}"],
         ["m.json", "duplicate key 'num_patches'", "line 2", "first at line 1"],
         setup=files(f='m.json:{"num_patches": 4,\n "num_patches": 9}')),
    Case("models-describe-not-a-mapping", ["models", "describe", "{f}"], ["m.yaml", "expected a mapping", "list"],
         setup=files(f="m.yaml:- resnet18\n- cbam\n")),
    Case("models-describe-empty-file", ["models", "describe", "{f}"], ["m.yaml", "empty file"], setup=files(f="m.yaml:")),
    Case("models-describe-model-not-a-mapping", ["models", "describe", "{f}"], ["m.yaml: model", "int 3"],
         setup=files(f="m.yaml:model: 3\n")),
    Case("models-describe-extra-top-level-key", ["models", "describe", "{f}"], ["m.yaml", "'modle'", "beside 'model'"],
         setup=files(f="m.yaml:model: {attention: se}\nmodle: {num_patches: 4}\n")),
    Case("models-describe-folder", ["models", "describe", "{tmp}"], ["is a folder"]),
    Case("models-describe-not-utf8", ["models", "describe", "{f}"], ["m.yaml", "not UTF-8", "line 2"], setup=_not_utf8("m.yaml")),
    Case("models-describe-missing-pretrained", ["models", "describe", "{f}", "--image-size", "32"],
         ["pretrained_path", "nope.pt", "no such file"], setup=files(f="m.yaml:pretrained_path: nope.pt\n")),
    Case("models-describe-pretrained-is-a-folder", ["models", "describe", "{f}", "--image-size", "32"],
         ["pretrained_path", "is a folder"], setup=files(f="m.yaml:pretrained_path: .\n")),
    Case("models-describe-pretrained-not-a-state-dict", ["models", "describe", "{f}", "--image-size", "32"],
         ["pretrained_path", "w.pt", "not a loadable state dict"], setup=files(f="m.yaml:pretrained_path: w.pt\n",
                                                                               w="w.pt:not torch")),
    Case("models-describe-unknown-backbone", ["models", "describe", "{f}", "--image-size", "32"],
         ["backbone 'resnet_nope'"], setup=files(f="m.yaml:backbone: resnet_nope\n")),
    Case("models-describe-transformer-backbone", ["models", "describe", "{f}", "--image-size", "64"],
         ["backbone 'vit_tiny_patch16_224'", "fixed 224x224 input", "use a CNN"],
         setup=files(f="m.yaml:backbone: vit_tiny_patch16_224\n")),
    Case("models-describe-patches-not-a-grid", ["models", "describe", "{f}"], ["num_patches: 5", "square grid"],
         setup=files(f="m.yaml:num_patches: 5\n")),
    Case("models-describe-pose-without-classes", ["models", "describe", "{f}"], ["m.yaml", "num_pose_classes is not set"],
         setup=files(f="m.yaml:pose_head: true\n")),
    Case("models-describe-section-check-across-fields", ["models", "describe", "{f}"],
         ["m.yaml: model: head='concat_l2' concatenates global and local features"],
         setup=files(f="m.yaml:model:\n  head: concat_l2\n")),
    Case("models-describe-empty-name", ["models", "describe", ""], ["'' is neither a preset"]),
    Case("models-describe-split-stage-beyond-backbone", ["models", "describe", "{f}", "--image-size", "32"],
         ["split_stage=7"], setup=files(f="m.yaml:num_patches: 4\nsplit_stage: 7\n")),
    # space show / sample / check
    Case("space-show-folder", ["space", "show", "{tmp}"], ["is a folder"]),
    Case("space-show-yaml-syntax", ["space", "show", "{f}"], ["s.yaml", "line 3", "not a YAML file"],
         setup=files(f="s.yaml:dimensions:\n  lr: {type: float, low: 0.1\n  x: 1\n")),
    Case("space-show-empty-file", ["space", "show", "{f}"], ["s.yaml", "empty file"], setup=files(f="s.yaml:")),
    Case("space-check-not-utf8", ["space", "check", "{f}"], ["s.yaml", "not UTF-8"], setup=_not_utf8("s.yaml")),
    Case("space-check-duplicate-dimension", ["space", "check", "{f}"],
         ["s.yaml", "duplicate key 'lr'", "line 4", "first at line 3"],
         setup=files(f=f"s.yaml:{SPACE_OK}  lr: {{type: float, low: 0.01, high: 0.5}}\n")),
    Case("space-check-duplicate-section", ["space", "check", "{f}"],
         ["s.yaml", "duplicate key 'dimensions'", "line 4", "first at line 1"],
         setup=files(f=f"s.yaml:{SPACE_OK}dimensions:\n  epochs: {{type: int, low: 1, high: 3}}\n")),
    Case("space-sample-duplicate-preset", ["space", "sample", "{f}"], ["s.yaml", "duplicate key 'a'", "line 6", "first at line 5"],
         setup=files(f=f"s.yaml:{SPACE_OK}presets:\n  a: {{num_patches: 0, lr: 0.01}}\n  a: {{num_patches: 4, lr: 0.01}}\n")),
    Case("space-sample-n-zero", ["space", "sample", "unified", "-n", "0"], ["-n", "1..100000", "got 0"]),
    Case("space-sample-n-negative", ["space", "sample", "unified", "-n", "-3"], ["-n", "got -3"]),
    Case("space-sample-n-huge", ["space", "sample", "unified", "-n", "1000000000"], ["-n", "1..100000"]),
    Case("space-sample-seed-negative", ["space", "sample", "unified", "--seed", "-1"], ["--seed", ">= 0", "got -1"]),
    Case("space-check-unknown-dimension-type", ["space", "check", "{f}"], ["dimensions.lr", "unknown dimension type 'normal'"],
         setup=files(f="s.yaml:dimensions:\n  lr: {type: normal, low: 0.01, high: 0.1}\n")),
    Case("space-check-int-dimension-float-bound", ["space", "check", "{f}"], ["dimensions.epochs", "expected an integer", "2.5"],
         setup=files(f="s.yaml:dimensions:\n  epochs: {type: int, low: 2.5, high: 5}\n")),
    Case("space-check-float-dimension-int-field", ["space", "check", "{f}"], ["dimensions.epochs.type", "integer field"],
         setup=files(f="s.yaml:dimensions:\n  epochs: {type: float, low: 1, high: 5}\n")),
    Case("space-check-empty-choice", ["space", "check", "{f}"], ["dimensions.attention.values", "empty choice"],
         setup=files(f="s.yaml:dimensions:\n  attention: {type: choice, values: []}\n")),
    Case("space-check-value-not-allowed", ["space", "check", "{f}"], ["dimensions.attention.values[1]", "transformer"],
         setup=files(f="s.yaml:dimensions:\n  attention: {type: choice, values: [se, transformer]}\n")),
    Case("space-check-condition-on-unknown-dimension", ["space", "check", "{f}"],
         ["dimensions.lr.condition.optimiser", "unknown dimension 'optimiser'"],
         setup=files(f="s.yaml:dimensions:\n  optimizer: {type: choice, values: [sgd, adamw]}\n"
                       "  lr: {type: float, low: 0.01, high: 0.1, condition: {optimiser: [sgd]}}\n")),
    Case("space-check-condition-bad-value", ["space", "check", "{f}"],
         ["dimensions.lr.condition.optimizer[0]", "'adam'", "not a value of dimension 'optimizer'"],
         setup=files(f="s.yaml:dimensions:\n  optimizer: {type: choice, values: [sgd, adamw]}\n"
                       "  lr: {type: float, low: 0.01, high: 0.1, condition: {optimizer: [adam]}}\n")),
    Case("space-check-condition-cycle", ["space", "check", "{f}"], ["cycle of conditions"],
         setup=files(f="s.yaml:dimensions:\n  optimizer: {type: choice, values: [sgd, adamw], condition: {schedule: [step]}}\n"
                       "  schedule: {type: choice, values: [step, cosine], condition: {optimizer: [sgd]}}\n")),
    Case("space-check-unknown-top-level-key", ["space", "check", "{f}"], ["s.yaml", "dimension", "unknown key"],
         setup=files(f="s.yaml:dimension:\n  lr: {type: float, low: 0.01, high: 0.1}\n")),
    Case("space-check-preset-unknown-dimension", ["space", "check", "{f}"], ["presets.a.learning_rate", "unknown dimension"],
         setup=files(f=f"s.yaml:{SPACE_OK}presets:\n  a: {{num_patches: 0, lr: 0.01, learning_rate: 0.1}}\n")),
    Case("space-check-preset-does-not-fit", ["space", "check", "{f}"],
         ["presets.tiny", "num_patches=25 at image_size=32", "1 of 2 presets invalid"],
         setup=files(f="s.yaml:dimensions:\n  num_patches: {type: choice, values: [0, 25]}\n"
                       "  image_size: {type: choice, values: [32, 224]}\n"
                       "presets:\n  ok: {num_patches: 0, image_size: 32}\n  tiny: {num_patches: 25, image_size: 32}\n")),
    Case("space-check-bad-search-algorithm", ["space", "check", "{f}"], ["search.algorithm", "nope"],
         setup=files(f=f"s.yaml:{SPACE_OK}search:\n  algorithm: nope\n")),
    Case("space-check-search-unknown-key", ["space", "check", "{f}"], ["search.num_sample", "unknown key"],
         setup=files(f=f"s.yaml:{SPACE_OK}search:\n  num_sample: 4\n")),
    Case("space-check-search-unknown-preset", ["space", "check", "{f}"], ["search.presets[0]", "unknown preset 'ma_net'"],
         setup=files(f=f"s.yaml:{SPACE_OK}search:\n  presets: [ma_net]\n")),
]

CASES_DATA_PREDICT_EVALUATE: List[Case] = [
    Case("data-inspect-unknown-format", ["data", "inspect", "{tmp}", "--format", "nope"], ["nope"]),
]

CASES_TRAIN: List[Case] = [
]

CASES_SEARCH: List[Case] = [
]

CASES_PROMOTE: List[Case] = [
    Case("promote-force-without-reason", ["promote", "--search", "x", "--force",
                                          "--tracking-uri", "sqlite:///{tmp}/m.db"], ["--reason"]),
]

ALL_CASES = (CASES_CLI + CASES_MODELS_SPACES + CASES_DATA_PREDICT_EVALUATE + CASES_TRAIN
             + CASES_SEARCH + CASES_PROMOTE)


def snapshot(root: Path) -> Dict[str, int]:
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1)
            for p in root.rglob("*")}


def run_case(case: Case, tmp: Path, capsys, monkeypatch) -> tuple:
    if case.needs is not None and not Path(case.needs).exists():
        pytest.skip(f"{case.needs} is absent")
    work = tmp / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("FER_AUTOML_CACHE_DIR", str(work / ".cache"))
    fields = {"tmp": str(work), "shared": str(SHARED_DATA)}
    if case.setup is not None:
        fields.update(case.setup(work))
    argv = [a.format(**fields) for a in case.argv]
    before = snapshot(work)
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:          # argparse's own usage errors
        rc = exc.code if isinstance(exc.code, int) else 2
    captured = capsys.readouterr()
    return rc, captured.err, captured.out, before, snapshot(work)


@pytest.mark.parametrize("case", [c.param() for c in ALL_CASES])
def test_bad_input(case: Case, tmp_path, capsys, monkeypatch):
    rc, err, out, before, after = run_case(case, tmp_path, capsys, monkeypatch)
    assert rc == case.rc, f"exit {rc}, expected {case.rc}\nstderr: {err}\nstdout: {out[-2000:]}"
    low = err.lower()
    for text in case.says:
        assert text.lower() in low, f"stderr does not name {text!r}:\n{err}"
    assert "Traceback" not in err, err
    assert "For further information visit" not in err, err    # pydantic's raw block
    if not case.writes:
        new = sorted(set(after) - set(before))
        assert not new, f"a rejected command wrote {new}"


def test_the_battery_is_big_enough():
    """Issue 10: at least 60 cases across all commands."""
    groups = {c.argv[0] for c in ALL_CASES if c.argv}
    assert len(ALL_CASES) >= 60, len(ALL_CASES)
    assert {"models", "space", "data", "train", "search", "promote", "predict", "evaluate"} <= groups
    assert len({c.id for c in ALL_CASES}) == len(ALL_CASES), "case ids must be unique"
