"""Training-step time on a CPU in NCHW vs channels_last (NHWC), side by side in one process.

    PYTHONPATH=. python benchmarks/channels_last_cpu.py [--size 48] [--batch 32] [--steps 6] [--rounds 2]

Why: `runners.training.trial` trains in channels_last on CPUs as well as GPUs; this is the measurement
behind that choice. One thread (a trial's share under Ray with `resources: {cpu: 1}`); for every
model the two layouts alternate for --rounds rounds of --steps timed steps (forward, cross
entropy, backward, SGD step; the first step of a round untimed), and the table gives the median
step time of each layout and their ratio.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._machine import cpu_name  # noqa: E402
from fer_models import ModelConfig, build_model  # noqa: E402

CASES = [
    ("fercnn", {}),
    ("fercnn", {"attention": "cbam", "num_patches": 4, "num_scales": 2}),
    ("fercnn", {"attention": "spatio_channel", "num_patches": 9, "context_branch": True, "local_aggregation": "max"}),
    ("fercnn", {"fercnn_width": 32, "fercnn_depth": 2}),
    ("mobilenetv3_small_100", {}),
    ("lcnet_050", {}),
    ("ghostnet_050", {}),
    ("resnet10t", {}),
    ("resnet18", {}),
]


def step_times(model, x, y, channels_last: bool, steps: int):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = x.contiguous(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), 1e-3, momentum=0.9)
    out = []
    for i in range(steps + 1):
        t = time.perf_counter()
        logits = model(x)
        logits = logits.logits if hasattr(logits, "logits") else logits
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            out.append(time.perf_counter() - t)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"{cpu_name()}, torch {torch.__version__}, 1 thread, {a.size} px, batch {a.batch}\n")
    print("| model | NCHW step (ms) | channels_last step (ms) | NCHW / channels_last |\n|---|---|---|---|")
    for backbone, kw in CASES:
        model = build_model(ModelConfig(backbone=backbone, num_classes=7, **kw), image_size=a.size)
        x, y = torch.randn(a.batch, 3, a.size, a.size), torch.randint(0, 7, (a.batch,))
        t = {False: [], True: []}
        for _ in range(a.rounds):
            for cl in (False, True):
                t[cl] += step_times(model, x, y, cl, a.steps)
        nchw, nhwc = statistics.median(t[False]), statistics.median(t[True])
        label = backbone + (" " + ", ".join(f"{k}={v}" for k, v in kw.items()) if kw else "")
        print(f"| {label} | {nchw * 1e3:.0f} | {nhwc * 1e3:.0f} | {nchw / nhwc:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
