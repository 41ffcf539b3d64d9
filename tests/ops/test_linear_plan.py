"""sekron.contraction: the linear plan against the dense product, and its MAC count."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sekron as sk
from sekron.contraction import MatmulStep, NumpyLinearBackend, execute_linear, linear_plan
from sekron.errors import RankError, ShapeError
from sekron.testing import strategies as sks

EPS64 = float(np.finfo(np.float64).eps)


def _factors(structure, rng):
    return [rng.normal(size=s) for s in structure.factor_shapes]


def _dense(factors):
    return sk.SeKronTensor(factors).to_dense()


def _formula(structure, order, n_cols):
    """Multiply-adds of the two orders, written from DESIGN.md 2.6 (not from the plan)."""
    m = [s[0] for s in structure.shapes]
    n = [s[1] for s in structure.shapes]
    P, S = structure.instances, structure.n_factors
    if order == "inner":
        terms = [P[k] * m[k] * n[k] * math.prod(n[:k]) * math.prod(m[k + 1 :]) for k in range(S)]
    else:
        terms = [P[k] * m[k] * n[k] * math.prod(m[:k]) * math.prod(n[k + 1 :]) for k in range(S)]
    return sum(terms) * n_cols


class _Counting(NumpyLinearBackend):
    """numpy, counting the multiply-adds of every product it is asked for."""

    def __init__(self):
        self.macs = 0

    def matmul(self, a, b):
        out = np.matmul(a, b)
        self.macs += out.size * a.shape[-1]
        return out


plan_args = st.tuples(
    sks.structures(ndim=2, max_size=256, max_rank=4),
    st.sampled_from(["columns", "rows"]),
    st.booleans(),
    st.sampled_from(["auto", "inner", "outer"]),
    st.integers(1, 5),
    st.integers(0, 2**32 - 1),
)


@settings(max_examples=60, deadline=None)
@given(plan_args)
def test_plan_equals_dense_product(args):
    structure, layout, transpose, order, c, seed = args
    rng = np.random.default_rng(seed)
    fs = _factors(structure, rng)
    W = _dense(fs)
    Wt = W.T if transpose else W
    Wabs = _dense([np.abs(f) for f in fs])
    Wabs = Wabs.T if transpose else Wabs
    plan = linear_plan(
        structure.shapes, structure.ranks, layout=layout, transpose=transpose, order=order
    )
    assert (plan.out_size, plan.in_size) == Wt.shape
    X = rng.normal(size=(Wt.shape[1], c))
    if layout == "columns":
        got, want, scale = execute_linear(plan, X, fs), Wt @ X, Wabs @ np.abs(X)
    else:
        got, want, scale = execute_linear(plan, X.T, fs), X.T @ Wt.T, np.abs(X.T) @ Wabs.T
    assert got.shape == want.shape
    # each output is a sum of n prod(R) products of S + 1 numbers
    K = Wt.shape[1] * math.prod(structure.ranks) + structure.n_factors + 1
    assert np.all(np.abs(got - want) <= 2 * EPS64 * K * scale + np.finfo(np.float64).tiny)


@settings(max_examples=60, deadline=None)
@given(plan_args)
def test_plan_macs_are_what_it_issues(args):
    structure, layout, transpose, order, c, seed = args
    rng = np.random.default_rng(seed)
    fs = _factors(structure, rng)
    plan = linear_plan(
        structure.shapes, structure.ranks, layout=layout, transpose=transpose, order=order
    )
    counter = _Counting()
    X = rng.normal(size=(plan.in_size, c) if layout == "columns" else (c, plan.in_size))
    execute_linear(plan, X, fs, counter)
    assert counter.macs == plan.macs * c
    assert plan.macs == sum(s.macs for s in plan.steps if isinstance(s, MatmulStep))
    st_ = (
        sk.Structure([s[::-1] for s in structure.shapes], structure.ranks)
        if transpose
        else structure
    )
    if order == "auto":
        want = min(_formula(st_, "inner", c), _formula(st_, "outer", c))
    else:
        want = _formula(st_, order, c)
    assert plan.macs * c == want
    if not transpose:
        assert (
            linear_plan(structure.shapes, structure.ranks).macs * c
            == structure.macs_matmul(c)["sekron"]
        )


@settings(max_examples=60, deadline=None)
@given(plan_args, st.sampled_from([0, 256, 1 << 25]))
def test_workspace_executor_equals_the_generic_one(args, cap):
    """numpy's executor writes its intermediates into reused buffers: same values, and its
    results never share memory with those buffers (or with each other)."""
    from sekron import contraction

    structure, layout, transpose, order, c, seed = args
    rng = np.random.default_rng(seed)
    fs = _factors(structure, rng)
    plan = linear_plan(
        structure.shapes, structure.ranks, layout=layout, transpose=transpose, order=order
    )
    shape = (plan.in_size, c) if layout == "columns" else (c, plan.in_size)
    X1, X2 = rng.normal(size=shape), rng.normal(size=shape)
    saved = contraction.WORKSPACE_MAX_BYTES
    contraction.WORKSPACE_MAX_BYTES = cap
    try:
        Y1 = contraction._execute_numpy(plan, X1, fs)
        Y1_copy = Y1.copy()
        Y2 = contraction._execute_numpy(plan, X2, fs)
    finally:
        contraction.WORKSPACE_MAX_BYTES = saved
    assert np.array_equal(Y1, Y1_copy)  # the second call did not write into the first result
    # the same products in the same order as the generic executor (out= only moves them)
    assert np.array_equal(Y1, execute_linear(plan, X1, fs))
    assert np.array_equal(Y2, execute_linear(plan, X2, fs))
    for buf in contraction._WORKSPACE.buffers:
        assert not np.shares_memory(Y1, buf) and not np.shares_memory(Y2, buf)


def test_workspace_is_per_thread():
    """Concurrent products from several threads each get their own buffers."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(1)
    ops = [
        sk.SeKronTensor([rng.normal(size=(1, 16, 16)), rng.normal(size=(1, 16, 16))])
        for _ in range(4)
    ]
    Xs = [rng.normal(size=(256, 64)) for _ in range(4)]
    want = [op.to_dense() @ X for op, X in zip(ops, Xs, strict=True)]

    def work(i):
        return [ops[i] @ Xs[i] for _ in range(50)]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(4)))
    for i, got in enumerate(results):
        for Y in got:
            np.testing.assert_allclose(Y, want[i], rtol=1e-10, atol=1e-10)


