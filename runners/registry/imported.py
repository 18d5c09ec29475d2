"""`fer-automl promote --weights FILE.pt --preset NAME`: register an imported model (issue 12, item 4).

A state dict of a preset (what `fer-automl models import-weights` writes from an official MA-Net
or SCAN-CCI checkpoint, or any state dict of this project's model) becomes a registered model
version exactly as a promoted trial does (runners.registry.promote.register): the same artifacts folder
(`model.pt` + `model_config.json`) is logged by `runners.registry.packaging.log_fer_model` (pt2, uint8
images in, class probabilities out, the classes, image size and normalisation in its metadata),
so `predict`, `evaluate` and `mlflow models serve` use it unchanged.

- The file must fill the preset's model: every tensor present, none extra, every shape equal
  (`num_batches_tracked`, a training counter caffe conversions lack, may be absent). A file that
  does not fit is refused with one line naming what is missing, extra or of another shape.
- Classes: `--classes` in the order of the model's outputs (official checkpoints use their
  dataset's order, e.g. RAF-DB's); default the 7 basic expressions in the canonical order
  (runners.data.dataset.BASIC_CLASSES). Their count must equal the model's num_classes.
- Provenance: `models import-weights` writes a sidecar `OUT.pt.import.json` (layout, preset,
  classes count, the official file and its sha256, the .pt's sha256). Promote reads it when its
  recorded sha256 still matches the .pt; `--layout` names the layout otherwise.
- The version is logged in a run of the experiment `fer-automl-imports` (tag fer_automl.kind =
  import) and tagged fer_automl.imported=true, fer_automl.source (path and sha256), fer_automl.preset,
  fer_automl.layout. The same file as the same model (config, classes, image size) is registered
  once: promoting it again reuses its version (tag fer_automl.import_key). It has no figures: the alias rule of runners.registry.promote (move only when the
  version beats the holder on the same data) cannot compare it, so the alias is set when no
  version holds it, and otherwise stays (exit 3) unless --force --reason.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

from fer_models.errors import UserError, UserPathError

from runners.registry.promote import (TAG_CLASSES, TAG_CONFIG, TAG_FORCE_REASON, TAG_FORCED_OVER, TAG_IMAGE_SIZE,
                                      TAG_RUN_ID, TAG_SERIALIZATION, PromoteError, PromoteResult)

SIDECAR_SUFFIX = ".import.json"
IMPORT_EXPERIMENT = "fer-automl-imports"
DEFAULT_IMAGE_SIZE = 224  # the official networks' input size (MA-Net, SCAN-CCI)

TAG_IMPORTED = "fer_automl.imported"
TAG_SOURCE = "fer_automl.source"            # "<absolute path> sha256:<hex>" of the .pt registered
TAG_SOURCE_SHA = "fer_automl.source_sha256"
TAG_PRESET = "fer_automl.preset"
TAG_LAYOUT = "fer_automl.layout"            # the official layout import-weights read, where known
TAG_OFFICIAL = "fer_automl.official_file"   # the official checkpoint import-weights read (path sha256:hex)
TAG_IMPORT_KEY = "fer_automl.import_key"    # sha256 of (file sha256, model config, classes, size): reuse


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sidecar_path(pt: Path) -> Path:
    return Path(str(pt) + SIDECAR_SUFFIX)


def write_sidecar(out: Path, *, layout: str, preset: str, num_classes: int, source: str) -> Path:
    """What `models import-weights` records beside the .pt it wrote (read back by promote --weights)."""
    out, src = Path(out), Path(source).expanduser().resolve()
    data = {"layout": layout, "preset": preset, "num_classes": int(num_classes),
            "official_file": str(src), "official_sha256": sha256_of(src), "sha256": sha256_of(out)}
    side = sidecar_path(out)
    side.write_text(json.dumps(data, indent=1))
    return side


def read_sidecar(pt: Path, sha: str) -> Optional[Dict[str, Any]]:
    """The sidecar of `pt` when it describes this very file (its sha256), else None."""
    side = sidecar_path(pt)
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("sha256") == sha else None


def parse_classes(text: Optional[str], num_classes: Optional[int]) -> List[str]:
    """--classes a,b,c (aliases allowed, the given order kept) or the 7 basic expressions."""
    from runners.data.dataset import BASIC_CLASSES, canonical_label

    if text is None:
        if num_classes not in (None, len(BASIC_CLASSES)):
            raise UserError(f"--classes is needed: the model has {num_classes} classes and the default is the "
                            f"{len(BASIC_CLASSES)} basic expressions ({','.join(BASIC_CLASSES)})")
        return list(BASIC_CLASSES)
    names = [n.strip() for n in text.split(",")]
    if any(not n for n in names):
        raise UserError(f"--classes {text!r}: an empty name; give comma-separated expressions, e.g. "
                        "happy,sad,neutral")
    classes = [canonical_label(n, where=f"--classes {text!r}") for n in names]
    dup = sorted({c for c in classes if classes.count(c) > 1})
    if dup:
        raise UserError(f"--classes {text!r}: {', '.join(dup)} named twice")
    return classes


def read_state_dict(path: Path) -> Dict[str, Any]:
    import torch

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - not a torch file, a pickle of objects, a truncated file
        # torch's own text is many lines (with terminal escapes) about loading unsafely: not what to do here
        raise UserError(f"--weights {str(path)!r}: not a state dict torch.load(weights_only=True) reads "
                        f"({type(exc).__name__}); an official checkpoint goes through `fer-automl models "
                        "import-weights FILE --preset NAME --out FILE.pt` first") from None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        keys = ", ".join(map(str, list(sd)[:4])) if isinstance(sd, dict) else type(sd).__name__
        raise UserError(f"--weights {str(path)!r}: not a state dict of tensors ({keys}); an official checkpoint "
                        "goes through `fer-automl models import-weights FILE --preset NAME --out FILE.pt` first")
    return sd


def check_fits(sd: Dict[str, Any], model, where: str, what: str) -> Dict[str, Any]:
    """`sd` completed with the counters it may lack, or a one-line UserError saying how it does not fit.
    (torch's load_state_dict(strict=True) says it too, over many lines.)"""
    target = model.state_dict()
    missing = [k for k in target if k not in sd and not k.endswith("num_batches_tracked")]
    extra = [k for k in sd if k not in target]
    wrong = [f"{k} {tuple(sd[k].shape)} vs {tuple(target[k].shape)}" for k in sd
             if k in target and tuple(sd[k].shape) != tuple(target[k].shape)]
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} of the model's {len(target)} tensors missing (first "
                         f"{', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} not in the model (first {', '.join(extra[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} of another shape (first {'; '.join(wrong[:2])})")
        raise UserError(f"--weights {where}: does not fit {what}: {'; '.join(parts)}")
    return {**{k: v for k, v in target.items() if k not in sd}, **sd}


