"""sk.sekron on the TT-mirroring structure against tensorly's tensor_train (TT-SVD).

Same tensor, same nominal ranks, same process. For each case the script reports the
median time of both, their ratio (sekron / tensor_train; target <= 1), both relative
errors and both parameter counts. Each tensor is a TT of the nominal rank plus a 10% TT of the same
rank and 0.1% noise, so the truncation matters.

What to expect (see ``sekron.formats.tt_structure``): sekron's error is never above
TT-SVD's at the same ranks (branch-wise SVDs are a relaxation of TT-SVD's shared one),
but it stores factor k ``r_1 ... r_k`` times, so it has more parameters.

Run: ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_tt.py``.
"""

from __future__ import annotations

import sys
from functools import partial

import numpy as np
import tensorly as tl
from tensorly.decomposition import tensor_train

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import blas_report, median_time

import sekron as sk
from sekron.formats import tt_structure


def make_tensor(shape: tuple[int, ...], rank: int, dtype: type, seed: int = 0) -> np.ndarray:
    """A TT of the benchmark's rank, plus a 10% TT of the same rank, plus 0.1% noise."""
    rng = np.random.default_rng(seed)
    ranks = [1] + [rank] * (len(shape) - 1) + [1]

    def random_tt() -> np.ndarray:
        cores = [rng.standard_normal((ranks[k], n, ranks[k + 1])) for k, n in enumerate(shape)]
        T = tl.tt_to_tensor(cores)
        return T / np.linalg.norm(T)

    W = random_tt() + 0.1 * random_tt()
    W = W + 1e-3 / np.sqrt(W.size) * rng.standard_normal(shape)
    return W.astype(dtype)


def rel(W: np.ndarray, approx: np.ndarray) -> float:
    W64 = W.astype(np.float64)
    return float(
        np.linalg.norm((W64 - approx.astype(np.float64)).ravel()) / np.linalg.norm(W64.ravel())
    )


def tt_params(tt: tl.tt_tensor.TTTensor) -> int:
    return int(sum(c.size for c in tt.factors))


def main() -> None:
    print(blas_report())
    cases = [
        ((32, 32, 32, 32), 4, np.float64),
        ((32, 32, 32, 32), 8, np.float64),
        ((32, 32, 32, 32), 16, np.float64),
        ((32, 32, 32, 32), 8, np.float32),
        ((8,) * 6, 4, np.float64),
        ((64, 64, 64), 16, np.float32),
    ]
    header = "| shape | dtype | ranks | sekron s | tensor_train s | ratio | sekron err | TT-SVD err | sekron params | TT params |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for shape, r, dtype in cases:
        W = make_tensor(shape, r, dtype)
        ranks = [r] * (len(shape) - 1)
        structure = tt_structure(shape, ranks)
        t_sk = median_time(partial(sk.sekron, W, structure), repeat=3)
        t_tt = median_time(partial(tensor_train, W, [1, *ranks, 1]), repeat=3)
        ours = sk.sekron(W, structure)
        tt = tensor_train(W, [1, *ranks, 1])
        e_sk, e_tt = rel(W, ours.to_dense()), rel(W, tl.tt_to_tensor(tt))
        print(
            f"| {shape} | {np.dtype(dtype).name} | {r} | {t_sk:.4f} | {t_tt:.4f} | {t_sk / t_tt:.2f} | "
            f"{e_sk:.4e} | {e_tt:.4e} | {structure.n_params} | {tt_params(tt)} |"
        )


if __name__ == "__main__":
    main()
