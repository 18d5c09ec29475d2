"""Images per second a training loader delivers: after the train augmentation (strength 0.5)
and without augmentation (resize + normalise), at 64, 112 and 224 px, with 0, 1 and 2 loader
workers. The source is the decoded in-memory form at the target size (what the decode-once
cache holds), synthetic faces. Median of repeats, after a warm-up epoch.

    PYTHONPATH=. python benchmarks/data_throughput.py [--images 1024] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from _machine import cpu_name
from runners.data import load_dataset
from runners.data.torch_data import make_loader
from runners.data.transforms import build_eval_transform, build_train_transform


def measure(ds, size: int, workers: int, augment: bool, batch: int, repeats: int) -> float:
    tf = build_train_transform(size, 0.5) if augment else build_eval_transform(size)
    loader = make_loader(ds, "train", batch, tf, num_workers=workers, seed=0, drop_last=True)
    n = 0
    for x, _, _ in loader:      # warm-up epoch (worker start-up)
        n += len(x)
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        n = 0
        for x, _, _ in loader:
            n += len(x)
        rates.append(n / (time.perf_counter() - t))
    del loader
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 112, 224])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    a = ap.parse_args()
    torch.set_num_threads(1)
    import os
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPU cores; torch {torch.__version__}")
    print(f"{a.images} images per epoch, batch {a.batch}, median of {a.repeats} epochs (images/s)\n")
    print("| size | workers | augmented (strength 0.5) | no augmentation |")
    print("|-----:|--------:|-------------------------:|----------------:|")
    for size in a.sizes:
        n_total = int(a.images / 0.7) + 8      # the train split is about 70% of the set
        ds = load_dataset("synthetic", n=n_total, image_size=size, seed=0, cache=False)
        for w in a.workers:
            aug = measure(ds, size, w, True, a.batch, a.repeats)
            plain = measure(ds, size, w, False, a.batch, a.repeats)
            print(f"| {size} | {w} | {aug:,.0f} | {plain:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
