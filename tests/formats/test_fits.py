"""SeKron -> CP (CP-ALS) and SeKron -> Tucker (HOSVD): fits that report their error."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import tensorly as tl

import sekron as sk
from sekron.formats import from_cp, from_tucker, to_cp, to_tucker


def _rel(W, approx) -> float:
    return float(
        np.linalg.norm((W.astype(np.float64) - approx).ravel()) / np.linalg.norm(W.ravel())
    )


def _tol(dtype, size) -> float:
    return 32 * np.sqrt(size) * float(np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_to_tucker_full_ranks_is_exact(dtype):
    rng = np.random.default_rng(0)
    t = sk.sekron(
        rng.standard_normal((5, 4, 6)).astype(dtype),
        [(5, 1, 1), (1, 4, 1), (1, 1, 6)],
        ranks=(3, 2),
    )
    tk, err = to_tucker(t)
    assert tk.rank == (5, 4, 6)
    assert tk.core.dtype == dtype and all(U.dtype == dtype for U in tk.factors)
    assert err <= _tol(dtype, 120)
    assert abs(err - _rel(t.to_dense(), tl.tucker_to_tensor(tk))) <= _tol(dtype, 120)


def test_to_tucker_error_is_reported_and_monotone_in_ranks():
    rng = np.random.default_rng(1)
    t = sk.SeKronTensor([rng.standard_normal((3, 2, 4)), rng.standard_normal((3, 5, 3))])
    W = t.to_dense()
    errors = []
    for r in range(1, 7):
        ranks = (min(r, 10), min(r, 12))
        tk, err = to_tucker(t, ranks)
        assert abs(err - _rel(W, tl.tucker_to_tensor(tk))) <= 1e-12
        for U in tk.factors:  # orthonormal factors
            np.testing.assert_allclose(U.T @ U, np.eye(U.shape[1]), atol=_tol(np.float64, U.size))
        errors.append(err)
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(errors))


def test_to_tucker_recovers_a_tucker_tensor():
    tk = tl.random.random_tucker((6, 5, 4), rank=(2, 3, 2), random_state=0)
    t = from_tucker(tk)
    _fit, err = to_tucker(t, (2, 3, 2))
    assert err <= _tol(np.float64, 120)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_to_cp_reads_a_cp_structure_exactly(dtype):
    cp = tl.random.random_cp((5, 4, 3), rank=3, random_state=0)
    cp = (cp.weights.astype(dtype), [f.astype(dtype) for f in cp.factors])
    t = from_cp(cp)
    fit, err = to_cp(t, 3)
    assert fit.weights.dtype == dtype and all(f.dtype == dtype for f in fit.factors)
    assert err <= _tol(dtype, 60)
    assert np.array_equal(fit.factors[1], cp[1][1])


def test_to_cp_fit_is_deterministic_and_reports_its_error():
    rng = np.random.default_rng(2)
    t = sk.sekron(rng.standard_normal((6, 5, 4)), [(6, 1, 1), (1, 5, 1), (1, 1, 4)], ranks=(3, 2))
    fit1, err1 = to_cp(t, 4)
    fit2, err2 = to_cp(t, 4)
    assert err1 == err2
    assert all(np.array_equal(a, b) for a, b in zip(fit1.factors, fit2.factors, strict=True))
    W = t.to_dense()
    assert abs(err1 - _rel(W, tl.cp_to_tensor(fit1))) <= 1e-12
    assert 0 <= err1 < 1
    # a rank-R CP of a CP-rank-R tensor that SeKron holds in another structure is found
    cp = tl.random.random_cp((6, 5, 4), rank=2, random_state=3)
    s = sk.sekron(tl.cp_to_tensor(cp), [(6, 1, 1), (1, 5, 1), (1, 1, 4)])
    _, err = to_cp(s, 2, n_iter_max=500, tol=1e-14)
    assert err < 1e-6


def test_to_cp_float32_keeps_dtype():
    rng = np.random.default_rng(4)
    t = sk.SeKronTensor(
        [
            rng.standard_normal((2, 3, 2)).astype(np.float32),
            rng.standard_normal((2, 2, 3)).astype(np.float32),
        ]
    )
    fit, err = to_cp(t, 3)
    assert fit.weights.dtype == np.float32 and all(f.dtype == np.float32 for f in fit.factors)
    assert 0 <= err < 1
