"""nkp and sekron: optimality, certificates, exact recovery, tolerances, determinism."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sekron as sk
from sekron.testing.strategies import (
    factorable_shapes,
    float_dtypes,
    sekron_tensors,
    structures,
)


def _eps(dtype) -> float:
    return float(np.finfo(dtype).eps)


def _true_error(W, t) -> float:
    return float(np.linalg.norm((W.astype(np.float64) - t.to_dense().astype(np.float64)).ravel()))


def _assert_certificate(W, t, c: float = 1.0):
    """certificate² and the directly computed error² agree to c·eps·||W||² (size-scaled)."""
    true = _true_error(W, t)
    norm_sq = float(np.sum(W.astype(np.float64) ** 2))
    slack = c * 4 * sum(t.structure.sizes) * _eps(W.dtype) * norm_sq
    assert abs(t.error_bound**2 - true**2) <= slack, (t.error_bound, true)


@st.composite
def _matrix_and_split(draw, max_size=256):
    """A random tensor W together with an NKP split (shape_a, shape_b)."""
    shape, (a, b) = draw(factorable_shapes(n_factors=2, max_size=max_size))
    dtype = draw(float_dtypes())
    seed = draw(st.integers(0, 2**32 - 1))
    W = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    return W, a, b


def _spectrum(W, a, b) -> np.ndarray:
    """Independent reference: numpy's SVD of the rearranged matrix, in float64."""
    R = sk.rearrange(W.astype(np.float64), [a, b]).reshape(math.prod(a), math.prod(b))
    return np.linalg.svd(R, compute_uv=False)


# -- nkp ---------------------------------------------------------------------------------------


@settings(deadline=None)
@given(_matrix_and_split(), st.data())
def test_nkp_error_is_the_discarded_spectrum_and_the_true_error(case, data):
    W, a, b = case
    s = _spectrum(W, a, b)
    rank = data.draw(st.integers(1, len(s)))
    t = sk.nkp(W, a, b, rank=rank)
    assert t.structure.shapes == (a, b) and t.structure.ranks == (rank,)
    assert t.dtype == W.dtype
    norm_sq = float(np.sum(s**2))
    tol = 4 * sum(t.structure.sizes) * _eps(W.dtype) * norm_sq
    assert abs(t.error_bound**2 - float(np.sum(s[rank:] ** 2))) <= tol
    _assert_certificate(W, t)
    assert math.isclose(t.reference_norm, math.sqrt(norm_sq), rel_tol=16 * _eps(W.dtype))


@settings(deadline=None)
@given(_matrix_and_split())
def test_nkp_error_never_grows_with_rank_and_is_exact_at_full_rank(case):
    W, a, b = case
    max_rank = min(math.prod(a), math.prod(b))
    errors = [sk.nkp(W, a, rank=r).error_bound for r in range(1, max_rank + 1)]
    slack = 4 * _eps(W.dtype) * float(np.linalg.norm(W.astype(np.float64)))
    assert all(e2 <= e1 + slack for e1, e2 in itertools.pairwise(errors))
    full = sk.nkp(W, a, rank=max_rank)
    assert _true_error(W, full) <= 4 * sum(full.structure.sizes) * _eps(W.dtype) * np.linalg.norm(
        W.astype(np.float64)
    )


