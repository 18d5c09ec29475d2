"""How hard are the built-in synthetic faces? A linear classifier on raw pixels versus a
small CNN trained a few epochs, both on a subject-independent split (CPU).

    PYTHONPATH=. python benchmarks/synth_difficulty.py [--n 8000] [--size 64] [--epochs 8]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from runners.data import load_dataset


def linear_probe(xtr, ytr, xte, yte, num_classes, weight_decay=1e-3, iters=200):
    """Multinomial logistic regression (softmax, L2) on standardised raw pixels, full-batch LBFGS."""
    mu, sd = xtr.mean(0, keepdim=True), xtr.std(0, keepdim=True) + 1e-3
    xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    lin = nn.Linear(xtr.shape[1], num_classes)
    opt = torch.optim.LBFGS(lin.parameters(), lr=0.5, max_iter=iters, history_size=20,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(lin(xtr), ytr) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (lin(xtr).argmax(1) == ytr).float().mean().item(), (lin(xte).argmax(1) == yte).float().mean().item()


def small_cnn(num_classes):
    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                             nn.MaxPool2d(2))
    return nn.Sequential(block(3, 32), block(32, 64), block(64, 96), block(96, 128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))


def train_cnn(xtr, ytr, xte, yte, num_classes, epochs, seed=0, batch=64):
    torch.manual_seed(seed)
    model = small_cnn(num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((len(xtr) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), batch):
            idx = perm[i:i + batch]
            x = xtr[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            loss = nn.functional.cross_entropy(model(x), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(xte[i:i + 256]).argmax(1) for i in range(0, len(xte), 256)])
    return (pred == yte).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=8000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ds = load_dataset("synthetic", n=a.n, image_size=a.size, seed=a.seed, cache=False)
    tr, va, te = ds.splits == "train", ds.splits == "val", ds.splits == "test"
    x = torch.from_numpy(np.ascontiguousarray(ds.images)).permute(0, 3, 1, 2).float().div(255)
    y = torch.from_numpy(ds.labels)
    print(f"synthetic n={a.n} size={a.size}: train {tr.sum()} images ({ds.num_subjects('train')} subjects), "
          f"val {va.sum()} ({ds.num_subjects('val')}), test {te.sum()} images ({ds.num_subjects('test')} other subjects); chance {1 / 7:.3f}")
    t = time.time()
    best = None
    for wd in (1e-4, 1e-3, 1e-2, 1e-1):     # L2 strength chosen on val, never on test
        acc_tr, acc_va = linear_probe(x[tr].flatten(1), y[tr], x[va].flatten(1), y[va], ds.num_classes, wd, 100)
        print(f"  linear weight_decay={wd:g}: train {acc_tr:.3f}, val {acc_va:.3f}")
        if best is None or acc_va > best[1]:
            best = (wd, acc_va)
    acc_tr, acc_lin = linear_probe(x[tr].flatten(1), y[tr], x[te].flatten(1), y[te], ds.num_classes, best[0], 100)
    print(f"linear (softmax regression on raw pixels, weight_decay={best[0]:g}): train {acc_tr:.3f}, "
          f"test {acc_lin:.3f} ({time.time() - t:.0f} s)")
    t = time.time()
    mean, std = x[tr].mean((0, 2, 3), keepdim=True), x[tr].std((0, 2, 3), keepdim=True)
    acc_cnn = train_cnn((x[tr] - mean) / std, y[tr], (x[te] - mean) / std, y[te], ds.num_classes, a.epochs, a.seed)
    print(f"small CNN (4 conv blocks, {a.epochs} epochs): test {acc_cnn:.3f} ({time.time() - t:.0f} s)")


if __name__ == "__main__":
    main()
