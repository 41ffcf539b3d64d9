"""Torch adapters: SeKron layers against dense torch layers, integer steps against float.

Run: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_torch.py [--threads N]
The machine is shared, so every comparison is timed in interleaved rounds (baseline and
candidates called in turn, ``--rounds`` times after a warm-up call each) and the best
time of each is kept: a burst of load then hits all of them alike instead of one.
Ratios are against the baseline measured in the same rounds. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence

import numba
import torch
from threadpoolctl import threadpool_info, threadpool_limits
from torch import nn

import sekron as sk
from sekron.torch import IntLinear, IntSeKronLinear, SeKronConv2d, SeKronLinear, linear_macs

ROUNDS = 9


def best_times(fns: Sequence[Callable[[], object]], rounds: int | None = None) -> list[float]:
    """Best time of each function over interleaved rounds (after one warm-up call each)."""
    for f in fns:
        f()
    best = [float("inf")] * len(fns)
    for _ in range(rounds or ROUNDS):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            f()
            best[i] = min(best[i], time.perf_counter() - t0)
    return best


def bench_linear() -> None:
    print(
        "\n== SeKronLinear vs nn.Linear, 4096x4096, batch 64 (inference, no grad, path='auto') =="
    )
    torch.manual_seed(0)
    dense = nn.Linear(4096, 4096)
    x = torch.randn(64, 4096)
    cases = [
        ([(4096, 64), (1, 64)], 8),
        ([(64, 4096), (64, 1)], 8),
        ([(256, 16), (16, 256)], 4),
        ([(64, 64), (64, 64)], 4),
        ([(64, 64), (64, 64)], 16),
        ([(256, 256), (16, 16)], 2),
        ([(16, 16), (16, 16), (16, 16)], (4, 4)),
    ]
    layers = [SeKronLinear(sk.Structure(shapes, rank)) for shapes, rank in cases]
    with torch.no_grad():
        times = best_times([lambda: dense(x)] + [lambda layer=layer: layer(x) for layer in layers])
    print(f"nn.Linear: {times[0] * 1e3:.2f} ms")
    for layer, t in zip(layers, times[1:], strict=True):
        c = linear_macs(layer.structure)
        order = "right" if c["right"] <= c["left"] else "left"
        print(
            f"{layer.structure!s:<40} compression {layer.structure.compression_ratio:7.1f}x  "
            f"MACs /{c['dense'] / c['sekron']:5.1f} ({order:>5})  {t * 1e3:7.2f} ms  speed-up {times[0] / t:6.2f}x"
        )


def bench_conv() -> None:
    print(
        "\n== SeKronConv2d vs nn.Conv2d (inference): staged (path='structured') and path='auto' =="
    )
    torch.manual_seed(0)
    setups = [
        (
            "ResNet-like 256->256 3x3, 14x14, batch 16",
            256,
            256,
            14,
            16,
            [
                ([(16, 16, 3, 1), (16, 16, 1, 3)], 4),
                ([(256, 1, 1, 1), (1, 256, 3, 3)], 32),
                ([(16, 16, 3, 3), (16, 16, 1, 1)], 2),
            ],
        ),
        (
            "demo 32->64 3x3, 8x8, batch 450",
            32,
            64,
            8,
            450,
            [
                ([(64, 1, 1, 1), (1, 32, 3, 3)], 13),
                ([(8, 4, 3, 1), (8, 8, 1, 3)], 4),
                ([(2, 2, 1, 1), (32, 4, 1, 1), (1, 4, 3, 3)], (4, 7)),
            ],
        ),
        (
            "demo 64->64 3x3, 4x4, batch 450",
            64,
            64,
            4,
            450,
            [
                ([(64, 1, 1, 1), (1, 64, 3, 3)], 14),
                ([(2, 2, 1, 1), (32, 2, 1, 1), (1, 16, 3, 3)], (4, 11)),
            ],
        ),
    ]
    for title, cin, cout, hw, batch, cases in setups:
        print(f"-- {title}")
        dense = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        x = torch.randn(batch, cin, hw, hw)
        staged = [
            SeKronConv2d(sk.Structure(s, r), padding=1, bias=False, path="structured")
            for s, r in cases
        ]
        auto = [SeKronConv2d(sk.Structure(s, r), padding=1, bias=False) for s, r in cases]
        with torch.no_grad():
            times = best_times(
                [lambda d=dense, x=x: d(x)]
                + [lambda m=m, x=x: m(x) for m in staged]
                + [lambda m=m, x=x: m(x) for m in auto]
            )
        print(f"nn.Conv2d: {times[0] * 1e3:.2f} ms")
        k = len(cases)
        for conv, ts, ta in zip(staged, times[1 : 1 + k], times[1 + k :], strict=True):
            c = conv.macs((hw, hw))
            red = c["dense"] / c["sekron"]
            pick = "staged" if auto[staged.index(conv)].uses_structured_path((hw, hw)) else "dense"
            print(
                f"{conv.structure!s:<44} compression {conv.structure.compression_ratio:6.1f}x  MACs /{red:5.2f}  "
                f"staged {ts * 1e3:7.2f} ms ({times[0] / ts:5.2f}x)  auto->{pick:<6} {ta * 1e3:7.2f} ms ({times[0] / ta:5.2f}x)"
            )


def bench_integer() -> None:
    print("\n== integer training steps vs float steps (forward + backward) ==")
    torch.manual_seed(0)
    x = torch.randn(64, 512)

    def step(layer: nn.Module) -> None:
        layer.zero_grad()
        layer(x).square().mean().backward()

    for bits in (8, 16):
        dense = nn.Linear(512, 512)
        integer = IntLinear.from_linear(dense, bits=bits)
        t_f, t_i = best_times(
            [lambda dense=dense: step(dense), lambda integer=integer: step(integer)], 2 * ROUNDS
        )
        print(
            f"IntLinear 512x512, batch 64, bits {bits:2d}: float {t_f * 1e3:.2f} ms, integer {t_i * 1e3:.2f} ms, ratio {t_i / t_f:.2f}x"
        )
    st = sk.Structure([(32, 16), (16, 32)], ranks=4)
    for bits in (8, 16):
        lin = SeKronLinear(st, path="structured")
        ilin = IntSeKronLinear.from_sekron(lin, bits=bits)
        t_f, t_i = best_times([lambda lin=lin: step(lin), lambda ilin=ilin: step(ilin)], 2 * ROUNDS)
        print(
            f"IntSeKronLinear {st}, batch 64, bits {bits:2d}: float {t_f * 1e3:.2f} ms, "
            f"integer {t_i * 1e3:.2f} ms, ratio {t_i / t_f:.2f}x"
        )


def main() -> None:
    global ROUNDS
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2, help="torch, BLAS and numba threads")
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    args = ap.parse_args()
    ROUNDS = args.rounds
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()}"
    )
    for info in threadpool_info():
        print(
            f"  {info.get('internal_api')}: {info.get('num_threads')} threads ({info.get('filepath', '').split('/')[-1]})"
        )
    bench_linear()
    bench_conv()
    bench_integer()
    print(f"\nload average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
