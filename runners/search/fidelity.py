"""Fidelity and refit: a two-stage search (issue 11, item 1).

A search whose spec has `search.fidelity` runs its trials at reduced fidelity (a stratified,
seeded fraction of the training split and/or a smaller input size; ASHA's rungs stay in epochs),
then refits the `refit.top_k` best distinct configurations at full fidelity (all training data,
the point's own train.epochs and image size) with `refit.seeds` seeds each (train.seed = 0 ..
seeds-1), as a second Ray Tune run of the same `fer-automl search` command: a Tuner under the
search's storage folder (`<storage>/<name>/refit`), FIFO, Ray's BasicVariantGenerator over the
(configuration, seed) list, tracked under the same MLflow parent run. The refit leaderboard ranks
the configurations by the mean of the search metric over their seeds.

The fidelity reaches a trial through one key of its Tune config, FIDELITY_KEY, beside the point
(never in it: the point stays a point of the space): `runners.search.driver.tune_trainable` reads it.

Ray Tune has no multi-fidelity-by-data-subset or refit stage of its own (its schedulers stop
trials by epochs; BOHB/Hyperband budgets are epochs too), hence this module.
"""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

FIDELITY_KEY = "fer_fidelity"  # the Tune config key beside the point
REFIT_DIR = "refit"
CASE_KEY = "refit_case"  # the refit stage's Tune config: which (configuration, seed) a trial is  # the refit stage's Ray Tune run, under the search's storage folder

# child-run tags
TAG_STAGE = "fer_automl.stage"  # search | refit
TAG_SEED = "fer_automl.seed"  # the train.seed the trial used
TAG_TRAIN_FRACTION = "fer_automl.fidelity.train_fraction"  # the fraction of the training split it trained on
TAG_FIDELITY_IMAGE_SIZE = "fer_automl.fidelity.image_size"  # the input size it trained and validated at
TAG_REFIT_CONFIG = "fer_automl.refit_config"  # c1, c2, ...: the configuration's rank in the search stage
TAG_REFIT_OF = "fer_automl.refit_of"  # the search-stage trial whose point is refit
# parent-run tag
TAG_REFIT_WINNER = "fer_automl.refit_winner"


# --- the trial's side ------------------------------------------------------------------------------

def train_subset(ds, fraction: float, seed: int):
    """`ds` with only `fraction` of its training split, stratified by class (every class keeps at
    least one image), drawn with `seed` (the dataset's split seed: the same subset for every trial);
    validation and test untouched. The project's own stratified carve (runners.data.splits) draws it:
    it keeps every class present, which sklearn's train_test_split refuses to promise for rare ones."""
    from runners.data.splits import _carve_stratified

    if not 0 < fraction <= 1:
        raise ValueError(f"train_fraction={fraction}: expected (0, 1]")
    if fraction >= 1:
        return ds
    train = ds.indices("train")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x66696465]))  # "fide": apart from the split's draws
    kept = _carve_stratified(train, np.asarray(ds.labels), fraction, rng)
    keep = np.sort(np.concatenate([kept, np.flatnonzero(ds.splits != "train")]))
    return ds.take(keep)


def fidelity_image_size(cfg, size: Optional[int]) -> int:
    """The input size a search-stage trial of `cfg` runs at: `size` (fidelity.image_size), or the
    smallest size above it (steps of 8) at which the point's model fits; the point's own size
    when `size` is None."""
    if size is None:
        return int(cfg.data.image_size)
    from search_spaces import fit_errors, smallest_image_size

    at = cfg.model_copy(update={"data": cfg.data.model_copy(update={"image_size": int(size)})})
    if fit_errors(at) is None:
        return int(size)
    return int(smallest_image_size(cfg, at_least=int(size), step=8))


def apply_fidelity(cfg, fid: Optional[Dict[str, Any]]) -> Tuple[Any, Optional[float]]:
    """(the trial config to train, the train fraction or None) for a trial's FIDELITY_KEY value:
    the search stage at its reduced fidelity, the refit stage at full fidelity with its seed."""
    if not fid:
        return cfg, None
    if fid.get("stage") == "refit":
        return cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": int(fid["seed"])})}), None
    size = fidelity_image_size(cfg, fid.get("image_size"))
    if size != int(cfg.data.image_size):
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"image_size": size})})
    frac = fid.get("train_fraction")
    return cfg, (float(frac) if frac is not None and float(frac) < 1 else None)


def search_stage_config(fidelity) -> Dict[str, Any]:
    """The FIDELITY_KEY value of every search-stage trial (a constant of the Tune param space)."""
    return {"stage": "search", "train_fraction": float(fidelity.train_fraction), "image_size": fidelity.image_size}


# --- the tracker's side ----------------------------------------------------------------------------

