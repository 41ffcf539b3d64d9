"""sekron.ops.matmul / rmatmul against the dense product, and their input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sekron as sk
from sekron.errors import NonFiniteError, ShapeError
from sekron.ops import matmul, rmatmul


def random_sekron(structure, rng, dtype=np.float64):
    """A SeKronTensor built directly from random factors of ``structure``."""
    return sk.SeKronTensor([rng.normal(size=s).astype(dtype) for s in structure.factor_shapes])


@st.composite
def matrix_structures(draw, max_side=24):
    """S = 2..4 factor shapes (m_k, n_k), sides <= max_side; ranks 1..full (capped at 4)."""
    S = draw(st.integers(2, 4))
    shapes = []
    m = n = 1
    for _ in range(S):
        mk = draw(st.integers(1, max(1, min(4, max_side // m))))
        nk = draw(st.integers(1, max(1, min(4, max_side // n))))
        m, n = m * mk, n * nk
        shapes.append((mk, nk))
    base = sk.Structure(shapes)
    return base.with_ranks(tuple(draw(st.integers(1, min(r, 4))) for r in base.max_ranks))


def assert_close(got, want, scale, dtype, reduction):
    """|got - want| <= 4 eps (K + 2) * scale, elementwise; scale = |W| |X| from |factors|."""
    assert got.shape == want.shape
    tol = 4.0 * float(np.finfo(dtype).eps) * (reduction + 2)
    err = np.abs(got.astype(np.float64) - want)
    assert np.all(err <= tol * scale + np.finfo(dtype).tiny), float(np.max(err - tol * scale))


def abs_dense(op):
    return sk.SeKronTensor([np.abs(f.astype(np.float64)) for f in op.factors]).to_dense()


@settings(max_examples=40, deadline=None)
@given(
    st_=matrix_structures(),
    k=st.integers(1, 5),
    vec=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_matmul_equals_dense(st_, k, vec, dtype, seed):
    rng = np.random.default_rng(seed)
    op = random_sekron(st_, rng, dtype)
    _m, n = op.shape
    X = rng.normal(size=(n,) if vec else (n, k)).astype(dtype)
    got = matmul(op, X)
    assert got.dtype == dtype
    W64 = op.astype(np.float64).to_dense()
    want = W64 @ X.astype(np.float64)
    K = n * math.prod(st_.ranks)
    assert_close(got, want, abs_dense(op) @ np.abs(X.astype(np.float64)), dtype, K)
    # the operator form and the module function agree exactly (same code path)
    assert np.array_equal(op @ X, got)


@settings(max_examples=40, deadline=None)
@given(
    st_=matrix_structures(),
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_rmatmul_equals_dense(st_, batch, dtype, seed):
    rng = np.random.default_rng(seed)
    op = random_sekron(st_, rng, dtype)
    m, n = op.shape
    W64, Wabs = op.astype(np.float64).to_dense(), abs_dense(op)
    K = max(m, n) * math.prod(st_.ranks)
    X = rng.normal(size=(*tuple(batch), m)).astype(dtype)
    got = rmatmul(X, op)
    assert got.dtype == dtype and got.shape == (*tuple(batch), n)
    assert_close(got, X.astype(np.float64) @ W64, np.abs(X.astype(np.float64)) @ Wabs, dtype, K)
    assert np.array_equal(op.__rmatmul__(X), got)
    # the linear-layer form x @ W.T
    Y = rng.normal(size=(*tuple(batch), n)).astype(dtype)
    got_t = Y @ op.T  # ndarray @ op defers to SeKronTensor.__rmatmul__
    assert np.array_equal(got_t, rmatmul(Y, op.T))
    assert_close(
        got_t, Y.astype(np.float64) @ W64.T, np.abs(Y.astype(np.float64)) @ Wabs.T, dtype, K
    )


def test_both_contraction_orders_agree():
    # tall-then-wide factors make the two orders differ in cost; both must be right
    rng = np.random.default_rng(3)
    st_ = sk.Structure([(8, 2), (2, 8), (3, 3)], ranks=(2, 3))
    op = random_sekron(st_, rng)
    from sekron.contraction import execute_linear, linear_plan

    X = rng.normal(size=(op.shape[1], 4))
    want = op.to_dense() @ X
    scale = abs_dense(op) @ np.abs(X)
    for order in ("inner", "outer"):
        got = execute_linear(linear_plan(st_.shapes, st_.ranks, order=order), X, op.factors)
        assert_close(got, want, scale, np.float64, op.shape[1] * 6)


def test_ndarray_at_op_defers_to_rmatmul():
    rng = np.random.default_rng(5)
    op = random_sekron(sk.Structure([(2, 3), (4, 2)], ranks=1), rng)
    X = rng.normal(size=(3, 8))
    assert np.array_equal(X @ op, rmatmul(X, op))


def test_mixed_dtypes_promote():
    rng = np.random.default_rng(0)
    op = random_sekron(sk.Structure([(2, 3), (4, 2)], ranks=1), rng, np.float32)
    X = rng.normal(size=(6, 2))
    assert matmul(op, X).dtype == np.float64
    assert matmul(op, X.astype(np.float32)).dtype == np.float32
    assert matmul(op, np.arange(6)).dtype == np.float64  # integers become float64


def test_dense_operator_is_plain_matmul():
    rng = np.random.default_rng(1)
    W, X = rng.normal(size=(5, 4)), rng.normal(size=(4, 3))
    assert np.array_equal(matmul(W, X), W @ X)
    assert np.array_equal(rmatmul(X.T, W.T), X.T @ W.T)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(2)
    op = random_sekron(sk.Structure([(3, 2), (2, 3)], ranks=2), rng)
    X = rng.normal(size=(6, 3))
    X0 = X.copy()
    matmul(op, X)
    rmatmul(X.T, op.T)
    assert np.array_equal(X, X0)


def test_errors():
    rng = np.random.default_rng(0)
    op = random_sekron(sk.Structure([(2, 3), (4, 2)], ranks=1), rng)  # (8, 6)
    with pytest.raises(ShapeError, match=r"\(8, 6\).*\(5, 2\)"):
        matmul(op, np.ones((5, 2)))
    with pytest.raises(ShapeError, match="X"):
        matmul(op, np.ones((6, 2, 2)))
    with pytest.raises(ShapeError, match=r"\(\.\.\., 8\)"):
        rmatmul(np.ones((3, 6)), op)
    with pytest.raises(ShapeError):
        rmatmul(np.float64(1.0), op)
    bad = np.ones((6, 2))
    bad[1, 1] = np.nan
    with pytest.raises(NonFiniteError):
        matmul(op, bad)
    with pytest.raises(NonFiniteError):
        rmatmul(np.full((2, 8), np.inf), op)
    cube = random_sekron(sk.Structure([(2, 2, 2), (2, 2, 2)], ranks=1), rng)
    with pytest.raises(ShapeError, match="2-D"):
        matmul(cube, np.ones(4))
    with pytest.raises(ShapeError):
        matmul(np.ones((2, 2, 2)), np.ones(2))


class _CountingNumpy:
    """Stands in for numpy inside sekron.contraction and counts the GEMMs' multiply-adds."""

    def __init__(self):
        self.macs = 0

    def __getattr__(self, name):
        return getattr(np, name)

    def matmul(self, a, b, **kw):
        out = np.matmul(a, b, **kw)
        self.macs += out.size * a.shape[-1]
        return out


