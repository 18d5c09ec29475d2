"""One trial: train a `TrialConfig` on one dataset, select on validation, test once.

The same `run_trial` runs under Ray Tune (`report` = tune.report with a checkpoint) and alone
(`fer-automl train`, with a progress line per epoch). Every epoch reports the metrics named in
DESIGN.md and leaves a checkpoint directory holding everything needed to resume (model,
optimizer, scheduler, loss-weighting state, epoch, best-so-far weights, config, random state).

Metrics: `val_loss` is the plain cross-entropy of the fused prediction (no label smoothing, no
class weights: comparable across architectures and loss weightings); `val_objective` is the
branch-weighted training objective on the validation set; `train_loss` is that objective on the
training batches.

Resume equals uninterrupted: the training loader's order and the augmentation draws of an epoch
come from a seed derived from (train.seed, epoch) alone, and the global random states (torch,
numpy, Python) travel in the checkpoint, so a trial resumed after epoch k trains epochs k+1...
exactly as a run that was never stopped (on CPU; the data loader's workers included).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fer_models import build_model
from fer_models.errors import UserError
from fer_models.losses import build_loss
from fer_models.optim import build_optimizer as build_optimizer_for
from fer_models.optim import lr_factor

from runners.data.splits import split_fingerprint
from runners.training.metrics import classification_metrics, confusion_matrix, per_class_report, plot_confusion_matrix

STATE_FILE = "state.pt"
BEST_FILE = "best_model.pt"
CONFIG_FILE = "trial_config.json"
ARTIFACTS_DIR = "artifacts"

ReportFn = Callable[[Dict[str, float], Optional[Path]], None]
TIMING_ENV = "FER_AUTOML_TIMING_FILE"


class TrialFailed(RuntimeError):
    """The trial cannot go on (non-finite loss, ...); the message is the failure reason."""


@dataclass
class DataSpec:
    """Which dataset a trial reads (the `dataset:` part of a search spec)."""

    format: str = "synthetic"
    path: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    skip_corrupt: bool = False
    cache_dir: Optional[str] = None

    def load(self, image_size: int):
        from runners.data import load_dataset

        return load_dataset(self.format, self.path, image_size=image_size, seed=self.seed,
                            val_fraction=self.val_fraction, test_fraction=self.test_fraction,
                            skip_corrupt=self.skip_corrupt, cache_dir=self.cache_dir, **self.options)


def mark(event: str, **info: Any) -> None:
    """Append `<unix time> <event> <pid> [key=value ...]` to the file $FER_AUTOML_TIMING_FILE names,
    when it is set.

    benchmarks/overhead.py times a search's start-up (CLI -> Ray -> trial -> first training step)
    and its epoch cycles with it: nothing else tells when a trial's first step happens (its first
    report comes a whole epoch later). Unset, it costs one environment lookup."""
    path = os.environ.get(TIMING_ENV)
    if path:
        extra = "".join(f" {k}={v}" for k, v in info.items())
        with open(path, "a") as f:
            f.write(f"{time.time():.6f} {event} {os.getpid()}{extra}\n")


def _save_new_file(obj: Any, path: Path) -> None:
    """torch.save into a new file that replaces `path` (never rewrites `path`'s data in place:
    checkpoints may hold hard links to it)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _link_or_copy(src: Path, dst: Path) -> None:
    """`dst` as a hard link to `src` (no data written), a copy where the filesystem has no links."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy(src, dst)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> Dict[str, Any]:
    """The global random states a training epoch draws from (dropout, any numpy/Python draw)."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's loader order and augmentation draws: a function of (seed, epoch)
    alone, so that a resumed trial draws exactly what an uninterrupted one does."""
    return int(np.random.SeedSequence([int(seed) % 2**63, int(epoch)]).generate_state(1, dtype=np.uint64)[0] % 2**63)


def _seed_worker_augmentation(worker_id: int) -> None:
    """A loader worker's augmentation stream, from the seed torch gives the worker (the epoch's
    loader generator + the worker id): distinct per worker, reproducible per epoch."""
    info = torch.utils.data.get_worker_info()
    tf = getattr(info.dataset, "transform", None)
    if tf is not None and hasattr(tf, "set_random_seed"):
        tf.set_random_seed(int(info.seed) % 2**32)


def resolve_device(device: Optional[str]) -> torch.device:
    """`device` (the --device flag) as a torch device, refused when it names no device this
    machine has; None: cuda when there is one, else cpu."""
    if device is None or str(device).strip() == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(str(device))
    except (RuntimeError, ValueError):
        raise UserError(f"--device {device!r}: not a device; expected cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA device is available on this machine "
                            "(torch.cuda.is_available() is False); use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise UserError(f"--device {device}: this machine has {n} CUDA device(s): cuda:0..cuda:{n - 1}")
        return dev
    raise UserError(f"--device {device!r}: device type {dev.type!r} is not supported; expected cpu, cuda or cuda:N")


def check_classes(ds) -> None:
    """Refuse a dataset whose training split holds fewer than 2 expression classes: every
    prediction would be right (accuracy 1.0) and nothing would be learned."""
    present = sorted(set(np.asarray(ds.labels)[ds.indices("train")].tolist()))
    if len(present) < 2:
        names = ", ".join(ds.classes[i] for i in present) or "none"
        raise UserError(f"dataset {ds.name!r} ({ds.source}): the training set has {len(present)} class(es) "
                        f"({names}); a classifier needs at least 2 classes")


# --- optimisation -------------------------------------------------------------------------------

def build_optimizer(model: nn.Module, loss_fn: nn.Module, train) -> torch.optim.Optimizer:
    """Two parameter groups: the backbone at lr * backbone_lr_mult, everything else at lr
    (SCAN-CCI trains its backbone 100x slower than its heads)."""
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    ids = {id(p) for p in backbone}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids] + list(loss_fn.parameters())
    groups = [{"params": backbone, "lr": train.lr * train.backbone_lr_mult, "name": "backbone"},
              {"params": rest, "lr": train.lr, "name": "heads"}]
    groups = [g for g in groups if g["params"]]
    return build_optimizer_for(groups, train)


def set_hyperparameters(optimizer: torch.optim.Optimizer, scheduler, train) -> None:
    """After an optimizer and its LambdaLR were restored from a checkpoint: the learning rate and
    weight decay of `train`, not the checkpoint's. Loading a state dict restores each group's lr,
    initial_lr and weight decay, and the schedule's base_lrs, as they were when it was saved: a trial
    resumed with other values (population-based training perturbs them) would otherwise train on
    with the old ones. The group's lr is what LambdaLR would give at the restored epoch
    (base * factor), so a trial resumed with the same values trains exactly as before."""
    bases = []
    for group in optimizer.param_groups:
        base = train.lr * train.backbone_lr_mult if group.get("name") == "backbone" else train.lr
        group["initial_lr"] = base
        group["weight_decay"] = train.weight_decay
        bases.append(base)
    scheduler.base_lrs = bases
    for group, base in zip(optimizer.param_groups, bases):
        group["lr"] = base * lr_factor(scheduler.last_epoch, train)


# --- the loop -------------------------------------------------------------------------------------

def _batches_to(device, batch):
    x, y, pose = batch
    return (x.to(device, non_blocking=True), y.to(device, non_blocking=True), pose.to(device, non_blocking=True))


def evaluate(model, loss_fn, loader, device, classes: List[str], prefix: str, amp: bool,
             channels_last: bool) -> Dict[str, Any]:
    if channels_last and device.type == "cpu":
        # on a CPU the exported model runs in the default (NCHW) layout (predict, evaluate, serve):
        # validation and test are computed in that layout too, so that `fer-automl evaluate` gives the
        # trial's very figures; training goes back to channels_last after
        model.to(memory_format=torch.contiguous_format)
        try:
            return evaluate(model, loss_fn, loader, device, classes, prefix, amp, False)
        finally:
            model.to(memory_format=torch.channels_last)
    model.eval()
    loss_fn.eval()
    ys, ps, poses, pose_preds, objectives, ce = [], [], [], [], [], 0.0
    with torch.no_grad():
        for batch in loader:
            x, y, pose = _batches_to(device, batch)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(x)
            objectives.append(float(loss_fn(out, y, pose).total) * len(y))
            # the fused prediction's plain cross-entropy: no smoothing, no class weights, no branch weights
            ce += float(F.cross_entropy(out.logits.float(), y, reduction="sum"))
            ys.append(y.cpu())
            ps.append(out.logits.float().argmax(1).cpu())
            if out.pose_logits is not None:
                poses.append(pose.cpu())
                pose_preds.append(out.pose_logits.float().argmax(1).cpu())
    y = torch.cat(ys).numpy() if ys else np.zeros(0, np.int64)
    p = torch.cat(ps).numpy() if ps else np.zeros(0, np.int64)
    res: Dict[str, Any] = classification_metrics(y, p, classes, prefix=prefix)
    res[f"{prefix}loss"] = ce / max(len(y), 1)
    res[f"{prefix}objective"] = float(sum(objectives) / max(len(y), 1))
    if poses:
        pt, pp = torch.cat(poses), torch.cat(pose_preds)
        known = pt >= 0
        if bool(known.any()):
            res["pose_accuracy" if prefix == "val_" else f"{prefix}pose_accuracy"] = float((pp[known] == pt[known]).float().mean())
    res["_y"], res["_p"] = y, p
    return res


def _public(metrics: Dict[str, Any]) -> Dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.startswith("_")}


def run_trial(cfg, data: Union[DataSpec, Any], *, out_dir: Union[str, Path], report: Optional[ReportFn] = None,
              resume_from: Optional[Union[str, Path]] = None, device: Optional[str] = None,
              num_workers: int = 0, log: Optional[Callable[[str], None]] = None,
              second_objective: Optional[str] = None, train_fraction: Optional[float] = None,
              constraints: Optional[Dict[str, float]] = None) -> Dict[str, Any]:
    """Train `cfg` (a TrialConfig) on `data` (a DataSpec or a loaded FERDataset).

    out_dir: where checkpoints and artifacts are written (one sub-folder per epoch; the caller,
    e.g. Ray Tune, copies what it reports). Returns the final metrics, test included.
    second_objective: `params`, `macs` or `latency` (a multi-objective search): measured once on
    the built model and reported with every epoch as `params`, `macs` or `latency_ms`.
    train_fraction: (0, 1) trains on that stratified subset of the training split, seeded by the
    dataset's split seed (the search stage of a search with `fidelity`, runners.search.fidelity); val and
    test untouched. Every epoch reports `image_epochs`: training images processed so far.
    constraints: limits (`max_params`, `max_macs`, `max_latency_ms`) measured on the built model
    before any epoch; a model that breaks one is reported once as infeasible and not trained
    (`runners.training.constraints`). The figures measured are reported with every epoch of a feasible trial.
    resume_from: a checkpoint of this trial, or of another one (population-based training clones
    the checkpoint of a better trial): the model, optimizer and schedule state are restored, and the
    learning rate and weight decay are the ones `cfg` says, not the checkpoint's.
    """
    from fer_models.pretrained import timm_weights_name

    from runners.data.torch_data import class_weights, make_loader
    from runners.data.transforms import build_eval_transform, build_train_transform, normalization_for

    out_dir = Path(out_dir)
    train, mcfg = cfg.train, cfg.model
    image_size = int(cfg.data.image_size)
    seed_everything(int(train.seed))
    dev = resolve_device(device)
    amp = dev.type == "cuda"
    # channels_last on CPUs too: measured 1.5-1.8x faster training steps for fercnn (its depthwise
    # convolutions and max pools take oneDNN's NHWC path) and 1.0-1.08x for the timm backbones
    # (benchmarks/RESULTS.md, "channels_last on CPU")
    channels_last = dev.type in ("cuda", "cpu")
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True

    ds = data.load(image_size) if isinstance(data, DataSpec) else data
    if train_fraction is not None and train_fraction < 1:
        from runners.search.fidelity import train_subset

        ds = train_subset(ds, train_fraction, seed=int(getattr(data, "seed", 0)))
    mark("trial_data_loaded", torch_threads=torch.get_num_threads())  # Ray sets OMP_NUM_THREADS to the trial's cpu
    check_classes(ds)
    out_dir.mkdir(parents=True, exist_ok=True)  # only once the input is known to be trainable
    classes = list(ds.classes)
    if mcfg.num_classes != len(classes):
        mcfg = mcfg.model_copy(update={"num_classes": len(classes)})
    if mcfg.pose_head and ds.poses is not None and mcfg.num_pose_classes != len(ds.pose_classes):
        mcfg = mcfg.model_copy(update={"num_pose_classes": len(ds.pose_classes)})
    model = build_model(mcfg, image_size=image_size).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    mean, std = normalization_for(mcfg.backbone, timm_weights_name(mcfg))  # the tag's mean/std with pretrained
    train_tf = build_train_transform(image_size, float(cfg.data.aug_strength), mean, std)
    eval_tf = build_eval_transform(image_size, mean, std)
    balance = train.class_balance
    cw = None
    if balance == "reweight":
        cw = torch.as_tensor(class_weights(ds.subset("train").labels, len(classes), method="effective"),
                             dtype=torch.float32, device=dev)
    loss_fn = build_loss(model, train.loss_weighting, label_smoothing=float(train.label_smoothing),
                         class_weights=cw, settings=train).to(dev)
    optimizer = build_optimizer(model, loss_fn, train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, train))
    bs = int(train.batch_size)

    def train_loader_for(epoch: int):
        """The epoch's loader: its order (shuffle or resampling) and its augmentation draws are
        seeded by (train.seed, epoch) alone."""
        s = epoch_seed(int(train.seed), epoch)
        train_tf.set_random_seed(s % 2**32)
        loader = make_loader(ds, "train", bs, train_tf, num_workers=num_workers,
                             balance="resample" if balance == "resample" else "none", seed=s)
        if num_workers > 0:
            loader.worker_init_fn = _seed_worker_augmentation
        return loader

    val_loader = make_loader(ds, "val", bs, eval_tf, num_workers=num_workers, shuffle=False)

    start_epoch, best = 0, {"val_balanced_accuracy": -1.0, "epoch": -1}
    costs: Dict[str, float] = {}
    image_epochs = 0  # training images processed so far (compute, counted across resumes)
    state = None
    if resume_from is not None:
        state = torch.load(Path(resume_from) / STATE_FILE, map_location=dev, weights_only=False)
        costs = dict(state.get("costs", {}))
        # a checkpoint written before image_epochs was counted: every epoch saw the whole train split
        image_epochs = int(state.get("image_epochs", (state["epoch"] + 1) * len(ds.indices("train"))))
    if second_objective:
        from fer_models.cost import cost
        from search_spaces import SECOND_OBJECTIVE_METRICS

        name = SECOND_OBJECTIVE_METRICS[second_objective]
        if name not in costs:  # once per trial: a resumed trial reports what it measured before
            costs[name] = cost(model, second_objective, image_size, device=str(dev), bf16=amp,
                               channels_last=channels_last)
    if constraints and state is None:  # a trial with a checkpoint was feasible when it started
        from runners.training.constraints import broken, infeasible_result, measure

        measure(model, constraints, image_size, costs, device=str(dev), bf16=amp, channels_last=channels_last)
        breaks = broken(constraints, costs)
        if breaks:
            result = infeasible_result(constraints, costs, breaks)
            if log:
                log(f"infeasible: {result['infeasible_reason']}: not trained")
            if report is not None:
                report(result, None)
            return result
    if state is not None:
        model.load_state_dict(state["model"])
        loss_fn.load_state_dict(state["loss"])
        loss_fn.weighting.__dict__.update(state.get("weighting_state", {}))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_hyperparameters(optimizer, scheduler, train)
        start_epoch, best = state["epoch"] + 1, state["best"]
        if "rng_state" in state:
            set_rng_state(state["rng_state"])
        else:  # a checkpoint written before the random state travelled whole
            torch.set_rng_state(state["rng"])
        _link_or_copy(best_weights_in(Path(resume_from)), out_dir / BEST_FILE)

    epochs = int(train.epochs)
    clip = float(train.grad_clip or 0)
    last: Dict[str, Any] = {}
    for epoch in range(start_epoch, epochs):
        mark("epoch_start")
        model.train()
        loss_fn.train()
        t0, seen, total = time.perf_counter(), 0, 0.0
        for step, batch in enumerate(train_loader_for(epoch)):
            x, y, pose = _batches_to(dev, batch)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
                out = model(x)
            res = loss_fn(out, y, pose)
            if not torch.isfinite(res.total):
                parts = {k: float(v.detach()) for k, v in res.parts.items()}
                raise TrialFailed(f"non-finite loss {float(res.total.detach())} at epoch {epoch}, step {step} "
                                  f"(parts: {parts}); lr={optimizer.param_groups[-1]['lr']:.3g}")
            optimizer.zero_grad(set_to_none=True)
            res.total.backward()
            if clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            if step == 0 and epoch == start_epoch:
                mark("first_step")
            seen += len(y)
            total += float(res.total.detach()) * len(y)
        elapsed = time.perf_counter() - t0
        image_epochs += seen
        mark("train_done")
        loss_fn.end_epoch()
        scheduler.step()
        val = evaluate(model, loss_fn, val_loader, dev, classes, "val_", amp, channels_last)
        mark("val_done")
        metrics = {**_public(val), "train_loss": total / max(seen, 1), "images_per_second": seen / max(elapsed, 1e-9),
                   "epoch": epoch + 1, "lr": optimizer.param_groups[-1]["lr"], "image_epochs": image_epochs, **costs}
        if val["val_balanced_accuracy"] > best["val_balanced_accuracy"]:
            best = {"val_balanced_accuracy": val["val_balanced_accuracy"], "epoch": epoch + 1}
            _save_new_file(model.state_dict(), out_dir / BEST_FILE)
        metrics["best_val_balanced_accuracy"] = best["val_balanced_accuracy"]
        metrics["best_epoch"] = best["epoch"]  # the epoch whose weights the trial keeps
        ckpt = out_dir / f"checkpoint_{epoch + 1:04d}"
        ckpt.mkdir(exist_ok=True)
        torch.save({"model": model.state_dict(), "loss": loss_fn.state_dict(),
                    "weighting_state": {k: v for k, v in loss_fn.weighting.__dict__.items()
                                        if k in ("history", "current")},
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "epoch": epoch, "best": best, "rng_state": rng_state(), "costs": costs,
                    "image_epochs": image_epochs}, ckpt / STATE_FILE)
        final = epoch == epochs - 1
        if not final:
            # the best weights change only when validation improves: a link, not a 45 MB copy every
            # epoch (out_dir's best_model.pt is always written as a new file, so older checkpoints
            # keep theirs); the final checkpoint holds them once, as artifacts/model.pt
            _link_or_copy(out_dir / BEST_FILE, ckpt / BEST_FILE)
        (ckpt / CONFIG_FILE).write_text(json.dumps(cfg.model_dump(), indent=1))
        mark("checkpoint_saved")
        if final:
            metrics.update(_finish(cfg, mcfg, model, loss_fn, ds, classes, eval_tf, (mean, std), bs, dev, amp,
                                   channels_last, out_dir, ckpt, num_workers))
        if log:
            log(f"epoch {epoch + 1}/{epochs}  train_loss {metrics['train_loss']:.4f}  val_loss {metrics['val_loss']:.4f}  "
                f"val_acc {metrics['val_accuracy']:.4f}  val_bacc {metrics['val_balanced_accuracy']:.4f}  "
                f"{metrics['images_per_second']:.0f} img/s")
        if report is not None:
            report(metrics, ckpt)
            mark("reported")
        last = metrics
        # keep only this epoch's checkpoint on local disk (a reporter has copied it; without one,
        # e.g. `fer-automl train`, the latest holds all there is to keep: a 100-epoch ResNet-18
        # trial would otherwise leave ~18 GB of older states in --out)
        for old in out_dir.glob("checkpoint_*"):
            if old != ckpt:
                shutil.rmtree(old, ignore_errors=True)
    return last


def best_weights_in(ckpt: Path) -> Path:
    """The best-validation weights a checkpoint holds: best_model.pt, or artifacts/model.pt in a
    trial's final checkpoint (which keeps one copy of them)."""
    path = Path(ckpt) / BEST_FILE
    return path if path.is_file() else Path(ckpt) / ARTIFACTS_DIR / "model.pt"