def run_info(config: Dict[str, Any], space) -> Tuple[Dict[str, str], str]:
    """(tags, run-name suffix) of a trial's child run: its stage and seed, and with a fidelity
    section the fidelity it trained at and, for a refit, which configuration and seed it is."""
    from search_spaces import point_from_config

    fid = config.get(FIDELITY_KEY) or {}
    try:
        cfg = space.validate(point_from_config(config, space))
    except Exception:  # noqa: BLE001 - a trial without a valid point fails in the trial, named there
        cfg = None
    stage = fid.get("stage", "search")
    seed = fid.get("seed", cfg.train.seed if cfg is not None else "")
    tags = {TAG_STAGE: stage, TAG_SEED: str(seed)}
    if not fid or cfg is None:
        return tags, ""
    if stage == "refit":
        tags.update({TAG_TRAIN_FRACTION: "1.0", TAG_FIDELITY_IMAGE_SIZE: str(cfg.data.image_size),
                     TAG_REFIT_CONFIG: str(fid.get("config", "")), TAG_REFIT_OF: str(fid.get("source_trial", ""))})
        return tags, f" refit {fid.get('config', '')} s{seed}"
    tags.update({TAG_TRAIN_FRACTION: str(float(fid.get("train_fraction", 1.0))),
                 TAG_FIDELITY_IMAGE_SIZE: str(fidelity_image_size(cfg, fid.get("image_size")))})
    return tags, ""


# --- the refit stage (driver) ------------------------------------------------------------------------

def _point_key(point: Dict[str, Any]) -> str:
    return json.dumps(point, sort_keys=True, default=str)


def refit_choices(rows: List[Dict[str, Any]], metric: str, top_k: int) -> List[Dict[str, Any]]:
    """The `top_k` best distinct points of the (sorted) search-stage leaderboard: not failed, with a
    finite figure of the search metric."""
    from runners.search.pareto import is_number

    out, seen = [], set()
    for r in rows:
        if r.get("status") == "failed" or not is_number(r.get(metric)):
            continue
        k = _point_key(r["point"])
        if k in seen:
            continue
        seen.add(k)
        out.append(r)
        if len(out) == top_k:
            break
    return out


def refit_cases(chosen: List[Dict[str, Any]], seeds: int, metric: str) -> List[Dict[str, Any]]:
    """One Tune config per (configuration, seed): the point under POINT_KEY, the refit under FIDELITY_KEY."""
    from search_spaces import POINT_KEY

    return [{POINT_KEY: dict(r["point"]),
             FIDELITY_KEY: {"stage": "refit", "seed": s, "config": f"c{rank}", "source_trial": str(r["trial_id"]),
                            "search_value": r.get(metric)}}
            for rank, r in enumerate(chosen, 1) for s in range(seeds)]


