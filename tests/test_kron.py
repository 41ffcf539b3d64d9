"""Exact properties of sk.kron, sk.rearrange and sk.unrearrange (DESIGN.md 2.1, 2.2)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sekron as sk
from sekron.errors import DTypeError, NonFiniteError, OverflowRiskError, ShapeError
from sekron.testing.strategies import factorable_shapes, kronecker_factors


def _kron_reference(factors: list[np.ndarray]) -> np.ndarray:
    """Entry by entry from the mixed-radix definition (factor 1 most significant)."""
    shapes = [f.shape for f in factors]
    N = len(shapes[0])
    out_shape = tuple(math.prod(s[n] for s in shapes) for n in range(N))
    out = np.empty(out_shape, dtype=np.result_type(*factors))
    for idx in np.ndindex(*out_shape):
        digits = []
        rem = list(idx)
        for s in reversed(shapes):  # least significant digit belongs to the last factor
            digits.append(tuple(r % d for r, d in zip(rem, s, strict=True)))
            rem = [r // d for r, d in zip(rem, s, strict=True)]
        val = 1
        for f, dgt in zip(factors, reversed(digits), strict=True):
            val = val * f[dgt]
        out[idx] = val
    return out


def _outer_of_vecs(factors: list[np.ndarray]) -> np.ndarray:
    out = factors[0].ravel()
    for f in factors[1:]:
        out = np.multiply.outer(out, f.ravel())
    return out


@settings(deadline=None)
@given(kronecker_factors(integer=True, max_size=128))
def test_kron_matches_the_mixed_radix_definition_exactly(factors):
    assert np.array_equal(sk.kron(*factors), _kron_reference(factors))


@settings(deadline=None)
@given(kronecker_factors(n_factors=2))
def test_kron_of_two_factors_is_numpy_kron_bit_for_bit(factors):
    out = sk.kron(*factors)
    assert out.dtype == np.result_type(*factors)
    assert np.array_equal(out, np.kron(*factors))


@settings(deadline=None)
@given(kronecker_factors(n_factors=3, integer=True, dtype=np.int64))
def test_kron_is_associative_exactly_for_integers(factors):
    A, B, C = factors
    left = sk.kron(sk.kron(A, B), C)
    assert np.array_equal(left, sk.kron(A, sk.kron(B, C)))
    assert np.array_equal(left, sk.kron(A, B, C))
    assert left.dtype == np.int64


def test_kron_is_not_commutative():
    A = np.array([[1, 2], [3, 4]])
    B = np.array([[0, 1], [1, 0]])
    assert not np.array_equal(sk.kron(A, B), sk.kron(B, A))


def test_kron_pads_fewer_dimensions_like_numpy():
    A = np.arange(3.0)
    B = np.arange(6.0).reshape(2, 3)
    assert np.array_equal(sk.kron(A, B), np.kron(A, B))


def test_kron_of_one_factor_is_a_copy():
    A = np.arange(4.0)
    out = sk.kron(A)
    assert np.array_equal(out, A) and not np.shares_memory(out, A)


@pytest.mark.parametrize("n_factors", [2, 3, 4])
@pytest.mark.parametrize("ndim", [1, 2, 3, 4])
def test_rearrangement_maps_kron_to_outer_product_of_vecs(n_factors, ndim):
    rng = np.random.default_rng(10 * n_factors + ndim)
    dims = rng.integers(1, 3 if ndim * n_factors > 8 else 4, size=(n_factors, ndim))
    factors = [rng.standard_normal(tuple(int(d) for d in row)) for row in dims]
    shapes = [f.shape for f in factors]
    T = sk.rearrange(sk.kron(*factors), shapes)
    assert T.shape == tuple(f.size for f in factors)
    assert np.array_equal(T, _outer_of_vecs(factors))
    assert np.array_equal(sk.unrearrange(T, shapes), sk.kron(*factors))
    if n_factors == 2:
        assert np.array_equal(sk.kron(*factors), np.kron(*factors))


@settings(deadline=None)
@given(kronecker_factors(max_size=256))
def test_rearrangement_maps_kron_to_outer_product_property(factors):
    T = sk.rearrange(sk.kron(*factors), [f.shape for f in factors])
    assert np.array_equal(T, _outer_of_vecs(factors))


@settings(deadline=None)
@given(factorable_shapes(max_size=512), st.integers(0, 2**32 - 1))
def test_rearrangement_is_an_invertible_norm_preserving_permutation(pair, seed):
    shape, shapes = pair
    # distinct entries: a permutation is then visible as a reordering of 0..n-1
    W = np.random.default_rng(seed).permutation(math.prod(shape)).reshape(shape)
    T = sk.rearrange(W, shapes)
    assert T.shape == tuple(math.prod(s) for s in shapes)
    assert np.array_equal(np.sort(T.ravel()), np.arange(W.size))
    assert np.array_equal(sk.unrearrange(T, shapes), W)
    Wf = W.astype(np.float64) / 7.0
    Tf = sk.rearrange(Wf, shapes)
    # a permutation keeps the norm exactly up to summation order
    assert math.isclose(
        np.linalg.norm(Tf), np.linalg.norm(Wf), rel_tol=4 * W.size * np.finfo(np.float64).eps
    )
    assert np.array_equal(np.sort(Tf.ravel()), np.sort(Wf.ravel()))


def test_rearrange_two_factor_matrix_is_van_loan_pitsianis():
    # R(W) rows are vec of the (i, j) blocks of W, columns their flattened entries
    rng = np.random.default_rng(0)
    W = rng.standard_normal((6, 8))
    a, b = (3, 2), (2, 4)
    R = sk.rearrange(W, [a, b])
    blocks = [
        W[i * 2 : (i + 1) * 2, j * 4 : (j + 1) * 4].ravel() for i in range(3) for j in range(2)
    ]
    assert np.array_equal(R, np.stack(blocks))


def test_rearrange_keeps_dtype_and_does_not_modify_input():
    W = np.arange(16, dtype=np.float32).reshape(4, 4)
    before = W.copy()
    T = sk.rearrange(W, [(2, 2), (2, 2)])
    assert T.dtype == np.float32
    assert np.array_equal(W, before)


def test_unrearrange_rejects_a_tensor_of_the_wrong_shape():
    with pytest.raises(ShapeError, match="T"):
        sk.unrearrange(np.zeros((4, 5)), [(2, 2), (2, 2)])


def test_rearrange_rejects_shapes_that_do_not_factor():
    with pytest.raises(ShapeError, match="shapes"):
        sk.rearrange(np.zeros((4, 6)), [(2, 2), (2, 2)])
    with pytest.raises(ShapeError, match="shapes"):
        sk.rearrange(np.zeros((4, 4)), [(2, 2, 1), (2, 2, 1)])
    with pytest.raises(ShapeError, match="shapes"):
        sk.rearrange(np.zeros((4, 4)), [(4, 4)])


@pytest.mark.parametrize(
    "bad", [np.array([["a"]]), np.array([[1j]]), np.array([[None]], dtype=object)]
)
def test_kron_and_rearrange_reject_non_numeric(bad):
    with pytest.raises(DTypeError, match=r"factors\[1\]"):
        sk.kron(np.ones((1, 1)), bad)
    with pytest.raises(DTypeError, match="W"):
        sk.rearrange(bad, [(1, 1), (1, 1)])


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_kron_and_rearrange_reject_non_finite(value):
    bad = np.ones((2, 2))
    bad[1, 0] = value
    with pytest.raises(NonFiniteError, match=r"factors\[0\]"):
        sk.kron(bad, np.ones((2, 2)))
    with pytest.raises(NonFiniteError, match="W"):
        sk.rearrange(bad, [(1, 2), (2, 1)])
    with pytest.raises(NonFiniteError, match="T"):
        sk.unrearrange(bad, [(1, 2), (2, 1)])


def test_kron_without_factors_raises():
    with pytest.raises(ShapeError):
        sk.kron()


# --- hardening: no silent wrap or overflow, no view into the input -------------------


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.uint8])
def test_kron_integer_product_that_would_wrap_is_refused(dtype):
    m = np.iinfo(dtype).max
    A = np.array([[m]], dtype=dtype)
    with pytest.raises(OverflowRiskError, match="factors"):
        sk.kron(A, A)


def test_kron_integer_product_at_the_dtype_limit_is_exact():
    A = np.array([[127, -1]], dtype=np.int8)
    B = np.array([[1], [-1]], dtype=np.int8)
    out = sk.kron(A, B)
    expected = np.kron(A.astype(np.int64), B.astype(np.int64))
    assert out.dtype == np.int8 and np.array_equal(out.astype(np.int64), expected)


def test_kron_wide_uint64_factors_are_checked_exactly():
    A = np.array([2**63], dtype=np.uint64)
    with pytest.raises(OverflowRiskError, match="factors"):
        sk.kron(A, np.array([2], dtype=np.uint64))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kron_float_product_that_would_overflow_is_refused(dtype):
    big = np.array([np.finfo(dtype).max / 2], dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning on the way either
        with pytest.raises(NonFiniteError, match="factors"):
            sk.kron(big, np.array([4.0], dtype=dtype))


@pytest.mark.parametrize(
    ("shape", "shapes"),
    [((6,), [(2,), (3,)]), ((6, 8), [(6, 1), (1, 8)]), ((4, 6), [(1, 1), (4, 6)])],
)
def test_rearrange_and_unrearrange_never_return_a_view(shape, shapes):
    W = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    before = W.copy()
    T = sk.rearrange(W, shapes)
    assert not np.shares_memory(T, W)
    T[...] = -1.0
    assert np.array_equal(W, before)
    T2 = sk.rearrange(W, shapes)
    back = sk.unrearrange(T2, shapes)
    assert not np.shares_memory(back, T2)
    back[...] = -2.0
    assert np.array_equal(T2, sk.rearrange(W, shapes))


def _rearrange_by_digits(W: np.ndarray, shapes) -> np.ndarray:
    """Independent reference: every entry of T placed by mixed-radix index arithmetic.

    ``T[t_1, ..., t_S]`` with ``t_k`` the C-order index into factor k's shape ``a^(k)``
    is ``W[w]`` with ``w_n = Σ_k i^(k)_n Π_{j>k} a^(j)_n`` (the first factor most
    significant), built with gather indices rather than reshapes and transposes.
    """
    sizes = [math.prod(s) for s in shapes]
    t = np.indices(sizes).reshape(len(shapes), -1)
    w = [np.zeros(t.shape[1], dtype=np.int64) for _ in range(W.ndim)]
    for k, s in enumerate(shapes):
        digits = np.unravel_index(t[k], s)
        for n in range(W.ndim):
            w[n] = w[n] * s[n] + digits[n]
    return W[tuple(w)].reshape(sizes)


@settings(deadline=None, max_examples=60)
@given(factorable_shapes(max_size=512))
def test_rearrange_equals_the_digit_reference_exactly(case):
    shape, shapes = case
    W = np.arange(math.prod(shape), dtype=np.float64).reshape(shape)
    assert np.array_equal(sk.rearrange(W, shapes), _rearrange_by_digits(W, shapes))


@pytest.mark.parametrize(
    ("shape", "shapes"),
    [
        ((128, 1024), [(2, 32), (64, 32)]),
        ((96, 96), [(1, 4), (96, 24)]),
        ((64, 32, 8), [(4, 2, 2), (4, 4, 1), (4, 4, 4)]),  # S = 3, N = 3
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16])
def test_rearrange_of_large_tensors_equals_the_digit_reference(shape, shapes, dtype):
    W = (np.arange(math.prod(shape)) % 30011).astype(dtype).reshape(shape)
    T = sk.rearrange(W, shapes)
    assert T.dtype == dtype
    assert np.array_equal(T, _rearrange_by_digits(W, shapes))
