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
from dataclasses import dataclass
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



# --- data / predict / evaluate / promote fixtures ------------------------------------------------
def _png(path: Path, value: int = 128, size: int = 24) -> Path:
    import cv2
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((size, size, 3), value, np.uint8))
    return path


def image_folder(**extra: str) -> Callable[[Path], Dict[str, str]]:
    """A small ImageFolder `set/<class>/*.png` (+ text files `extra`: name -> 'relpath:text')."""
    def setup(tmp: Path) -> Dict[str, str]:
        for c in ("happy", "sad"):
            for k in range(3):
                _png(tmp / "set" / c / f"{k}.png", 60 * k + 20)
        out = {"set": str(tmp / "set")}
        for key, spec in extra.items():
            rel, _, text = spec.partition(":")
            out[key] = str(write(tmp / "set" / rel, text))
        return out
    return setup


def manifest(text: str, encoding: str = "utf-8") -> Callable[[Path], Dict[str, str]]:
    """`m/manifest.csv` with `text` (in `encoding`) beside images a.png, b.png, c.png."""
    def setup(tmp: Path) -> Dict[str, str]:
        for name in ("a", "b", "c"):
            _png(tmp / "m" / f"{name}.png")
        path = tmp / "m" / "manifest.csv"
        path.write_bytes(text.encode(encoding))
        return {"csv": str(path)}
    return setup


def cascade_files(tmp: Path) -> Dict[str, str]:
    (tmp / "casc").mkdir()
    return {"junk": str(write(tmp / "casc" / "junk.xml", "not xml at all")),
            "other": str(write(tmp / "casc" / "other.xml",
                               '<?xml version="1.0"?><opencv_storage><foo>1</foo></opencv_storage>')),
            "img": str(_png(tmp / "a.png")), "dir": str(tmp / "casc")}


_STORE_TEMPLATE: Dict[str, Path] = {}


