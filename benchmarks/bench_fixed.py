"""Benchmarks of sekron.fixed against numpy float32 in the same process.

Run (benchmarks only) with the machine's OpenBLAS tuning variables unset:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_fixed.py

Every timed function is called once before timing (JIT warm-up); results are ratios
against a baseline measured in the same process; nothing asserts a time.
Targets (issue 6): exact int8 GEMM >= 0.8x float32 matmul throughput at 1024^3, exact
16-bit GEMM >= 0.4x, the numba kernel alone >= 0.3x, one integer training step of the
digits MLP at 16 bits <= 4x a float32 step. Every section times its variants in
interleaved rounds (one call of each per round) and reports medians, so a load change on
the shared machine hits the baseline and the variants alike. The first-call section runs two fresh
processes sharing an initially empty ``NUMBA_CACHE_DIR``: cold (compiles), then warm.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import interleaved

ROOT = Path(__file__).resolve().parents[1]


def gemm_section(n: int, rounds: int) -> list[dict]:
    """Exact integer GEMMs (public ``matmul``, every method) and the bare numba kernels on
    the same operands, against numpy float32 sgemm, all in the same interleaved rounds."""
    from sekron.fixed import FixedTensor, _kernels, matmul, plan_gemm

    rng = np.random.default_rng(0)
    af = rng.normal(size=(n, n)).astype(np.float32)
    bf = rng.normal(size=(n, n)).astype(np.float32)
    fns: dict = {"sgemm": lambda: af @ bf}
    meta: dict = {}
    ops = {}
    for bits in (8, 12, 16):
        m = 2 ** (bits - 1) - 1
        dt = np.int8 if bits <= 8 else np.int16
        ops[bits] = (
            FixedTensor(rng.integers(-m, m + 1, size=(n, n)).astype(dt), 0, bits),
            FixedTensor(rng.integers(-m, m + 1, size=(n, n)).astype(dt), 0, bits),
        )
    for bits, method in ((8, "auto"), (8, "blas"), (12, "auto"), (16, "auto"), (16, "blas")):
        a, b = ops[bits]
        key = f"exact {bits}-bit GEMM {n}^3 via matmul, method={method}"
        fns[key] = lambda a=a, b=b, method=method: matmul(a, b, method=method)
        meta[key] = plan_gemm(n, bits, method=method, macs=n**3).path
    for bits, kernel, acc in (
        (8, _kernels.gemm_acc32, np.int32),
        (16, _kernels.gemm_acc64, np.int64),
    ):
        a, b = ops[bits]
        bt = np.ascontiguousarray(b.mantissa.T)
        out = np.empty((n, n), acc)
        key = f"bare kernel {kernel.py_func.__name__} on the {bits}-bit operands (b pre-transposed)"
        fns[key] = lambda a=a, bt=bt, out=out, kernel=kernel: kernel(a.mantissa, bt, out)
        meta[key] = "kernel only"
    b16 = ops[16][1].mantissa
    key = f"transposed copy of a {n}x{n} int16 operand (what matmul adds to the kernel)"
    fns[key] = lambda: np.ascontiguousarray(b16.T)
    meta[key] = "copy"
    med = interleaved(fns, rounds)
    t_f32 = med.pop("sgemm")
    rows = [
        {
            "what": k,
            "path": meta[k],
            "median_s": t,
            "ratio_vs_float32": t_f32 / t,
            "gop_s": 2 * n**3 / t / 1e9,
        }
        for k, t in med.items()
    ]
    rows.append(
        {
            "what": f"numpy float32 matmul {n}^3",
            "path": "sgemm",
            "median_s": t_f32,
            "ratio_vs_float32": 1.0,
            "gop_s": 2 * n**3 / t_f32 / 1e9,
        }
    )
    return rows


# import, then one full integer training step (forward, backward, SGD) of a 64-64-10 MLP
_FIRST_CALL = r"""
import time
t0 = time.perf_counter()
import numpy as np
from sekron.fixed import linear, linear_backward, linear_relu, sgd_step, split_seed, to_fixed
t1 = time.perf_counter()
rng = np.random.default_rng(0)
x = rng.random((32, 64), dtype=np.float32)
p = {"W1": rng.normal(size=(64, 64)).astype(np.float32), "b1": np.zeros(64, np.float32),
     "W2": rng.normal(size=(10, 64)).astype(np.float32), "b2": np.zeros(10, np.float32)}
