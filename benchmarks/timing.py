"""Timing on a GPU (or the CPU): warm-up, synchronise, median of repeats, peak memory."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def free(device: str, collect: bool = True) -> None:
    """Return cached GPU blocks (after collecting garbage: slow, so only between models)."""
    if collect:
        gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


@dataclass
class Timing:
    """Seconds per call (the median over ``times``), GPU memory, and the last return value."""

    seconds: float
    times: list[float]
    peak_bytes: int | None  # max allocated during the calls (warm-up included)
    resident_bytes: int | None  # allocated before the calls (the models)
    result: Any = field(default=None, repr=False)

    @property
    def extra_bytes(self) -> int | None:
        if self.peak_bytes is None or self.resident_bytes is None:
            return None
        return self.peak_bytes - self.resident_bytes


def measure(fn: Callable[[], Any], *, device: str, warmup: int = 1, repeats: int = 3) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times, synchronising around each.

    Peak memory covers the warm-up too (the first call allocates what later ones reuse).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    cuda = device.startswith("cuda")
    free(device, collect=False)
    resident = None
    if cuda:
        sync(device)
        resident = torch.cuda.memory_allocated(torch.device(device))
        torch.cuda.reset_peak_memory_stats(torch.device(device))
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(torch.device(device)) if cuda else None
    return Timing(statistics.median(times), times, peak, resident, result)
