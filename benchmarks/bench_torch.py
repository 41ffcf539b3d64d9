"""Torch adapters: SeKron layers against dense torch layers, integer step against float.

Run: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_torch.py
Each timing is the median of repeated calls after a warm-up call; ratios are against a
baseline measured in the same process. Nothing here asserts a time.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from threadpoolctl import threadpool_info
from torch import nn

import sekron as sk
from sekron.torch import IntLinear, SeKronConv2d, SeKronLinear

torch.set_num_threads(2)


def median_time(fn: Callable[[], object], repeat: int = 15) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_linear() -> None:
    print("\n== SeKronLinear vs nn.Linear, 4096x4096, batch 64 (inference, no grad) ==")
    torch.manual_seed(0)
    dense = nn.Linear(4096, 4096)
    x = torch.randn(64, 4096)
    with torch.no_grad():
        t_dense = median_time(lambda: dense(x))
        print(f"nn.Linear: {t_dense * 1e3:.2f} ms")
        for shapes, rank in [
            ([(64, 64), (64, 64)], 16),
            ([(64, 64), (64, 64)], 32),
            ([(4096, 64), (1, 64)], 8),
            ([(16, 16), (16, 16), (16, 16)], (4, 4)),
        ]:
            layer = SeKronLinear(sk.Structure(shapes, rank), path="structured")
            t = median_time(lambda layer=layer: layer(x))
            c = layer.macs(64)
            print(
                f"{str(layer.structure):<40} compression {layer.structure.compression_ratio:6.1f}x  "
                f"MACs /{c['dense'] / c['sekron']:5.1f}  {t * 1e3:7.2f} ms  speed-up {t_dense / t:5.2f}x"
            )


def bench_conv() -> None:
    print("\n== SeKronConv2d vs nn.Conv2d, ResNet-like 256->256 3x3, 14x14, batch 16 ==")
    torch.manual_seed(0)
    dense = nn.Conv2d(256, 256, 3, padding=1, bias=False)
    x = torch.randn(16, 256, 14, 14)
    with torch.no_grad():
        t_dense = median_time(lambda: dense(x), repeat=9)
        print(f"nn.Conv2d: {t_dense * 1e3:.2f} ms")
        for shapes, rank in [
            ([(16, 16, 3, 1), (16, 16, 1, 3)], 1),
            ([(16, 16, 3, 1), (16, 16, 1, 3)], 4),
            ([(256, 1, 1, 1), (1, 256, 3, 3)], 32),
            ([(16, 16, 3, 3), (16, 16, 1, 1)], 2),
        ]:
            conv = SeKronConv2d(sk.Structure(shapes, rank), padding=1, bias=False, path="structured")
            t = median_time(lambda conv=conv: conv(x), repeat=9)
            c = conv.macs((14, 14))
            red = c["dense"] / c["sekron"]
            print(
                f"{str(conv.structure):<42} compression {conv.structure.compression_ratio:6.1f}x  "
                f"MACs /{red:5.1f}  {t * 1e3:7.2f} ms  speed-up {t_dense / t:5.2f}x  "
                f"realized {t_dense / t / red:5.2f} of the MAC reduction"
            )


def bench_integer() -> None:
    print("\n== IntLinear training step vs float nn.Linear step, 512x512, batch 64 ==")
    torch.manual_seed(0)
    x = torch.randn(64, 512)
    for bits in (8, 16):
        dense = nn.Linear(512, 512)
        integer = IntLinear.from_linear(dense, bits=bits)

        def step(layer: nn.Module) -> None:
            layer.zero_grad()
            layer(x).square().mean().backward()

        t_f = median_time(lambda dense=dense: step(dense))
        t_i = median_time(lambda integer=integer: step(integer))
        print(f"bits {bits:2d}: float {t_f * 1e3:.2f} ms, integer {t_i * 1e3:.2f} ms, ratio {t_i / t_f:.2f}x")


def main() -> None:
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for info in threadpool_info():
        print(f"  {info.get('internal_api')}: {info.get('num_threads')} threads ({info.get('filepath', '').split('/')[-1]})")
    bench_linear()
    bench_conv()
    bench_integer()


if __name__ == "__main__":
    main()
