"""(A ⊗ B) @ X with 64×64 float32 factors and X of shape 4096×256.

Compares sekron.matmul with (1) building the dense Kronecker product then multiplying,
(2) pykronecker (if installed), (3) the two GEMMs of the reshape trick on their own.
Every function is called once before timing; times are the minimum over repeats (the machine is shared, so the minimum is the least noisy), reported as
ratios against baselines measured in this process. Nothing here asserts a time.

Run: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_matmul.py [--threads N]
"""

from __future__ import annotations

import time

import numpy as np

import sekron as sk


def timeit(fn, repeat=15):
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def threads_summary():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    return "; ".join(
        f"{i.get('internal_api')} {i.get('version')} threads={i.get('num_threads')}"
        for i in threadpool_info()
    )


def main():
    print("threadpools:", threads_summary())
    rng = np.random.default_rng(0)
    A = rng.normal(size=(64, 64)).astype(np.float32)
    B = rng.normal(size=(64, 64)).astype(np.float32)
    X = rng.normal(size=(4096, 256)).astype(np.float32)
    op = sk.SeKronTensor([A[None], B[None]])

    def dense():
        return np.kron(A, B) @ X

    def structured():
        return op @ X

    def two_gemms():
        T = A @ X.reshape(64, 64 * 256)
        return np.matmul(B, T.reshape(64, 64, 256))

    ref = dense()
    got = structured()
    err = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
    print(f"max relative difference sekron vs dense: {err:.2e}")
    c = op.structure.macs_matmul(256)
    print(
        f"MACs: dense {c['dense']:,}  sekron {c['sekron']:,}  ratio {c['dense'] / c['sekron']:.1f}"
    )

    t_sk = timeit(structured)
    t_dense = timeit(dense, repeat=5)
    t_gemm = timeit(two_gemms)
    print(f"sekron.matmul         {t_sk * 1e3:8.2f} ms")
    print(
        f"dense kron + matmul   {t_dense * 1e3:8.2f} ms   speed-up {t_dense / t_sk:6.1f}x (target >= 20x)"
    )
    print(
        f"two GEMMs alone       {t_gemm * 1e3:8.2f} ms   sekron / GEMMs {t_sk / t_gemm:6.2f} (target <= 1.5)"
    )
    try:
        from pykronecker import KroneckerProduct
    except ImportError:
        print("pykronecker           not installed (pip install pykronecker)")
        return
    kp = KroneckerProduct([A, B])

    def pykron():
        return kp @ X

    pk = pykron()
    print(
        f"max relative difference pykronecker vs dense: {float(np.max(np.abs(pk - ref)) / np.max(np.abs(ref))):.2e}"
    )
    t_pk = timeit(pykron)
    print(
        f"pykronecker           {t_pk * 1e3:8.2f} ms   speed-up {t_pk / t_sk:6.1f}x (target >= 3x)"
    )


if __name__ == "__main__":
    import sys

    # --threads N: cap the BLAS threads (steadier numbers on a shared machine)
    if "--threads" in sys.argv:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(int(sys.argv[sys.argv.index("--threads") + 1])):
            main()
    else:
        main()