s = split_seed(0, 13)
q = {k: to_fixed(v, 16, seed=s[i]) for i, (k, v) in enumerate(p.items())}
xq = to_fixed(x, 16, seed=s[4])
h, mask = linear_relu(xq, q["W1"], q["b1"], 16, seed=s[5])
y = linear(h, q["W2"], q["b2"], seed=s[6]).to_float()
gh, dW2, db2 = linear_backward(h, q["W2"], (y / 32).astype(np.float32), 16, seed=s[7], dx_bits=16, dx_mask=mask)
_, dW1, db1 = linear_backward(xq, q["W1"], gh, 16, seed=s[8], need_dx=False)
for i, (k, g) in enumerate({"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}.items()):
    sgd_step(p[k], g, None, lr=0.05, momentum=0.9, weight_decay=1e-4, bits=16, seed=s[9 + i])
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def first_call_section() -> list[dict]:
    """Import + first training step in fresh processes: with an empty numba cache (cold:
    every kernel compiles), then again with the cache the first process filled (warm)."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory(prefix="sekron-numba-cache-") as cache:
        env = dict(
            os.environ,
            NUMBA_CACHE_DIR=cache,
            PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        )
        for run in (
            "cold numba cache (compiles every kernel)",
            "warm numba cache (second process)",
        ):
            out = subprocess.run(
                [sys.executable, "-c", _FIRST_CALL],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            t_imp, t_step = (float(v) for v in out.stdout.split()[-2:])
            rows.append(
                {
                    "what": f"fresh process, {run}: import sekron.fixed, then first MLP step",
                    "import_s": t_imp,
                    "first_step_s": t_step,
                    "seconds": t_imp + t_step,
                }
            )
    return rows


def training_step_section(rounds: int) -> list[dict]:
    """One training step of the example's digits MLP (64-64-10, ReLU, softmax cross-entropy,
    batch 32, SGD lr 0.05, momentum 0.9, weight decay 1e-4): float32 numpy against the
    integer step ``examples/integer_training.py`` now runs (``Net.step_int``: one Generator
    draw split by ``split_seed``, ``linear_relu``, fused ``linear_backward``), and against
    the previous example step (unfused public ops, a Generator seed per call), at 16 and
    8 bits. Interleaved rounds; medians."""
    sys.path.insert(0, str(ROOT / "examples"))
    from integer_training import Net, softmax_grad  # type: ignore[import-not-found]
    from sklearn.datasets import load_digits

    from sekron.fixed import FixedTensor, linear, linear_backward, requantize, sgd_step, to_fixed

    d = load_digits()
    x = (d.data[:32] / 16.0).astype(np.float32)
    y = d.target[:32]

    def float_step(net):
        _, gr = net.grads_float(x, y)
        for k, g in gr.items():
            net.vel[k] = 0.9 * net.vel[k] + g + 1e-4 * net.p[k]
            net.p[k] = (net.p[k] - 0.05 * net.vel[k]).astype(np.float32)

    def previous_step(net, bits, sr):  # the example's step before the fused helpers
        p = net.p
        q = {k: to_fixed(v, bits, seed=sr) for k, v in p.items()}
        xq = to_fixed(x, bits, seed=sr)
        a = requantize(linear(xq, q["W1"], q["b1"], seed=sr), bits, seed=sr)
        mask = a.mantissa > 0
        h = FixedTensor(np.where(mask, a.mantissa, 0).astype(a.mantissa.dtype), a.exponent, a.bits)
        g = softmax_grad(linear(h, q["W2"], q["b2"], seed=sr).to_float(), y)
        dh, dW2, db2 = linear_backward(h, q["W2"], g, bits, seed=sr)
        r = requantize(dh, bits, seed=sr)
        gh = FixedTensor(np.where(mask, r.mantissa, 0).astype(r.mantissa.dtype), r.exponent, r.bits)
        _, dW1, db1 = linear_backward(xq, q["W1"], gh, bits, seed=sr)
        for k, gk in {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}.items():
            p[k], net.state[k] = sgd_step(
                p[k], gk, net.state[k], lr=0.05, momentum=0.9, weight_decay=1e-4, bits=bits, seed=sr
            )

    def bind(step, *args):
        return lambda: step(*args)

    fns: dict = {"float32": bind(float_step, Net("mlp", np.random.default_rng(0)))}
    for bits in (16, 8):
        net = Net("mlp", np.random.default_rng(0))
        fns[f"int{bits}"] = bind(net.step_int, x, y, bits, np.random.default_rng(1))
        fns[f"int{bits}-previous"] = bind(
            previous_step, Net("mlp", np.random.default_rng(0)), bits, np.random.default_rng(1)
        )
    for fn in fns.values():  # more warm-up than interleaved()'s single call
        for _ in range(5):
            fn()
    med = interleaved(fns, rounds)
    t_f = med["float32"]
    rows = [{"what": "digits MLP step 64-64-10, batch 32, float32 numpy", "median_s": t_f}]
    for bits in (16, 8):
        for suffix, label in (
            ("", "integer, fused step of the example now"),
            ("-previous", "integer, previous example step (unfused ops)"),
        ):
            t_i = med[f"int{bits}{suffix}"]
            rows.append(
                {
                    "what": f"digits MLP step 64-64-10, batch 32, {bits}-bit {label}",
                    "median_s": t_i,
                    "ratio_vs_float32": t_i / t_f,
                }
            )
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description="sekron.fixed benchmarks")
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=300, help="training steps timed per variant")
    ap.add_argument("--gemm-rounds", type=int, default=9, help="interleaved GEMM rounds")
    ap.add_argument(
        "--skip-gemm", action="store_true", help="only the step and first-call sections"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    import numba
    from threadpoolctl import threadpool_info

    print("threadpoolctl:", json.dumps(threadpool_info(), indent=1))
    print(
        f"numba {numba.__version__}, threading layer default={numba.config.THREADING_LAYER}, "
        f"NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}"
    )
    print(f"load average before (1, 5, 15 min): {os.getloadavg()}")
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    results: dict = {}
    if not args.skip_gemm:
        results["gemm"] = gemm_section(args.n, args.gemm_rounds)
    results["training_step"] = training_step_section(args.repeat)
    results["first_call"] = first_call_section()
    print(f"load average after (1, 5, 15 min): {os.getloadavg()}")
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    try:
        print(f"numba threading layer used: {numba.threading_layer()}")
    except ValueError:  # no parallel kernel ran
        print("numba threading layer used: none (no parallel kernel ran)")
    for section, rows in results.items():
        print(f"\n== {section}")
        for r in rows:
            extra = "  ".join(
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in r.items()
                if k != "what"
            )
            print(f"  {r['what']}: {extra}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
