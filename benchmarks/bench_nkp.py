"""NKP of a 4096×4096 float32 matrix (64×64 ⊗ 64×64, rank 8) against svds.

The matrix has a decaying Kronecker spectrum: R(W) = Σ_i σ_i u_i v_i^T with
σ_i = 0.7^i for 64 components plus a small dense tail. Reported, all in one process:
* time of ``sk.nkp(W, (64, 64), rank=8)`` (randomized solver) against
  ``scipy.sparse.linalg.svds(R(W), k=8)`` on the same rearranged matrix;
* the error of both against the optimal error sqrt(Σ_{i>8} σ_i²) of the exact spectrum;
* the share of nkp's time spent in the rearrangement.

Run: ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_nkp.py``.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import scipy.sparse.linalg

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import blas_report, median_time

import sekron as sk
from sekron.svd import truncated_svd


def make_matrix(
    rng: np.random.Generator, n_comp: int = 64, tail: float = 1e-4
) -> tuple[np.ndarray, float]:
    """W (4096×4096 float32) and the optimal rank-8 error of its rearrangement."""
    m = 4096
    U, _ = np.linalg.qr(rng.standard_normal((m, n_comp)))
    V, _ = np.linalg.qr(rng.standard_normal((m, n_comp)))
    s = 0.7 ** np.arange(n_comp)
    noise = tail * rng.standard_normal((m, m)) / math.sqrt(m)
    R = (U * s) @ V.T + noise
    R32 = R.astype(np.float32)
    # the exact spectrum is too costly for a 4096² SVD here; bound it with the top 64
    # singular values of R (ARPACK to full precision) and the residual energy
    _, sv, _ = scipy.sparse.linalg.svds(R32.astype(np.float64), k=64, tol=0)
    sv = np.sort(sv)[::-1]
    total = float(np.sum(R32.astype(np.float64) ** 2))
    opt = math.sqrt(max(total - float(np.sum(sv[:8] ** 2)), 0.0))
    W = sk.unrearrange(R32, [(64, 64), (64, 64)])
    return np.ascontiguousarray(W), opt


def main() -> None:
    print(blas_report())
    rng = np.random.default_rng(0)
    W, opt = make_matrix(rng)
    shapes = [(64, 64), (64, 64)]

    def run_nkp() -> sk.SeKronTensor:
        return sk.nkp(W, (64, 64), rank=8, random_state=0)

    def run_rearrange() -> np.ndarray:
        return np.ascontiguousarray(sk.rearrange(W, shapes))

    R = run_rearrange().reshape(4096, 4096)

    def run_svd() -> tuple:
        return truncated_svd(R, 8, method="randomized", random_state=0)

    def run_svds() -> tuple:
        return scipy.sparse.linalg.svds(R, k=8, random_state=0)

    t_nkp = median_time(run_nkp, repeat=5)
    t_rearr = median_time(run_rearrange, repeat=5)
    t_svd = median_time(run_svd, repeat=5)
    t_svds = median_time(run_svds, repeat=3)
    fit = run_nkp()
    err_nkp = float(np.linalg.norm((W - fit.to_dense()).astype(np.float64)))
    _, s_svds, _ = run_svds()
    err_svds = math.sqrt(
        max(
            float(np.sum(R.astype(np.float64) ** 2))
            - float(np.sum(s_svds.astype(np.float64) ** 2)),
            0,
        )
    )
    print(
        f"nkp (randomized, rank 8):  {t_nkp * 1e3:8.1f} ms   error {err_nkp:.6e} (certificate {fit.error_bound:.6e})"
    )
    print(
        f"  of which rearrangement:  {t_rearr * 1e3:8.1f} ms   ({100 * t_rearr / t_svd:.1f}% of the SVD it feeds)"
    )
    print(f"  randomized SVD alone:    {t_svd * 1e3:8.1f} ms")
    print(f"svds (ARPACK, k=8):        {t_svds * 1e3:8.1f} ms   error {err_svds:.6e}")
    print(f"optimal error:             {opt:.6e}")
    print(f"time ratio nkp / svds:     {t_nkp / t_svds:.3f}  (target <= 0.25)")
    print(f"error excess over optimal: {100 * (err_nkp / opt - 1):+.3f}%  (target <= 1%)")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.1f} s")
