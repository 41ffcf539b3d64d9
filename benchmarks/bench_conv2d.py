"""Staged SeKron convolution vs the dense one: speed-up and fraction of MAC savings reached.

Cases: the six structures of the ResNet-like layer (batch 32, 64 -> 64 channels, 32×32,
3×3, padding 1), and ResNet-like layers (64 -> 64 at 32×32, 256 -> 256 at 14×14) at
batch 1 and 32. For each case:

* MAC ratio: dense / staged multiply-adds (``Structure.macs_conv2d``);
* numpy: ``sk.conv2d(x, kernel, path="staged")`` against ``sk.conv2d`` on the dense
  kernel (im2col + GEMM, the same executor);
* torch: ``SeKronConv2d(path="structured")`` against ``torch.nn.functional.conv2d`` on
  the dense kernel, under ``no_grad``;
* chunked: the same staged plan run step by step on chunks of the batch (the executor
  before the fused per-image program, ``sekron.ops._fused``; its thin stages still on
  the fused thin-stage kernel), in the same rounds;
* fraction = speed-up / MAC ratio (1 = every multiply-add saved turned into time saved;
  the target is 0.5).

Warm-up first, then rounds that time every case once, in alternating order, so load
changes on the shared machine hit all cases alike; the minimum per case is kept. With
one thread the clock is this thread's CPU time (it excludes the time other jobs held
the core; the machine is shared), with two threads the wall time. Nothing asserts a
time. Runs with 1 then 2 threads (BLAS, numba and torch) unless ``--threads N``;
``--quick`` runs fewer rounds.

Run: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_conv2d.py

With two threads, OpenBLAS's idle workers spin on the second core after every dense call
and keep the staged program's second worker from running. Prefix
``OPENBLAS_THREAD_TIMEOUT=4`` (read when OpenBLAS loads) to measure a process whose BLAS
workers sleep at once (docs/compute.md). The value is printed with the results.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import env_report, interleaved

import sekron as sk
from sekron.ops import _fused as fused_mod

STRUCTURES = [
    ([(8, 8, 3, 1), (8, 8, 1, 3)], 1),  # spatially separable GKPD
    ([(16, 4, 3, 3), (4, 16, 1, 1)], 1),  # 3x3 on few channels, then a 1x1 mix
    ([(16, 4, 3, 3), (4, 16, 1, 1)], 2),
    ([(4, 4, 1, 1), (4, 4, 3, 1), (4, 4, 1, 3)], (2, 2)),  # S = 3
    # channel low rank: a 3x3 conv to R channels, then a 1x1 back to 64 (Tucker-2-like)
    ([(64, 1, 1, 1), (1, 64, 3, 3)], 8),
    ([(64, 1, 1, 1), (1, 64, 3, 3)], 4),
]

# ResNet-like layers: (label, channels, image size, structure, ranks)
RESNET = [
    ("64->64 32x32", 64, 32, [(8, 8, 3, 1), (8, 8, 1, 3)], 2),
    ("256->256 14x14", 256, 14, [(16, 16, 3, 1), (16, 16, 1, 3)], 2),
    ("256->256 14x14", 256, 14, [(256, 1, 1, 1), (1, 256, 3, 3)], 16),
    ("256->256 14x14", 256, 14, [(16, 16, 3, 3), (16, 16, 1, 1)], 1),
]


def cases():
    """(label, batch, channels, hw, structure) of every benchmarked convolution."""
    out = [("64->64 32x32", 32, 64, 32, sk.Structure(s, r)) for s, r in STRUCTURES]
    for label, c, hw, shapes, ranks in RESNET:
        for n in (1, 32):
            st = sk.Structure(shapes, ranks)
            if n == 32 and any(o[4] == st and o[1] == 32 and o[3] == hw for o in out):
                continue
            out.append((label, n, c, hw, st))
    return out


def threads_summary():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    return "; ".join(
        f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')}) "
        f"threads={i.get('num_threads')}"
        for i in threadpool_info()
    )


def run(threads, rounds):
    import torch
    import torch.nn.functional as tF

    from sekron.torch import SeKronConv2d

    torch.set_num_threads(threads)
    print(f"\n=== {threads} thread(s) ===")
    print("threadpools:", threads_summary(), f"; torch threads={torch.get_num_threads()}")
    print("env:", env_report())
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    clock = time.thread_time if threads == 1 else time.perf_counter
    rng = np.random.default_rng(0)
    problems = []
    # every numpy timing first: torch's OpenMP workers spin after each of its ops and
    # slowed the BLAS threads of numpy calls made after them by up to 3x
    for label, n, c, hw, st in cases():
        x = rng.normal(size=(n, c, hw, hw)).astype(np.float32)
        kernel = sk.SeKronTensor([rng.normal(size=s).astype(np.float32) for s in st.factor_shapes])
        dense = kernel.to_dense()

        def np_chunked(x=x, k=kernel):  # the chunked step-by-step executor
            fused_mod.ENABLED = False
            try:
                sk.conv2d(x, k, padding=1, path="staged")
            finally:
                fused_mod.ENABLED = True

        rr = rounds if n > 1 else 3 * rounds
        best = interleaved(
            {
                "np dense": lambda x=x, d=dense: sk.conv2d(x, d, padding=1),
                "np staged": lambda x=x, k=kernel: sk.conv2d(x, k, padding=1, path="staged"),
                "np chunked": np_chunked,
            },
            rr,
            clock=clock,
            reduce=min,
        )
        problems.append((label, n, hw, st, x, kernel, dense, best, rr))
    rows = []
    for label, n, hw, st, x, kernel, dense, best, rr in problems:
        macs = st.macs_conv2d(hw, hw, padding=1)
        layer = SeKronConv2d(st, padding=1, bias=False, path="structured").eval()
        with torch.no_grad():
            for p, f in zip(layer.factors, kernel.factors, strict=True):
                p.copy_(torch.from_numpy(f.copy()))
        xt, wt = torch.from_numpy(x), torch.from_numpy(dense)
        y = sk.conv2d(x, kernel, padding=1, path="staged")
        ref = sk.conv2d(x, dense, padding=1)
        with torch.no_grad():
            yt = layer(xt).numpy()
        rel = max(
            float(np.max(np.abs(y - ref)) / np.max(np.abs(ref))),
            float(np.max(np.abs(yt - ref)) / np.max(np.abs(ref))),
        )

        def torch_dense(xt=xt, wt=wt):
            with torch.no_grad():
                tF.conv2d(xt, wt, padding=1)

        def torch_staged(xt=xt, layer=layer):
            with torch.no_grad():
                layer(xt)

        best |= interleaved(
            {"torch dense": torch_dense, "torch staged": torch_staged}, rr, clock=clock, reduce=min
        )
        ratio = macs["dense"] / macs["sekron"]
        rows.append((label, n, str(st), ratio, best, rel))
    print(
        f"{'layer':15s} {'N':>3s} {'structure':44s} {'MACs':>5s} | {'numpy':>6s} {'frac':>5s}"
        f" {'chunked':>7s}"
        f" | {'torch':>6s} {'frac':>5s} | dense ms np/torch"
    )
    for label, n, name, ratio, best, rel in rows:
        s_np = best["np dense"] / best["np staged"]
        s_t = best["torch dense"] / best["torch staged"]
        s_old = best["np dense"] / best["np chunked"]
        print(
            f"{label:15s} {n:3d} {name:44s} {ratio:5.1f} | {s_np:5.2f}x {s_np / ratio:5.2f}"
            f" {s_old:6.2f}x"
            f" | {s_t:5.2f}x {s_t / ratio:5.2f} | {best['np dense'] * 1e3:.2f}/"
            f"{best['torch dense'] * 1e3:.2f}   (max rel diff {rel:.1e})"
        )
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    from threadpoolctl import threadpool_limits

    counts = [int(sys.argv[sys.argv.index("--threads") + 1])] if "--threads" in sys.argv else [1, 2]
    rounds = 5 if "--quick" in sys.argv else 15
    for k in counts:
        with threadpool_limits(k):
            run(k, rounds)