def test_plans_are_cached_and_frozen():
    p = linear_plan([(2, 3), (3, 2)], [2], layout="rows")
    assert p is linear_plan(((2, 3), (3, 2)), (2,), layout="rows")
    with pytest.raises(AttributeError):
        p.macs = 0  # type: ignore[misc]
    assert "LinearPlan rows" in str(p)


def test_bad_arguments_raise_named_errors():
    with pytest.raises(ShapeError, match="shapes"):
        linear_plan([(2, 3, 1), (3, 2, 1)], [1])
    with pytest.raises(ShapeError, match="shapes"):
        linear_plan([(2, 3)], [])
    with pytest.raises(RankError, match="ranks"):
        linear_plan([(2, 3), (3, 2)], [1, 1])
    with pytest.raises(RankError, match=r"ranks\[0\]"):
        linear_plan([(2, 3), (3, 2)], [0])
    linear_plan(((2, 3), (3, 2)), (1,))  # cached: True == 1 must not reach that entry
    with pytest.raises(RankError, match=r"ranks\[0\]"):
        linear_plan(((2, 3), (3, 2)), (True,))
    with pytest.raises(ValueError, match="layout"):
        linear_plan([(2, 3), (3, 2)], [1], layout="diagonal")
    with pytest.raises(ValueError, match="order"):
        linear_plan([(2, 3), (3, 2)], [1], order="middle")
