"""Truncated SVD solvers: agreement, sign convention, determinism, argument checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sekron.errors import RankError
from sekron.svd import choose_method, truncated_svd

METHODS = ["full", "arpack", "randomized"]


def _known_spectrum(m, n, seed, dtype=np.float64, ratio=0.5):
    """A matrix with singular values 1, ratio, ratio², ... (well separated)."""
    rng = np.random.default_rng(seed)
    k = min(m, n)
    U, _ = np.linalg.qr(rng.standard_normal((m, k)))
    V, _ = np.linalg.qr(rng.standard_normal((n, k)))
    s = ratio ** np.arange(k)
    return ((U * s) @ V.T).astype(dtype), s


class _Operator:
    """Only products: what the randomized solver accepts for an implicit matrix."""

    def __init__(self, M):
        self._M, self.shape, self.dtype = M, M.shape, M.dtype

    def matmat(self, X):
        return self._M @ X

    def rmatmat(self, X):
        return self._M.T @ X

    def squared_norm(self):
        return float(np.sum(self._M.astype(np.float64) ** 2))


@settings(deadline=None)
@given(st.integers(4, 40), st.integers(4, 40), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_solvers_agree_on_well_separated_spectra(m, n, rank, seed):
    M, s_true = _known_spectrum(m, n, seed)
    eps = np.finfo(np.float64).eps
    tol = 100 * eps * max(m, n)
    # singular vectors are determined up to sign to within eps / gap, gap = 1/2 of σ_rank here
    vec_tol = tol / (s_true[rank - 1] - s_true[rank])
    ref_U, ref_s, ref_Vt = truncated_svd(M, rank, method="full")
    np.testing.assert_allclose(ref_s, s_true[:rank], rtol=0, atol=tol)
    # ARPACK converges to working precision; the randomized solver does with a fixed
    # number of power iterations (its error decays like (σ_{rank+p+1}/σ_rank)^(2q+1))
    for method, kwargs in (("arpack", {}), ("randomized", {"n_iter": 7})):
        U, s, Vt = truncated_svd(M, rank, method=method, random_state=seed, **kwargs)
        assert U.shape == (m, rank) and s.shape == (rank,) and Vt.shape == (rank, n)
        np.testing.assert_allclose(s, ref_s, rtol=0, atol=tol)
        np.testing.assert_allclose(U, ref_U, rtol=0, atol=vec_tol)
        np.testing.assert_allclose(Vt, ref_Vt, rtol=0, atol=vec_tol)


@settings(deadline=None)
@given(st.integers(4, 60), st.integers(4, 60), st.integers(1, 3), st.integers(0, 2**32 - 1))
def test_adaptive_randomized_solver_is_near_optimal(m, n, rank, seed):
    """The default (adaptive) iteration stops once the error has settled: near Eckart–Young."""
    M, s_true = _known_spectrum(m, n, seed, ratio=0.8)
    U, s, Vt = truncated_svd(M, rank, method="randomized", random_state=seed)
    eps = np.finfo(np.float64).eps
    optimal = float(np.sum(s_true[rank:] ** 2))
    got = float(np.sum((M - (U * s) @ Vt) ** 2))
    assert got <= optimal * (1 + 1e-2) + 100 * eps * max(m, n)
    np.testing.assert_allclose(U.T @ U, np.eye(rank), rtol=0, atol=100 * eps * m)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sign_convention_and_orthonormality(method, dtype):
    M, _ = _known_spectrum(30, 20, 1, dtype=dtype)
    U, s, Vt = truncated_svd(M, 4, method=method, random_state=0)
    eps = np.finfo(dtype).eps
    idx = np.argmax(np.abs(U), axis=0)
    assert np.all(U[idx, np.arange(4)] > 0)
    assert np.all(np.diff(s) <= 0)
    np.testing.assert_allclose(U.T @ U, np.eye(4), rtol=0, atol=100 * eps * 30)
    np.testing.assert_allclose(Vt @ Vt.T, np.eye(4), rtol=0, atol=100 * eps * 30)
    # the sign does not depend on the sign of the input's factorization
    U2, _, Vt2 = truncated_svd(-M, 4, method=method, random_state=0)
    np.testing.assert_allclose(U2, U, rtol=0, atol=1e3 * eps * 30)
    np.testing.assert_allclose(Vt2, -Vt, rtol=0, atol=1e3 * eps * 30)


@pytest.mark.parametrize("method", ["arpack", "randomized"])
def test_same_seed_same_bits(method):
    M, _ = _known_spectrum(50, 40, 3)
    a = truncated_svd(M, 3, method=method, random_state=7)
    b = truncated_svd(M, 3, method=method, random_state=7)
    c = truncated_svd(M, 3, method=method, random_state=np.random.default_rng(7))
    for x, y, z in zip(a, b, c, strict=True):
        assert np.array_equal(x, y) and np.array_equal(x, z)


def test_randomized_solver_accepts_an_operator():
    M, _ = _known_spectrum(40, 30, 4)
    U, s, _Vt = truncated_svd(_Operator(M), 3, random_state=0, n_iter=7)
    U0, s0, _Vt0 = truncated_svd(M, 3, method="full")
    # same seed, same bits whether the matrix is explicit or only an operator
    Ua, sa, Vta = truncated_svd(_Operator(M), 3, random_state=1)
    Ub, sb, Vtb = truncated_svd(M, 3, method="randomized", random_state=1)
    assert np.array_equal(Ua, Ub) and np.array_equal(sa, sb) and np.array_equal(Vta, Vtb)
    eps = np.finfo(np.float64).eps
    np.testing.assert_allclose(s, s0, rtol=0, atol=1e3 * eps)
    np.testing.assert_allclose(U, U0, rtol=0, atol=1e4 * eps)
    with pytest.raises(TypeError, match="M"):
        truncated_svd(_Operator(M), 3, method="full")


def test_full_rank_and_auto():
    M, _s_true = _known_spectrum(6, 9, 5)
    for method in ["auto", *METHODS]:
        U, s, Vt = truncated_svd(M, 6, method=method, random_state=0)
        np.testing.assert_allclose((U * s) @ Vt, M, rtol=0, atol=100 * np.finfo(float).eps * 9)
    assert choose_method((100, 100), 3) == "full"
    assert choose_method((2000, 1000), 3) == "randomized"
    assert choose_method((2000, 1000), 500) == "full"


@pytest.mark.parametrize("rank", [0, -1, 5, 2.0, True, "1"])
def test_bad_rank(rank):
    with pytest.raises(RankError, match="rank"):
        truncated_svd(np.ones((4, 4)), rank)


def test_bad_method():
    with pytest.raises(ValueError, match="method"):
        truncated_svd(np.ones((4, 4)), 1, method="lanczos")


def _with_condition(m, k, cond, seed):
    """A tall m×k matrix with singular values spaced geometrically from 1 to 1/cond."""
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.standard_normal((m, k)))
    V, _ = np.linalg.qr(rng.standard_normal((k, k)))
    return (U * np.geomspace(1.0, 1.0 / cond, k)) @ V.T


@pytest.mark.parametrize("cond", [1.0, 1e3, 1e6, 1e9, 1e14])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_orthonormalization_is_orthonormal_and_spans_the_columns(cond, dtype):
    from sekron.svd import _qr

    m, k = 700, 24
    Y = _with_condition(m, k, cond, 0).astype(dtype)
    Y0 = Y.copy()
    Q, R = _qr(Y)
    assert np.array_equal(Y, Y0)  # the input is not modified
    assert Q.dtype == dtype and Q.shape == (m, k) and R.shape == (k, k)
    eps = float(np.finfo(dtype).eps)
    Q64 = Q.astype(np.float64)
    np.testing.assert_allclose(Q64.T @ Q64, np.eye(k), rtol=0, atol=4 * eps * m)
    # Y = Q R to working precision of Y's dtype
    Y64 = Y.astype(np.float64)
    assert np.linalg.norm(Q64 @ R - Y64) <= 4 * eps * m * np.linalg.norm(Y64)
    # the same column space as Householder QR in float64, up to the subspace's conditioning
    Qh, _ = np.linalg.qr(Y64)
    eps_cond = min(float(np.finfo(np.float64).eps) * cond, 1.0)
    gap = np.linalg.norm(Qh @ (Qh.T @ Q64) - Q64, 2)
    assert gap <= 4 * m * max(eps, eps_cond)


def test_orthonormalization_of_a_rank_deficient_block_falls_back_to_householder():
    from sekron.svd import _cholesky_qr2, _qr

    rng = np.random.default_rng(1)
    Y = rng.standard_normal((300, 3)) @ rng.standard_normal((3, 10))  # rank 3 of 10
    assert _cholesky_qr2(Y) is None
    Q, R = _qr(Y)
    np.testing.assert_allclose(Q.T @ Q, np.eye(10), rtol=0, atol=1e3 * np.finfo(float).eps)
    np.testing.assert_allclose(Q @ R, Y, rtol=0, atol=1e3 * np.finfo(float).eps * np.abs(Y).max())


@pytest.mark.parametrize("seed", range(3))
def test_certified_stop_is_within_half_a_percent_of_eckart_young(seed):
    # slow decay (σ_r ∝ 1/(r+1)²) plus a noise floor: the sketch certifies the error early
    rng = np.random.default_rng(seed)
    m, n, rank = 600, 520, 8
    U, _ = np.linalg.qr(rng.standard_normal((m, 12)))
    V, _ = np.linalg.qr(rng.standard_normal((n, 12)))
    M = (U / np.arange(1, 13) ** 2) @ V.T + 1e-3 * rng.standard_normal((m, n)) / np.sqrt(m)
    s_ref = np.linalg.svd(M, compute_uv=False)
    optimal = float(np.sum(s_ref[rank:] ** 2))
    for dtype in (np.float32, np.float64):
        Md = M.astype(dtype)
        U_, s, Vt = truncated_svd(Md, rank, method="randomized", random_state=seed)
        err = float(np.sum((Md.astype(np.float64) - (U_ * s).astype(np.float64) @ Vt) ** 2))
        assert err <= 1.005**2 * optimal + 64 * float(np.finfo(dtype).eps) * float(np.sum(M**2))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 40),
    st.integers(1, 30),
    st.sampled_from(["float32", "float64", "float16"]),
    st.sampled_from(["C", "F", "T", "slice"]),
    st.sampled_from([1, 7, 64, 1 << 18]),
    st.integers(0, 2**32 - 1),
)
def test_squared_norm_equals_an_exact_sum(m, n, dtype, layout, chunk, seed):
    """float64 squared norm of any layout and dtype, through chunks of any size, against
    math.fsum of the float64 squares (an exactly rounded sum)."""
    import math

    from sekron import svd as svd_mod

    rng = np.random.default_rng(seed)
    A = (rng.standard_normal((m, n)) * 10.0 ** rng.integers(-3, 4)).astype(dtype)
    A = {"C": A, "F": np.asfortranarray(A), "T": A.T, "slice": A[:, ::2]}[layout]
    want = math.fsum(float(v) ** 2 for v in A.astype(np.float64).ravel())
    saved = svd_mod._NORM_CHUNK
    svd_mod._NORM_CHUNK = chunk
    try:
        got = svd_mod._squared_norm(A)
    finally:
        svd_mod._NORM_CHUNK = saved
    # a float64 sum of k squares: relative error at most k eps (any summation order)
    assert abs(got - want) <= A.size * np.finfo(np.float64).eps * want