@settings(deadline=None, max_examples=30)
@given(_matrix_and_split(), st.integers(0, 2**32 - 1))
def test_nkp_is_eckart_young_optimal(case, seed):
    """No perturbation of the optimal factors (nor any random factors) fits better."""
    W, a, b = case
    W = W.astype(np.float64)
    max_rank = min(math.prod(a), math.prod(b))
    rank = max(1, max_rank // 2)
    t = sk.nkp(W, a, rank=rank)
    best = _true_error(W, t)
    rng = np.random.default_rng(seed)
    A, B = t.factors
    for scale in (1e-1, 1e-3, 1e-6):
        for _ in range(5):
            A2 = A + scale * rng.standard_normal(A.shape) * np.abs(A).max()
            B2 = B + scale * rng.standard_normal(B.shape) * np.abs(B).max()
            other = sk.SeKronTensor([A2, B2])
            assert _true_error(W, other) >= best * (1 - 8 * _eps(np.float64)) - 1e-300


@settings(deadline=None)
@given(sekron_tensors(n_factors=2, max_size=256, max_rank=4))
def test_nkp_recovers_a_sum_of_R_kronecker_products(t):
    W = t.to_dense()
    fit = sk.nkp(W, t.structure.shapes[0], rank=t.structure.ranks[0])
    norm = float(np.linalg.norm(W.astype(np.float64)))
    tol = 8 * sum(t.structure.sizes) * _eps(W.dtype) * norm
    assert _true_error(W, fit) <= tol
    assert fit.error_bound <= tol


@settings(deadline=None)
@given(_matrix_and_split(), st.floats(0.0, 0.99))
def test_nkp_tol_picks_the_smallest_rank_meeting_the_target(case, tol):
    W, a, b = case
    s = _spectrum(W, a, b)
    norm = float(np.sqrt(np.sum(s**2)))
    t = sk.nkp(W, a, tol=tol)
    r = t.structure.ranks[0]
    slack = 8 * len(s) * _eps(W.dtype) * norm
    tail = lambda k: float(np.sqrt(np.sum(s[k:] ** 2)))  # noqa: E731
    assert tail(r) <= tol * norm + slack
    if r > 1:  # one rank less would miss the target (up to rounding)
        assert tail(r - 1) >= tol * norm - slack
    assert t.error_bound <= tol * norm + slack
    # rank is an upper limit when given with tol
    assert sk.nkp(W, a, rank=1, tol=tol).structure.ranks == (1,)


def _separated(shape_a, shape_b, rank, seed, dtype=np.float64):
    """Σ σ_r A_r ⊗ B_r with orthonormal vec(A_r), vec(B_r) and σ_r = 2^-r (plus a small tail)."""
    rng = np.random.default_rng(seed)
    m, n = math.prod(shape_a), math.prod(shape_b)
    k = min(m, n)
    U, _ = np.linalg.qr(rng.standard_normal((m, k)))
    V, _ = np.linalg.qr(rng.standard_normal((n, k)))
    s = 0.5 ** np.arange(k)
    s[rank:] *= 1e-3
    R = (U * s) @ V.T
    return sk.unrearrange(R, [shape_a, shape_b]).astype(dtype)


@pytest.mark.parametrize("seed", range(4))
def test_nkp_solvers_agree_on_well_separated_spectra(seed):
    a, b = (4, 6), (6, 5)
    W = _separated(a, b, 3, seed)
    ref = sk.nkp(W, a, rank=3, method="full")
    eps = _eps(np.float64)
    for method in ("arpack", "auto"):
        t = sk.nkp(W, a, rank=3, method=method, random_state=seed)
        np.testing.assert_allclose(t.to_dense(), ref.to_dense(), rtol=0, atol=1e3 * eps * W.size)
        for f, g in zip(t.factors, ref.factors, strict=True):  # same signs: same factors
            np.testing.assert_allclose(f, g, rtol=0, atol=1e4 * eps * W.size)
        assert math.isclose(t.error_bound, ref.error_bound, rel_tol=1e-6)
    # the randomized solver stops once its error is certified within 0.5 % of the optimum
    # (here already after the first sketch), not once its factors have converged
    t = sk.nkp(W, a, rank=3, method="randomized", random_state=seed)
    assert _true_error(W, t) <= 1.005 * ref.error_bound
    _assert_certificate(W, t)


@pytest.mark.parametrize("method", ["full", "arpack", "randomized"])
def test_nkp_is_deterministic_and_sign_normalized(method):
    W = _separated((3, 4), (4, 3), 2, 11)
    one = sk.nkp(W, (3, 4), rank=2, method=method, random_state=5)
    two = sk.nkp(W, (3, 4), rank=2, method=method, random_state=5)
    assert all(np.array_equal(f, g) for f, g in zip(one.factors, two.factors, strict=True))
    assert one.error_bound == two.error_bound
    # the largest entry of every A_r is positive, so -W flips B and keeps A
    A = one.factors[0].reshape(2, -1)
    assert np.all(A[np.arange(2), np.argmax(np.abs(A), axis=1)] > 0)
    neg = sk.nkp(-W, (3, 4), rank=2, method=method, random_state=5)
    np.testing.assert_allclose(neg.factors[0], one.factors[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(neg.factors[1], -one.factors[1], rtol=0, atol=1e-12)


def test_nkp_default_rank_is_one_and_shape_b_is_inferred():
    W = np.random.default_rng(0).standard_normal((6, 4))
    t = sk.nkp(W, (3, 2))
    assert t.structure.ranks == (1,) and t.structure.shapes == ((3, 2), (2, 2))
    assert sk.nkp(W.ravel(), 4).structure.shapes == ((4,), (6,))


# -- sekron ----------------------------------------------------------------------------------


@settings(deadline=None)
@given(_matrix_and_split(), st.data())
def test_sekron_with_two_factors_is_nkp(case, data):
    W, a, b = case
    rank = data.draw(st.integers(1, min(math.prod(a), math.prod(b))))
    s = sk.sekron(W, [a, b], rank)
    n = sk.nkp(W, a, rank=rank)
    tol = 8 * sum(s.structure.sizes) * _eps(W.dtype) * float(np.linalg.norm(W.astype(np.float64)))
    np.testing.assert_allclose(s.to_dense(), n.to_dense(), rtol=0, atol=tol)
    assert abs(s.error_bound - n.error_bound) <= tol
    assert s.structure == n.structure


@st.composite
def _tensor_and_structure(draw, n_factors=None, max_size=256):
    s = draw(structures(n_factors=n_factors, max_size=max_size))
    dtype = draw(float_dtypes())
    W = (
        np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        .standard_normal(s.shape)
        .astype(dtype)
    )
    return W, s


@settings(deadline=None)
@given(_tensor_and_structure())
def test_sekron_certificate_is_the_true_error(case):
    W, s = case
    t = sk.sekron(W, s)
    assert t.structure == s and t.dtype == W.dtype
    _assert_certificate(W, t)
    ref = math.sqrt(float(np.sum(W.astype(np.float64) ** 2)))
    assert math.isclose(t.reference_norm, ref, rel_tol=16 * _eps(W.dtype))


@settings(deadline=None)
@given(_tensor_and_structure())
def test_sekron_is_exact_at_full_ranks(case):
    W, s = case
    t = sk.sekron(W, s.shapes)  # ranks=None: the largest useful ones
    assert t.structure.ranks == s.max_ranks
    norm = float(np.linalg.norm(W.astype(np.float64)))
    tol = 8 * sum(s.sizes) * _eps(W.dtype) * norm
    assert _true_error(W, t) <= tol and t.error_bound <= tol


@settings(deadline=None)
@given(sekron_tensors(tt_like=True, max_size=256))
def test_sekron_recovers_tt_like_sequences_at_their_ranks(t):
    W = t.to_dense()
    fit = sk.sekron(W, t.structure)
    norm = float(np.linalg.norm(W.astype(np.float64)))
    tol = 16 * sum(t.structure.sizes) * _eps(W.dtype) * norm
    assert fit.error_bound <= tol
    assert _true_error(W, fit) <= tol


@settings(deadline=None, max_examples=30)
@given(_tensor_and_structure(max_size=128))
def test_sekron_error_is_monotone_in_each_rank(case):
    W, s = case
    norm = float(np.linalg.norm(W.astype(np.float64)))
    slack = 8 * sum(s.sizes) * _eps(W.dtype) * norm
    base = sk.sekron(W, s).error_bound
    for k, m in enumerate(s.max_ranks):
        if s.ranks[k] < m:
            more = list(s.ranks)
            more[k] += 1
            assert sk.sekron(W, s.shapes, tuple(more)).error_bound <= base + slack


@settings(deadline=None)
@given(_tensor_and_structure(max_size=128), st.floats(0.0, 0.95))
def test_sekron_tol_meets_its_target(case, tol):
    W, s = case
    t = sk.sekron(W, s.shapes, tol=tol)
    norm = float(np.linalg.norm(W.astype(np.float64)))
    slack = 8 * sum(s.sizes) * _eps(W.dtype) * norm
    assert t.error_bound <= tol * norm + slack
    assert _true_error(W, t) <= tol * norm + slack
    assert all(1 <= r <= m for r, m in zip(t.structure.ranks, s.max_ranks, strict=True))
    # with ranks given too, they are upper limits
    capped = sk.sekron(W, s.shapes, s.ranks, tol=tol)
    assert all(r <= c for r, c in zip(capped.structure.ranks, s.ranks, strict=True))


@pytest.mark.parametrize("tol", [0.0, 0.3, 0.6, 0.9, 0.999])
def test_sekron_tol_gives_each_level_an_equal_share(tol):
    W = np.random.default_rng(1).standard_normal((8, 8))
    shapes = [(2, 2), (2, 2), (2, 2)]
    t = sk.sekron(W, shapes, tol=tol)
    # level 1 independently: smallest r whose discarded energy fits tol² ||W||² / (S − 1)
    s = np.linalg.svd(sk.rearrange(W, shapes).reshape(4, 16), compute_uv=False)
    budget = tol**2 * float(np.sum(W**2)) / 2
    tails = [float(np.sum(s[r:] ** 2)) for r in range(1, 5)]
    expected = next(
        r
        for r, e in zip(range(1, 5), tails, strict=True)
        if e <= budget + 64 * np.finfo(np.float64).eps * float(np.sum(W**2))
    )
    assert t.structure.ranks[0] == expected
    if tol == 0.0:
        assert t.structure.ranks == (4, 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1e-30, 1e30, 2.0**-90, 2.0**90])
def test_fits_are_scale_equivariant(dtype, scale):
    rng = np.random.default_rng(3)
    W = rng.standard_normal((6, 8)).astype(dtype)
    cW = (W * dtype(scale)).astype(dtype)
    assert np.all(np.isfinite(cW)) and np.all(cW != 0)
    eps = _eps(dtype)
    shapes = [(2, 2), (3, 2), (1, 2)]
    for fit in (
        lambda X: sk.nkp(X, (2, 4), rank=2),
        lambda X: sk.sekron(X, shapes, (2, 2)),
        lambda X: sk.sekron(X, shapes, (2, 1), refine=3),
    ):
        base, scaled = fit(W), fit(cW)
        assert scaled.dtype == dtype
        dense = scaled.to_dense().astype(np.float64) / scale
        np.testing.assert_allclose(dense, base.to_dense(), rtol=0, atol=64 * W.size * eps)
        assert math.isclose(scaled.error_bound / scale, base.error_bound, rel_tol=64 * W.size * eps)
        assert math.isclose(
            scaled.relative_error_bound, base.relative_error_bound, rel_tol=64 * W.size * eps
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_tensor(dtype):
    W = np.zeros((4, 6), dtype=dtype)
    for t in (sk.nkp(W, (2, 3), rank=2), sk.sekron(W, [(2, 1), (1, 3), (2, 2)], (1, 1), refine=2)):
        assert t.error_bound == 0.0 and t.relative_error_bound == 0.0
        assert np.array_equal(t.to_dense(), W)


def test_sekron_randomized_first_level_matches_full_on_a_large_separated_matrix():
    # the first level only switches solvers when its matrix is larger than 512 on the short side
    a, b = (24, 24), (24, 24)
    W = _separated(a, b, 2, 0)
    full = sk.sekron(W, [a, b], 2, method="full")
    rand = sk.sekron(W, [a, b], 2, method="randomized", random_state=0)
    # certified within 0.5 % of the optimum (the randomized solver's stop), and exact
    assert _true_error(W, rand) <= 1.005 * full.error_bound
    _assert_certificate(W, rand)
    again = sk.sekron(W, [a, b], 2, method="randomized", random_state=0)
    assert all(np.array_equal(f, g) for f, g in zip(rand.factors, again.factors, strict=True))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_randomized_nkp_is_within_one_percent_of_optimal(seed, dtype):
    # issue 14's kind of matrix, smaller: 12 Kronecker terms weighted 1/(r+1)² plus noise;
    # R is 576×576, so "auto" runs the randomized solver
    rng = np.random.default_rng(seed)
    a = b = (24, 24)
    W = 1e-3 * rng.standard_normal((576, 576))
    for r in range(12):
        W += np.kron(rng.standard_normal(a), rng.standard_normal(b)) / (r + 1) ** 2
    W = W.astype(dtype)
    t = sk.nkp(W, a, rank=8, random_state=seed)
    optimal = math.sqrt(float(np.sum(_spectrum(W, a, b)[8:] ** 2)))
    assert _true_error(W, t) <= 1.01 * optimal
    _assert_certificate(W, t)
