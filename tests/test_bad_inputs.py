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

CASES_TRAIN: List[Case] = [
]

def search_space(search: Optional[dict] = None, images: bool = False, corrupt: bool = False,
                 **top) -> Callable[[Path], Dict[str, str]]:
    """A setup writing `space.yaml`: a one-dimension space whose `search:` section is a tiny valid one
    updated with `search` (a key set to None is removed), and with `images=True` a small image folder
    `faces/<class>/*.png` (`corrupt=True`: plus `faces/happy/broken.png`, not an image)."""
    import copy

    import yaml

    base = {"dimensions": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
            "constants": {"model.backbone": "mobilenetv3_small_100", "train.epochs": 1, "data.image_size": 32},
            "search": {"name": "bad-input", "dataset": {"format": "synthetic", "n": 56, "image_size": 32},
                       "num_samples": 1}}

    def setup(tmp: Path) -> Dict[str, str]:
        d = copy.deepcopy(base)
        d.update(top)
        for k, v in (search or {}).items():
            if v is None:
                d["search"].pop(k, None)
            else:
                d["search"][k] = v
        out = {"space": str(write(tmp / "space.yaml", yaml.safe_dump(d)))}
        if images or corrupt:
            import numpy as np
            from PIL import Image

            rng = np.random.default_rng(0)
            for cls in ("happy", "sad"):
                for i in range(4):
                    (tmp / "faces" / cls).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(tmp / "faces" / cls / f"{i}.png")
            if corrupt:
                write(tmp / "faces" / "happy" / "broken.png", b"not an image at all", "wb")
            out["faces"] = str(tmp / "faces")
        return out
    return setup