def promote_weights(*, weights: str, preset: str, image_size: Optional[int] = None,
                    num_classes: Optional[int] = None, classes: Optional[str] = None, layout: Optional[str] = None,
                    model_name: str, alias: str, force: bool = False, reason: Optional[str] = None,
                    tracking_uri: Optional[str] = None) -> PromoteResult:
    import mlflow
    import torch

    from fer_models import build_model
    from fer_models.official_weights import LAYOUTS
    from search_spaces import DataConfig, TrialConfig

    from runners.registry.model_files import IMAGE_SIZE_RANGE, NUM_CLASSES_RANGE, check_range, load_model_config
    from runners.data.transforms import normalization_for
    from runners.registry.promote import find_version_tagged
    from runners.search.tracking import check_tracking_server, resolve_tracking_uri

    # everything about the input is checked before the store is touched: a refusal writes nothing
    if force and not (reason or "").strip():
        raise PromoteError("--force needs --reason TEXT (it is recorded on the version)")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise UserPathError(f"--weights {weights!r}: no such file" + (" (a folder)" if path.is_dir() else ""))
    path = path.resolve()
    size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    check_range("--image-size", size, IMAGE_SIZE_RANGE)
    if layout is not None and layout not in LAYOUTS:
        raise UserError(f"--layout {layout!r}: unknown layout; valid: {', '.join(LAYOUTS)}")
    sha = sha256_of(path)
    side = read_sidecar(path, sha) or {}
    stale = not side and sidecar_path(path).is_file()
    layout = layout or side.get("layout")
    if num_classes is not None:
        check_range("--num-classes", num_classes, NUM_CLASSES_RANGE)
    k = num_classes or side.get("num_classes") or (len(classes.split(",")) if classes else None)
    names = parse_classes(classes, k)
    cfg = load_model_config(preset, int(k or len(names)))
    cfg = cfg.model_copy(update={"pretrained_path": None})  # the weights are the file's, loaded below
    if cfg.num_classes != len(names):
        raise UserError(f"--classes names {len(names)} classes ({','.join(names)}) but the model of --preset "
                        f"{preset!r} has num_classes={cfg.num_classes}")
    sd = read_state_dict(path)
    model = build_model(cfg, image_size=size)
    what = f"--preset {preset!r} ({cfg.backbone}, num_classes={cfg.num_classes})"
    model.load_state_dict(check_fits(sd, model, repr(str(path)), what), strict=True)

    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_server(uri)
    mean, std = normalization_for(cfg.backbone)
    provenance = {"file": str(path), "sha256": sha, "preset": preset, "layout": layout,
                  "official_file": side.get("official_file"), "official_sha256": side.get("official_sha256")}
    trial = TrialConfig(model=cfg, data=DataConfig(image_size=size, aug_strength=0.0)).model_dump()
    model_cfg = {"trial": trial, "model": cfg.model_dump(), "classes": names, "pose_classes": [], "dataset": {},
                 "normalization": {"mean": list(mean), "std": list(std)}, "imported": provenance}
    # the same file as the same model (config, classes, size) is registered once: its version is reused
    key = hashlib.sha256(json.dumps([sha, model_cfg["model"], names, size], sort_keys=True).encode()).hexdigest()
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = find_version_tagged(client, model_name, TAG_IMPORT_KEY, key)
    created = version is None
    msgs = [f"imported {path} (sha256 {sha[:12]}): preset {preset}, layout {layout or 'not recorded'}, "
            f"{len(names)} classes ({','.join(names)}) at {size} px"]
    if stale:
        msgs.append(f"note: {sidecar_path(path).name} describes another file (its sha256 differs): ignored")
    if not created:
        msgs.append(f"{model_name} version {version.version} is already this file as this model: reused, nothing "
                    "logged")
    else:
        with tempfile.TemporaryDirectory(prefix="fer-import-") as tmp:
            art = Path(tmp) / "trial"
            art.mkdir()
            torch.save(model.state_dict(), art / "model.pt")
            (art / "model_config.json").write_text(json.dumps(model_cfg, indent=1))
            version = _log_and_register(client, uri, art, model_cfg, provenance, model_name, key)
        msgs.append(f"registered {model_name} version {version.version} "
                    f"({version.tags.get(TAG_SERIALIZATION) or '?'} serialisation), tagged {TAG_IMPORTED}=true; "
                    f"run {version.run_id} of experiment {IMPORT_EXPERIMENT}")
    return _set_alias(client, model_name, alias, str(version.version), version.run_id, created, force, reason, msgs)


