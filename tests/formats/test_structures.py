"""Structure helpers, and sk.sekron on the TT-mirroring structure against TT-SVD.

What holds exactly (see ``tt_structure``): level 1 of the SeKron recursion is TT-SVD's
first truncated SVD; later levels solve one SVD per branch instead of one shared SVD, so
each level's discarded energy is at most TT-SVD's and the total error is at most
TT-SVD's at the same ranks; for N = 2 both are the same truncated SVD.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorly as tl
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorly.decomposition import tensor_train

import sekron as sk
from sekron.formats import (
    cp_structure,
    from_cp,
    from_tr,
    from_tt,
    from_tucker,
    tr_structure,
    tt_structure,
    tucker_structure,
)


def _rel(W, approx) -> float:
    return float(np.linalg.norm((W - approx).ravel()) / np.linalg.norm(W.ravel()))


def test_structures_mirror_the_conversions():
    tt = tl.random.random_tt((4, 3, 5, 2), rank=(1, 2, 3, 2, 1), random_state=0)
    assert from_tt(tt).structure == tt_structure((4, 3, 5, 2), (1, 2, 3, 2, 1))
    assert tt_structure((4, 3, 5, 2), (2, 3, 2)) == tt_structure((4, 3, 5, 2), [1, 2, 3, 2, 1])
    tr = tl.random.random_tr((6, 3, 4), rank=(2, 3, 2, 2), random_state=0)
    assert from_tr(tr).structure == tr_structure((6, 3, 4), (2, 3, 2, 2))
    assert tr_structure((6, 3, 4), (2, 3, 2)) == tr_structure((6, 3, 4), (2, 3, 2, 2))
    cp = tl.random.random_cp((5, 4, 3), rank=3, random_state=0)
    assert from_cp(cp).structure == cp_structure((5, 4, 3), 3)
    assert cp_structure((5, 4, 3), 3).n_params == 3 * (5 + 4 + 3)
    tk = tl.random.random_tucker((5, 4, 3), rank=(2, 3, 2), random_state=0)
    assert from_tucker(tk).structure == tucker_structure((5, 4, 3), (2, 3, 2))
    assert tucker_structure((5, 4, 3), 2).ranks == (2, 2)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(2, 5), min_size=2, max_size=4),
    st.integers(0, 2**32 - 1),
    st.sampled_from([np.float32, np.float64]),
    st.data(),
)
def test_sekron_on_tt_structure_is_never_worse_than_tt_svd(dims, seed, dtype, data):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal(dims).astype(dtype)
    N = len(dims)
    ranks = [
        data.draw(st.integers(1, min(dims[k], math.prod(dims[k + 1 :])))) for k in range(N - 1)
    ]
    ours = sk.sekron(W, tt_structure(W.shape, ranks))
    err_sk = _rel(W.astype(np.float64), ours.to_dense().astype(np.float64))
    tt = tensor_train(W.astype(np.float64), [1, *ranks, 1])
    err_tt = _rel(W.astype(np.float64), tl.tt_to_tensor(tt))
    slack = 16 * W.size * np.finfo(dtype).eps
    assert err_sk <= err_tt + slack
    if N == 2:  # the same truncated SVD
        assert abs(err_sk - err_tt) <= slack
    # the certificate agrees with the measured error
    assert abs(ours.relative_error_bound - err_sk) <= slack


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sekron_recovers_a_tt_at_its_ranks(dtype):
    W = tl.random.random_tt((4, 5, 3, 4), rank=(1, 3, 3, 2, 1), full=True, random_state=0).astype(
        dtype
    )
    t = sk.sekron(W, tt_structure(W.shape, (3, 3, 2)))
    assert _rel(W.astype(np.float64), t.to_dense()) <= 64 * W.size**0.5 * np.finfo(dtype).eps
    assert t.dtype == dtype


def test_parameter_counts_differ_from_tt():
    st_ = tt_structure((8, 8, 8, 8), (4, 4, 4))
    tt_params = 8 * 4 + 4 * 8 * 4 + 4 * 8 * 4 + 4 * 8
    assert st_.instances == (4, 16, 64, 64)
    assert st_.n_params == 8 * (4 + 16 + 64 + 64) > tt_params
