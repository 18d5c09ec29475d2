"""Does a search find better FER models per unit of compute than random search or a preset alone?
(issue 11, item 9)

    PYTHONPATH=. python benchmarks/search_quality.py [--datasets cmu_faces,synthetic] [--repeats 3]
        [--out results.json] [--keep DIR] [--quick]   (--help: the protocol's settings)

Three arms over one space (the four axes: attention, scales, patches, loss weighting, plus
training knobs; `bench_space`), each driven through the project's own `runners.search.driver.run_search`
on a space file written into a temporary folder, a local Ray and MLflow in a temporary SQLite
store:

  (a) TPE + ASHA, with the space's `search.fidelity` (reduced data and image size in the search
      stage, then the top-k refit at full fidelity with R seeds) when this build has it;
  (b) random search + FIFO over the same space, at full fidelity;
  (c) each of the six presets alone (baseline, ma_net, scan_cci, scan_cci_shared, phanet, lnlnet,
      adapted to the small backbone), every one given the whole budget: k seeds of E' epochs each.

Compute is counted in IMAGE-EPOCHS (training images processed, summed over every trial of an arm:
`image_epochs_of`). Arm (a) runs first and its actual compute B sets the others' budget: (b) runs
round(B / U) full trials and each preset k seeds of round(B / (k N)) epochs, where U = E * N is the
cost of one full-fidelity trial (E epochs of the N training images). Trials are whole, so (b) and
(c) land within U/2 (and k*N/2) of B; every arm's actual compute is reported beside B.

What each arm ships, and its test figure: the one trained model the arm would promote, chosen on
validation (the validation balanced accuracy of the weights each trial keeps and tests): for (a)
and (b) exactly what `fer-automl promote --search` takes (`runners.registry.promote.best_of_search`):
with a refit stage, the refit configuration with the best mean validation over its seeds, and of
its seeds the best on validation (the JSON also keeps the mean test over its seeds); without one,
the best finished trial; (c): per preset, its best seed on validation. Test balanced accuracy
is then mean +- std over the repeats (each repeat: another split seed, searcher seed and training
seeds; synthetic data: also another generator seed).

"(a) reaches (b)'s best": (a)'s best-so-far VALIDATION balanced accuracy over its trials' reports
in the order they arrived (cumulative image-epochs on the x axis; search-stage reports at reduced
fidelity count, on the same validation images) first reaches (b)'s final best validation figure;
reported as that compute over (b)'s total compute (goal: <= 1/3).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._machine import cpu_name  # noqa: E402

CMU_DEFAULT = REPO.parent / "shared" / "data" / "cmu_faces"
PRESETS = ("baseline", "ma_net", "scan_cci", "scan_cci_shared", "phanet", "lnlnet")
ARMS = ("a", "b", "c")
B_SEED_OFFSET = 1000  # (b)'s searcher seed: the repeat's seed + this
ARM_NAMES = {"a": "tpe+asha+fidelity+refit", "b": "random+fifo", "c": "preset alone"}
# the equal-compute tolerance the suite checks: one arm's compute may differ from (a)'s by at most
# half of one whole trial of that arm (trials are whole, see the module docstring)
TOLERANCE_TEXT = "|compute - B| <= U/2 for (b); <= k*N/2 for each preset of (c)"


# --- compute ----------------------------------------------------------------------------------------

def image_epochs_of(metrics: Dict[str, Any], n_train: int) -> float:
    """Training images a trial had processed by one report: the trial's own cumulative
    `image_epochs` metric where it reports one (the fidelity feature: a trial on a fraction of the
    data counts that fraction), else epochs x the training split's size."""
    if metrics.get("image_epochs") is not None:
        return float(metrics["image_epochs"])
    return float(metrics.get("epoch") or 0) * n_train


# --- the space --------------------------------------------------------------------------------------

