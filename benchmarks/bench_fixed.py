"""Benchmarks of sekron.fixed against numpy float32 in the same process.

Run (benchmarks only) with the machine's OpenBLAS tuning variables unset:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_fixed.py

Every timed function is called once before timing (JIT warm-up); results are ratios
against a baseline measured in the same process; nothing asserts a time.
Targets (issue 6): exact int8 GEMM >= 0.8x float32 matmul throughput at 1024^3, exact
16-bit GEMM >= 0.4x, the numba kernel alone >= 0.3x, one integer training step of the
digits MLP at 16 bits <= 4x a float32 step. The first-call section runs two fresh
processes sharing an initially empty ``NUMBA_CACHE_DIR``: cold (compiles), then warm.
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


# import, then one full integer training step (forward, backward, SGD) of a 64-64-10 MLP
_FIRST_CALL = r"""
import time
t0 = time.perf_counter()
import numpy as np
from sekron.fixed import linear, linear_backward, requantize, sgd_step, to_fixed
t1 = time.perf_counter()
rng = np.random.default_rng(0)
x = rng.random((32, 64), dtype=np.float32)
p = {"W1": rng.normal(size=(64, 64)).astype(np.float32), "b1": np.zeros(64, np.float32),
     "W2": rng.normal(size=(10, 64)).astype(np.float32), "b2": np.zeros(10, np.float32)}
q = {k: to_fixed(v, 16, seed=1) for k, v in p.items()}
xq = to_fixed(x, 16, seed=2)
h = requantize(linear(xq, q["W1"], q["b1"], seed=3), 16, seed=4)
y = linear(h, q["W2"], q["b2"], seed=5).to_float()
dh, dW2, db2 = linear_backward(h, q["W2"], y / 32, 16, seed=6)
_, dW1, db1 = linear_backward(xq, q["W1"], requantize(dh, 16, seed=7), 16, seed=8)
for k, g in {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}.items():
    sgd_step(p[k], g, None, lr=0.05, momentum=0.9, weight_decay=1e-4, bits=16, seed=9)
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def first_call_section() -> list[dict]:
    """Import + first training step in fresh processes: with an empty numba cache (cold:
    every kernel compiles), then again with the cache the first process filled (warm)."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory(prefix="sekron-numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache,
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        for run in ("cold numba cache (compiles every kernel)", "warm numba cache (second process)"):
            out = subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env, capture_output=True,
                                 text=True, check=True)
            t_imp, t_step = (float(v) for v in out.stdout.split()[-2:])
            rows.append({"what": f"fresh process, {run}: import sekron.fixed, then first MLP step",
                         "import_s": t_imp, "first_step_s": t_step, "seconds": t_imp + t_step})
    return rows


def training_step_section(repeat: int) -> list[dict]:
    """One training step of the example's digits MLP (64-64-10, ReLU, softmax cross-entropy,
    batch 32, SGD lr 0.05, momentum 0.9, weight decay 1e-4): float32 numpy vs the integer
    step of ``examples/integer_training.py`` (public sekron.fixed ops, 16 and 8 bits).
    Steps alternate float/integer in rounds so load changes hit both; medians reported."""
    sys.path.insert(0, str(ROOT / "examples"))
    from integer_training import Net  # type: ignore[import-not-found]
    from sklearn.datasets import load_digits

    from sekron.fixed import sgd_step

    d = load_digits()
    x = (d.data[:32] / 16.0).astype(np.float32)
    y = d.target[:32]

    def float_step(net):
        _, gr = net.grads_float(x, y)
        for k, g in gr.items():
            net.vel[k] = 0.9 * net.vel[k] + g + 1e-4 * net.p[k]
            net.p[k] = (net.p[k] - 0.05 * net.vel[k]).astype(np.float32)

    def int_step(net, bits, sr):
        _, gr = net.grads_int(x, y, bits, sr)
        for k, g in gr.items():
            net.p[k], net.state[k] = sgd_step(net.p[k], g, net.state[k], lr=0.05, momentum=0.9,
                                              weight_decay=1e-4, bits=bits, seed=sr)

    nets = {"float32": Net("mlp", np.random.default_rng(0)),
            16: Net("mlp", np.random.default_rng(0)), 8: Net("mlp", np.random.default_rng(0))}
    srs = {16: np.random.default_rng(1), 8: np.random.default_rng(1)}
    steps = {"float32": lambda: float_step(nets["float32"]),
             16: lambda: int_step(nets[16], 16, srs[16]), 8: lambda: int_step(nets[8], 8, srs[8])}
    times: dict = {k: [] for k in steps}
    for fn in steps.values():  # warm-up (numba compilation or cache load)
        for _ in range(5):
            fn()
    for _ in range(repeat):
        for k, fn in steps.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    t_f = float(np.median(times["float32"]))
    rows = [{"what": "digits MLP step 64-64-10, batch 32, float32 numpy", "median_s": t_f}]
    for bits in (16, 8):
        t_i = float(np.median(times[bits]))
        ratio = np.array(times[bits]) / np.array(times["float32"])
        rows.append({"what": f"digits MLP step 64-64-10, batch 32, {bits}-bit integer", "median_s": t_i,
                     "ratio_of_medians": t_i / t_f, "median_of_ratios": float(np.median(ratio))})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description="sekron.fixed benchmarks")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=300, help="training steps timed per variant")
    ap.add_argument("--skip-gemm", action="store_true", help="only the step and first-call sections")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    import numba
    from threadpoolctl import threadpool_info

    print("threadpoolctl:", json.dumps(threadpool_info(), indent=1))
    print(f"numba {numba.__version__}, threading layer default={numba.config.THREADING_LAYER}, "
          f"NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}")
    print(f"load average before (1, 5, 15 min): {os.getloadavg()}")
    results: dict = {}
    if not args.skip_gemm:
        results["gemm"] = gemm_section(args.n)
        results["kernel"] = kernel_section(args.n)
    results["training_step"] = training_step_section(args.repeat)
    results["first_call"] = first_call_section()
    print(f"load average after (1, 5, 15 min): {os.getloadavg()}")
    try:
        print(f"numba threading layer used: {numba.threading_layer()}")
    except ValueError:  # no parallel kernel ran
        print("numba threading layer used: none (no parallel kernel ran)")
    for section, rows in results.items():
        print(f"\n== {section}")
        for r in rows:
            extra = "  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items() if k != "what")
            print(f"  {r['what']}: {extra}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