def _finish(cfg, mcfg, model, loss_fn, ds, classes, eval_tf, norm, bs, dev, amp, channels_last, out_dir, ckpt,
            num_workers) -> Dict[str, float]:
    """Best-validation weights, tested once; artifacts for tracking written into the checkpoint."""
    from runners.data.torch_data import make_loader

    model.load_state_dict(torch.load(out_dir / BEST_FILE, map_location=dev, weights_only=True))
    art = ckpt / ARTIFACTS_DIR
    art.mkdir(exist_ok=True)
    out: Dict[str, float] = {}
    has_test = "test" in set(np.asarray(ds.splits).tolist())
    if has_test:
        test_loader = make_loader(ds, "test", bs, eval_tf, num_workers=num_workers, shuffle=False)
        test = evaluate(model, loss_fn, test_loader, dev, classes, "test_", amp, channels_last)
        out = {k: v for k, v in _public(test).items() if k in ("test_accuracy", "test_balanced_accuracy", "test_macro_f1",
                                                                  "test_pose_accuracy")}
        cm = confusion_matrix(test["_y"], test["_p"], len(classes))
        plot_confusion_matrix(cm, classes, art / "confusion_matrix.png", "test (best-validation weights)")
        (art / "per_class_metrics.json").write_text(json.dumps(
            {"split": "test", "classes": classes, "per_class": per_class_report(test["_y"], test["_p"], classes),
             "confusion_matrix": cm.tolist(), **out}, indent=1))
    write_attention_overlay(model, ds, eval_tf, classes, art / "attention.png", dev)
    _link_or_copy(out_dir / BEST_FILE, art / "model.pt")  # the only copy in the final checkpoint
    # the split fingerprint lets `fer-automl evaluate` tell whether its 'test' is the one tested here
    lineage = {"name": ds.name, "fingerprint": ds.fingerprint, "format": ds.format,
               "split_fingerprint": split_fingerprint(ds.keys, ds.splits) if ds.keys is not None else None}
    (art / "model_config.json").write_text(json.dumps(
        {"trial": cfg.model_dump(), "model": mcfg.model_dump(), "classes": classes,
         "pose_classes": list(ds.pose_classes or []), "dataset": lineage,
         "normalization": dict(zip(("mean", "std"), norm))},
        indent=1))
    return out