def mlflow_store(kind: str = "empty") -> Callable[[Path], Dict[str, str]]:
    """A SQLite MLflow store `m.db` (a copy of one made once per session: migrations take seconds):
    `empty`; `runs`: experiment `plain` with a run that is not a trial, experiment `nosearch` with no
    search run, search `s` whose one trial is finished with val_balanced_accuracy only, search `f`
    whose one trial failed."""
    def build(path: Path) -> None:
        import mlflow

        from runners.search.tracking import TAG_KIND, TAG_SEARCH, TAG_STATUS

        client = mlflow.MlflowClient(f"sqlite:///{path}")
        client.create_experiment("fer-automl-placeholder", artifact_location=str(path.parent / "art"))
        if kind == "empty":
            return
        plain = client.create_run(client.create_experiment("plain", artifact_location=str(path.parent / "art")))
        client.set_tag(plain.info.run_id, "note", "not a trial")
        client.create_experiment("nosearch", artifact_location=str(path.parent / "art"))
        for name, status in (("s", "finished"), ("f", "failed")):
            exp = client.create_experiment(name, artifact_location=str(path.parent / "art"))
            parent = client.create_run(exp, tags={TAG_KIND: "search", TAG_SEARCH: name})
            child = client.create_run(exp, tags={TAG_KIND: "trial", TAG_SEARCH: name, TAG_STATUS: status,
                                                 "mlflow.parentRunId": parent.info.run_id})
            client.log_metric(child.info.run_id, "val_balanced_accuracy", 0.5, step=1)
        _STORE_TEMPLATE[kind + ":plain"] = Path(plain.info.run_id)

    def setup(tmp: Path) -> Dict[str, str]:
        import shutil
        import tempfile

        if kind not in _STORE_TEMPLATE:
            folder = Path(tempfile.mkdtemp(prefix="fer-battery-store-"))
            build(folder / "m.db")
            _STORE_TEMPLATE[kind] = folder / "m.db"
        shutil.copy(_STORE_TEMPLATE[kind], tmp / "m.db")
        out = {"db": f"sqlite:///{tmp / 'm.db'}"}
        if kind + ":plain" in _STORE_TEMPLATE:
            out["plain_run"] = str(_STORE_TEMPLATE[kind + ":plain"])
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
    Case("cli-promote-without-search-or-run", ["promote"], ["one of the arguments --search --run --weights is required"]),
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
         ["m.yaml: model.attention: 'transformer'", "valid: none, se, eca, cbam", "model.global_branch: 'x'", "'backbone' or 'multiscale'",
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
    Case("models-describe-pretrained-unknown-tag", ["models", "describe", "{f}", "--image-size", "32"],
         ["m.yaml", "pretrained", "'in99k'", "backbone 'resnet18'", "a1_in1k", "tv_in1k"],
         setup=files(f="m.yaml:backbone: resnet18\npretrained: in99k\n")),
    Case("models-describe-pretrained-fercnn", ["models", "describe", "{f}", "--image-size", "32"],
         ["m.yaml", "pretrained", "backbone 'fercnn' has no pretrained weights"],
         setup=files(f="m.yaml:backbone: fercnn\npretrained: imagenet\n")),
    Case("models-describe-pretrained-file-missing", ["models", "describe", "{f}", "--image-size", "32"],
         ["pretrained_file", "nope.safetensors", "no such file"],
         setup=files(f="m.yaml:backbone: resnet10t\npretrained_file: nope.safetensors\n")),
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
    # issue 12, item 3: SCAN-CCI's official patch cut and init
    Case("models-describe-ceil-official-map-not-cuttable", ["models", "describe", "{f}", "--image-size", "64"],
         ["patch_split='ceil_official'", "8 in 2 leaves 4", "use patch_split='ceil'"],
         setup=files(f="m.yaml:num_patches: 4\npatch_split: ceil_official\n")),
    Case("models-describe-bad-patch-split-and-init", ["models", "describe", "{f}"],
         ["m.yaml: model.patch_split: 'ceil_offical'", "'ceil_official'", "model.init: 'kaiming'", "'default' or 'official'"],
         setup=files(f="m.yaml:model:\n  init: kaiming\n  patch_split: ceil_offical\n")),
    Case("models-describe-split-stage-beyond-backbone", ["models", "describe", "{f}", "--image-size", "32"],
         ["split_stage=7"], setup=files(f="m.yaml:num_patches: 4\nsplit_stage: 7\n")),
    # fercnn's width and depth: bounded, and only with backbone fercnn (never silently ignored)
    Case("models-describe-fercnn-width-zero", ["models", "describe", "{f}", "--image-size", "48"],
         ["m.yaml", "fercnn_width: 0", "greater than or equal to 4"],
         setup=files(f="m.yaml:backbone: fercnn\nfercnn_width: 0\n")),
    Case("models-describe-fercnn-depth-huge", ["models", "describe", "{f}", "--image-size", "48"],
         ["m.yaml", "fercnn_depth: 100", "less than or equal to 8"],
         setup=files(f="m.yaml:backbone: fercnn\nfercnn_depth: 100\n")),
    Case("models-describe-fercnn-width-not-an-int", ["models", "describe", "{f}", "--image-size", "48"],
         ["m.yaml", "fercnn_width: 'wide'", "integer"],
         setup=files(f="m.yaml:backbone: fercnn\nfercnn_width: wide\n")),
    Case("models-describe-fercnn-width-on-a-timm-backbone", ["models", "describe", "{f}", "--image-size", "48"],
         ["m.yaml", "fercnn_width=32", "fercnn_depth=2", "backbone 'fercnn' only", "'resnet10t'"],
         setup=files(f="m.yaml:backbone: resnet10t\nfercnn_width: 32\nfercnn_depth: 2\n")),
    Case("models-describe-backbone-flag-unknown", ["models", "describe", "baseline", "--backbone", "resnet_nope",
                                                    "--image-size", "48"], ["backbone 'resnet_nope'", "Unknown model"]),
    Case("models-describe-backbone-flag-drops-fercnn", ["models", "describe", "{f}", "--backbone", "resnet10t",
                                                        "--image-size", "48"],
         ["--backbone", "fercnn_width=8", "backbone 'fercnn' only", "'resnet10t'"],
         setup=files(f="m.yaml:backbone: fercnn\nfercnn_width: 8\n")),
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

NO_MODEL = "{tmp}/no-model"          # a model folder that does not exist: what is checked before it comes first
SYNTH = ["--format", "synthetic", "-o", "n=70", "-o", "size=16"]

CASES_DATA_PREDICT_EVALUATE: List[Case] = [
    Case("data-inspect-unknown-format", ["data", "inspect", "{tmp}", "--format", "nope"], ["nope"]),
    Case("data-inspect-missing-path", ["data", "inspect", "{tmp}/nope", "--format", "imagefolder"],
         ["nope", "does not exist"]),
    Case("data-inspect-path-is-a-file", ["data", "inspect", "{f}", "--format", "imagefolder"],
         ["f.txt", "is not a folder"], setup=files(f="f.txt:hello")),
    Case("data-inspect-needs-a-path", ["data", "inspect", "--format", "imagefolder"], ["imagefolder", "needs a path"]),
    Case("data-inspect-path-for-synthetic", ["data", "inspect", "{tmp}", "--format", "synthetic"],
         ["synthetic", "reads no files"]),
    Case("data-inspect-option-not-key-value", ["data", "inspect", *SYNTH, "-o", "novalue"],
         ["--option 'novalue'", "KEY=VALUE"]),
    Case("data-inspect-unknown-option", ["data", "inspect", *SYNTH, "-o", "colour=1"],
         ["colour", "takes no option"]),
    Case("data-inspect-bad-option-value", ["data", "inspect", *SYNTH, "-o", "occlusion=2"], ["occlusion=2"]),
    Case("data-inspect-image-size-zero", ["data", "inspect", *SYNTH, "--image-size", "0"], ["image_size=0"]),
    Case("data-inspect-csv-not-utf8", ["data", "inspect", "{csv}", "--format", "csv"],
         ["manifest.csv line 3", "not UTF-8"], setup=manifest("path,label\na.png,happy\nb.png,tr\xe8s triste\n", "latin-1")),
    Case("data-inspect-csv-wrong-columns", ["data", "inspect", "{csv}", "--format", "csv"],
         ["manifest.csv", "missing label"], setup=manifest("path,emotion\na.png,happy\n")),
    Case("data-inspect-csv-unknown-label", ["data", "inspect", "{csv}", "--format", "csv"],
         ["manifest.csv line 3", "'joyous'"], setup=manifest("path,label\na.png,happy\nb.png,joyous\n")),
    Case("data-inspect-csv-missing-image", ["data", "inspect", "{csv}", "--format", "csv"],
         ["missing images", "gone.png"], setup=manifest("path,label\na.png,happy\ngone.png,sad\n")),
    Case("data-inspect-csv-unknown-split", ["data", "inspect", "{csv}", "--format", "csv"],
         ["line 2", "unknown split 'holdout'"], setup=manifest("path,label,split\na.png,happy,holdout\n")),
    Case("data-inspect-csv-is-a-fifo", ["data", "inspect", "{tmp}/pipe.csv", "--format", "csv"],
         ["pipe.csv", "not a regular file"], setup=lambda tmp: os.mkfifo(tmp / "pipe.csv") or {}),
    Case("data-inspect-csv-empty-path", ["data", "inspect", "{csv}", "--format", "csv"],
         ["line 3", "empty path"], setup=manifest("path,label\na.png,happy\n,sad\n")),
    Case("data-inspect-empty-class-folder", ["data", "inspect", "{set}", "--format", "imagefolder"],
         ["angry", "has no images"], setup=image_folder(e="angry/readme.txt:no images here")),
    Case("data-inspect-no-class-folders", ["data", "inspect", "{tmp}/m", "--format", "imagefolder"],
         ["no class folders"], setup=manifest("path,label\na.png,happy\n")),
    Case("data-inspect-unknown-class-folder", ["data", "inspect", "{set}", "--format", "imagefolder"],
         ["class folder", "'puzzled'"], setup=image_folder(e="puzzled/x.txt:")),
    Case("data-inspect-corrupt-image", ["data", "inspect", "{set}", "--format", "imagefolder"],
         ["junk.png", "--skip-corrupt"], setup=image_folder(j="happy/junk.png:not an image")),
    Case("data-inspect-sheet-not-png", ["data", "inspect", *SYNTH, "--sheet", "{tmp}/sheet.txt"],
         ["--sheet", ".png"]),
    Case("data-inspect-sheet-folder-missing", ["data", "inspect", *SYNTH, "--sheet", "{tmp}/no/such/s.png"],
         ["--sheet", "does not exist"]),
    Case("data-inspect-rafdb-labels-not-utf8", ["data", "inspect", "{tmp}/raf", "--format", "rafdb"],
         ["list_patition_label.txt line 2", "not UTF-8"],
         setup=lambda tmp: {"f": str(write(tmp / "raf" / "EmoLabel" / "list_patition_label.txt",
                                           b"train_00001.jpg 5\ntrain_\xff0002.jpg 4\n", "wb"))}),
    Case("data-inspect-fer2013-bad-emotion", ["data", "inspect", "{csv}", "--format", "fer2013"],
         ["fer2013.csv line 2", "unknown emotion label '9'"],
         setup=files(csv="fer2013.csv:emotion,pixels,Usage\n9,1 2 3 4,Training\n")),
    Case("data-inspect-cmu-bad-scale", ["data", "inspect", "{tmp}", "--format", "cmu_faces", "-o", "scale=3"],
         ["scale=3", "expected 1"]),
    Case("data-synth-n-zero", ["data", "synth", "{tmp}/out", "--n", "0"], ["n=0", "n >= 1"]),
    Case("data-synth-output-not-empty", ["data", "synth", "{tmp}/out", "--n", "14"], ["out", "not empty"],
         setup=files(f="out/keep.txt:mine")),
    # predict: what is checked before the model is loaded
    Case("predict-no-image", ["predict", "--model", NO_MODEL], ["the following arguments are required", "IMAGE"]),
    Case("predict-cascade-without-detect-faces", ["predict", "--model", NO_MODEL, "--cascade", "{junk}", "{img}"],
         ["--cascade", "--detect-faces"], setup=cascade_files),
    Case("predict-cascade-missing", ["predict", "--model", NO_MODEL, "--detect-faces", "--cascade",
                                     "{tmp}/none.xml", "{img}"], ["none.xml", "no such file"], setup=cascade_files),
    Case("predict-cascade-not-xml", ["predict", "--model", NO_MODEL, "--detect-faces", "--cascade", "{junk}", "{img}"],
         ["junk.xml", "not a Haar cascade"], setup=cascade_files),
    Case("predict-cascade-xml-not-a-cascade", ["predict", "--model", NO_MODEL, "--detect-faces", "--cascade",
                                               "{other}", "{img}"], ["other.xml", "not a Haar cascade"],
         setup=cascade_files),
    Case("predict-cascade-is-a-folder", ["predict", "--model", NO_MODEL, "--detect-faces", "--cascade", "{dir}",
                                         "{img}"], ["casc", "not a regular file"], setup=cascade_files),
    Case("predict-model-folder-missing", ["predict", "--model", NO_MODEL, "{img}"],
         ["cannot load the model", "no-model"], setup=cascade_files),
    Case("predict-model-folder-not-a-model", ["predict", "--model", "{tmp}/casc", "{img}"],
         ["cannot load the model", "casc"], setup=cascade_files),
    Case("predict-models-uri-store-missing", ["predict", "--model", "models:/fer-expression@champion",
                                              "--tracking-uri", "sqlite:///{tmp}/none.db", "{img}"],
         ["models:/fer-expression@champion", "none.db", "does not exist"], setup=cascade_files),
    Case("predict-runs-uri-store-missing", ["predict", "--model", "runs:/0123abcd/model",
                                            "--tracking-uri", "sqlite:///{tmp}/none.db", "{img}"],
         ["runs:/0123abcd/model", "does not exist"], setup=cascade_files),
    Case("predict-model-not-in-registry", ["predict", "--model", "models:/nope@champion", "--tracking-uri", "{db}",
                                           "{tmp}/a.png"], ["models:/nope@champion"], setup=mlflow_store()),
    # evaluate: the output folder, the detector, the data and the model, in that order
    Case("evaluate-output-dir-is-a-file", ["evaluate", "--model", NO_MODEL, *SYNTH, "--output-dir", "{f}"],
         ["--output-dir", "report.json", "is a file"], setup=files(f="report.json:{}")),
    Case("evaluate-output-dir-under-a-file", ["evaluate", "--model", NO_MODEL, *SYNTH, "--output-dir", "{f}/sub"],
         ["--output-dir", "is a file"], setup=files(f="report.json:{}")),
    Case("evaluate-bad-split", ["evaluate", "--model", NO_MODEL, *SYNTH, "--split", "holdout"],
         ["--split", "invalid choice", "holdout"]),
    Case("evaluate-unknown-format", ["evaluate", "--model", NO_MODEL, "--format", "nope", "--data", "{tmp}"],
         ["unknown dataset format 'nope'"]),
    Case("evaluate-data-missing", ["evaluate", "--model", NO_MODEL, "--format", "imagefolder", "--data",
                                   "{tmp}/none"], ["--data", "none", "does not exist"]),
    Case("evaluate-needs-data", ["evaluate", "--model", NO_MODEL, "--format", "imagefolder"],
         ["imagefolder", "needs --data"]),
    Case("evaluate-data-for-synthetic", ["evaluate", "--model", NO_MODEL, "--format", "synthetic", "--data", "{tmp}"],
         ["synthetic", "reads no files"]),
    Case("evaluate-unknown-option", ["evaluate", "--model", NO_MODEL, *SYNTH, "-o", "colour=1"],
         ["colour", "takes no option"]),
    Case("evaluate-cascade-without-detect-faces", ["evaluate", "--model", NO_MODEL, *SYNTH, "--cascade", "{junk}"],
         ["--cascade", "--detect-faces"], setup=cascade_files),
    Case("evaluate-cascade-not-a-cascade", ["evaluate", "--model", NO_MODEL, *SYNTH, "--detect-faces", "--cascade",
                                            "{other}"], ["other.xml", "not a Haar cascade"], setup=cascade_files),
    Case("evaluate-model-folder-missing", ["evaluate", "--model", NO_MODEL, *SYNTH, "--no-log"],
         ["cannot load the model", "no-model"]),
    Case("evaluate-models-uri-store-missing", ["evaluate", "--model", "models:/fer-expression/1", *SYNTH,
                                               "--tracking-uri", "sqlite:///{tmp}/none.db"],
         ["models:/fer-expression/1", "does not exist"]),
    Case("evaluate-model-not-in-registry", ["evaluate", "--model", "models:/nope/3", *SYNTH, "--tracking-uri", "{db}"],
         ["models:/nope/3"], setup=mlflow_store()),
]

POINT = "point.yaml:{attention: none, num_scales: 1, num_patches: 0, loss_weighting: fixed, lr: 0.01, image_size: 40}"


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
    Case("train-config-not-yaml", TRAIN, ["--config", "point.yaml", "not a YAML file", "line 1, column 7"],
         setup=files(point="point.yaml:a: [1,")),
    Case("train-config-duplicate-key", TRAIN, ["--config", "point.yaml", "duplicate key 'lr' at line 2 (first at line 1)"],
         setup=files(point="point.yaml:lr: 0.01\nlr: 0.1\n")),
    Case("train-config-not-text", TRAIN, ["--config", "point.yaml", "not UTF-8"],
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
    # population-based training (pbt, pb2): their settings, the algorithm beside them, what they perturb
    Case("search-yaml-pbt-with-tpe", S, ["space.yaml", "search", "scheduler 'pbt' needs algorithm: random or grid"],
         search_space({"scheduler": "pbt"})),
    Case("search-yaml-pbt-with-grace-period", S, ["search.scheduler", "grace_period: not a setting of scheduler 'pbt'"],
         search_space({"algorithm": "random", "scheduler": {"type": "pbt", "grace_period": 2}})),
    Case("search-yaml-asha-with-perturbation-interval", S,
         ["perturbation_interval: not a setting of scheduler 'asha'"],
         search_space({"scheduler": {"type": "asha", "perturbation_interval": 2}})),
    Case("search-yaml-pb2-with-resample-probability", S, ["resample_probability: not a setting of scheduler 'pb2'"],
         search_space({"algorithm": "random", "scheduler": {"type": "pb2", "resample_probability": 0.5}})),
    Case("search-yaml-pbt-quantile-above-half", S,
         ["search.scheduler.quantile_fraction", "0.6", "less than or equal to 0.5"],
         search_space({"algorithm": "random", "scheduler": {"type": "pbt", "quantile_fraction": 0.6}})),
    Case("search-yaml-pbt-perturbation-interval-zero", S,
         ["search.scheduler.perturbation_interval", "greater than or equal to 1"],
         search_space({"algorithm": "random", "scheduler": {"type": "pbt", "perturbation_interval": 0}})),
    Case("search-yaml-pbt-nothing-to-perturb", S, ["space.yaml", "'pbt' perturbs the dimensions that target train.lr"],
         search_space({"algorithm": "random", "scheduler": "pbt"},
                      dimensions={"attention": {"type": "choice", "values": ["none", "se"]}})),
    Case("search-yaml-pb2-choice-dimension", S, ["space.yaml", "'pb2' models continuous ranges only", "lr"],
         search_space({"algorithm": "random", "scheduler": "pb2"},
                      dimensions={"lr": {"type": "choice", "values": [0.001, 0.01]}})),
    # constraints: positive limits, known keys, at least one
    Case("search-yaml-constraints-max-params-zero", S, ["search.constraints.max_params", "greater than 0"],
         search_space({"constraints": {"max_params": 0}})),
    Case("search-yaml-constraints-latency-negative", S, ["search.constraints.max_latency_ms", "-1", "greater than 0"],
         search_space({"constraints": {"max_latency_ms": -1.5}})),
    Case("search-yaml-constraints-max-macs-text", S, ["search.constraints.max_macs", "1G", "valid integer"],
         search_space({"constraints": {"max_macs": "1G"}})),
    Case("search-yaml-constraints-unknown-key", S, ["search.constraints.max_flops", "unknown key"],
         search_space({"constraints": {"max_flops": 10}})),
    Case("search-yaml-constraints-empty", S, ["search.constraints", "give at least one of max_params"],
         search_space({"constraints": {}})),
    Case("search-yaml-unknown-algorithm", S, ["search.algorithm", "bayes"], search_space({"algorithm": "bayes"})),
    Case("search-yaml-grid-with-tpe", S, ["apply to algorithm: grid only"],
         search_space({"algorithm": "tpe", "grid": {"lr": [0.001]}})),
    Case("search-yaml-unreported-metric", S, ["metric 'val_auc' is not reported"], search_space({"metric": "val_auc"})),
    # fidelity and refit (issue 11): ranges, and a refit of more configurations than the search runs
    Case("search-yaml-fidelity-fraction-zero", S, ["search.fidelity.train_fraction", "0", "greater than 0"],
         search_space({"fidelity": {"train_fraction": 0}})),
    Case("search-yaml-fidelity-fraction-above-one", S, ["search.fidelity.train_fraction", "1.5",
                                                        "less than or equal to 1"],
         search_space({"fidelity": {"train_fraction": 1.5}})),
    Case("search-yaml-fidelity-fraction-string", S, ["search.fidelity.train_fraction", "valid number"],
         search_space({"fidelity": {"train_fraction": "half"}})),
    Case("search-yaml-fidelity-image-size-tiny", S, ["search.fidelity.image_size", "8", "greater than or equal to 16"],
         search_space({"fidelity": {"image_size": 8}})),
    Case("search-yaml-fidelity-unknown-key", S, ["search.fidelity.epochs", "unknown key"],
         search_space({"fidelity": {"epochs": 3}})),
    Case("search-yaml-refit-top-k-zero", S, ["search.fidelity.refit.top_k", "greater than or equal to 1"],
         search_space({"fidelity": {"refit": {"top_k": 0}}})),
    Case("search-yaml-refit-seeds-zero", S, ["search.fidelity.refit.seeds", "greater than or equal to 1"],
         search_space({"fidelity": {"refit": {"top_k": 1, "seeds": 0}}})),
    Case("search-yaml-refit-top-k-above-num-samples", S, ["space.yaml", "fidelity.refit.top_k=3",
                                                          "larger than num_samples=2"],
         search_space({"num_samples": 2, "fidelity": {"refit": {"top_k": 3}}})),
    Case("search-refit-top-k-above-num-samples-flag", S + ["--num-samples", "1"], ["fidelity.refit.top_k=2",
                                                                               "larger than num_samples=1"],
         search_space({"num_samples": 4, "fidelity": {"refit": {"top_k": 2}}})),
    Case("search-yaml-refit-top-k-above-grid", S, ["space.yaml", "search.fidelity.refit.top_k=3",
                                                   "larger than the 2 distinct points of the grid"],
         search_space({"algorithm": "grid", "grid": {"lr": [0.001, 0.01]},
                       "fidelity": {"refit": {"top_k": 3}}})),
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

# --- warm start (issue 11, item 3): the earlier searches a search is seeded with ----------------
def warm_store(search: Optional[dict] = None) -> Callable[[Path], Dict[str, str]]:
    """`search_space(search)` plus a SQLite store `w.db` (a copy of one made once per session) with
    searches `loss` (optimised val_loss), `f` (its one trial failed) and `misfit` (one finished
    trial whose point has a dimension this space lacks)."""
    def build(path: Path) -> None:
        import mlflow

        from runners.search.tracking import TAG_KIND, TAG_SEARCH, TAG_STATUS

        client = mlflow.MlflowClient(f"sqlite:///{path}")
        for name, status, metric in (("loss", "finished", "val_loss"), ("f", "failed", "val_balanced_accuracy"),
                                     ("misfit", "finished", "val_balanced_accuracy")):
            exp = client.create_experiment(name, artifact_location=str(path.parent / "art"))
            parent = client.create_run(exp, tags={TAG_KIND: "search", TAG_SEARCH: name})
            client.log_param(parent.info.run_id, "metric", metric)
            child = client.create_run(exp, tags={TAG_KIND: "trial", TAG_SEARCH: name, TAG_STATUS: status,
                                                 "mlflow.parentRunId": parent.info.run_id})
            for k, v in ({"lr": "0.005", "attention": "se"} if name == "misfit" else {"lr": "0.005"}).items():
                client.log_param(child.info.run_id, k, v)
            client.log_metric(child.info.run_id, metric, 0.5, step=1)

    def setup(tmp: Path) -> Dict[str, str]:
        import shutil
        import tempfile

        if "warm" not in _STORE_TEMPLATE:
            folder = Path(tempfile.mkdtemp(prefix="fer-battery-warm-"))
            build(folder / "w.db")
            _STORE_TEMPLATE["warm"] = folder / "w.db"
        shutil.copy(_STORE_TEMPLATE["warm"], tmp / "w.db")
        return {**search_space(search)(tmp), "db": f"sqlite:///{tmp / 'w.db'}"}
    return setup


W = S + ["--tracking-uri", "{db}", "--warm-start"]
CASES_SEARCH += [
    Case("search-warm-start-unknown-search", W + ["nope"],
         ["--warm-start 'nope'", "no search of that name", "w.db", "searches there: f, loss, misfit"], warm_store()),
    Case("search-warm-start-no-finished-trial", W + ["f"], ["--warm-start 'f'", "no finished trial", "1 failed"],
         warm_store()),
    Case("search-warm-start-other-metric", W + ["loss"],
         ["--warm-start 'loss'", "optimised val_loss", "this one optimises val_balanced_accuracy (max)"], warm_store()),
    Case("search-warm-start-nothing-fits", W + ["misfit"],
         ["--warm-start 'misfit'", "none of the 1 trials", "unknown dimension 'attention'"], warm_store()),
    Case("search-warm-start-other-store-missing", W + ["sqlite:///{tmp}/none.db#a"],
         ["--warm-start 'sqlite:///", "none.db", "does not exist"], warm_store()),
    Case("search-warm-start-other-store-unreachable", W + ["http://127.0.0.1:9#a"],
         ["tracking server http://127.0.0.1:9 is unreachable"], warm_store()),
    Case("search-yaml-warm-start-unknown-search", S + ["--tracking-uri", "{db}"],
         ["search.warm_start in", "space.yaml", "'nope'", "no search of that name"], warm_store({"warm_start": ["nope"]})),
    Case("search-warm-start-default-store-missing", S + ["--warm-start", "a"], ["mlflow.db", "does not exist"],
         search_space()),
    Case("search-warm-start-bad-name", S + ["--warm-start", "a/b"], ["--warm-start", "'a/b'", "one folder name"],
         search_space()),
    Case("search-warm-start-with-random", S + ["--warm-start", "a"], ["algorithm 'random' does not learn", "tpe"],
         search_space({"algorithm": "random"})),
    Case("search-yaml-warm-start-with-grid", S, ["search", "algorithm 'grid' does not learn", "tpe"],
         search_space({"algorithm": "grid", "warm_start": ["a"]})),
    Case("search-yaml-warm-start-not-a-list", S, ["space.yaml", "search.warm_start", "valid list"],
         search_space({"warm_start": "a"})),
]

CASES_PROMOTE: List[Case] = [
    Case("promote-force-without-reason", ["promote", "--search", "x", "--force",
                                          "--tracking-uri", "sqlite:///{tmp}/m.db"], ["--reason"]),
    Case("promote-neither-search-nor-run", ["promote"], ["one of the arguments --search --run --weights is required"]),
    Case("promote-search-and-run", ["promote", "--search", "a", "--run", "b"], ["not allowed with"]),
    Case("promote-serialization-is-gone", ["promote", "--search", "a", "--serialization", "pickle"],
         ["unrecognized arguments", "--serialization"]),
    Case("promote-metric-without-split", ["promote", "--search", "a", "--metric", "accuracy",
                                          "--tracking-uri", "{db}"], ["--metric 'accuracy'", "val_* or test_*"],
         setup=mlflow_store()),
    Case("promote-store-missing", ["promote", "--search", "qs", "--tracking-uri", "sqlite:///{tmp}/none.db"],
         ["--search 'qs'", "none.db", "does not exist"]),
    Case("promote-default-store-missing", ["promote", "--search", "qs"], ["mlflow.db", "does not exist"]),
    Case("promote-unknown-search", ["promote", "--search", "nope", "--tracking-uri", "{db}"],
         ["--search 'nope'", "no search of that name"], setup=mlflow_store()),
    Case("promote-experiment-without-search-run", ["promote", "--search", "nosearch", "--tracking-uri", "{db}"],
         ["'nosearch'", "no fer-automl search run"], setup=mlflow_store("runs")),
    Case("promote-search-without-finished-trial", ["promote", "--search", "f", "--tracking-uri", "{db}"],
         ["--search 'f'", "no finished trial", "1 failed"], setup=mlflow_store("runs")),
    Case("promote-metric-not-logged", ["promote", "--search", "s", "--metric", "val_macro_f1",
                                       "--tracking-uri", "{db}"], ["val_macro_f1", "not logged"],
         setup=mlflow_store("runs")),
    Case("promote-unknown-run", ["promote", "--run", "0123456789abcdef", "--tracking-uri", "{db}"],
         ["--run '0123456789abcdef'", "no such run"], setup=mlflow_store()),
    Case("promote-run-not-a-trial", ["promote", "--run", "{plain_run}", "--tracking-uri", "{db}"],
         ["is not a fer-automl trial run"], setup=mlflow_store("runs")),
    # ensembles (runners/registry/ensemble.py)
    Case("promote-ensemble-zero", ["promote", "--search", "s", "--ensemble", "0", "--tracking-uri", "{db}"],
         ["--ensemble 0", ">= 1"], setup=mlflow_store("runs")),
    Case("promote-ensemble-not-a-number", ["promote", "--search", "s", "--ensemble", "two"],
         ["--ensemble", "invalid int value", "'two'"]),
    Case("promote-ensemble-more-than-finished", ["promote", "--search", "s", "--ensemble", "2",
                                                 "--tracking-uri", "{db}"],
         ["--ensemble 2", "search 's' has only 1 finished trial"], setup=mlflow_store("runs")),
    Case("promote-tta-unknown", ["promote", "--search", "s", "--ensemble", "2", "--tta", "rotate",
                                 "--tracking-uri", "{db}"], ["--tta 'rotate'", "none, flip"], setup=mlflow_store("runs")),
    Case("promote-ensemble-with-run", ["promote", "--run", "0123456789abcdef", "--ensemble", "2",
                                       "--tracking-uri", "{db}"], ["--ensemble", "--search NAME, not --run"],
         setup=mlflow_store("runs")),
]

# --- models import-weights (issue 12, item 2): official checkpoints onto the presets -------------
def official_files(tmp: Path) -> Dict[str, str]:
    """A tiny VGGFace2-style numpy pickle (resnet50 names: layer1's first conv is 1x1) and a plain
    torch state dict of no official layout."""
    import pickle

    import numpy as np
    import torch

    r50 = {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32), "layer1.0.conv1.weight": np.zeros((64, 64, 1, 1), np.float32),
           "layer1.0.conv3.weight": np.zeros((256, 64, 1, 1), np.float32)}
    write(tmp / "r50.pkl", pickle.dumps(r50, protocol=2), "wb")
    torch.save({"foo.weight": torch.zeros(3)}, tmp / "plain.pt")
    return {"pkl": str(tmp / "r50.pkl"), "plain": str(tmp / "plain.pt")}


IW = ["models", "import-weights"]
CASES_IMPORT_WEIGHTS: List[Case] = [
    Case("import-weights-missing-file", IW + ["nope.pth", "--preset", "ma_net", "--out", "o.pt"],
         ["nope.pth", "no such file"]),
    Case("import-weights-not-a-checkpoint", IW + ["{f}", "--preset", "ma_net", "--out", "o.pt"],
         ["junk.pth", "not a checkpoint"], setup=files(f="junk.pth:not a checkpoint at all")),
    Case("import-weights-unknown-layout", IW + ["{pkl}", "--from", "caffe", "--preset", "scan_cci", "--out", "o.pt"],
         ["--from 'caffe'", "ma_net, ma_net_msceleb, vggface2_resnet50, scan_cci"], setup=official_files),
    Case("import-weights-layout-does-not-fit-preset",
         IW + ["{pkl}", "--from", "vggface2_resnet50", "--preset", "baseline", "--out", "o.pt"],
         ["r50.pkl", "'vggface2_resnet50' do not fit", "layer1.0.conv1.weight (64, 64, 1, 1)"], setup=official_files),
    Case("import-weights-keys-not-that-layout", IW + ["{pkl}", "--from", "ma_net", "--preset", "ma_net", "--out", "o.pt"],
         ["r50.pkl", "not the 'ma_net' layout", "vggface2_resnet50"], setup=official_files),
    Case("import-weights-keys-not-scan-cci", IW + ["{pkl}", "--from", "scan_cci", "--preset", "scan_cci", "--out", "o.pt"],
         ["r50.pkl", "not the 'scan_cci' layout", "vggface2_resnet50"], setup=official_files),
    Case("import-weights-layout-not-detected", IW + ["{plain}", "--preset", "ma_net", "--out", "o.pt"],
         ["plain.pt", "not a known official layout", "foo.weight", "--from"], setup=official_files),
    Case("import-weights-partial-without-flag", IW + ["{pkl}", "--preset", "scan_cci", "--out", "o.pt"],
         ["r50.pkl", "'vggface2_resnet50'", "backbone.body.bn1.weight", "--partial"], setup=official_files),
    Case("import-weights-out-folder-missing", IW + ["{pkl}", "--preset", "scan_cci", "--partial", "--out", "no/o.pt"],
         ["--out", "no/o.pt", "does not exist"], setup=official_files),
    Case("import-weights-unknown-preset", IW + ["{pkl}", "--preset", "vgg", "--out", "o.pt"],
         ["'vgg' is neither a preset"], setup=official_files),
    Case("import-weights-one-class", IW + ["{pkl}", "--preset", "scan_cci", "--num-classes", "1", "--out", "o.pt"],
         ["--num-classes", "2..1000", "got 1"], setup=official_files),
    Case("import-weights-no-out", IW + ["x.pth", "--preset", "ma_net"], ["--out", "required"]),
]

# --- promote --weights (issue 12, item 4): an imported state dict registered ---------------------
PW = ["promote", "--weights"]
CASES_PROMOTE_WEIGHTS: List[Case] = [
    Case("promote-weights-missing-file", PW + ["nope.pt", "--preset", "baseline"], ["--weights 'nope.pt'", "no such file"]),
    Case("promote-weights-without-preset", PW + ["x.pt"], ["--weights needs --preset"]),
    Case("promote-weights-and-search", PW + ["x.pt", "--search", "s"], ["not allowed with"]),
    Case("promote-weights-unknown-preset", PW + ["{plain}", "--preset", "vgg"], ["'vgg' is neither a preset"],
         setup=official_files),
    Case("promote-weights-not-a-state-dict", PW + ["{f}", "--preset", "baseline"], ["junk.pt", "not a state dict"],
         setup=files(f="junk.pt:not a checkpoint at all")),
    Case("promote-weights-official-file-not-converted", PW + ["{pkl}", "--preset", "baseline"],
         ["r50.pkl", "not a state dict", "models import-weights"], setup=official_files),
    Case("promote-weights-does-not-fit-preset", PW + ["{plain}", "--preset", "baseline"],
         ["plain.pt", "does not fit --preset 'baseline'", "missing", "not in the model (first foo.weight)"],
         setup=official_files),
    Case("promote-weights-classes-count", PW + ["{plain}", "--preset", "baseline", "--num-classes", "7",
                                                "--classes", "happy,sad"],
         ["--classes names 2 classes", "num_classes=7"], setup=official_files),
    Case("promote-weights-classes-needed", PW + ["{plain}", "--preset", "baseline", "--num-classes", "4"],
         ["--classes is needed", "4 classes"], setup=official_files),
    Case("promote-weights-unknown-class", PW + ["{plain}", "--preset", "baseline", "--classes", "happy,bored"],
         ["--classes 'happy,bored'", "unknown expression label 'bored'"], setup=official_files),
    Case("promote-weights-class-twice", PW + ["{plain}", "--preset", "baseline", "--classes", "happy,joy,sad"],
         ["--classes 'happy,joy,sad'", "happy named twice"], setup=official_files),
    Case("promote-weights-unknown-layout", PW + ["{plain}", "--preset", "baseline", "--layout", "caffe"],
         ["--layout 'caffe'", "unknown layout"], setup=official_files),
    Case("promote-weights-image-size", PW + ["{plain}", "--preset", "baseline", "--image-size", "8"],
         ["--image-size", "16..1024", "got 8"], setup=official_files),
    Case("promote-weights-with-ensemble", PW + ["x.pt", "--preset", "baseline", "--ensemble", "2"],
         ["--ensemble", "not with --weights"]),
    Case("promote-preset-without-weights", ["promote", "--search", "s", "--preset", "baseline"],
         ["--preset", "only with --weights"]),
]

ALL_CASES = (CASES_CLI + CASES_MODELS_SPACES + CASES_DATA_PREDICT_EVALUATE + CASES_TRAIN
             + CASES_SEARCH + CASES_PROMOTE + CASES_IMPORT_WEIGHTS + CASES_PROMOTE_WEIGHTS)


def snapshot(root: Path) -> Dict[str, int]:
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1)
            for p in root.rglob("*")}


def mlflow_globals() -> tuple:
    """MLflow's process-global tracking and registry URIs and their environment variables."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    return (tracking_utils._tracking_uri, registry_utils._registry_uri,
            os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI"))


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
    before_mlflow = mlflow_globals()
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exc:          # argparse's own usage errors
        rc = exc.code if isinstance(exc.code, int) else 2
    captured = capsys.readouterr()
    # a command run in-process leaves MLflow's global URIs as they were (a registry URI left pointing
    # at a case's deleted store broke the next module's registry writes)
    assert mlflow_globals() == before_mlflow, f"{case.id} changed MLflow's global state"
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
