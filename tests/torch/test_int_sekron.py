"""Integer SeKron layers: stages equal the integer engine; gradients close to float."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import sekron as sk  # noqa: E402
from sekron import fixed  # noqa: E402
from sekron.fixed import STREAM_INPUT as _X  # noqa: E402
from sekron.fixed import STREAM_WEIGHT as _W  # noqa: E402
from sekron.fixed import forward_backward_keys as _split_seed  # noqa: E402
from sekron.torch import (  # noqa: E402
    IntSeKronConv2d,
    IntSeKronLinear,
    IntTorchBackend,
    SeKronConv2d,
    SeKronLinear,
    integerize,
)
from sekron.torch.int_sekron import int_bmm, stage_seed  # noqa: E402


def _engine_mm(a: np.ndarray, b: np.ndarray, bits: int, rounding: str, seed: int) -> np.ndarray:
    fwd, _ = _split_seed(seed)
    aq = fixed.to_fixed(a, bits, rounding, fwd, stream=_X)
    bq = fixed.to_fixed(b, bits, rounding, fwd, stream=_W)
    return fixed.matmul(aq, bq).to_float()


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("bits", [6, 8, 16])
def test_int_bmm_equals_engine_matmul_and_backward(bits, rounding):
    g = torch.Generator().manual_seed(bits)
    a = torch.randn(5, 7, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(7, 3, dtype=torch.float64, generator=g, requires_grad=True)
    y = int_bmm(a, b, bits, rounding, 99)
    np.testing.assert_array_equal(
        y.detach().numpy(), _engine_mm(a.detach().numpy(), b.detach().numpy(), bits, rounding, 99)
    )
    go = np.random.default_rng(bits).normal(size=(5, 3))
    y.backward(torch.from_numpy(go))
    fwd, bwd = _split_seed(99)
    aq = fixed.to_fixed(a.detach().numpy(), bits, rounding, fwd, stream=_X)
    bq = fixed.to_fixed(b.detach().numpy(), bits, rounding, fwd, stream=_W)
    da, db = fixed.matmul_backward(aq, bq, go, bits, rounding=rounding, seed=bwd)
    np.testing.assert_array_equal(a.grad.numpy(), da.to_float())
    np.testing.assert_array_equal(b.grad.numpy(), db.to_float())


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_int_sekron_linear_stages_equal_engine(rounding):
    s = sk.Structure([(3, 4), (2, 5)], ranks=2)
    torch.manual_seed(0)
    layer = IntSeKronLinear(s, bias=False, bits=8, rounding=rounding, seed=3, dtype=torch.float64)
    x = torch.randn(4, 20, dtype=torch.float64)
    seed = (3 << 30) | 0  # the first call's key
    y = layer(x)
    A, Bf = (f.detach().numpy() for f in layer.factors)
    # stage 0: X (B n1, n2) @ B_f^T (n2, R m2); stage 1: A' (m1, n1 R) @ Z (n1 R, B m2)
    Z = _engine_mm(
        x.numpy().reshape(4 * 4, 5), Bf.reshape(2 * 2, 5).T, 8, rounding, stage_seed(seed, 0)
    )
    Zp = Z.reshape(4, 4, 2, 2).transpose(1, 2, 0, 3).reshape(8, 4 * 2)
    Ap = A.transpose(1, 2, 0).reshape(3, 8)
    out = (
        _engine_mm(Ap, Zp, 8, rounding, stage_seed(seed, 1))
        .reshape(3, 4, 2)
        .transpose(1, 0, 2)
        .reshape(4, 6)
    )
    np.testing.assert_array_equal(y.detach().numpy(), out)


def _close_grads(int_layer: nn.Module, float_layer: nn.Module, x: torch.Tensor, bits: int) -> None:
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = int_layer(x1), float_layer(x2)
    g = torch.randn_like(y2)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    # each stage maps two operands and the gradient to `bits` bits: relative error per
    # mapping <= 2^-(bits-2); a few stages and mappings compound
    tol = 16 * 2.0 ** -(bits - 2) * math.sqrt(x.numel())
    for a, b in [(y1, y2), (x1.grad, x2.grad)] + [
        (p.grad, q.grad)
        for p, q in zip(int_layer.parameters(), float_layer.parameters(), strict=True)
    ]:
        rel = float(torch.linalg.norm(a.detach() - b.detach()) / torch.linalg.norm(b.detach()))
        assert rel < tol, (rel, tol)


def test_int_sekron_gradients_close_to_float():
    torch.manual_seed(1)
    lin = SeKronLinear(sk.Structure([(2, 3), (3, 2), (2, 2)], ranks=(2, 3)), dtype=torch.float64)
    _close_grads(
        IntSeKronLinear.from_sekron(lin, bits=16), lin, torch.randn(6, 12, dtype=torch.float64), 16
    )
    conv = SeKronConv2d(
        sk.Structure([(2, 2, 3, 1), (3, 2, 1, 3)], ranks=2),
        padding=1,
        stride=2,
        dtype=torch.float64,
    )
    for path in ("structured", "dense"):
        conv.path = path
        conv.zero_grad()
        _close_grads(
            IntSeKronConv2d.from_sekron(conv, bits=16),
            conv,
            torch.randn(2, 4, 7, 7, dtype=torch.float64),
            16,
        )


@pytest.mark.parametrize("groups", [1, 2])
def test_int_backend_conv_equals_engine_per_group(groups):
    g = torch.Generator().manual_seed(groups)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, generator=g)
    w = torch.randn(6, 4 // groups, 3, 2, dtype=torch.float64, generator=g)
    x.requires_grad_()
    w.requires_grad_()
    be = IntTorchBackend(8, "stochastic", 5)
    y = be.conv2d(x, w, (1, 2), (2, 1), groups)
    fwd, bwd = _split_seed(stage_seed(5, 0))
    xq = fixed.to_fixed(x.detach().numpy(), 8, "stochastic", fwd, stream=_X)
    wq = fixed.to_fixed(w.detach().numpy(), 8, "stochastic", fwd, stream=_W)
    go = np.random.default_rng(groups).normal(size=tuple(y.shape))
    y.backward(torch.from_numpy(go))
    # the gradient is mapped once over all groups (streams 1 and 2 of the backward key)
    g1 = fixed.to_fixed(go, 8, "stochastic", bwd, stream=1)
    g2 = fixed.to_fixed(go, 8, "stochastic", bwd, stream=2)
    C, Fo = 4 // groups, 6 // groups
    for i in range(groups):
        xs = fixed.FixedTensor(xq.mantissa[:, i * C : (i + 1) * C], xq.exponent, 8)
        ws = fixed.FixedTensor(wq.mantissa[i * Fo : (i + 1) * Fo], wq.exponent, 8)
        ref = fixed.conv2d(xs, ws, (1, 2), 0, (2, 1)).to_float()
        np.testing.assert_array_equal(y.detach().numpy()[:, i * Fo : (i + 1) * Fo], ref)
        gs1 = fixed.FixedTensor(g1.mantissa[:, i * Fo : (i + 1) * Fo], g1.exponent, 8)
        gs2 = fixed.FixedTensor(g2.mantissa[:, i * Fo : (i + 1) * Fo], g2.exponent, 8)
        dx, _ = fixed.conv2d_backward(xs, ws, gs1, (1, 2), 0, (2, 1), 8, rounding="stochastic")
        _, dw = fixed.conv2d_backward(xs, ws, gs2, (1, 2), 0, (2, 1), 8, rounding="stochastic")
        np.testing.assert_array_equal(x.grad.numpy()[:, i * C : (i + 1) * C], dx.to_float())
        np.testing.assert_array_equal(w.grad.numpy()[i * Fo : (i + 1) * Fo], dw.to_float())
    if groups == 1:  # and with groups=1 it is exactly the engine's own backward
        dx, dw = fixed.conv2d_backward(
            xq, wq, go, (1, 2), 0, (2, 1), 8, rounding="stochastic", seed=bwd
        )
        np.testing.assert_array_equal(x.grad.numpy(), dx.to_float())
        np.testing.assert_array_equal(w.grad.numpy(), dw.to_float())


def test_integerize_converts_sekron_layers_and_trains():
    torch.manual_seed(2)
    net = nn.Sequential(
        SeKronConv2d(sk.Structure([(2, 1, 3, 1), (2, 2, 1, 3)], ranks=1), padding=1),
        nn.ReLU(),
        nn.Flatten(),
        SeKronLinear(sk.Structure([(2, 8), (2, 8)], ranks=2)),
    )
    inet = integerize(net, bits=8, seed=1)
    assert [type(m).__name__ for m in inet] == [
        "IntSeKronConv2d",
        "ReLU",
        "Flatten",
        "IntSeKronLinear",
    ]
    x, t = torch.randn(8, 2, 4, 4), torch.randint(0, 4, (8,))
    opt = torch.optim.SGD(inet.parameters(), lr=0.05)
    losses = []
    for _ in range(10):
        loss = nn.functional.cross_entropy(inet(x), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in inet.parameters())
    assert losses[-1] < losses[0]


def test_int_backend_conv_exact_at_training_sizes():
    # sizes where torch picks its optimized float32 kernels: still the engine's integers
    g = torch.Generator().manual_seed(7)
    x = torch.randn(32, 16, 8, 8, generator=g, requires_grad=True)
    w = torch.randn(32, 4, 3, 3, generator=g, requires_grad=True)
    be = IntTorchBackend(8, "nearest", 1)
    y = be.conv2d(x, w, (1, 1), (1, 1), 4)
    go = torch.randn(y.shape, generator=g)
    y.backward(go)
    _fwd, _bwd = _split_seed(stage_seed(1, 0))
    xq, wq = (
        fixed.to_fixed(x.detach().numpy(), 8, "nearest"),
        fixed.to_fixed(w.detach().numpy(), 8, "nearest"),
    )
    g1 = fixed.to_fixed(go.numpy(), 8, "nearest")
    for i in range(4):
        xs = fixed.FixedTensor(xq.mantissa[:, 4 * i : 4 * i + 4], xq.exponent, 8)
        ws = fixed.FixedTensor(wq.mantissa[8 * i : 8 * i + 8], wq.exponent, 8)
        gs = fixed.FixedTensor(g1.mantissa[:, 8 * i : 8 * i + 8], g1.exponent, 8)
        np.testing.assert_array_equal(
            y.detach().numpy()[:, 8 * i : 8 * i + 8],
            fixed.conv2d(xs, ws).to_float().astype(np.float32),
        )
        dx, dw = fixed.conv2d_backward(xs, ws, gs, 1, 0, 1, 8, rounding="nearest")
        np.testing.assert_array_equal(
            x.grad.numpy()[:, 4 * i : 4 * i + 4], dx.to_float().astype(np.float32)
        )
        np.testing.assert_array_equal(
            w.grad.numpy()[8 * i : 8 * i + 8], dw.to_float().astype(np.float32)
        )


def _run(fn, inputs, gy):
    for t in inputs:
        t.grad = None
    y = fn()
    y.backward(gy)
    return [y.detach().clone()] + [t.grad.clone() for t in inputs]


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_int_bmm_integer_route_equals_float_route(monkeypatch, rounding, dtype):
    # past 2**53 the layer runs the engine's integer kernels: forced here, same bits
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, 5, dtype=dtype, generator=g, requires_grad=True)
    b = torch.randn(3, 5, 2, dtype=dtype, generator=g, requires_grad=True)
    gy = torch.randn(3, 4, 2, dtype=dtype, generator=g)
    fast = _run(lambda: int_bmm(a, b, 8, rounding, 5), [a, b], gy)
    monkeypatch.setattr(fixed, "exact_float_matmul", lambda *args: None)
    slow = _run(lambda: int_bmm(a, b, 8, rounding, 5), [a, b], gy)
    for f, s in zip(fast, slow, strict=True):
        assert torch.equal(f, s)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_grouped_int_conv_integer_route_equals_float_route(monkeypatch, rounding):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 6, 5, generator=g, requires_grad=True)
    w = torch.randn(6, 2, 3, 2, generator=g, requires_grad=True)
    gy = torch.randn(2, 6, 2, 4, generator=g)

    def conv():
        return IntTorchBackend(8, rounding, 3).conv2d(x, w, (2, 1), (1, 1), 2)

    fast = _run(conv, [x, w], gy)
    monkeypatch.setattr(fixed, "exact_float_dtype", lambda bound: None)
    slow = _run(conv, [x, w], gy)
    for f, s in zip(fast, slow, strict=True):
        assert torch.equal(f, s)


class _EngineStages:
    """numpy reshapes/transposes, and each matmul step as the engine's product of mapped operands."""

    def __init__(self, seed, rounding):
        self.seed, self.rounding, self.stage = seed, rounding, 0

    def reshape(self, x, shape):
        return np.asarray(x).reshape(shape)

    def transpose(self, x, axes):
        return np.asarray(x).transpose(axes)

    def matmul(self, a, b):
        fwd, _ = _split_seed(stage_seed(self.seed, self.stage))
        self.stage += 1
        if a.ndim == 2 and b.ndim == 3:  # the layer runs a shared weight as one 2-D GEMM
            G, K, N = b.shape
            z = self.matmul_2d(a, b.transpose(1, 0, 2).reshape(K, G * N), fwd)
            return z.reshape(a.shape[0], G, N).transpose(1, 0, 2)
        if a.ndim == 3 and b.ndim == 2:
            G, M, K = a.shape
            return self.matmul_2d(a.reshape(G * M, K), b, fwd).reshape(G, M, b.shape[-1])
        if a.ndim == 2:
            return self.matmul_2d(a, b, fwd)
        aq = fixed.to_fixed(a, 8, self.rounding, fwd, stream=_X)
        bq = fixed.to_fixed(b, 8, self.rounding, fwd, stream=_W)
        return fixed.batched_matmul(aq, bq).to_float()

    def matmul_2d(self, a, b, fwd):
        aq = fixed.to_fixed(np.ascontiguousarray(a), 8, self.rounding, fwd, stream=_X)
        bq = fixed.to_fixed(np.ascontiguousarray(b), 8, self.rounding, fwd, stream=_W)
        return fixed.matmul(aq, bq).to_float()


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_three_factor_int_sekron_linear_stages_equal_engine(rounding):
    """S = 3 through the shared plan: every stage gives the engine's bits for its operands."""
    from sekron.contraction import execute_linear, linear_plan

    s = sk.Structure([(2, 3), (2, 2), (3, 2)], ranks=(2, 2))
    torch.manual_seed(1)
    layer = IntSeKronLinear(s, bias=False, bits=8, rounding=rounding, seed=4, dtype=torch.float64)
    x = torch.randn(3, 12, dtype=torch.float64)
    y = layer(x).detach().numpy()
    plan = linear_plan(s.shapes, s.ranks, layout="rows", order="auto")
    factors = [f.detach().numpy() for f in layer.factors]
    ref = execute_linear(plan, x.numpy(), factors, _EngineStages((4 << 30) | 0, rounding))
    np.testing.assert_array_equal(y, ref)
    # and it is the layer's product: close to the float layer at 8 bits
    dense = layer.to_dense()(x).detach().numpy()
    assert np.abs(y - dense).max() <= 0.1 * np.abs(dense).max()
