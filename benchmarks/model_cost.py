"""Model cost per preset: params, MACs, latency at batch 1 and throughput at batch 32.

    python benchmarks/model_cost.py                      # CPU, fp32, 112 and 224 px
    python benchmarks/model_cost.py --device cuda --bf16 --channels-last
    python benchmarks/model_cost.py --backbones resnet18 fercnn lcnet_050 --sizes 48 64 --train-size 48

Prints a Markdown table (medians of --repeats timed forwards after --warmup untimed ones).
--backbones: the `baseline` preset (backbone + linear head) on each backbone instead of the
presets, with training images/s at --train-size (forward, loss, backward, AdamW step at --batch;
median of --repeats steps), side by side in one process.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from fer_models import PRESETS, ModelConfig, build_model, preset_config  # noqa: E402
from fer_models.losses import build_loss  # noqa: E402
from fer_models.cost import count_macs, count_params, measure_latency  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="*", default=list(PRESETS))
    ap.add_argument("--sizes", nargs="*", type=int, default=[112, 224])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--backbones", nargs="*", default=None,
                    help="cost the baseline preset on these backbones (fercnn:W:D for fercnn width W, depth D)")
    ap.add_argument("--train-size", type=int, default=48, help="--backbones: input side of the training-speed column")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.backbones:
        return backbone_table(args)
    print(f"machine: {machine()}; device {args.device}, bf16={args.bf16}, channels_last={args.channels_last}")
    # The first model timed in a process pays for the allocator's and oneDNN's first large buffers
    # (seen here: the first preset ~1.7x slower than an identical-cost one timed later). Pay it now.
    warm = build_model(preset_config(args.presets[0]))
    for size in args.sizes:
        measure_latency(warm, size, batch=args.batch, repeats=2, warmup=1, device=args.device, bf16=args.bf16,
                        channels_last=args.channels_last)
    del warm
    print(f"| preset | px | params (M) | GMACs | latency b=1 (ms) | throughput b={args.batch} (img/s) |")
    print("|---|---|---|---|---|---|")
    for name in args.presets:
        model = build_model(preset_config(name))
        model.set_keep_attention_maps(False)
        params = count_params(model)
        for size in args.sizes:
            macs = count_macs(model, size)
            kw = dict(device=args.device, bf16=args.bf16, channels_last=args.channels_last, warmup=args.warmup)
            lat = measure_latency(model, size, batch=1, repeats=args.repeats, **kw)
            thr = measure_latency(model, size, batch=args.batch, repeats=max(3, args.repeats // 2), **kw)
            print(f"| {name} | {size} | {params / 1e6:.2f} | {macs / 1e9:.2f} | {lat['median_s'] * 1e3:.1f} | "
                  f"{thr['images_per_s']:.1f} |", flush=True)


def _backbone_config(spec: str) -> ModelConfig:
    name, *knobs = spec.split(":")
    kw = {}
    if knobs:
        kw["fercnn_width"] = int(knobs[0])
    if len(knobs) > 1:
        kw["fercnn_depth"] = int(knobs[1])
    return ModelConfig(**{**preset_config("baseline").model_dump(), "backbone": name, **kw})


def train_images_per_s(model: torch.nn.Module, size: int, batch: int, repeats: int, warmup: int) -> tuple:
    """Median images/s of full training steps (forward, fixed-weight loss, backward, AdamW), by the
    wall clock and by this process's CPU time (the latter is what an idle machine's wall clock
    would show with --threads 1: other processes' load does not enter it)."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = build_loss(model, "fixed")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, model.cfg.in_chans, size, size, generator=gen)
    y = torch.randint(0, model.cfg.num_classes, (batch,), generator=gen)
    times, cpu = [], []
    for i in range(warmup + repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y, None).total.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return batch / statistics.median(times), batch / statistics.median(cpu)


def backbone_table(args) -> None:
    sizes = args.sizes
    print(f"machine: {machine()}; CPU training steps, fp32; load average {os.getloadavg()[0]:.1f} at the start")
    print(f"| backbone | params (M) | " + " | ".join(f"GMACs {s} px" for s in sizes)
          + f" | train img/s {args.train_size} px b={args.batch} (wall) | per CPU-second |")
    print("|---|---|" + "---|" * len(sizes) + "---|---|")
    for spec in args.backbones:
        cfg = _backbone_config(spec)
        model = build_model(cfg, image_size=args.train_size)
        model.set_keep_attention_maps(False)
        params = count_params(model)
        macs = [count_macs(model, s) for s in sizes]
        thr, per_cpu = train_images_per_s(model, args.train_size, args.batch, args.repeats, args.warmup)
        print(f"| {spec} | {params / 1e6:.3f} | " + " | ".join(f"{m / 1e9:.4f}" for m in macs)
              + f" | {thr:.0f} | {per_cpu:.0f} |", flush=True)


if __name__ == "__main__":
    main()
