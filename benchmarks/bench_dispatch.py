"""The staged/dense dispatch over batch sizes: ``path="auto"`` against the dense path.

For each layer and batch size, ``sk.conv2d(x, kernel)`` (numpy, ``path="auto"``) is timed
against ``sk.conv2d(x, dense_kernel)``, and ``SeKronConv2d(path="auto")`` against
the ``nn.Conv2d`` it stands for (``to_dense()``, under ``no_grad``); the ratio
auto / dense should stay <= 1.05 everywhere (and fall well below 1 where the staged path
pays). The cost table is the machine's (``sekron.ops.cost_table()``: a geometry not in
its file is timed on first use, in the warm-up call). Interleaved rounds, minimum per
case, each timing the mean of as many consecutive calls as fill 10 ms (a batch-1 call
takes 30-100 us); CPU time of this thread with one thread, wall time with two. Nothing
asserts a time.

Run: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_dispatch.py
     [--threads N] [--quick]
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved

import sekron as sk

# (label, channels, image size, shapes, ranks, largest batch)
LAYERS = [
    ("16->16 16x16", 16, 16, [(4, 4, 3, 1), (4, 4, 1, 3)], 1, 4096),
    ("16->16 16x16 near", 16, 16, [(4, 4, 3, 3), (4, 4, 1, 1)], 3, 4096),  # MAC ratio < 2
    ("64->64 32x32", 64, 32, [(8, 8, 3, 1), (8, 8, 1, 3)], 1, 1024),
    ("256->256 14x14", 256, 14, [(256, 1, 1, 1), (1, 256, 3, 3)], 16, 1024),
    ("64->64 8x8", 64, 8, [(8, 8, 3, 1), (8, 8, 1, 3)], 2, 4096),
]
BATCHES = (1, 4, 16, 64, 256, 1024, 4096)


def run(threads, quick):
    import torch

    from sekron.torch import SeKronConv2d

    torch.set_num_threads(threads)
    table = sk.ops.cost_table()
    print(f"\n=== {threads} thread(s); cost table file: {table.path} ===")
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    clock = time.thread_time if threads == 1 else time.perf_counter
    rng = np.random.default_rng(0)
    worst = {"numpy": 0.0, "torch": 0.0}
    print(
        f"{'layer':18s} {'MACs':>5s} {'N':>5s} | {'numpy auto/dense':>16s} {'path':6s} |"
        f" {'torch auto/dense':>16s} {'path':6s}"
    )
    for label, c, hw, shapes, ranks, top in LAYERS:
        st = sk.Structure(shapes, ranks)
        macs = st.macs_conv2d(hw, hw, padding=1)
        kernel = sk.SeKronTensor([rng.normal(size=s).astype(np.float32) for s in st.factor_shapes])
        dense = kernel.to_dense()
        layer = SeKronConv2d(st, padding=1, bias=False).eval()
        with torch.no_grad():
            for p, f in zip(layer.factors, kernel.factors, strict=True):
                p.copy_(torch.from_numpy(f))
        dense_layer = layer.to_dense().eval()  # the nn.Conv2d it replaces
        for n in BATCHES:
            if n > top or (quick and n > 256):
                continue
            x = rng.normal(size=(n, c, hw, hw)).astype(np.float32)
            xt = torch.from_numpy(x)

            def t_dense(xt=xt, dense_layer=dense_layer):
                with torch.no_grad():
                    dense_layer(xt)

            def t_auto(xt=xt, layer=layer):
                with torch.no_grad():
                    layer(xt)

            fns = {
                "np dense": lambda x=x, d=dense: sk.conv2d(x, d, padding=1),
                "np auto": lambda x=x, k=kernel: sk.conv2d(x, k, padding=1),
                "torch dense": t_dense,
                "torch auto": t_auto,
            }
            rounds = 3 if n >= 1024 else (7 if quick else 9)
            # short calls are repeated to 10 ms per timing (see _common.interleaved)
            best = interleaved(fns, rounds, clock=clock, reduce=min, min_time=0.01)
            r_np = best["np auto"] / best["np dense"]
            r_t = best["torch auto"] / best["torch dense"]
            worst["numpy"], worst["torch"] = max(worst["numpy"], r_np), max(worst["torch"], r_t)
            geometry = (x.shape, (1, 1), (1, 1), (1, 1))
            staged = sk.ops._conv._staged_wins(kernel, list(kernel.factors), geometry, x.dtype)
            p_np = "staged" if staged else "dense"
            with torch.no_grad():  # the choice of the timed calls (with gradients: MAC rule)
                p_t = "staged" if layer.uses_structured_path((hw, hw), n) else "dense"
            ratio = macs["dense"] / macs["sekron"]
            print(
                f"{label:18s} {ratio:5.1f} {n:5d} | {r_np:16.2f} {p_np:6s} | {r_t:16.2f} {p_t:6s}"
            )
    print(f"worst auto/dense: numpy {worst['numpy']:.2f}, torch {worst['torch']:.2f}")
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    from threadpoolctl import threadpool_limits

    counts = [int(sys.argv[sys.argv.index("--threads") + 1])] if "--threads" in sys.argv else [1, 2]
    for k in counts:
        with threadpool_limits(k):
            run(k, "--quick" in sys.argv)