def bench_space(*, backbone: str, image_size: int, epochs: int, batch_size: int = 32,
                seeds: Optional[List[int]] = None, train_seed: int = 0,
                presets: Optional[List[str]] = None) -> Dict[str, Any]:
    """The benchmark's space: the four axes (attention; scales, backbone or multi-scale global
    branch; local patches and how they are pooled; loss weighting) and training knobs, on one small
    backbone, with the six presets of the unified space adapted to it (their branches and training
    settings; epochs, image size and batch are the space's). `seeds`: train.seed becomes a
    dimension over them (the preset arm's seeds), else it is `train_seed`.

    MA-Net's deep local branch (a copy of the deeper backbone stages per patch) is not in the space:
    on mobilenetv3_small it has 14 M parameters and trains ~5x slower than everything else on a
    CPU; the ma_net preset keeps its patches with an attention branch. Patches are cut evenly (MA-Net's
    and SCAN's 'ceil' split cannot cut the 4x4 stage-2 map of a 32 px search-stage image into 3)."""
    def choice(*values, cond=None):
        return {"type": "choice", "values": list(values), **({"condition": cond} if cond else {})}

    patches = [4, 9]
    dims: Dict[str, Any] = {
        "attention": choice("none", "se", "cbam", "spatial", "spatio_channel"),
        "global_branch": choice("backbone", "multiscale"),
        "num_scales": choice(1, 2, 3, 4),
        "global_stage": choice(None, 2, cond={"global_branch": ["backbone"], "num_scales": [1]}),
        "num_patches": choice(0, 4, 9),
        "global_attention": choice("none", "se", "cbam", "spatial", "spatio_channel", "non_local",
                                   cond={"num_patches": patches}),
        "local_shared": choice(False, True, cond={"num_patches": patches}),
        "local_aggregation": choice("stitch", "max", "mean", "weighted", cond={"num_patches": patches}),
        "head": choice("separate", "concat_l2", cond={"num_patches": patches, "local_aggregation": ["stitch", "max"]}),
        "unet_fusion": choice(False, True, cond={"num_patches": patches}),
        "context_branch": choice(False, True),
        "pose_head": choice(False, True),
        "loss_weighting": choice("fixed", "uncertainty", "dwa"),
        "local_weight": {"type": "float", "low": 0.2, "high": 1.0,
                         "condition": {"loss_weighting": ["fixed"], "num_patches": patches}},
        "optimizer": choice("sgd", "adamw"),
        "lr": {"type": "float", "low": 1e-3, "high": 5e-2, "log": True},
        "weight_decay": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
        "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2},
        "aug_strength": {"type": "float", "low": 0.0, "high": 0.8},
    }
    consts: Dict[str, Any] = {
        "model.backbone": backbone, "data.image_size": image_size, "train.epochs": epochs,
        "train.batch_size": batch_size, "train.schedule": "cosine", "train.momentum": 0.9,
        "model.multiscale_blocks": 1, "model.num_pose_classes": 4, "model.split_stage": 2,
        "model.patch_split": "even"}
    if seeds:
        dims["seed"] = {"type": "choice", "values": list(seeds), "maps_to": "train.seed"}
    else:
        consts["train.seed"] = train_seed
    base = dict(attention="none", global_branch="backbone", num_scales=1, global_stage=None, num_patches=0,
                context_branch=False, pose_head=False, loss_weighting="fixed", optimizer="sgd", lr=0.01,
                weight_decay=1e-4, label_smoothing=0.0, aug_strength=0.5)

    def local(**kw):
        return {**dict(global_attention="none", local_shared=False, local_aggregation="stitch",
                       unet_fusion=False), **kw}

    named = {
        "baseline": base,
        "ma_net": {**base, "attention": "cbam", "global_branch": "multiscale", "num_scales": 4, "num_patches": 4,
                   **local(head="separate"), "local_weight": 0.6},
        "scan_cci": {**base, "attention": "spatio_channel", "global_stage": 2, "num_patches": 9,
                     **local(global_attention="spatio_channel", local_aggregation="max",
                             head="concat_l2"),
                     "context_branch": True, "local_weight": 1.0, "weight_decay": 1e-3},
        "scan_cci_shared": {**base, "attention": "spatio_channel", "global_stage": 2, "num_patches": 9,
                            **local(global_attention="spatio_channel", local_shared=True,
                                    local_aggregation="max", head="concat_l2"),
                            "context_branch": True, "local_weight": 1.0, "weight_decay": 1e-3},
        "phanet": {**base, "attention": "spatial", "num_scales": 3, "pose_head": True, "loss_weighting": "uncertainty",
                   "optimizer": "adamw", "lr": 1e-3},
        "lnlnet": {**base, "attention": "cbam", "num_patches": 9,
                   **local(global_attention="non_local", local_aggregation="weighted", unet_fusion=True),
                   "local_weight": 1.0},
    }
    for p in named.values():
        if p["global_branch"] != "backbone" or p["num_scales"] != 1:
            p.pop("global_stage", None)
    if presets is not None:
        unknown = sorted(set(presets) - set(PRESETS))
        if unknown:
            raise ValueError(f"unknown preset(s) {', '.join(unknown)}; known: {', '.join(PRESETS)}")
    presets_ = {k: v for k, v in named.items() if presets is None or k in presets}
    if seeds:  # one preset per (preset, seed): the preset arm runs them all in one search
        presets_ = {f"{name}__s{s}": {**p, "seed": s} for name, p in presets_.items() for s in seeds}
    return {"description": "search-quality benchmark space (benchmarks/search_quality.py)",
            "dimensions": dims, "constants": consts, "presets": presets_}


