"""Parameter count, MACs and latency of a built model.

MACs come from torch's own FLOP counter (`torch.utils.flop_counter`, which counts convolutions,
matmuls and attention at the aten level) divided by two.
"""
from __future__ import annotations

import statistics
import time
from typing import Dict

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, image_size: int, in_chans: int = 3) -> int:
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_chans, image_size, image_size, device=next(model.parameters()).device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return int(counter.get_total_flops() // 2)


def measure_latency(model: nn.Module, image_size: int, batch: int = 1, repeats: int = 10, warmup: int = 2,
                    device: str = "cpu", bf16: bool = False, channels_last: bool = False) -> Dict[str, float]:
    """Median seconds per forward at `batch`, and images/s from it. Eval mode, no grad."""
    model = model.to(device).eval()
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    times = []
    with torch.no_grad(), torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
        for i in range(warmup + repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"median_s": med, "images_per_s": batch / med}