S = ["search", "{space}"]
CASES_SEARCH: List[Case] = [
    Case("search-missing-space-file", ["search", "{tmp}/missing.yaml"], ["missing.yaml", "no such file"]),
    # numeric flags and keys: every one checked for range, named with its value
    Case("search-num-samples-zero", S + ["--num-samples", "0"], ["--num-samples 0", "greater than or equal to 1"],
         search_space()),
    Case("search-num-samples-negative", S + ["--num-samples", "-1"], ["--num-samples -1", "greater than or equal to 1"],
         search_space()),
    Case("search-num-samples-not-a-number", S + ["--num-samples", "two"], ["--num-samples", "invalid int value"],
         search_space()),
    Case("search-yaml-num-samples-zero", S, ["space.yaml", "search.num_samples", "0", "greater than or equal to 1"],
         search_space({"num_samples": 0})),
    Case("search-yaml-num-samples-bool", S, ["space.yaml", "search.num_samples", "valid integer"],
         search_space({"num_samples": True})),
    Case("search-yaml-max-concurrent-zero", S, ["search.max_concurrent", "greater than or equal to 1"],
         search_space({"max_concurrent": 0})),
    Case("search-yaml-time-budget-negative", S, ["search.time_budget_s", "-5", "greater than 0"],
         search_space({"time_budget_s": -5})),
    Case("search-yaml-time-budget-nan", S, ["search.time_budget_s", "finite"], search_space({"time_budget_s": float("nan")})),
    Case("search-yaml-cpu-zero", S, ["search.resources.cpu", "greater than 0"],
         search_space({"resources": {"cpu": 0, "gpu": 0}})),
    Case("search-yaml-gpu-fraction-above-one", S, ["search.resources.gpu", "1.5", "fractions are allowed below 1 only"],
         search_space({"resources": {"cpu": 1, "gpu": 1.5}})),
    Case("search-yaml-max-failures-negative", S, ["search.max_failures", "-1"], search_space({"max_failures": -1})),
    Case("search-yaml-seed-too-big", S, ["search.seed", "less than or equal to 4294967295"],
         search_space({"seed": 2**40})),
    Case("search-yaml-grace-period-zero", S, ["search.scheduler.grace_period", "greater than or equal to 1"],
         search_space({"scheduler": {"type": "asha", "grace_period": 0}})),
    Case("search-yaml-reduction-factor-one", S, ["search.scheduler.reduction_factor", "greater than 1"],
         search_space({"scheduler": {"type": "asha", "reduction_factor": 1}})),
    Case("search-yaml-grace-period-above-max-t", S, ["grace_period=3 is larger than max_t=2"],
         search_space({"scheduler": {"type": "asha", "grace_period": 3, "max_t": 2}})),
    Case("search-yaml-fifo-with-max-t", S, ["search.scheduler", "max_t: not a setting of scheduler 'fifo'"],
         search_space({"scheduler": {"type": "fifo", "max_t": 3}})),
    Case("search-yaml-hyperband-with-grace-period", S, ["grace_period: not a setting of scheduler 'hyperband'"],
         search_space({"scheduler": {"type": "hyperband", "grace_period": 2}})),
    Case("search-yaml-unknown-key", S, ["search.budget", "unknown key"], search_space({"budget": 3})),
    Case("search-yaml-unknown-algorithm", S, ["search.algorithm", "bayes"], search_space({"algorithm": "bayes"})),
    Case("search-yaml-grid-with-tpe", S, ["apply to algorithm: grid only"],
         search_space({"algorithm": "tpe", "grid": {"lr": [0.001]}})),
    Case("search-yaml-unreported-metric", S, ["metric 'val_auc' is not reported"], search_space({"metric": "val_auc"})),
    # names: one folder under the storage path
    Case("search-name-escapes-storage", S + ["--name", "a/../../b", "--storage-path", "{tmp}/x/y"],
         ["--name 'a/../../b'", "one folder name"], search_space()),
    Case("search-name-dotdot", S + ["--name", ".."], ["--name '..'", "not empty, not '.' or '..'"], search_space()),
    Case("search-name-backslash", S + ["--name", "a\\b"], ["--name", "it contains '\\\\'"], search_space()),
    Case("search-name-blank", S + ["--name", " "], ["--name ' '", "one folder name"], search_space()),
    Case("search-yaml-name-with-slash", S, ["space.yaml", "search.name", "x/y", "one folder name"],
         search_space({"name": "x/y"})),
    # the data: --format/--data replace the space's dataset
    Case("search-data-without-format", S + ["--data", "{faces}"], ["--data", "synthetic", "--format"],
         search_space(images=True)),
    Case("search-format-unknown", S + ["--format", "nope", "--data", "{faces}"], ["--format 'nope'", "known formats"],
         search_space(images=True)),
    Case("search-format-without-data", S + ["--format", "imagefolder"], ["--format 'imagefolder'", "--data"],
         search_space()),
    Case("search-data-missing", S + ["--format", "imagefolder", "--data", "{tmp}/nowhere"],
         ["--data", "nowhere", "no such file or folder"], search_space()),
    Case("search-synthetic-with-data", S + ["--format", "synthetic", "--data", "{faces}"],
         ["--format synthetic", "--data"], search_space(images=True)),
    Case("search-yaml-dataset-path-missing", S, ["space.yaml", "search.dataset.path", "no such file or folder"],
         search_space({"dataset": {"format": "imagefolder", "path": "/nonexistent/faces"}})),
    Case("search-yaml-synthetic-keys-on-a-folder", S, ["search.dataset", "apply to format 'synthetic' only"],
         search_space({"dataset": {"format": "imagefolder", "path": "faces", "n": 100}}, images=True)),
    Case("search-yaml-synthetic-n-too-small", S, ["search.dataset.n", "greater than or equal to 14"],
         search_space({"dataset": {"format": "synthetic", "n": 5}})),
    Case("search-yaml-synthetic-eight-classes", S, ["search.dataset.num_classes", "8", "less than or equal to 7"],
         search_space({"dataset": {"format": "synthetic", "num_classes": 8}})),
    Case("search-yaml-image-size-huge", S, ["search.dataset.image_size", "4096", "less than or equal to 1024"],
         search_space({"dataset": {"format": "synthetic", "image_size": 4096}})),
    # writes=True: only the data cache's folder, left empty (runners/data/cache.Writer makes it before the
    # decode fails; the data area's to fix)
    Case("search-corrupt-image", S + ["--format", "imagefolder", "--data", "{faces}"],
         ["broken.png", "--skip-corrupt"], search_space(corrupt=True), writes=True),
    # where it runs and tracks
    Case("search-address-malformed", S + ["--address", "nonsense"], ["Ray address 'nonsense'", "HOST:PORT"],
         search_space()),
    Case("search-tracking-uri-malformed", S + ["--tracking-uri", "nonsense"], ["tracking URI 'nonsense'"],
         search_space()),
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