def has_tpe_settings() -> bool:
    """Whether this build's search spec has the `tpe` section (n_startup_trials, ...)."""
    from search_spaces.spec import SearchSpec

    return "tpe" in SearchSpec.model_fields


def has_fidelity() -> bool:
    """Whether this build's search spec has the `fidelity` section (issue 11, item 1)."""
    from search_spaces.spec import SearchSpec

    return "fidelity" in SearchSpec.model_fields


# --- reading an arm back from MLflow ----------------------------------------------------------------

def arm_runs(uri: str, name: str, n_train: int) -> Tuple[List[Dict[str, Any]], List[Tuple[float, float, float]]]:
    """The child runs of search `name` (one dict per trial: stage, seed, point, final figures,
    compute) and the events of the arm: (time, image-epochs added, validation figure) per report,
    in the order the driver received them (MLflow metric timestamps)."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`fer_automl.kind` = 'trial'",
                              max_results=5000)
    rows, events = [], []
    for run in runs:
        m, tags = run.data.metrics, run.data.tags
        hist = {k: {h.step: h for h in client.get_metric_history(run.info.run_id, k)}
                for k in ("val_balanced_accuracy", "image_epochs")}
        done = 0.0
        for step in sorted(hist["val_balanced_accuracy"]):
            h = hist["val_balanced_accuracy"][step]
            ie = hist["image_epochs"].get(step)
            total = image_epochs_of({"epoch": step, "image_epochs": ie.value if ie else None}, n_train)
            events.append((h.timestamp / 1000.0, total - done, h.value))
            done = total
        seed_tag = tags.get("fer_automl.seed")
        rows.append({
            "run_id": run.info.run_id, "name": run.info.run_name, "status": tags.get("fer_automl.status"),
            "stage": tags.get("fer_automl.stage", "search"), "seed": int(seed_tag) if seed_tag else None,
            "refit_config": tags.get("fer_automl.refit_config"),
            "point": dict(run.data.params), "epoch": m.get("epoch"),
            "val": m.get("best_val_balanced_accuracy"), "test": m.get("test_balanced_accuracy"),
            "image_epochs": done})
    events.sort()
    return rows, events


def best_so_far(events: List[Tuple[float, float, float]]) -> List[Tuple[float, float]]:
    """(cumulative image-epochs, best validation so far) after each report."""
    out, total, best = [], 0.0, -math.inf
    for _, add, val in events:
        total += add
        best = max(best, val)
        out.append((total, best))
    return out


def _config_key(row: Dict[str, Any]) -> str:
    if row.get("refit_config"):  # c1, c2, ...: the refit stage's own name of the configuration
        return row["refit_config"]
    return json.dumps({k: v for k, v in row["point"].items() if k not in ("seed", "train.seed")}, sort_keys=True)


def shipped(rows: List[Dict[str, Any]], promoted: Optional[str] = None) -> Dict[str, Any]:
    """The model an arm ships (see the module docstring): with refit rows, the refit configuration
    of best mean validation over its seeds and, of those seeds, the best on validation.
    `promoted`: the run id `fer-automl promote --search` takes (runners.registry.promote.best_of_search,
    the same rule): that row, with the mean over its configuration's seeds."""
    done = [r for r in rows if r["test"] is not None and r["val"] is not None]
    refit = [r for r in done if r["stage"] == "refit"]
    pick = next((r for r in done if r["run_id"] == promoted), None) if promoted else None
    if pick is not None:
        group = [r for r in (refit or done) if _config_key(r) == _config_key(pick)]
        return {"rule": "promote --search" + (" (refit winner, its best-val seed)" if refit else " (best val)"),
                "test": pick["test"], "val": pick["val"], "name": pick["name"], "seeds": len(group),
                "seed_mean_test": statistics.mean(r["test"] for r in group),
                "seed_mean_val": statistics.mean(r["val"] for r in group)}
    if refit:
        groups: Dict[str, List[Dict[str, Any]]] = {}
        for r in refit:
            groups.setdefault(_config_key(r), []).append(r)
        winner = max(groups.values(), key=lambda g: statistics.mean(r["val"] for r in g))
        pick = max(winner, key=lambda r: r["val"])
        return {"rule": "refit winner (best mean val over seeds), its best-val seed", "test": pick["test"],
                "val": pick["val"], "name": pick["name"], "seeds": len(winner),
                "seed_mean_test": statistics.mean(r["test"] for r in winner),
                "seed_mean_val": statistics.mean(r["val"] for r in winner)}
    if not done:
        return {"rule": "none finished", "test": None, "val": None, "name": None}
    pick = max(done, key=lambda r: r["val"])
    return {"rule": "best val among finished trials", "test": pick["test"], "val": pick["val"], "name": pick["name"],
            "seeds": 1, "seed_mean_test": statistics.mean(r["test"] for r in done if _config_key(r) == _config_key(pick)),
            "skipped_unfinished": sum(1 for r in rows if r["test"] is None)}