def _log_and_register(client, uri: str, art: Path, model_cfg: Dict[str, Any], prov: Dict[str, Any],
                      model_name: str, key: str):
    """Log the artifacts folder as an MLflow model (runners.registry.packaging) in a run of IMPORT_EXPERIMENT
    and register it as a new version with the provenance tags."""
    from runners.registry.packaging import log_fer_model
    from runners.registry.promote import _log_into
    from runners.search.tracking import TAG_KIND, get_or_create_experiment

    exp_id = get_or_create_experiment(client, IMPORT_EXPERIMENT)
    run = client.create_run(exp_id, run_name=f"import {Path(prov['file']).name} ({prov['preset']})",
                            tags={TAG_KIND: "import", TAG_IMPORTED: "true"})
    run_id = run.info.run_id
    try:
        for k in ("file", "sha256", "preset", "layout", "official_file"):
            if prov.get(k):
                client.log_param(run_id, f"import.{k}", str(prov[k])[:6000])
        with _log_into(uri, exp_id):
            info = log_fer_model(art, name="model", run_id=run_id)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    meta = (info.metadata or {}).get("fer_automl", {})
    tags = {TAG_IMPORTED: "true", TAG_SOURCE: f"{prov['file']} sha256:{prov['sha256']}", TAG_SOURCE_SHA: prov["sha256"],
            TAG_PRESET: prov["preset"], TAG_RUN_ID: run_id, TAG_CLASSES: json.dumps(model_cfg["classes"]),
            TAG_IMAGE_SIZE: str(model_cfg["trial"]["data"]["image_size"]),
            TAG_CONFIG: json.dumps(model_cfg["trial"], sort_keys=True)[:5000],
            TAG_SERIALIZATION: meta.get("serialization", ""), TAG_IMPORT_KEY: key}
    if prov.get("layout"):
        tags[TAG_LAYOUT] = prov["layout"]
    if prov.get("official_file"):
        tags[TAG_OFFICIAL] = f"{prov['official_file']} sha256:{prov.get('official_sha256', '?')}"
    from runners.registry.promote import create_version

    return create_version(client, uri, model_name, info, run_id, tags)


def _set_alias(client, model_name: str, alias: str, v: str, run_id: str, created: bool, force: bool,
               reason: Optional[str], msgs: List[str]) -> PromoteResult:
    """runners.registry.promote's alias rule for a version without figures: taken when free, else --force."""
    from mlflow.exceptions import MlflowException

    try:
        holder = client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        holder = None
    result = PromoteResult(model_name, alias, v, run_id, "", float("nan"), created,
                           str(holder.version) if holder else None, moved=False, messages=msgs)
    if holder is not None and str(holder.version) == v:
        msgs.append(f"alias {alias!r} already on version {v}: unchanged")
        return result
    if holder is not None and not force:
        result.refused = (f"an imported version has no figures to compare with version {holder.version} "
                          "(runners.registry.promote's rule: the alias moves to a version that beats its holder on the "
                          "same data)")
        msgs.append(f"refused: alias {alias!r} stays on version {holder.version}: {result.refused}. Version {v} "
                    f"stays registered; --alias NAME gives it an alias of its own, --force --reason TEXT moves "
                    f"{alias!r}; compare it first: fer-automl evaluate --model models:/{model_name}/{v} ...")
        return result
    if holder is not None:
        client.set_model_version_tag(model_name, v, TAG_FORCE_REASON, reason.strip())
        client.set_model_version_tag(model_name, v, TAG_FORCED_OVER, f"{alias}: version {holder.version} "
                                     "(imported: no figures to compare)")
        result.forced = True
    client.set_registered_model_alias(model_name, alias, v)
    result.moved = True
    msgs.append(f"alias {alias!r}: {'version ' + str(holder.version) if holder else 'no version'} -> version {v}"
                + (f" (forced: {reason.strip()})" if holder is not None else ""))
    msgs.append(f"use it: models:/{model_name}@{alias}")
    return result
