"""Backward passes against float autodiff of the dequantized operands."""

from __future__ import annotations

import numpy as np
import pytest

from sekron.errors import NonFiniteError, ShapeError
from sekron.fixed import (
    conv2d,
    conv2d_backward,
    linear,
    linear_backward,
    matmul_backward,
    to_fixed,
)


def _unit(t) -> float:
    return 2.0 ** int(t.exponent)


def test_matmul_backward_exact_with_nearest_gradient():
    rng = np.random.default_rng(0)
    a = to_fixed(rng.normal(size=(7, 5)), 10, seed=1)
    b = to_fixed(rng.normal(size=(5, 3)), 10, seed=2)
    g = rng.normal(size=(7, 3))
    gq = to_fixed(g, 12, "nearest").to_float()  # the gradient the engine sees
    da, db = matmul_backward(a, b, g, bits=12, rounding="nearest")
    # integer GEMMs are exact, so the result equals the float products of dequantized
    # operands (all values here are exact in float64)
    np.testing.assert_array_equal(da.to_float(), gq @ b.to_float().T)
    np.testing.assert_array_equal(db.to_float(), a.to_float().T @ gq)


def test_linear_backward_stochastic_error_explained_by_rounding():
    torch = pytest.importorskip("torch")  # not in the test extra
    rng = np.random.default_rng(1)
    x = to_fixed(rng.normal(size=(16, 8)), 8, seed=1)
    w = to_fixed(rng.normal(size=(4, 8)), 8, seed=2)
    g = rng.normal(size=(16, 4))
    xt = torch.tensor(x.to_float(), requires_grad=True)
    wt = torch.tensor(w.to_float(), requires_grad=True)
    bt = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    (torch.nn.functional.linear(xt, wt, bt) * torch.tensor(g)).sum().backward()
    dx, dw, db = linear_backward(x, w, g, bits=8, seed=3)
    unit_g = 2.0 ** (int(np.floor(np.log2(np.abs(g).max()))) - 6)
    # each mapped gradient entry is off by less than one unit: |err| < unit * sum |other|
    assert np.all(np.abs(dx.to_float() - xt.grad.numpy()) < unit_g * np.abs(w.to_float()).sum(0))
    assert np.all(np.abs(dw.to_float() - wt.grad.numpy()) < unit_g * np.abs(x.to_float()).sum(0))
    assert np.all(np.abs(db.to_float() - bt.grad.numpy()) < unit_g * 16)


def test_linear_forward_with_bias():
    rng = np.random.default_rng(2)
    x = to_fixed(rng.normal(size=(3, 4)), 8, seed=0)
    w = to_fixed(rng.normal(size=(5, 4)), 8, seed=1)
    b = to_fixed(rng.normal(size=5), 8, seed=2)
    y = linear(x, w, b)
    # the bias is coarser than the accumulator here, so the alignment is an exact shift
    assert b.exponent >= y.exponent
    np.testing.assert_array_equal(y.to_float(), x.to_float() @ w.to_float().T + b.to_float())


@pytest.mark.parametrize(
    "stride,padding,dilation", [(1, 0, 1), (2, 1, 1), (1, 2, 2), ((2, 1), (0, 1), (1, 2))]
)
def test_conv2d_backward_matches_torch(stride, padding, dilation):
    torch = pytest.importorskip("torch")  # not in the test extra
    rng = np.random.default_rng(3)
    x = to_fixed(rng.normal(size=(2, 3, 7, 6)), 8, seed=1)
    w = to_fixed(rng.normal(size=(4, 3, 3, 2)), 8, seed=2)
    y = conv2d(x, w, stride, padding, dilation)
    g = rng.normal(size=y.shape)
    gq = to_fixed(g, 12, "nearest").to_float()
    xt = torch.tensor(x.to_float(), requires_grad=True)
    wt = torch.tensor(w.to_float(), requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, stride=stride, padding=padding, dilation=dilation)
    np.testing.assert_array_equal(yt.detach().numpy(), y.to_float())
    (yt * torch.tensor(gq)).sum().backward()
    dx, dw = conv2d_backward(x, w, g, stride, padding, dilation, bits=12, rounding="nearest")
    # exact integers on both sides, sums of at most a few hundred 20-bit products:
    # float64 autodiff is exact too, so the results agree bit for bit
    np.testing.assert_array_equal(dx.to_float(), xt.grad.numpy())
    np.testing.assert_array_equal(dw.to_float(), wt.grad.numpy())


def test_independent_draws_per_use():
    rng = np.random.default_rng(4)
    x = to_fixed(rng.normal(size=(64, 8)), 8, seed=1)
    w = to_fixed(np.eye(8), 8, seed=2)
    g = rng.normal(size=(64, 8)) * 0.37
    dx, _dw, db = linear_backward(x, w, g, bits=4, seed=9)
    # dx = g1 @ I is the first draw; db = column sums of the second draw
    g1 = dx.to_float()
    assert not np.array_equal(g1.sum(0), db.to_float())


def test_backward_bad_inputs():
    x = to_fixed(np.ones((3, 4)), 8)
    w = to_fixed(np.ones((5, 4)), 8)
    g = np.ones((3, 5))
    g_copy = g.copy()
    with pytest.raises(ShapeError, match="grad_out"):
        linear_backward(x, w, np.ones((3, 4)))
    with pytest.raises(NonFiniteError):
        linear_backward(x, w, np.full((3, 5), np.nan))
    with pytest.raises(ShapeError):
        matmul_backward(x, w, g)
    with pytest.raises(ValueError, match="bits"):
        linear_backward(x, w, g, bits=17)
    linear_backward(x, w, g)
    assert np.array_equal(g, g_copy)
