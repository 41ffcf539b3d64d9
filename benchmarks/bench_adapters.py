"""LoKr -> LoRA of a 4096×4096 update at rank 64, against a truncated SVD of the dense update.

The LoKr update is ``w1 ⊗ w2`` with ``w1`` and ``w2`` both 64×64 (float64, Gaussian).
Reported, in one process after a warm-up call each:

* ``sekron.torch.adapters.lokr_to_lora(lokr, 64)``: two 64×64 SVDs and 64 Kronecker
  products of vectors, never the 4096×4096 update;
* the baseline: form ``ΔW`` and take its rank-64 truncated SVD with
  ``sekron.svd.truncated_svd`` (the randomized solver ``method="auto"`` picks at this size);
* the speed ratio, and both errors against the exact optimum (the tail of the products
  of the two spectra, which the dense baseline can only approach).

Run: ``python benchmarks/bench_adapters.py``. It asserts nothing about time.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import blas_report, median_time

from sekron.svd import truncated_svd
from sekron.torch.adapters import LoKr, lokr_to_lora


def main() -> None:
    rng = np.random.default_rng(0)
    lokr = LoKr(rng.standard_normal((64, 64)), w2=rng.standard_normal((64, 64)))
    rank = 64

    def ours():
        return lokr_to_lora(lokr, rank)

    def dense():
        D = lokr.delta()
        return D, truncated_svd(D, rank, random_state=0)

    t_ours = median_time(ours, repeat=5, warmup=1)
    t_dense = median_time(dense, repeat=3, warmup=1)
    lora, err = ours()
    D, (U, s, Vt) = dense()
    s1 = np.linalg.svd(lokr.w1, compute_uv=False)
    s2 = np.linalg.svd(lokr.w2_matrix(), compute_uv=False)
    prods = np.sort(np.outer(s1, s2).ravel())[::-1]
    optimum = math.sqrt(float(np.sum(prods[rank:] ** 2)))
    err_dense = float(np.linalg.norm(D - (U * s) @ Vt))
    err_ours = float(np.linalg.norm(D - lora.delta()))
    print(blas_report())
    print(f"load: {os.getloadavg()}")
    print(f"update 4096×4096 = 64×64 ⊗ 64×64, LoRA rank {rank}")
    print(f"lokr_to_lora        {t_ours * 1e3:9.2f} ms   error {err_ours:.6e} (reported {err:.6e})")
    print(f"dense truncated SVD {t_dense * 1e3:9.2f} ms   error {err_dense:.6e}")
    print(f"optimum (Eckart–Young)            error {optimum:.6e}")
    print(f"speed ratio dense / lokr_to_lora: {t_dense / t_ours:.1f}×")


if __name__ == "__main__":
    main()
