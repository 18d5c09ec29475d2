"""What an ensemble of a search's top trials and flip TTA buy, and what they cost (issue 11, item 5).

1. A small real search (`fer-automl search`: local Ray, FIFO, SQLite MLflow in a temporary folder)
   on a dataset (default: CMU faces, /work/shared/data/cmu_faces, by subject: test subjects unseen).
2. Its top-K finished trials (`runners.registry.ensemble.top_k`, ranked on validation as `promote` ranks
   them) on the test split: each member alone, the member with flip TTA, the ensemble of K, and the
   ensemble of K with flip TTA: the modules `promote --ensemble` exports (runners.registry.ensemble), fed as
   `fer-automl evaluate` feeds them (runners.serving.evaluate.evaluate_dataset).
3. Latency (eager modules on CPU, torch threads as given, median of --repeats): one member, the
   ensemble of K, the ensemble of K with TTA, for a batch of 1 and a batch of 32 images.

    PYTHONPATH=. python benchmarks/ensemble_tta.py [--data /work/shared/data/cmu_faces] [--format cmu_faces]
        [--trials 6] [--epochs 6] [--image-size 48] [--k 3] [--threads 1]
    PYTHONPATH=. python benchmarks/ensemble_tta.py --format synthetic --n 1400 --image-size 32

Prints Markdown tables.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._machine import cpu_name  # noqa: E402


class _Shim:
    """An in-process module with the pyfunc's `predict` (so `FERPredictor` and evaluate feed it)."""

    def __init__(self, module):
        self.module = module

    def predict(self, batch):
        with torch.no_grad():
            return self.module(torch.from_numpy(np.ascontiguousarray(batch))).numpy()


def predictor(module, meta):
    from runners.registry.packaging import FERPredictor

    return FERPredictor(uri="in-process", pyfunc=_Shim(module), classes=list(meta["classes"]),
                        image_size=int(meta["image_size"]), meta=meta)


def latency(module, size: int, batch: int, repeats: int) -> float:
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
    with torch.no_grad():
        module(x)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/work/shared/data/cmu_faces")
    ap.add_argument("--format", default="cmu_faces")
    ap.add_argument("--n", type=int, default=1400, help="--format synthetic: number of images")
    ap.add_argument("--trials", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--image-size", type=int, default=48)
    ap.add_argument("--backbone", default="resnet10t")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="split seed of the dataset and seed of the search")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import mlflow
    import ray

    from runners.cli import main as cli
    from runners.data import load_dataset
    from runners.registry.ensemble import Member, build_ensemble, top_k
    from runners.serving.evaluate import evaluate_dataset
    from runners.registry.packaging import build_inference_module
    from runners.registry.promote import download_weights

    tmp = Path(tempfile.mkdtemp(prefix="fer-ensemble-bench-"))
    uri = f"sqlite:///{tmp}/mlflow.db"
    name = "ensemble-bench"
    if args.format == "synthetic":  # generated faces: --n images stored at --image-size
        dataset = {"format": "synthetic", "n": args.n, "image_size": args.image_size, "seed": args.seed}
        args.data = None
    else:
        dataset = {"format": args.format, "path": args.data, "seed": args.seed}
    space = {
        "dimensions": {"lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
                       "weight_decay": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}},
        "constants": {"model.backbone": args.backbone, "train.epochs": args.epochs, "train.batch_size": 32,
                      "train.optimizer": "adamw", "data.image_size": args.image_size, "data.aug_strength": 0.3},
        "search": {"name": name, "dataset": dataset,
                   "algorithm": "random", "seed": args.seed, "scheduler": {"type": "fifo"},
                   "num_samples": args.trials, "max_concurrent": 2, "resources": {"cpu": 1, "gpu": 0},
                   "max_failures": 0},
    }
    (tmp / "space.yaml").write_text(yaml.safe_dump(space))
    t0 = time.time()
    try:
        rc = cli(["search", str(tmp / "space.yaml"), "--tracking-uri", uri, "--storage-path", str(tmp / "ray")])
    finally:
        if ray.is_initialized():
            ray.shutdown()
    if rc != 0:
        print(f"search failed (exit {rc})", file=sys.stderr)
        return rc
    search_s = time.time() - t0

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    cands, stage = top_k(client, name, "val_balanced_accuracy", args.k, uri)
    members = []
    for i, c in enumerate(cands):
        art = download_weights(client, c.run_id, tmp / f"m{i}")
        members.append(Member(c, art, *build_inference_module(art)))
    opts = {"n": args.n, "size": args.image_size} if args.format == "synthetic" else {}
    ds = load_dataset(args.format, args.data, image_size=max(m.meta["image_size"] for m in members), seed=args.seed,
                      **opts)

    rows = []
    cols = ("accuracy", "balanced_accuracy", "macro_f1")
    for i, m in enumerate(members):
        for tta in ("none", "flip"):
            mod, meta = build_ensemble([m], tta)
            ev = evaluate_dataset(predictor(mod, meta), ds, "test")
            rows.append((f"member {i} (val bal. acc. {m.cand.value:.3f})" + (" + flip" if tta == "flip" else ""),
                         ev))
    for tta in ("none", "flip"):
        mod, meta = build_ensemble(members, tta)
        ev = evaluate_dataset(predictor(mod, meta), ds, "test")
        rows.append((f"ensemble of {len(members)}" + (" + flip" if tta == "flip" else ""), ev))

    size = max(m.meta["image_size"] for m in members)
    print(f"machine: {cpu_name()}, torch threads {args.threads}; data: {args.format} {args.data} "
          f"(test split: {rows[0][1].num_images} images of unseen subjects); search: {args.trials} trials x "
          f"{args.epochs} epochs, {args.backbone} at {args.image_size} px, {search_s:.0f} s wall\n")
    print("| model | test accuracy | test balanced accuracy | test macro F1 |")
    print("|---|---|---|---|")
    for label, ev in rows:
        print(f"| {label} | " + " | ".join(f"{ev.metrics[c]:.3f}" for c in cols) + " |")
    print()
    print("| model | ms / batch of 1 | ms / batch of 32 |")
    print("|---|---|---|")
    for label, mods in (("one member", [members[0]]), (f"ensemble of {len(members)}", members)):
        for tta in ("none", "flip"):
            mod, _ = build_ensemble(mods, tta)
            print(f"| {label}" + (" + flip" if tta == "flip" else "") + " | "
                  + " | ".join(f"{latency(mod, size, b, args.repeats):.1f}" for b in (1, 32)) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