def reach(curve: List[Tuple[float, float]], target: Optional[float]) -> Optional[float]:
    """The compute at which a best-so-far curve first reaches `target` (None: never)."""
    if target is None:
        return None
    for compute, best in curve:
        if best >= target - 1e-12:
            return compute
    return None


# --- one repeat on one dataset ----------------------------------------------------------------------

def dataset_spec(name: str, args, seed: int) -> Dict[str, Any]:
    if name == "synthetic":
        return {"format": "synthetic", "n": args.synthetic_n, "image_size": args.image_size,
                "seed": seed}
    if name == "cmu_faces":
        return {"format": "cmu_faces", "path": str(Path(args.cmu_path).resolve()), "image_size": args.image_size,
                "seed": seed}
    raise SystemExit(f"--datasets: unknown dataset {name!r} (known: synthetic, cmu_faces)")


def train_size(ds_spec: Dict[str, Any]) -> int:
    """N: the training split's size, as the trials see it (the search's own DataSpec)."""
    from runners.search.driver import data_spec_from
    from search_spaces.spec import DatasetSpec

    ds = data_spec_from(DatasetSpec(**ds_spec)).load(ds_spec.get("image_size") or 64)
    return len(ds.indices("train"))


def _write_space(folder: Path, name: str, space: Dict[str, Any], search: Dict[str, Any]) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**space, "search": {"name": name, **search}}, sort_keys=False))
    return path


def run_arm(folder: Path, name: str, space: Dict[str, Any], search: Dict[str, Any], uri: str,
            n_train: int) -> Dict[str, Any]:
    from runners.search.driver import run_search

    path = _write_space(folder, name, space, search)
    t0 = time.time()
    res = run_search(str(path), storage_path=str(folder / "ray"), tracking_uri=uri, verbose=0)
    wall = time.time() - t0
    rows, events = arm_runs(uri, name, n_train)
    curve = best_so_far(events)
    import mlflow

    from runners.registry.promote import PromoteError, best_of_search

    try:  # what `fer-automl promote --search NAME` would register
        promoted = best_of_search(mlflow.MlflowClient(uri), name, "val_balanced_accuracy", uri).run.info.run_id
    except PromoteError:
        promoted = None
    return {"search": name, "wall_s": wall, "num_failed": res.num_failed, "rows": rows, "promoted": promoted,
            "compute": sum(r["image_epochs"] for r in rows), "curve": curve,
            "final_best_val": curve[-1][1] if curve else None}


