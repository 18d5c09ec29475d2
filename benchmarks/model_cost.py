"""Model cost per preset: params, MACs, latency at batch 1 and throughput at batch 32.

    python benchmarks/model_cost.py                      # CPU, fp32, 112 and 224 px
    python benchmarks/model_cost.py --device cuda --bf16 --channels-last

Prints a Markdown table (medians of --repeats timed forwards after --warmup untimed ones).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from fer_models import PRESETS, build_model, preset_config  # noqa: E402
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
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
