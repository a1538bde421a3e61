"""What every benchmark shares: the machine description, the timing loop, the thread count.

Timings: a warm-up run first, then ``repeats`` runs; the median is reported.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from datetime import datetime, timezone
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

__all__ = ["Timed", "machine_info", "median", "set_threads", "timed", "utc_timestamp"]


class Timed(NamedTuple):
    """``repeats`` timed calls of a function: wall and thread CPU times (s), the last result."""

    wall: list[float]
    cpu: list[float]
    result: Any


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: the /proc/cpuinfo flags that decide which kernels run (the native ViT: AVX2/FMA/F16C, AVX-512)
_SIMD_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq",
               "avx512_bf16", "avx512_fp16", "amx_tile")


def _cpu_flags() -> list[str]:
    """The :data:`_SIMD_FLAGS` this CPU has (empty when /proc/cpuinfo is not readable)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in _SIMD_FLAGS if f in have]
    except OSError:
        pass
    return []


def utc_timestamp() -> str:
    """Now, UTC, ISO 8601 to the second (the timestamp of a report)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def machine_info(threads: int | None = None) -> dict:
    """CPU model (``cpu_model``: /proc/cpuinfo's "model name", what lscpu prints; ``cpu`` the
    same, kept for older reports), its SIMD flags (``cpu_simd``: a VM may hide the model name),
    cores, threads used, library versions, timestamp (UTC)."""
    model = _cpu_model()
    info = {"cpu": model, "cpu_model": model, "cpu_simd": _cpu_flags(),
            "cores": os.cpu_count(), "threads": threads,
            "python": platform.python_version(), "numpy": np.__version__,
            "platform": platform.platform(), "timestamp": utc_timestamp(),
            "torch": torch.__version__}
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover
        pass
    return info


def median(xs) -> float | None:
    """The median of ``xs`` (None when empty)."""
    return float(statistics.median(xs)) if xs else None


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> Timed:
    """Wall and CPU times of this thread (s) of ``repeats`` calls of ``fn`` after ``warmup``
    calls, and the last result. The CPU time is what one core spent: on a busy machine it
    excludes the time the thread waited for a core."""
    out = None
    for _ in range(warmup):
        out = fn()
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.thread_time(), time.perf_counter()
        out = fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return Timed(wall, cpu, out)


def set_threads(threads: int | None) -> None:
    """Torch's intra-op thread count (unchanged when ``threads`` is 0 or None)."""
    if threads:
        torch.set_num_threads(int(threads))