def kept_figure(res, metric: str) -> Optional[float]:
    """A finished trial's figure for `metric` with the weights it keeps (its best validation epoch,
    `best_epoch`), read from its metric history; its last report where that epoch is not found."""
    m = res.metrics or {}
    best = m.get("best_epoch")
    df = getattr(res, "metrics_dataframe", None)
    if best is not None and df is not None and metric in df.columns and "epoch" in df.columns:
        at = df[df["epoch"] == best]
        if len(at):
            v = at[metric].iloc[-1]
            return float(v) if v == v else None
    v = m.get(metric)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def mean_std(values: List[float]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (0 for one value; None for none)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


REFIT_FIGURES = ("test_accuracy", "test_balanced_accuracy")


def refit_rows(grid, metric: str, mode: str) -> List[Dict[str, Any]]:
    """One row per refit configuration: mean and std over its seeds of the validation figure (the
    search metric, kept weights) and of the test figures, its seeds and trial ids; sorted by the mean
    validation figure (`mode`), configurations without one last."""
    from search_spaces import POINT_KEY

    groups: Dict[str, Dict[str, Any]] = {}
    for res in grid:
        cfg = res.config or {}
        fid = cfg.get(FIDELITY_KEY) or {}
        name = str(fid.get("config", "?"))
        g = groups.setdefault(name, {"config": name, "source_trial": fid.get("source_trial"),
                                     "search_value": fid.get("search_value"), "point": cfg.get(POINT_KEY),
                                     "runs": []})
        ok = res.error is None
        m = res.metrics or {}
        g["runs"].append({"seed": fid.get("seed"), "trial_id": m.get("trial_id") or Path(res.path).name,
                          "failed": not ok, "value": kept_figure(res, metric) if ok else None,
                          **{f: (m.get(f) if ok else None) for f in REFIT_FIGURES},
                          "image_epochs": m.get("image_epochs")})
    rows = []
    for g in groups.values():
        runs = sorted(g.pop("runs"), key=lambda r: (r["seed"] is None, r["seed"]))
        row = dict(g)
        row[f"{metric}_mean"], row[f"{metric}_std"] = mean_std([r["value"] for r in runs if not r["failed"]])
        for f in REFIT_FIGURES:
            row[f"{f}_mean"], row[f"{f}_std"] = mean_std([r[f] for r in runs if not r["failed"]])
        row["seeds"] = [r["seed"] for r in runs]
        row["trial_ids"] = [r["trial_id"] for r in runs]
        row["seed_values"] = [r["value"] for r in runs]
        row["num_failed"] = sum(r["failed"] for r in runs)
        row["image_epochs"] = sum(int(r["image_epochs"] or 0) for r in runs)
        rows.append(row)
    sign = -1.0 if mode == "max" else 1.0
    key = f"{metric}_mean"
    return sorted(rows, key=lambda r: (r[key] is None, sign * r[key] if r[key] is not None else 0.0,
                                       int(str(r["config"]).lstrip("c") or 0) if str(r["config"]).lstrip("c").isdigit()
                                       else 0))


def refit_csv_rows(rows: List[Dict[str, Any]], metric: str) -> Tuple[List[str], List[List[Any]]]:
    header = ["rank", "config", "source_trial", f"search_{metric}", f"{metric}_mean", f"{metric}_std",
              *[f"{f}_{s}" for f in REFIT_FIGURES for s in ("mean", "std")], "seeds", "trial_ids",
              f"{metric}_per_seed", "num_failed", "image_epochs", "point"]
    out = [[i, r["config"], r["source_trial"], r["search_value"], r[f"{metric}_mean"], r[f"{metric}_std"],
            *[r[f"{f}_{s}"] for f in REFIT_FIGURES for s in ("mean", "std")], json.dumps(r["seeds"]),
            json.dumps(r["trial_ids"]), json.dumps(r["seed_values"]), r["num_failed"], r["image_epochs"],
            json.dumps(r["point"])] for i, r in enumerate(rows, 1)]
    return header, out


def _pm(mean: Optional[float], std: Optional[float]) -> str:
    return "-" if mean is None else f"{mean:.4f} ± {std:.4f}"


def format_refit_leaderboard(rows: List[Dict[str, Any]], metric: str) -> str:
    """The refit leaderboard as text: mean ± std over seeds, best mean validation figure first."""
    lines = [" | ".join(["#", "config", "search trial", f"{metric} (mean ± std)", "test_accuracy",
                         "test_balanced_accuracy", "seeds", "trials"])]
    for i, r in enumerate(rows, 1):
        lines.append(" | ".join([str(i), r["config"], str(r["source_trial"]), _pm(r[f"{metric}_mean"], r[f"{metric}_std"]),
                                 _pm(r["test_accuracy_mean"], r["test_accuracy_std"]),
                                 _pm(r["test_balanced_accuracy_mean"], r["test_balanced_accuracy_std"]),
                                 ",".join(str(s) for s in r["seeds"]) + (f" ({r['num_failed']} failed)" if r["num_failed"] else ""),
                                 ",".join(str(t) for t in r["trial_ids"])]))
    return "\n".join(lines)


def run_refit_stage(*, search_rows: List[Dict[str, Any]], spec, exp_dir: str, resume: bool,
                    make_tuner: Callable[..., Any], fit: Callable[[Any], Any], notes: List[str],
                    verbose: int = 1):
    """Run (or continue, with --resume) the refit stage; returns its Tune ResultGrid, or None when
    the search stage left nothing to refit (a note says so).

    make_tuner(param_space=None, search_alg=None, num_samples=None, restore_path=None): the search's
    Tuner for the refit run (runners.search.driver builds it with the search's trainable, tracker and
    storage)."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    refit = spec.fidelity.refit
    path = f"{exp_dir.rstrip('/')}/{REFIT_DIR}"
    restoring = resume and tune.Tuner.can_restore(path)
    # the search stage is over: its leaderboard, hence the cases, are the same on every --resume
    chosen = refit_choices(search_rows, spec.metric, refit.top_k)
    if len(chosen) < refit.top_k:
        notes.append(f"refit: {len(chosen)} of top_k={refit.top_k} configurations refit: the search stage produced "
                     f"{len(chosen)} distinct point(s) with a {spec.metric} figure")
    if not chosen:
        return None
    cases = refit_cases(chosen, refit.seeds, spec.metric)
    # a grid over the case index, the point and the fidelity looked up from it: Ray's
    # points_to_evaluate cannot carry a point whose keys differ from case to case (conditional dimensions)
    from search_spaces import POINT_KEY

    param_space = {CASE_KEY: tune.grid_search(list(range(len(cases)))),
                   POINT_KEY: tune.sample_from(_Pick(cases, POINT_KEY)),
                   FIDELITY_KEY: tune.sample_from(_Pick(cases, FIDELITY_KEY))}
    if restoring:
        if verbose:
            print(f"resume: continuing the refit stage at {path}", flush=True)
        # Ray keeps no functions of a param space in its saved state: the same one is given again
        return fit(make_tuner(restore_path=path, param_space=param_space))
    if verbose:
        print(f"refit stage: {len(chosen)} configuration(s) x {refit.seeds} seed(s) at full fidelity", flush=True)
    gen = BasicVariantGenerator(max_concurrent=spec.max_concurrent or 0)
    return fit(make_tuner(param_space=param_space, search_alg=gen, num_samples=1))


class _Pick:
    """`tune.sample_from` of one part of the refit case the trial's CASE_KEY names (Ray saves a
    placeholder in its place: --resume gives the same param space again)."""

    def __init__(self, cases: List[Dict[str, Any]], key: str):
        self.cases, self.key = cases, key

    def __call__(self, spec) -> Any:
        return self.cases[int(spec.config[CASE_KEY])][self.key]