@settings(max_examples=30, deadline=None)
@given(st_=matrix_structures(), k=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_cost_model_counts_the_gemms(st_, k, seed):
    import sekron.contraction as mm

    rng = np.random.default_rng(seed)
    op = random_sekron(st_, rng)
    counter = _CountingNumpy()
    saved = mm.np
    mm.np = counter
    try:
        matmul(op, rng.normal(size=(op.shape[1], k)))
    finally:
        mm.np = saved
    cost = st_.macs_matmul(k)
    assert counter.macs == cost["sekron"]
    assert cost["dense"] == op.shape[0] * op.shape[1] * k


def test_macs_matmul_rejects_non_matrix_structures():
    with pytest.raises(ShapeError):
        sk.Structure([(2, 2, 2), (2, 2, 2)], ranks=1).macs_matmul(3)
    with pytest.raises(ValueError):
        sk.Structure([(2, 2), (2, 2)], ranks=1).macs_matmul(0)


@pytest.mark.parametrize("ranks", [(1, 1), (2, 3)])
def test_rmatmul_layouts_of_x_agree(ranks):
    # C-ordered rows take the rows plan, rows that are a transposed view the columns plan
    rng = np.random.default_rng(7)
    st_ = sk.Structure([(3, 2), (2, 4), (4, 3)], ranks=ranks)
    op = random_sekron(st_, rng)
    m, n = op.shape
    W64 = op.to_dense()
    Xc = rng.normal(size=(5, m))
    Xf = np.asfortranarray(Xc)
    Xs = rng.normal(size=(10, m))[::2]  # neither C- nor F-contiguous
    K = max(m, n) * math.prod(ranks)
    for X in (Xc, Xf, Xs, Xc[:1]):
        got = rmatmul(X, op)
        assert got.flags.c_contiguous
        assert_close(got, X @ W64, np.abs(X) @ abs_dense(op), np.float64, K)
