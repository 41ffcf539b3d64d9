"""Benchmarks of sekron.fixed against numpy float32 in the same process.

Run (benchmarks only) with the machine's OpenBLAS tuning variables unset:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_fixed.py

Every timed function is called once before timing (JIT warm-up); results are ratios
against a baseline measured in the same process; nothing asserts a time.
Targets (issue 6): exact int8 GEMM >= 0.8x float32 matmul throughput at 1024^3, exact
16-bit GEMM >= 0.4x, the numba kernel alone >= 0.3x, one integer training step of the
digits MLP at 16 bits <= 4x a float32 step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def best_time(fn, repeat: int = 5) -> float:
    fn()  # warm-up (numba compilation, BLAS thread start)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def gemm_section(n: int) -> list[dict]:
    from sekron.fixed import FixedTensor, matmul, plan_gemm

    rng = np.random.default_rng(0)
    af = rng.normal(size=(n, n)).astype(np.float32)
    bf = rng.normal(size=(n, n)).astype(np.float32)
    t_f32 = best_time(lambda: af @ bf)
    rows = []
    for bits, method in ((8, "auto"), (8, "blas"), (8, "numba"), (12, "auto"), (16, "auto"), (16, "blas"), (16, "numba")):
        m = 2 ** (bits - 1) - 1
        dt = np.int8 if bits <= 8 else np.int16
        a = FixedTensor(rng.integers(-m, m + 1, size=(n, n)).astype(dt), 0, bits)
        b = FixedTensor(rng.integers(-m, m + 1, size=(n, n)).astype(dt), 0, bits)
        t = best_time(lambda a=a, b=b, method=method: matmul(a, b, method=method))  # type: ignore[misc]
        plan = plan_gemm(n, bits, method=method)
        rows.append({"what": f"exact {bits}-bit GEMM {n}^3, method={method}", "path": plan.path,
                     "seconds": t, "ratio_vs_float32": t_f32 / t, "gop_s": 2 * n**3 / t / 1e9})
    rows.append({"what": f"numpy float32 matmul {n}^3", "path": "sgemm", "seconds": t_f32,
                 "ratio_vs_float32": 1.0, "gop_s": 2 * n**3 / t_f32 / 1e9})
    return rows


def kernel_section(n: int) -> list[dict]:
    from sekron.fixed import _kernels

    rng = np.random.default_rng(1)
    af = rng.normal(size=(n, n)).astype(np.float32)
    t_f32 = best_time(lambda: af @ af)
    rows = []
    for dt, m, kernel, acc in ((np.int8, 127, _kernels.gemm_acc32, np.int32),
                               (np.int16, 32767, _kernels.gemm_acc64, np.int64)):
        a = rng.integers(-m, m + 1, size=(n, n)).astype(dt)
        bt = rng.integers(-m, m + 1, size=(n, n)).astype(dt)
        out = np.empty((n, n), acc)
        t = best_time(lambda a=a, bt=bt, out=out, kernel=kernel: kernel(a, bt, out))  # type: ignore[misc]
        rows.append({"what": f"numba kernel {kernel.py_func.__name__} on {np.dtype(dt).name} {n}^3 (no wrapper)",
                     "seconds": t, "ratio_vs_float32": t_f32 / t, "gop_s": 2 * n**3 / t / 1e9})
    return rows


_FIRST_CALL = r"""
import time
t0 = time.perf_counter()
import numpy as np
from sekron.fixed import to_fixed, matmul
x = to_fixed(np.ones((64, 64)), 8, seed=0)
y = matmul(x, x, out_bits=8, seed=1)
t1 = time.perf_counter()
print(t1 - t0)
"""


def first_call_section() -> list[dict]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    rows = []
    for run in ("first process (may compile and fill the cache)", "second process (warm numba cache)"):
        out = subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env, capture_output=True, text=True, check=True)
        rows.append({"what": f"import + first to_fixed/matmul, {run}", "seconds": float(out.stdout.split()[-1])})
    return rows


def training_step_section() -> list[dict]:
    sys.path.insert(0, str(ROOT / "examples"))
    from integer_training import Net  # type: ignore[import-not-found]
    from sklearn.datasets import load_digits

    from sekron.fixed import sgd_step

    d = load_digits()
    x = (d.data[:32] / 16.0).astype(np.float32)
    y = d.target[:32]

    net_f = Net("mlp", np.random.default_rng(0))
    net_i = Net("mlp", np.random.default_rng(0))

    def float_step(net=net_f):
        _, gr = net.grads_float(x, y)
        for k, g in gr.items():
            net.vel[k] = 0.9 * net.vel[k] + g + 1e-4 * net.p[k]
            net.p[k] = (net.p[k] - 0.05 * net.vel[k]).astype(np.float32)

    sr = np.random.default_rng(1)

    def int_step(net=net_i):
        _, gr = net.grads_int(x, y, 16, sr)
        for k, g in gr.items():
            net.p[k], net.state[k] = sgd_step(net.p[k], g, net.state[k], lr=0.05, momentum=0.9,
                                              weight_decay=1e-4, bits=16, seed=sr)

    t_f = best_time(float_step, 50)
    t_i = best_time(int_step, 50)
    return [{"what": "digits MLP training step, batch 32, float32", "seconds": t_f},
            {"what": "digits MLP training step, batch 32, 16-bit integer", "seconds": t_i,
             "ratio_int_over_float": t_i / t_f}]


def main(argv=None):
    ap = argparse.ArgumentParser(description="sekron.fixed benchmarks")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    import numba
    from threadpoolctl import threadpool_info

    print("threadpoolctl:", json.dumps(threadpool_info(), indent=1))
    print(f"numba {numba.__version__}, threading layer default={numba.config.THREADING_LAYER}, "
          f"NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}")
    results = {
        "gemm": gemm_section(args.n),
        "kernel": kernel_section(args.n),
        "first_call": first_call_section(),
        "training_step": training_step_section(),
    }
    print(f"numba threading layer used: {numba.threading_layer()}")
    for section, rows in results.items():
        print(f"\n== {section}")
        for r in rows:
            extra = "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items() if k != "what")
            print(f"  {r['what']}: {extra}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
