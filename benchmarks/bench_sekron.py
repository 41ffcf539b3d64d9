"""SeKron with 3 factors on a 256×256×3×3 tensor against NKP (GKPD) at equal parameters.

Two tensors: a Gaussian one (no structure: every method is poor, the honest worst case)
and a structured one (a 3-factor SeKron tensor with decaying terms plus 1 % noise).
For each, a 3-factor structure at a few ranks is fitted with ``sk.sekron`` (with and
without ALS refinement), and ``sk.nkp`` is fitted with the rank whose parameter count
is closest from below. Times and relative errors are printed.

Run: ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_sekron.py``.
"""

from __future__ import annotations

import sys
import time

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import blas_report, median_time

import sekron as sk

SHAPE = (256, 256, 3, 3)
SHAPES3 = [(4, 4, 3, 1), (8, 8, 1, 3), (8, 8, 1, 1)]
NKP_A = (32, 32, 3, 1)  # GKPD split with the same spatial factorization (3×1 ⊗ 1×3)


def structured_tensor(rng: np.random.Generator) -> np.ndarray:
    ranks = (4, 8)
    st = sk.Structure(SHAPES3, ranks)
    decay = [0.6 ** np.arange(r) for r in ranks]
    factors = []
    for k, shape in enumerate(st.factor_shapes):
        f = rng.standard_normal(shape)
        if k < 2:
            f = f * decay[k].reshape((1,) * k + (-1,) + (1,) * (f.ndim - k - 1))
        factors.append(f)
    W = sk.SeKronTensor(factors).to_dense()
    W += 0.01 * np.linalg.norm(W) / np.sqrt(W.size) * rng.standard_normal(W.shape)
    return W.astype(np.float32)


def nkp_rank_for(n_params: int) -> int:
    size_a = int(np.prod(NKP_A))
    size_b = int(np.prod(SHAPE)) // size_a
    return max(1, n_params // (size_a + size_b))


def compare(name: str, W: np.ndarray) -> None:
    print(f"\n{name}: shape {W.shape}, ||W|| = {np.linalg.norm(W):.3g}")
    print(f"{'method':<44}{'params':>9}{'ratio':>8}{'rel. error':>12}{'time':>10}")
    for ranks in [(2, 4), (4, 8), (8, 8)]:
        st = sk.Structure(SHAPES3, ranks)
        t_fit = median_time(lambda st=st: sk.sekron(W, st), repeat=3)
        fit = sk.sekron(W, st)
        t_ref = median_time(lambda st=st: sk.sekron(W, st, refine=5), repeat=1, warmup=0)
        ref = sk.sekron(W, st, refine=5)
        r = nkp_rank_for(st.n_params)
        t_nkp = median_time(lambda r=r: sk.nkp(W, NKP_A, rank=r), repeat=3)
        g = sk.nkp(W, NKP_A, rank=r)
        for label, obj, t in [
            (f"sekron {st}", fit, t_fit),
            ("  + refine=5", ref, t_ref),
            (f"nkp {NKP_A} rank {r}", g, t_nkp),
        ]:
            print(
                f"{label:<44}{obj.n_params:>9,}{obj.compression_ratio:>7.1f}×"
                f"{obj.relative_error_bound:>12.4f}{t * 1e3:>8.1f}ms"
            )


def main() -> None:
    print(blas_report())
    rng = np.random.default_rng(0)
    compare("Gaussian tensor", rng.standard_normal(SHAPE).astype(np.float32))
    compare("structured tensor (3-factor SeKron, ranks (4, 8), 1% noise)", structured_tensor(rng))


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")
