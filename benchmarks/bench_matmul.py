"""Kronecker matmul, both sides, 2 and 3 factors, against FastKron and the dense product.

Operators (float32): ``A ⊗ B`` with 64×64 factors and ``A ⊗ B ⊗ C`` with 16×16 factors
(both 4096×4096, rank 1); ``(W @ X)`` with X of shape 4096×256 and ``(X @ W)`` with X of
shape 256×4096. Each product is timed for

* ``sekron``: ``op @ X`` / ``X @ op`` on a ``SeKronTensor`` (the linear plan);
* ``fastkron``: ``pyfastkron.fastkronnumpy.gekmm`` / ``gemkm`` (FastKron's x86 kernels;
  a benchmark-only dependency, skipped with a message when it is not importable);
* ``dense``: building ``sk.kron`` of the factors, then one GEMM (issue 14's baseline);
* ``gemm``: the GEMM alone with the dense product prebuilt (for scale).

All in one process, interleaved (one call of each per round, median over rounds, after
a warm-up call); reported as ratios. Every result is first checked against the float64
dense product. ``--threads N`` caps both BLAS and FastKron's OpenMP pool (threadpoolctl);
on a shared machine one thread gives the steadiest ratios. Nothing here asserts a time.

Run: ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_matmul.py
[--threads N] [--rounds K]``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import blas_report, interleaved

import sekron as sk

try:
    import pyfastkron.fastkronnumpy as fastkron
except ImportError:  # pragma: no cover - depends on the environment
    fastkron = None


def operator(factors: list[np.ndarray]) -> sk.SeKronTensor:
    """The rank-1 SeKronTensor of ``factors`` (rank axes of length 1 in front)."""
    S = len(factors)
    return sk.SeKronTensor(
        [f.reshape((1,) * min(k + 1, S - 1) + f.shape) for k, f in enumerate(factors)]
    )


def check(name: str, got: np.ndarray, want: np.ndarray) -> None:
    """Print the largest difference to the float64 reference, relative to its largest entry."""
    err = float(np.max(np.abs(got.astype(np.float64) - want)) / np.max(np.abs(want)))
    print(f"  {name:9s} max |diff| / max |ref| = {err:.1e}")
    if not err < 1e-4:
        raise AssertionError(f"{name}: wrong result (relative difference {err:.1e})")


def bench_case(factors: list[np.ndarray], side: str, X: np.ndarray, rounds: int) -> None:
    op = operator(factors)
    D = sk.kron(*factors)
    D64 = D.astype(np.float64)
    left = side == "X @ W"
    want = X.astype(np.float64) @ D64 if left else D64 @ X.astype(np.float64)
    fns: dict[str, Callable[[], Any]] = {}
    if left:
        fns["sekron"] = lambda: X @ op
        if fastkron is not None:
            fns["fastkron"] = lambda: fastkron.gemkm(X, factors)
        fns["dense"] = lambda: X @ sk.kron(*factors)
        fns["gemm"] = lambda: X @ D
    else:
        fns["sekron"] = lambda: op @ X
        if fastkron is not None:
            fns["fastkron"] = lambda: fastkron.gekmm(factors, X)
        fns["dense"] = lambda: sk.kron(*factors) @ X
        fns["gemm"] = lambda: D @ X
    shapes = " ⊗ ".join(f"{f.shape[0]}x{f.shape[1]}" for f in factors)
    print(f"{side}, W = {shapes}, X {X.shape[0]}x{X.shape[1]}:")
    for name, fn in fns.items():
        check(name, fn(), want)
    t = interleaved(fns, rounds)
    line = ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in t.items())
    print(f"  medians: {line}")
    base = t["sekron"]
    if fastkron is not None:
        print(f"  fastkron / sekron: {t['fastkron'] / base:6.2f}x  (target >= 1.5)")
    else:
        print("  fastkron: not importable (pip install pyfastkron), skipped")
    print(
        f"  dense / sekron:    {t['dense'] / base:6.1f}x  (target >= 20); prebuilt GEMM {t['gemm'] / base:.1f}x"
    )


def main(rounds: int) -> None:
    print(blas_report())
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    rng = np.random.default_rng(0)
    X_cols = rng.standard_normal((4096, 256)).astype(np.float32)
    X_rows = rng.standard_normal((256, 4096)).astype(np.float32)
    for sides in ([64, 64], [16, 16, 16]):
        factors = [rng.standard_normal((s, s)).astype(np.float32) for s in sides]
        bench_case(factors, "W @ X", X_cols, rounds)
        bench_case(factors, "X @ W", X_rows, rounds)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="cap BLAS and OpenMP threads")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    if args.threads is not None:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(args.threads):
            main(args.rounds)
    else:
        main(args.rounds)
