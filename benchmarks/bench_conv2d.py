"""SeKron convolution on a ResNet-like layer: batch 32, 64 -> 64 channels, 32×32, 3×3, pad 1.

For several structures (MAC ratio dense/SeKron printed for each) the staged plan is timed
against the dense path of the same numpy executor (im2col + GEMM on the dense kernel), and
against torch.nn.functional.conv2d on the dense kernel when torch is installed (for
scale only). Warm-up first, then rounds that time every case once (interleaved, in
alternating order, so load changes on the shared machine hit all cases alike), minimum
per case, of the wall time and (one BLAS thread) of this thread's CPU time, which
excludes the time other jobs held the core; ratios within this process; nothing asserts
a time. Runs with 1 then 2 BLAS threads unless ``--threads N``.

Run: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_conv2d.py [--threads N]
"""

from __future__ import annotations

import os
import time

import numpy as np

import sekron as sk

STRUCTURES = [
    ([(8, 8, 3, 1), (8, 8, 1, 3)], 1),  # spatially separable GKPD
    ([(16, 4, 3, 3), (4, 16, 1, 1)], 1),  # 3x3 on few channels, then a 1x1 mix
    ([(16, 4, 3, 3), (4, 16, 1, 1)], 2),
    ([(4, 4, 1, 1), (4, 4, 3, 1), (4, 4, 1, 3)], (2, 2)),  # S = 3
    # channel low rank: a 3x3 conv to R channels, then a 1x1 back to 64 (Tucker-2-like)
    ([(64, 1, 1, 1), (1, 64, 3, 3)], 8),
    ([(64, 1, 1, 1), (1, 64, 3, 3)], 4),
]


def interleaved(fns, rounds=25):
    """Minimum wall time and minimum CPU time (this thread) of each function over
    ``rounds`` rounds that call every function once, in alternating order (after one
    warm-up call each), so that load changes hit all of them alike. With one BLAS thread
    the CPU time is the wall time minus the time other jobs held the core."""
    for fn in fns.values():
        fn()  # warm-up
    wall = dict.fromkeys(fns, float("inf"))
    cpu = dict.fromkeys(fns, float("inf"))
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            t0, c0 = time.perf_counter(), time.thread_time()
            fns[name]()
            cpu[name] = min(cpu[name], time.thread_time() - c0)
            wall[name] = min(wall[name], time.perf_counter() - t0)
    return wall, cpu


def _blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [i for i in threadpool_info() if i.get("user_api") == "blas"]


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


def main():
    print("threadpools:", threads_summary())
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 64, 32, 32)).astype(np.float32)
    dense_kernel = rng.normal(size=(64, 64, 3, 3)).astype(np.float32)
    fns = {"dense": lambda: sk.conv2d(x, dense_kernel, padding=1)}
    try:
        import torch
        import torch.nn.functional as tF

        xt, wt = torch.from_numpy(x), torch.from_numpy(dense_kernel)

        def torch_dense():
            with torch.no_grad():
                tF.conv2d(xt, wt, padding=1)

        fns["torch"] = torch_dense
    except ImportError:
        pass
    rows = []
    for shapes, ranks in STRUCTURES:
        st = sk.Structure(shapes, ranks)
        kernel = sk.SeKronTensor([rng.normal(size=s).astype(np.float32) for s in st.factor_shapes])
        c = st.macs_conv2d(32, 32, padding=1)
        ratio = c["dense"] / c["sekron"]
        y = sk.conv2d(x, kernel, padding=1)
        ref = sk.conv2d(x, kernel.to_dense(), padding=1)
        rel = float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))
        fns[str(st)] = lambda kernel=kernel: sk.conv2d(x, kernel, padding=1)
        rows.append((str(st), ratio, rel))
    wall, cpu = interleaved(fns)
    single = all(i.get("num_threads") == 1 for i in _blas_info())
    clocks = [("wall", wall), ("cpu", cpu)] if single else [("wall", wall)]
    for label, best in clocks:
        t_dense = best["dense"]
        print(
            f"[{label} time] dense im2col + GEMM (numpy executor): {t_dense * 1e3:.1f} ms"
            + (
                f"; torch conv2d, dense kernel (scale only): {best['torch'] * 1e3:.1f} ms"
                if "torch" in best
                else ""
            )
        )
        print(
            f"{'structure':44s} {'MAC ratio':>9s} {'sekron ms':>10s} {'speed-up':>9s} {'target':>7s}"
        )
        for name, ratio, rel in rows:
            t = best[name]
            print(
                f"{name:44s} {ratio:9.2f} {t * 1e3:10.2f} {t_dense / t:8.2f}x {ratio / 2:6.2f}x"
                f"   (max rel diff {rel:.1e})"
            )
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    import sys

    from threadpoolctl import threadpool_limits

    # --threads N: one BLAS thread count; by default 1 then 2 (1 is steadier when shared)
    if "--threads" in sys.argv:
        counts = [int(sys.argv[sys.argv.index("--threads") + 1])]
    else:
        counts = [1, 2]
    for n in counts:
        with threadpool_limits(n):
            main()
