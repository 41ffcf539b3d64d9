"""Shared helpers of the benchmark scripts: timing with warm-up, BLAS report."""

from __future__ import annotations

import math
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
    return "BLAS: " + "; ".join(parts) + f"; env {env_report()}"


# the variables that change what the benchmarks measure: the OpenBLAS kernel choice, and
# how long idle BLAS / OpenMP workers spin after a call (OPENBLAS_THREAD_TIMEOUT, read
# when OpenBLAS loads), holding the other core that a two-thread staged convolution needs
ENV_KEYS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY")


def env_report() -> dict[str, str | None]:
    """The values of :data:`ENV_KEYS` in this process (None where unset)."""
    return {k: os.environ.get(k) for k in ENV_KEYS}


def interleaved(
    fns: dict[str, Callable[[], Any]],
    rounds: int,
    *,
    clock: Callable[[], float] = time.perf_counter,
    reduce: Callable[[list[float]], float] = statistics.median,
    min_time: float = 0.0,
) -> dict[str, float]:
    """Each function's time per call over ``rounds`` rounds that call every function.

    One untimed warm-up call each first (JIT, caches, BLAS threads, a cost table's first
    measurement); the order alternates from round to round, so that load changes and
    cache effects hit every variant alike; ``reduce`` (median, or ``min``) summarizes.
    With ``min_time`` > 0, a round calls each function ``k`` times in a row and times the
    ``k`` calls together, ``k`` chosen from a second warm-up call so that one timing
    spans at least ``min_time`` seconds (a single 30 us call is too short to time
    against clock granularity and interrupts); the time per call is reported.
    """
    for fn in fns.values():
        fn()
    reps = dict.fromkeys(fns, 1)
    if min_time > 0:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            reps[name] = max(1, math.ceil(min_time / max(time.perf_counter() - t0, 1e-7)))
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            fn, k = fns[name], reps[name]
            t0 = clock()
            for _ in range(k):
                fn()
            times[name].append((clock() - t0) / k)
    return {k: float(reduce(v)) for k, v in times.items()}
