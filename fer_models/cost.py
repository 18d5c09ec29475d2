"""Parameter count, MACs and latency of a built model.

MACs come from torch's own FLOP counter (`torch.utils.flop_counter`, which counts convolutions,
matmuls and attention at the aten level) divided by two.
"""
from __future__ import annotations

import statistics
import time
from typing import Dict, Optional

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import UserError


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


def cost(model: nn.Module, kind: str, image_size: int, device: Optional[str] = None, repeats: int = 7,
         bf16: bool = False, channels_last: bool = False) -> float:
    """One cost of a model, the second objective of a multi-objective search: `params`
    (trainable parameters), `macs` (multiply-accumulates of one image at `image_size`) or
    `latency` (milliseconds per image at batch 1 on `device`, the median of `repeats` timed
    forwards after two warm-up ones). Leaves the random number generators as they were, so the
    training that follows is the same with or without it."""
    if kind == "params":
        return float(count_params(model))
    if kind == "macs":
        return float(count_macs(model, image_size))
    if kind == "latency":
        device = device or str(next(model.parameters()).device)
        was_training = model.training
        cpu_state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state_all() if device.startswith("cuda") else None
        try:
            res = measure_latency(model, image_size, batch=1, repeats=repeats, warmup=2, device=device, bf16=bf16,
                                  channels_last=channels_last)
        finally:
            torch.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state_all(cuda_state)
            model.train(was_training)
        return 1000.0 * res["median_s"]
    raise UserError(f"unknown cost {kind!r}; valid: params, macs, latency")
