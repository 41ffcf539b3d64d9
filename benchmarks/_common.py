"""Shared helpers of the benchmark scripts: timing with warm-up, BLAS report."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any


def _times(fn: Callable[[], Any], repeat: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def best_time(fn: Callable[[], Any], repeat: int = 5, warmup: int = 1) -> float:
    """Best wall time of ``repeat`` calls after ``warmup`` untimed calls (JIT, caches)."""
    return min(_times(fn, repeat, warmup))


def median_time(fn: Callable[[], Any], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``repeat`` calls after ``warmup`` untimed calls."""
    return statistics.median(_times(fn, repeat, warmup))


def blas_report() -> str:
    """One line on the BLAS numpy runs (threadpoolctl) and the OpenBLAS variables."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover
        return "threadpoolctl not installed"
    parts = []
    for info in threadpool_info():
        if info.get("user_api") == "blas":
            parts.append(
                f"{info.get('internal_api')} {info.get('version')} "
                f"({info.get('architecture')}, {info.get('num_threads')} threads)"
            )
    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    return "BLAS: " + "; ".join(parts) + f"; env {env}"
