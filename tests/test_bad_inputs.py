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

def _space_with_storage(tmp: Path) -> Dict[str, str]:
    """A copy of the quickstart space whose `search.storage_path` is a file."""
    from search_spaces.schema import resolve_space_path

    (tmp / "store.txt").write_text("not a folder")
    text = Path(resolve_space_path("quickstart")).read_text()
    text = text.replace("search:\n", f"search:\n  storage_path: {tmp / 'store.txt'}\n", 1)
    return {"space": str(write(tmp / "space.yaml", text))}


def _search_folder_is_a_file(tmp: Path) -> Dict[str, str]:
    write(tmp / "runs" / "quickstart", "a file where the search's folder goes")
    return {}


CASES_SEARCH: List[Case] = [
    # --- lifecycle ---
    # storage that cannot take the search's checkpoints: refused before anything is written
    Case("search-storage-path-is-a-file", ["search", "quickstart", "--storage-path", "{store}"],
         ["--storage-path", "store.txt", "is a file, not a folder"], setup=files(store="store.txt:x")),
    Case("search-storage-path-under-a-file", ["search", "quickstart", "--storage-path", "{store}/runs"],
         ["--storage-path", "store.txt", "is a file, not a folder"], setup=files(store="store.txt:x")),
    Case("search-storage-key-is-a-file", ["search", "{space}"],
         ["search.storage_path in", "space.yaml", "store.txt", "is a file"], setup=_space_with_storage),
    Case("search-default-storage-is-a-file", ["search", "quickstart"],
         ["default storage folder ./ray_results", "--storage-path", "is a file"], setup=files(rr="ray_results:x")),
    Case("search-folder-of-the-search-is-a-file", ["search", "quickstart", "--storage-path", "{tmp}/runs"],
         ["--storage-path", "runs/quickstart is a file"], setup=_search_folder_is_a_file),
    Case("search-storage-path-not-writable", ["search", "quickstart", "--storage-path", "/sys/fer-automl-runs"],
         ["--storage-path", "/sys/fer-automl-runs", "not writable"], needs=Path("/sys/kernel")),
    # the MLflow store
    Case("search-tracking-uri-no-scheme", ["search", "quickstart", "--tracking-uri", "mlflow.db"],
         ["tracking URI 'mlflow.db'", "--tracking-uri", "sqlite:///PATH"]),
    Case("search-tracking-uri-unknown-scheme", ["search", "quickstart", "--tracking-uri", "ftp://host/mlflow"],
         ["tracking URI 'ftp://host/mlflow'", "expected sqlite:///PATH"]),
    Case("search-tracking-sqlite-under-a-file", ["search", "quickstart", "--tracking-uri", "sqlite:///{f}/m.db"],
         ["--tracking-uri", "f.txt is a file, not a folder"], setup=files(f="f.txt:x")),
    Case("search-tracking-sqlite-is-a-folder", ["search", "quickstart", "--tracking-uri", "sqlite:///{tmp}/db"],
         ["--tracking-uri", "db is a folder, not a SQLite file"], setup=files(keep="db/keep.txt:x")),
    Case("search-tracking-sqlite-not-writable", ["search", "quickstart", "--tracking-uri",
                                                  "sqlite:////sys/fer-automl/mlflow.db"],
         ["sqlite:////sys/fer-automl/mlflow.db", "not writable"], needs=Path("/sys/kernel")),
    Case("search-tracking-server-unreachable", ["search", "quickstart", "--tracking-uri", "http://127.0.0.1:9"],
         ["tracking server http://127.0.0.1:9 is unreachable"]),
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
