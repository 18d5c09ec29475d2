"""Ensembles of a search's top trials, with optional flip test-time augmentation (`promote --ensemble K`).

`promote --search NAME --ensemble K [--tta flip]` registers ONE model version whose output is the
mean of the softmax of the search's top-K finished trials (ranked as `promote` ranks them:
`runners.registry.promote._rank_key` on the figure of their kept weights). When the search has a refit
stage (child runs tagged `fer_automl.stage = refit`, several seeds per configuration), the members
are taken from the refit runs only: they trained at full fidelity (`refit_or_search_runs`).
With `--tta flip` each member sees the image and its horizontal mirror and the two softmaxes are
averaged too (faces are left-right symmetric for expression; FER practice, see
/work/shared/FER_PRACTICE.md). `--tta flip` without `--ensemble` is an ensemble of one: the best
trial with flip TTA.

The ensemble is exported like a single trial (runners.registry.packaging): one torch.export graph (pt2),
uint8 RGB images (N, S, S, 3) in, class probabilities (N, C) out, the fer_automl metadata, so
`fer-automl predict`, `fer-automl evaluate`, `mlflow.pyfunc.load_model` and `mlflow models serve`
use it unchanged. Members may differ in input size and normalisation: S is the largest member's
size, each member normalises with its own mean/std, and a member of a smaller size sees the input
area-resized to its size inside the graph (torch's "area" interpolation, rounded to whole pixel
values as OpenCV's INTER_AREA does, which the datasets use), so all members see the same image.

Each member is also logged as a model of its own (linked to its trial run, or the model of its
existing registered version is reused), and the ensemble's metadata lists those model URIs, so
`fer-automl evaluate` can show every member beside the ensemble on the same images.

The alias: an ensemble has no validation figure of its own (its members were selected on the
validation split, so a figure of the ensemble there would not be comparable with theirs without
more held-out data). The alias moves to it when no version holds the alias, or with
`--force --reason`; otherwise the version stays registered and the refusal says why.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fer_models.errors import UserError

TTA_CHOICES = ("none", "flip")
from runners.search.fidelity import TAG_SEED, TAG_STAGE  # set by a search's stages: 'search' or 'refit' (old runs: absent)
REFIT = "refit"

# model-version tags of an ensemble (beside registry's dataset, split, metric, classes, ... tags)
TAG_ENSEMBLE_K = "fer_automl.ensemble.k"
TAG_ENSEMBLE_TTA = "fer_automl.ensemble.tta"
TAG_ENSEMBLE_MEMBERS = "fer_automl.ensemble.members"  # JSON list: run_id, trial, stage, seed, figure
TAG_ENSEMBLE_MEMBER_PREFIX = "fer_automl.ensemble.member."  # + index: "run_id metric=value"
TAG_ENSEMBLE_KEY = "fer_automl.ensemble.key"  # members + TTA hashed: the same ensemble is registered once
TAG_ENSEMBLE_STAGE = "fer_automl.ensemble.stage"  # where the members came from: refit or search


# --- choosing the members ----------------------------------------------------------------------------

def refit_or_search_runs(runs: Sequence[Any]) -> tuple:
    """(runs to draw members from, stage name): the refit stage's runs when the search has any,
    else all of them (search-stage runs, and runs of searches made before stages were tagged)."""
    refit = [r for r in runs if r.data.tags.get(TAG_STAGE) == REFIT]
    if refit:
        return refit, REFIT
    return list(runs), "search"


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UserError(f"--ensemble {k!r}: the number of members must be a whole number >= 1")
    return k


def check_tta(tta: Optional[str]) -> str:
    tta = "none" if tta is None else str(tta)
    if tta not in TTA_CHOICES:
        raise UserError(f"--tta {tta!r}: unknown test-time augmentation; expected one of {', '.join(TTA_CHOICES)}")
    return tta


def top_k(client, name: str, metric: str, k: int, uri: str) -> tuple:
    """(the top-k Candidates of the search's latest parent run, best first; stage): finished trials,
    from the refit stage where there is one, ranked as `promote` ranks them."""
    from runners.registry.promote import PromoteError, _rank_key, _search_parent, candidates
    from runners.search.tracking import TAG_STATUS

    check_k(k)
    parent = _search_parent(client, name, uri)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  max_results=5000)
    finished = [r for r in children if r.data.tags.get(TAG_STATUS) == "finished"]
    pool, stage = refit_or_search_runs(finished)
    cands = candidates(client, pool, metric)
    if not cands:
        raise PromoteError(f"--search {name!r}: no finished trial with {metric} logged to make an ensemble of "
                           f"(of {len(children)} trial runs)")
    if len(cands) < k:
        where = f"{stage}-stage " if stage == REFIT else ""
        raise PromoteError(f"--ensemble {k}: search {name!r} has only {len(cands)} finished {where}trial(s) with "
                           f"{metric} logged (of {len(children)} trial runs); give --ensemble {max(len(cands), 1)} "
                           "or fewer")
    return sorted(cands, key=lambda c: _rank_key(c, metric))[:k], stage


# --- the module ------------------------------------------------------------------------------------

class FEREnsemble(nn.Module):
    """uint8 RGB images (N, S, S, 3) -> the mean over members (and flips) of their class probabilities.

    members: `runners.registry.packaging.FERInference` modules (each with its own normalisation);
    sizes: each member's input size; S = max(sizes): a smaller member sees the image area-resized."""

    def __init__(self, members: Sequence[nn.Module], sizes: Sequence[int], tta: str = "none"):
        super().__init__()
        if len(members) != len(sizes) or not members:
            raise ValueError("one size per member, at least one member")
        self.members = nn.ModuleList(members)
        self.sizes = [int(s) for s in sizes]
        self.image_size = max(self.sizes)
        self.flip = check_tta(tta) == "flip"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        views = [x, torch.flip(x, dims=[3])] if self.flip else [x]
        total = None
        for member, size in zip(self.members, self.sizes):
            for v in views:
                if size != self.image_size:
                    v = torch.round(F.interpolate(v, size=(size, size), mode="area"))
                p = F.softmax(member.model((v - member.offset) * member.scale).logits.float(), dim=1)
                total = p if total is None else total + p
        return total / float(len(self.members) * len(views))


# --- registering -------------------------------------------------------------------------------------

@dataclass
class Member:
    cand: Any  # registry.Candidate
    art: Path
    module: nn.Module
    meta: Dict[str, Any]
    model_uri: str = ""

    @property
    def run(self):
        return self.cand.run


def ensemble_key(run_ids: Sequence[str], tta: str) -> str:
    return hashlib.sha256(json.dumps([sorted(run_ids), tta]).encode()).hexdigest()[:32]


def check_compatible(members: Sequence[Member]) -> None:
    """Members must predict the same classes in the same order (the output's columns)."""
    first = members[0]
    for m in members[1:]:
        if m.meta["classes"] != first.meta["classes"]:
            raise UserError(f"--ensemble: run {m.cand.run_id} predicts classes {m.meta['classes']}, run "
                            f"{first.cand.run_id} {first.meta['classes']}: members must share their classes")


def build_ensemble(members: Sequence[Member], tta: str) -> tuple:
    """(FEREnsemble in eval mode, its fer_automl metadata) from loaded members."""
    check_compatible(members)
    module = FEREnsemble([m.module for m in members], [m.meta["image_size"] for m in members], tta).eval()
    best = members[0].meta
    meta = {
        "classes": list(best["classes"]),
        "pose_classes": list(best.get("pose_classes") or []),
        "image_size": module.image_size,
        # no single normalisation: each member's is listed below
        "normalization": None,
        "dataset": dict(best.get("dataset") or {}),
        "trial_config": best.get("trial_config"),
        "input": "uint8 RGB images, shape (N, image_size, image_size, 3)",
        "output": "class probabilities, shape (N, len(classes)), in the order of `classes`: the mean of the "
                  "members' softmax" + (" over each image and its horizontal mirror" if module.flip else ""),
        "ensemble": {"k": len(members), "tta": tta, "members": [_member_meta(m) for m in members]},
    }
    return module, meta


def _member_meta(m: Member) -> Dict[str, Any]:
    tags = m.run.data.tags if m.cand is not None and getattr(m.cand, "run", None) is not None else {}
    return {"run_id": getattr(m.cand, "run_id", ""), "trial_id": tags.get("fer_automl.trial_id", ""),
            "stage": tags.get(TAG_STAGE, ""), "seed": tags.get(TAG_SEED, ""), "image_size": m.meta["image_size"],
            "normalization": m.meta["normalization"], "model_uri": m.model_uri}


def _log_module(module: nn.Module, meta: Dict[str, Any], run_id: str):
    """Log an inference module as the pt2 MLflow model runners.registry.packaging logs for one trial."""
    import mlflow

    from runners.registry.packaging import META_KEY, _example, _requirements, _signature, export_inference_module

    size, n = meta["image_size"], len(meta["classes"])
    example = _example(size)
    export_inference_module(module, example, where="--ensemble")
    meta = {**meta, "serialization": "pt2"}
    return mlflow.pytorch.log_model(module, name="model", serialization_format="pt2", metadata={META_KEY: meta},
                                    signature=_signature(size, n), input_example=example,
                                    pip_requirements=_requirements(), run_id=run_id)


def _member_model_uri(client, uri: str, model_name: str, member: Member) -> str:
    """The member's own logged model: its registered version's, else logged now on its trial run."""
    from runners.registry.packaging import ModelExportError, log_fer_model
    from runners.registry.promote import PromoteError, _log_into, find_version

    version = find_version(client, model_name, member.cand.run_id)
    if version is not None and version.source:
        return version.source
    with _log_into(uri, member.run.info.experiment_id):
        try:
            return log_fer_model(member.art, name="model", run_id=member.cand.run_id).model_uri
        except ModelExportError as exc:
            raise PromoteError(f"run {member.cand.run_id}: refused: {exc}") from None


def find_ensemble_version(client, model_name: str, key: str):
    from runners.registry.promote import find_version_tagged

    return find_version_tagged(client, model_name, TAG_ENSEMBLE_KEY, key)


def register_ensemble(client, uri: str, cands: Sequence[Any], stage: str, tta: str, model_name: str,
                      metric: str):
    """Log the members' models and the ensemble (on the search's parent run) and register a version."""
    from runners.registry.packaging import build_inference_module
    from runners.registry.promote import (TAG_CLASSES, TAG_COMMIT, TAG_DATASET, TAG_FINGERPRINT, TAG_IMAGE_SIZE,
                                          TAG_METRIC, TAG_SEARCH_NAME, TAG_SERIALIZATION, TAG_SPLIT, _log_into,
                                          download_weights, metric_split, search_params, selected_figures)
    from runners.search.tracking import TAG_SEARCH

    parent_id = cands[0].run.data.tags.get("mlflow.parentRunId")
    with tempfile.TemporaryDirectory(prefix="fer-ensemble-") as tmp:
        members = []
        for i, c in enumerate(cands):
            art = download_weights(client, c.run_id, Path(tmp) / f"m{i}")
            module, meta = build_inference_module(art)
            members.append(Member(c, art, module, meta))
        check_compatible(members)
        for m in members:
            m.model_uri = _member_model_uri(client, uri, model_name, m)
        module, meta = build_ensemble(members, tta)
        with _log_into(uri, cands[0].run.info.experiment_id):
            info = _log_module(module, meta, parent_id or cands[0].run_id)
    parent_params = search_params(client, parent_id)
    dataset = meta["dataset"]
    listed = []
    tags = {
        TAG_SEARCH_NAME: cands[0].run.data.tags.get(TAG_SEARCH, ""),
        TAG_DATASET: dataset.get("name") or parent_params.get("dataset.name", ""),
        TAG_FINGERPRINT: dataset.get("fingerprint") or parent_params.get("dataset.fingerprint", ""),
        TAG_SPLIT: metric_split(metric),
        TAG_METRIC: metric,
        TAG_CLASSES: json.dumps(meta["classes"]),
        TAG_IMAGE_SIZE: str(meta["image_size"]),
        TAG_COMMIT: parent_params.get("git_commit", "unknown"),
        TAG_SERIALIZATION: "pt2",
        TAG_ENSEMBLE_K: str(len(cands)),
        TAG_ENSEMBLE_TTA: tta,
        TAG_ENSEMBLE_STAGE: stage,
        TAG_ENSEMBLE_KEY: ensemble_key([c.run_id for c in cands], tta),
    }
    for i, (c, m) in enumerate(zip(cands, meta["ensemble"]["members"])):
        figures = selected_figures(client, c.run, c.epoch)
        listed.append({**{k: m[k] for k in ("run_id", "trial_id", "stage", "seed", "image_size", "model_uri")},
                       "epoch": c.epoch, metric: c.value,
                       **{k: v for k, v in figures.items() if k.startswith("test_")}})
        tags[f"{TAG_ENSEMBLE_MEMBER_PREFIX}{i}"] = (
            f"{c.run_id} trial {m['trial_id'] or '?'}" + (f" seed {m['seed']}" if m["seed"] else "")
            + f" {metric}={c.value:.4f}")
    tags[TAG_ENSEMBLE_MEMBERS] = json.dumps(listed)[:5000]
    from runners.registry.promote import create_version

    return create_version(client, uri, model_name, info, parent_id or cands[0].run_id, tags)


def promote_ensemble(*, search: Optional[str], run_id: Optional[str] = None, k: Optional[int] = None,
                     tta: Optional[str] = None, model_name: str, alias: str, metric: str, force: bool = False,
                     reason: Optional[str] = None, tracking_uri: Optional[str] = None):
    """`promote --search NAME --ensemble K [--tta flip]` (or `--tta flip` alone: K = 1): returns a
    registry.PromoteResult (run_id: the best member's; value: its figure)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from runners.registry.promote import (PromoteError, PromoteResult, TAG_FORCE_REASON, TAG_FORCED_OVER, metric_split,
                                          require_existing_store)
    from runners.search.tracking import check_tracking_server, resolve_tracking_uri

    if run_id is not None:
        raise PromoteError("--ensemble and --tta take the members from a search: give --search NAME, not --run")
    if search is None:
        raise PromoteError("--ensemble and --tta need --search NAME")
    k = 1 if k is None else check_k(k)
    tta = check_tta(tta)
    if force and not (reason and reason.strip()):
        raise PromoteError("--force needs --reason TEXT (it is recorded on the version)")
    metric_split(metric)
    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_server(uri)
    require_existing_store(uri, f"--search {search!r}")
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    cands, stage = top_k(client, search, metric, k, uri)
    msgs = [f"ensemble of {k} {stage}-stage trial(s) of search {search!r}"
            + (" with horizontal-flip TTA" if tta == "flip" else "") + ":"]
    for c in cands:
        t = c.run.data.tags
        msgs.append(f"  member: run {c.run_id} (trial {t.get('fer_automl.trial_id', '?')}"
                    + (f", seed {t[TAG_SEED]}" if t.get(TAG_SEED) else "")
                    + f"): {metric} {c.value:.4f}, weights of epoch {c.epoch}")
    key = ensemble_key([c.run_id for c in cands], tta)
    version = find_ensemble_version(client, model_name, key)
    created = version is None
    if created:
        version = register_ensemble(client, uri, cands, stage, tta, model_name, metric)
        msgs.append(f"registered {model_name} version {version.version} (an ensemble, pt2 serialisation)")
    else:
        msgs.append(f"{model_name} version {version.version} is already this ensemble: reused, nothing logged")
    try:
        holder = client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        holder = None
    result = PromoteResult(model_name, alias, str(version.version), cands[0].run_id, metric, cands[0].value,
                           created, str(holder.version) if holder else None, moved=False, messages=msgs)
    if holder is not None and str(holder.version) == str(version.version):
        msgs.append(f"alias {alias!r} already on version {version.version}: unchanged")
        return result
    why = (f"no version held alias {alias!r}" if holder is None else
           f"an ensemble has no {metric} figure of its own (its members were chosen on that split), so it cannot "
           f"be compared with version {holder.version}")
    if holder is not None and not force:
        result.refused = why
        msgs.append(f"refused: alias {alias!r} stays on version {holder.version}: {why}. Version {version.version} "
                    f"stays registered (models:/{model_name}/{version.version}); compare them with `fer-automl "
                    "evaluate` on held-out data, and --force --reason TEXT moves the alias")
        return result
    if force and holder is not None:
        client.set_model_version_tag(model_name, version.version, TAG_FORCE_REASON, reason.strip())
        client.set_model_version_tag(model_name, version.version, TAG_FORCED_OVER,
                                     f"{alias}: version {holder.version} ({why})")
        result.forced = True
    client.set_registered_model_alias(model_name, alias, version.version)
    result.moved = True
    msgs.append(f"alias {alias!r}: {f'version {holder.version}' if holder else 'no version'} -> version "
                f"{version.version}" + (f" (forced: {reason.strip()})" if result.forced else f"; {why}"))
    msgs.append(f"use it: models:/{model_name}@{alias}")
    return result


# --- evaluating the members beside the ensemble ------------------------------------------------------

def ensemble_members(predictor) -> List[Dict[str, Any]]:
    """The members a loaded model lists in its metadata ([] for a single trial's model)."""
    return list(((predictor.meta or {}).get("ensemble") or {}).get("members") or [])


def evaluate_members(predictor, ds, split: str, detector=None) -> List[Dict[str, Any]]:
    """Each member of an ensemble evaluated on the same images as the ensemble: one dict per member
    (run_id, trial_id, seed, model_uri, metrics or error). Call with MLflow's URIs pointing at the
    store that holds the members' models (as `fer-automl evaluate` does)."""
    from runners.serving.evaluate import evaluate_dataset
    from runners.registry.packaging import load_fer_model

    rows = []
    for m in ensemble_members(predictor):
        row = {k: m.get(k, "") for k in ("run_id", "trial_id", "seed", "stage", "model_uri", "image_size")}
        try:
            ev = evaluate_dataset(load_fer_model(m["model_uri"]), ds, split, detector=detector)
        except UserError as exc:  # a member model that cannot be loaded here: the ensemble is still evaluated
            row["error"] = str(exc).splitlines()[0][:300]
        else:
            row["metrics"] = dict(ev.metrics)
            row["num_images"] = ev.num_images
        rows.append(row)
    return rows


def members_table(ev, rows: Sequence[Dict[str, Any]], tta: str) -> List[str]:
    """Lines: one row per member and one for the ensemble (accuracy, balanced accuracy, macro F1)."""
    cols = ("accuracy", "balanced_accuracy", "macro_f1")
    out = [f"{'model':<34}{'accuracy':>10}{'bal. acc.':>11}{'macro F1':>10}"]
    for i, r in enumerate(rows):
        label = f"member {i} trial {r.get('trial_id') or '?'}" + (f" s{r['seed']}" if r.get("seed") else "")
        if "metrics" in r:
            out.append(f"{label:<34}" + "".join(f"{r['metrics'][c]:>{w}.4f}" for c, w in zip(cols, (10, 11, 10))))
        else:
            out.append(f"{label:<34}  not evaluated: {r.get('error', '?')}")
    label = f"ensemble of {len(rows)}" + (" + flip TTA" if tta == "flip" else "")
    out.append(f"{label:<34}" + "".join(f"{ev.metrics[c]:>{w}.4f}" for c, w in zip(cols, (10, 11, 10))))
    return out


def member_metrics(rows: Sequence[Dict[str, Any]], split: str) -> Dict[str, float]:
    """MLflow metric names for the members' figures on the evaluation run: member0_test_accuracy, ..."""
    out = {}
    for i, r in enumerate(rows):
        for name, v in (r.get("metrics") or {}).items():
            out[f"member{i}_{split}_{name}"] = float(v)
    return out

