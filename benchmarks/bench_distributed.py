"""Scale-out on dask.distributed: per-layer fits on a cluster, out-of-core NKP.

Run: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_distributed.py
     [--part compress|nkp|both] [--layers 48] [--width 512] [--n 16384] [--limit 256MiB]

(a) ``compress``: an MLP of ``--layers`` Linear(width, width) layers with calibration,
    compressed serially in this process and on a 2-worker LocalCluster (one thread per
    worker), in turn, after a warm-up call of each on a small model; the ratio of wall
    times and whether every factor is bit-identical. Both runs fit under the same BLAS
    thread count (``--threads``, default 1: one core per fit in both), since
    bit-identity needs it (BLAS reductions round by thread count).
(b) ``nkp``: a float32 matrix of ``--n`` × ``--n`` (1 GiB at 16384), generated lazily
    chunk by chunk from a seed (never held in this process while the cluster runs), fitted
    by ``sk.nkp`` on a 2-worker cluster whose workers are limited to ``--limit`` each; then
    the same matrix materialized here and fitted in memory with the same seed. Reported:
    the relative errors, their difference relative to the in-memory one, the workers' peak
    memory, whether any worker was restarted.

The machine is shared: report the load average printed with the numbers. Nothing here
asserts a time.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np
from _common import blas_report


def _mlp(layers: int, width: int, seed: int = 0):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*mods[:-1]).eval()


def _calibration(width: int, batches: int = 2, rows: int = 256):
    import torch

    g = torch.Generator().manual_seed(1)
    return [torch.randn(rows, width, generator=g) for _ in range(batches)]


def _same(a, b) -> bool:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(
        torch.equal(sa[k], sb[k]) if isinstance(sa[k], torch.Tensor) else sa[k] == sb[k] for k in sa
    )


def bench_compress(layers: int, width: int, threads: int, budget: str, profile: bool) -> None:
    import dask
    import torch
    from distributed import Client, LocalCluster
    from threadpoolctl import threadpool_limits

    from sekron.torch import compress

    opts = dict(ratio=4, budget=budget, max_candidates=2, progress=False, random_state=0)
    torch.set_num_threads(threads)
    # dask's statistical profiler samples every worker thread 100 times a second and
    # holds the GIL to do it; on these fits it cost about 20 % of a worker's CPU time
    with (
        dask.config.set({"distributed.worker.profile.enabled": profile}),
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
        threadpool_limits(threads, user_api="blas"),
    ):
        small = _mlp(2, 64)
        compress(small, calibration=_calibration(64), **opts)  # warm-up (imports, caches)
        compress(small, calibration=_calibration(64), client=client, **opts)
        model, data = _mlp(layers, width), _calibration(width)
        t0 = time.perf_counter()
        serial, _ = compress(model, calibration=data, **opts)
        t_serial = time.perf_counter() - t0
        load_serial = os.getloadavg()
        t0 = time.perf_counter()
        on_cluster, _ = compress(model, calibration=data, client=client, **opts)
        t_cluster = time.perf_counter() - t0
    print(
        f"compress {layers} x Linear({width}, {width}), calibrated, budget={budget!r}, "
        f"{threads} BLAS thread(s) per fit, worker profiler {'on' if profile else 'off'}:\n"
        f"  serial {t_serial:.1f} s (load {load_serial[0]:.2f}), 2-worker LocalCluster "
        f"{t_cluster:.1f} s (load {os.getloadavg()[0]:.2f}): speed-up x{t_serial / t_cluster:.2f}; "
        f"factors bit-identical: {_same(serial, on_cluster)}"
    )


def _lazy_matrix(n: int, m1: int, seed: int, rows: int):
    """A float32 n×n W = A⊗B + 0.3 A2⊗B2 + 0.5 noise, each chunk made from the seed."""
    import dask.array as da

    m2 = n // m1
    rng = np.random.default_rng(seed)
    A, A2 = rng.normal(size=(m1, m1)), rng.normal(size=(m1, m1))
    B, B2 = rng.normal(size=(m2, m2)), rng.normal(size=(m2, m2))
    A, A2, B, B2 = (x.astype(np.float32) for x in (A, A2, B, B2))

    def make(block_info=None):
        (r0, r1), _ = block_info[None]["array-location"]
        i = block_info[None]["chunk-location"][0]
        out = np.kron(A[r0 // m2 : r1 // m2], B)
        out += np.float32(0.3) * np.kron(A2[r0 // m2 : r1 // m2], B2)
        out += np.float32(0.5) * np.random.default_rng((seed, i)).standard_normal(
            out.shape, dtype=np.float32
        )
        return out

    return da.map_blocks(make, dtype=np.float32, chunks=((rows,) * (n // rows), (n,)))


def _relative_error(W: np.ndarray, approx: np.ndarray, rows: int = 1024) -> float:
    """``‖W − approx‖ / ‖W‖`` summed in float64 a block of rows at a time (float32 BLAS
    dot products over 2^28 entries would be off in the third digit)."""
    err = ref = 0.0
    for i in range(0, W.shape[0], rows):
        w = W[i : i + rows].astype(np.float64).ravel()
        d = w - approx[i : i + rows].astype(np.float64).ravel()
        err, ref = err + float(d @ d), ref + float(w @ w)
    return float(np.sqrt(err / ref))


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def bench_nkp(n: int, limit: str) -> None:
    import dask
    from dask.utils import parse_bytes
    from distributed import Client, LocalCluster

    import sekron as sk

    m1 = 128
    m2 = n // m1
    W = _lazy_matrix(n, m1, seed=0, rows=m2 * max(1, (8 << 20) // (4 * n * m2)))  # ~8 MiB
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            memory_limit=limit,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        workers = set(client.scheduler_info()["workers"])
        peak: dict[str, int] = {}
        done = threading.Event()

        def sample() -> None:  # the workers' resident memory, 4 times a second
            while not done.wait(0.25):
                for addr, rss in client.run(_rss).items():
                    peak[addr] = max(peak.get(addr, 0), rss)

        sampler = threading.Thread(target=sample)
        sampler.start()
        t0 = time.perf_counter()
        try:
            fit = sk.nkp(W, (m1, m1), rank=2, random_state=0)
        finally:
            done.set()
            sampler.join()
        t_dask = time.perf_counter() - t0
        load_dask = os.getloadavg()[0]
        restarted = set(client.scheduler_info()["workers"]) != workers
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads"):
        dense = W.compute()
    ref = sk.nkp(dense, (m1, m1), rank=2, random_state=0)
    t_mem = time.perf_counter() - t0
    e, e_ref = fit.relative_error_bound, ref.relative_error_bound
    true = _relative_error(dense, fit.to_dense())
    print(
        f"nkp of a {n}x{n} float32 matrix ({W.nbytes / 2**30:.2f} GiB, "
        f"{W.nbytes / parse_bytes(limit):.1f}x a worker's {limit} limit), rank 2, "
        f"chunks {W.chunksize}:\n"
        f"  2-worker cluster {t_dask:.1f} s (load {load_dask:.2f}); in memory here "
        f"{t_mem:.1f} s incl. generation (load {os.getloadavg()[0]:.2f})\n"
        f"  relative error: cluster {e:.6f} (directly computed {true:.6f}), in memory "
        f"{e_ref:.6f}; difference {abs(e - e_ref) / e_ref:.2e} of the in-memory error "
        f"(within 1 %: {abs(e - e_ref) <= 0.01 * e_ref})\n"
        f"  workers' peak RSS (sampled every 0.25 s): "
        f"{', '.join(f'{v / 2**20:.0f} MiB' for v in peak.values())}; "
        f"a worker restarted: {restarted}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=["compress", "nkp", "both"], default="both")
    p.add_argument("--layers", type=int, default=48)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--budget", choices=["layer", "model"], default="layer")
    p.add_argument("--profile", action="store_true", help="keep dask's worker profiler on")
    p.add_argument("--n", type=int, default=16384)
    p.add_argument("--limit", default="256MiB")
    args = p.parse_args()
    print(blas_report(), f"| load average {os.getloadavg()}", f"| {os.cpu_count()} CPUs")
    if args.part in ("compress", "both"):
        bench_compress(args.layers, args.width, args.threads, args.budget, args.profile)
    if args.part in ("nkp", "both"):
        bench_nkp(args.n, args.limit)


if __name__ == "__main__":
    main()
