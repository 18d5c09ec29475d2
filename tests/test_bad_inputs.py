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
]

CASES_MODELS_SPACES: List[Case] = [
    Case("space-check-missing-file", ["space", "check", "{tmp}/missing.yaml"], ["missing.yaml"]),
]

CASES_DATA_PREDICT_EVALUATE: List[Case] = [
    Case("data-inspect-unknown-format", ["data", "inspect", "{tmp}", "--format", "nope"], ["nope"]),
]

POINT = "point.yaml:{attention: none, num_scales: 1, num_patches: 0, loss_weighting: fixed, lr: 0.01, image_size: 32}"


def one_class_folder(tmp: Path) -> Dict[str, str]:
    """An image folder with a single class (happy): every prediction would be right."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(12):
        path = tmp / "one" / "happy" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return {"data": str(tmp / "one"), **files(point=POINT)(tmp)}


def _no_cuda() -> bool:
    import torch

    return not torch.cuda.is_available()


TRAIN = ["train", "--space", "quickstart", "--config", "{point}"]
CASES_TRAIN: List[Case] = [
    Case("train-config-missing", ["train", "--space", "quickstart", "--config", "{tmp}/nope.yaml"],
         ["--config", "nope.yaml", "no such file"]),
    Case("train-config-is-a-folder", ["train", "--space", "quickstart", "--config", "{tmp}"],
         ["--config", "not a regular file"]),
    Case("train-config-not-yaml", TRAIN, ["--config", "point.yaml", "not YAML"], setup=files(point="point.yaml:a: [1,")),
    Case("train-config-not-text", TRAIN, ["--config", "point.yaml", "not a text file"],
         setup=lambda tmp: {"point": str(write(tmp / "point.yaml", b"\xff\xfe\x00bad", "wb"))}),
    Case("train-config-not-a-mapping", TRAIN, ["point.yaml", "a point is a mapping"],
         setup=files(point="point.yaml:- 1\n- 2\n")),
    Case("train-config-unknown-dimension", TRAIN, ["point.yaml", "unknown dimension 'colour'"],
         setup=files(point=POINT[:-1] + ", colour: red}")),
    Case("train-config-missing-dimension", TRAIN, ["point.yaml", "missing dimension 'lr'"],
         setup=files(point="point.yaml:{attention: none, num_scales: 1, num_patches: 0, loss_weighting: fixed, "
                           "image_size: 32}")),
    Case("train-config-bad-value", TRAIN, ["point.yaml", "attention", "sparkle"],
         setup=files(point=POINT.replace("attention: none", "attention: sparkle"))),
    Case("train-n-zero", TRAIN + ["--n", "0"], ["--n", "0", ">= 1"], setup=files(point=POINT)),
    Case("train-n-negative", TRAIN + ["--n", "-5"], ["--n", "-5", ">= 1"], setup=files(point=POINT)),
    Case("train-n-not-a-number", TRAIN + ["--n", "many"], ["--n", "many"], setup=files(point=POINT)),
    Case("train-n-with-a-dataset-on-disk", TRAIN + ["--format", "imagefolder", "--data", "{tmp}", "--n", "10"],
         ["--n 10", "synthetic only"], setup=files(point=POINT)),
    Case("train-format-unknown", TRAIN + ["--format", "nope"], ["--format", "'nope'", "imagefolder"],
         setup=files(point=POINT)),
    Case("train-format-without-data", TRAIN + ["--format", "imagefolder"], ["--format", "needs --data"],
         setup=files(point=POINT)),
    Case("train-data-missing", TRAIN + ["--format", "imagefolder", "--data", "{tmp}/absent"],
         ["--data", "absent", "no such file"], setup=files(point=POINT)),
    Case("train-data-with-synthetic", TRAIN + ["--data", "{tmp}"], ["--data", "synthetic"],
         setup=files(point=POINT)),
    Case("train-out-is-a-file", TRAIN + ["--out", "{point}"], ["--out", "point.yaml", "not a folder"],
         setup=files(point=POINT)),
    Case("train-device-unknown", TRAIN + ["--device", "gpu"], ["--device", "'gpu'", "cpu, cuda"],
         setup=files(point=POINT)),
    Case("train-device-no-such-cuda", TRAIN + ["--device", "cuda:99"], ["--device cuda:99"],
         setup=files(point=POINT)),
    # a dataset of one class: refused once it is read (the decode cache it fills is the only write;
    # the --out folder is never made)
    Case("train-one-class", TRAIN + ["--format", "imagefolder", "--data", "{data}", "--out", "{tmp}/run"],
         ["training set has 1 class", "happy", "at least 2"], setup=one_class_folder, writes=True),
] + ([Case("train-device-cuda-without-gpu", TRAIN + ["--device", "cuda"], ["--device cuda", "no CUDA device"],
           setup=files(point=POINT))] if _no_cuda() else [])

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