def run_repeat(dataset: str, repeat: int, args, folder: Path, uri: str) -> Dict[str, Any]:
    seed = args.seed + repeat
    ds = dataset_spec(dataset, args, seed)
    n_train = train_size(ds)
    unit = args.epochs * n_train  # U: one full-fidelity trial
    common = {"dataset": ds, "max_concurrent": args.concurrent, "resources": {"cpu": 1, "gpu": 0},
              "max_failures": 0, "metric": "val_balanced_accuracy", "mode": "max", "seed": seed}
    space = bench_space(backbone=args.backbone, image_size=args.image_size, epochs=args.epochs, train_seed=seed,
                        batch_size=args.batch_size)
    tag = f"{dataset}-r{repeat}"
    out: Dict[str, Any] = {"dataset": dataset, "repeat": repeat, "seed": seed, "n_train": n_train, "unit": unit}

    # (a) TPE + ASHA (+ fidelity and refit where this build has them)
    search_a = {**common, "algorithm": "tpe", "num_samples": args.a_samples,
                "scheduler": {"type": "asha", "grace_period": args.grace, "max_t": args.epochs,
                              "reduction_factor": args.reduction_factor}}
    if has_tpe_settings() and args.tpe_startup is not None:
        search_a["tpe"] = {"n_startup_trials": args.tpe_startup}
    if has_fidelity():
        search_a["fidelity"] = {"train_fraction": args.train_fraction, "image_size": args.search_image_size,
                                "refit": {"top_k": args.top_k, "seeds": args.refit_seeds}}
    out["fidelity"] = search_a.get("fidelity")
    a = run_arm(folder, f"{tag}-a", space, search_a, uri, n_train)
    budget = a["compute"]
    out["budget"] = budget

    # (b) random + FIFO, full fidelity: round(B / U) whole trials
    nb = max(1, round(budget / unit))
    # (b) draws its points with another seed than (a)'s TPE, whose random start-up would otherwise
    # propose (b)'s very points (Optuna's TPE starts from a RandomSampler with the same seed)
    b = run_arm(folder, f"{tag}-b", space, {**common, "algorithm": "random", "num_samples": nb,
                                            "seed": seed + B_SEED_OFFSET, "scheduler": {"type": "fifo"}},
                uri, n_train)

    # (c) every preset alone with the whole budget: k seeds of E' epochs, k * E' * N ~ B
    k = max(1, min(args.preset_seeds, int(budget // unit)))
    epochs_c = max(1, round(budget / (k * n_train)))
    seeds = [seed * 100 + i for i in range(k)]
    space_c = bench_space(backbone=args.backbone, image_size=args.image_size, epochs=epochs_c, seeds=seeds,
                          presets=args.presets, batch_size=args.batch_size)
    c = run_arm(folder, f"{tag}-c", space_c, {**common, "algorithm": "tpe", "presets": list(space_c["presets"]),
                                              "num_samples": len(space_c["presets"]), "scheduler": {"type": "fifo"}},
                uri, n_train)
    presets: Dict[str, Any] = {}
    for p in args.presets:
        rows = [r for r in c["rows"] if r["point"].get("seed") is not None
                and _preset_of(r, space_c) == p]
        presets[p] = {"rows": rows, "compute": sum(r["image_epochs"] for r in rows), **shipped(rows)}
    out["preset_arm"] = {"seeds": seeds, "epochs": epochs_c, "wall_s": c["wall_s"], "num_failed": c["num_failed"]}

    target = b["final_best_val"]
    at = reach(a["curve"], target)
    out["reach"] = {"target_val": target, "a_compute": at, "b_compute": b["compute"],
                    "fraction_of_b": (at / b["compute"]) if at is not None and b["compute"] else None}
    out["arms"] = {"a": {**_public(a), "shipped": shipped(a["rows"], a["promoted"])},
                   "b": {**_public(b), "shipped": shipped(b["rows"], b["promoted"])},
                   "c": {p: _public(v) for p, v in presets.items()}}
    return out


def _preset_of(row: Dict[str, Any], space_c: Dict[str, Any]) -> Optional[str]:
    """Which preset a trial of the preset arm ran: its logged point equals that preset's."""
    for name, point in space_c["presets"].items():
        if all(str(row["point"].get(k)) == str(v) for k, v in point.items()):
            return name.split("__s")[0]
    return None


def _public(d: Dict[str, Any]) -> Dict[str, Any]:
    return {**d, "trials": len(d.get("rows", []))}


# --- the table --------------------------------------------------------------------------------------

def _ms(values: List[Optional[float]], fmt: str = "{:.3f}") -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return fmt.format(vals[0])
    return f"{fmt.format(statistics.mean(vals))} ± {fmt.format(statistics.stdev(vals))}"


def summarise(repeats: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Per dataset: per arm (and per preset) test mean/std over repeats, compute, wall; the reach
    fractions; the goals."""
    out: Dict[str, Any] = {}
    for dataset in dict.fromkeys(r["dataset"] for r in repeats):
        reps = [r for r in repeats if r["dataset"] == dataset]
        arms: Dict[str, Dict[str, Any]] = {}
        for arm in ("a", "b"):
            arms[arm] = {"test": [r["arms"][arm]["shipped"]["test"] for r in reps],
                         "compute": [r["arms"][arm]["compute"] for r in reps],
                         "wall_s": [r["arms"][arm]["wall_s"] for r in reps]}
        presets = list(reps[0]["arms"]["c"])
        for p in presets:
            arms[f"c:{p}"] = {"test": [r["arms"]["c"][p]["test"] for r in reps],
                              "compute": [r["arms"]["c"][p]["compute"] for r in reps],
                              "wall_s": [r["preset_arm"]["wall_s"] / len(presets) for r in reps]}
        for v in arms.values():
            t = [x for x in v["test"] if x is not None]
            v["test_mean"] = statistics.mean(t) if t else None
            v["test_std"] = statistics.stdev(t) if len(t) > 1 else None
        best_preset = max(presets, key=lambda p: arms[f"c:{p}"]["test_mean"] if arms[f"c:{p}"]["test_mean"] is not None
                          else -1.0)
        fractions = [r["reach"]["fraction_of_b"] for r in reps]
        a_mean, bp_mean = arms["a"]["test_mean"], arms[f"c:{best_preset}"]["test_mean"]
        out[dataset] = {
            "arms": arms, "best_preset": best_preset, "reach_fractions": fractions,
            "goal_a_ge_best_preset": (a_mean is not None and bp_mean is not None and a_mean >= bp_mean),
            "goal_reach_le_third": all(f is not None and f <= 1 / 3 for f in fractions),
        }
    return out


def format_table(summary: Dict[str, Any], repeats: List[Dict[str, Any]]) -> str:
    lines = ["| dataset | arm | test bal. acc. (mean ± std over repeats) | compute (image-epochs) | compute / B | "
             "wall (s) | (a) reaches (b)'s best val at (fraction of (b)'s compute) |",
             "|---|---|---|---|---|---|---|"]
    for dataset, s in summary.items():
        reps = [r for r in repeats if r["dataset"] == dataset]
        budgets = [r["budget"] for r in reps]
        for arm, v in s["arms"].items():
            ratio = [c / b if b else None for c, b in zip(v["compute"], budgets)]
            label = {"a": "(a) " + ARM_NAMES["a"], "b": "(b) " + ARM_NAMES["b"]}.get(arm, "(c) " + arm[2:])
            if arm == f"c:{s['best_preset']}":
                label += " (best preset)"
            reach_col = "-"
            if arm == "a":
                fr = s["reach_fractions"]
                reach_col = ", ".join("never" if f is None else f"{f:.2f}" for f in fr)
            lines.append(f"| {dataset} | {label} | {_ms(v['test'])} | {_ms(v['compute'], '{:,.0f}')} | "
                         f"{_ms(ratio, '{:.2f}')} | {_ms(v['wall_s'], '{:.0f}')} | {reach_col} |")
    lines.append("")
    for dataset, s in summary.items():
        lines.append(f"{dataset}: goal (a) >= best preset alone ({s['best_preset']}): "
                     f"{'met' if s['goal_a_ge_best_preset'] else 'NOT met'}; goal (a) reaches (b)'s final best "
                     f"in <= 1/3 of (b)'s compute in every repeat: {'met' if s['goal_reach_le_third'] else 'NOT met'}")
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------------

QUICK = dict(datasets="synthetic", repeats=1, synthetic_n=140, image_size=32, search_image_size=24, epochs=2,
             a_samples=3, top_k=1, refit_seeds=1, preset_seeds=1, train_fraction=0.5, presets="baseline,phanet",
             tpe_startup=2, grace=1, batch_size=32)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="cmu_faces,synthetic", help="comma-separated: synthetic, cmu_faces")
    p.add_argument("--cmu-path", default=str(CMU_DEFAULT), help="the CMU Face Images folder (format cmu_faces)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of the whole protocol (seed, seed+1, ...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backbone", default="fercnn", help="the space's backbone (fercnn: width 16, depth 1)")
    p.add_argument("--image-size", type=int, default=40, help="full-fidelity image size")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--search-image-size", type=int, default=32, help="(a)'s search-stage image size (fidelity)")
    p.add_argument("--train-fraction", type=float, default=1.0,
                   help="(a)'s search-stage training fraction (fidelity; 1: all the training data)")
    p.add_argument("--epochs", type=int, default=8, help="E: epochs of a full-fidelity trial (ASHA's max_t)")
    p.add_argument("--a-samples", type=int, default=8, help="(a)'s search-stage trials")
    p.add_argument("--tpe-startup", type=int, default=3,
                   help="(a): TPE's random start-up trials (search.tpe.n_startup_trials; presets count)")
    p.add_argument("--grace", type=int, default=2, help="(a): ASHA's grace period (epochs)")
    p.add_argument("--reduction-factor", type=int, default=3, help="(a): ASHA's reduction factor")
    p.add_argument("--top-k", type=int, default=2, help="(a)'s refit: configurations refit")
    p.add_argument("--refit-seeds", type=int, default=2, help="(a)'s refit: seeds per configuration")
    p.add_argument("--preset-seeds", type=int, default=8,
                   help="(c): most seeds per preset (the budget decides: k = min(this, B // U), each of E' = B / (k N) epochs)")
    p.add_argument("--presets", default=",".join(PRESETS), help="(c): the presets, comma-separated")
    p.add_argument("--synthetic-n", type=int, default=2400, help="synthetic faces generated")
    p.add_argument("--concurrent", type=int, default=2, help="trials at once")
    p.add_argument("--out", default=None, help="write the results here (JSON) and the table beside it (.md)")
    p.add_argument("--keep", default=None, help="keep the MLflow store and Ray storage in this folder")
    p.add_argument("--quick", action="store_true",
                   help="the suite's reduced form: tiny synthetic data, 1 repeat, a few 2-epoch trials")
    args = p.parse_args(argv)
    if args.quick:
        given = {a.lstrip("-").replace("-", "_") for a in (argv if argv is not None else sys.argv[1:])
                 if a.startswith("--")}
        for k, v in QUICK.items():
            if k not in given:
                setattr(args, k, v)
    args.presets = [x.strip() for x in args.presets.split(",") if x.strip()]
    unknown = sorted(set(args.presets) - set(PRESETS))
    if unknown or not args.presets:
        p.error(f"--presets: unknown or none: {', '.join(unknown) or '(empty)'}; known: {', '.join(PRESETS)}")
    if args.repeats < 1:
        p.error(f"--repeats {args.repeats}: must be at least 1")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fer-search-quality-"))
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    old_cwd = os.getcwd()
    os.chdir(folder)  # Ray's and MLflow's relative paths land in the scratch folder
    repeats: List[Dict[str, Any]] = []
    started = time.time()
    try:
        import runners.search.cluster as ray_cluster

        ray_cluster.init_ray(None)  # once, before any arm: no arm pays Ray's start-up
        for r in range(args.repeats):  # repeat by repeat, so that a run stopped early has as many of each dataset
            for dataset in datasets:
                repeats.append(run_repeat(dataset, r, args, folder, uri))
                print(f"[{time.time() - started:.0f} s] {dataset} repeat {r}: budget {repeats[-1]['budget']:,.0f} "
                      f"image-epochs", flush=True)
                if args.out:  # what is done so far survives a run stopped later
                    _write(args, repeats, started)
    finally:
        os.chdir(old_cwd)
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    summary = summarise(repeats)
    table = format_table(summary, repeats)
    print(table)
    if args.out:
        _write(args, repeats, started, summary, table)
    return 0


def _write(args, repeats, started, summary=None, table=None) -> None:
    import platform

    from runners.search.driver import git_commit, package_versions

    summary = summary if summary is not None else summarise(repeats)
    table = table if table is not None else format_table(summary, repeats)
    doc = {"settings": {k: v for k, v in vars(args).items()}, "fidelity_available": has_fidelity(),
           "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                       "versions": package_versions()},
           "commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "elapsed_s": time.time() - started, "tolerance": TOLERANCE_TEXT,
           "summary": summary, "repeats": repeats, "table": table}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=str))
    out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    sys.exit(main())