def write_attention_overlay(model, ds, eval_tf, classes, path: Path, dev, n: int = 8) -> None:
    """A fixed probe batch (the first n validation images) with the model's attention maps overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    split = "val" if "val" in set(np.asarray(ds.splits).tolist()) else "train"
    idx = ds.indices(split)[:n]
    imgs = [np.asarray(ds.images[i]) for i in idx]
    x = torch.stack([torch.as_tensor(eval_tf(image=im)["image"]).permute(2, 0, 1) for im in imgs]).float().to(dev)
    model.eval()
    with torch.no_grad():
        out = model(x)
    maps = out.attention_maps
    name = max(maps, key=lambda k: maps[k].shape[-1] * maps[k].shape[-2] + (k.startswith("global")) * 1e-3) if maps else None
    preds = out.logits.float().argmax(1).cpu().tolist()
    fig, axes = plt.subplots(2, len(imgs), figsize=(1.6 * len(imgs), 3.4), squeeze=False)
    for j, im in enumerate(imgs):
        axes[0][j].imshow(im)
        axes[0][j].set_title(f"{classes[int(ds.labels[idx[j]])]}\n-> {classes[preds[j]]}", fontsize=7)
        axes[1][j].imshow(im)
        if name is not None:
            m = maps[name][j].float().cpu().numpy()
            axes[1][j].imshow(m, cmap="jet", alpha=0.45, extent=(0, im.shape[1], im.shape[0], 0))
        for ax in (axes[0][j], axes[1][j]):
            ax.axis("off")
    fig.suptitle(f"attention: {name}" if name else "attention: none (no attention module in this model)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
