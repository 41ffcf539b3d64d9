"""Integer layers against the integer engine, and integerize()."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from sekron import fixed  # noqa: E402
from sekron.fixed import STREAM_BIAS as _B  # noqa: E402
from sekron.fixed import STREAM_INPUT as _X  # noqa: E402
from sekron.fixed import STREAM_WEIGHT as _W  # noqa: E402
from sekron.fixed import forward_backward_keys as _split_seed  # noqa: E402
from sekron.torch import IntConv2d, IntEmbedding, IntLayerNorm, IntLinear, integerize  # noqa: E402


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("bits", [4, 8, 12])
def test_int_linear_equals_engine(bits, rounding):
    torch.manual_seed(0)
    layer = IntLinear(6, 5, bits=bits, rounding=rounding, seed=7, dtype=torch.float64)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    seed = ((layer.seed & 0xFFFFFFFF) << 30) | 0  # next_seed() of call 0
    y = layer(x)
    fwd, bwd = _split_seed(seed)
    xq = fixed.to_fixed(x.detach().numpy(), bits, rounding, fwd, stream=_X)
    wq = fixed.to_fixed(layer.weight.detach().numpy(), bits, rounding, fwd, stream=_W)
    bq = fixed.to_fixed(layer.bias.detach().numpy(), bits, rounding, fwd, stream=_B)
    ref = fixed.linear(xq, wq, bq, rounding=rounding, seed=fwd).to_float()
    np.testing.assert_array_equal(y.detach().numpy(), ref)
    g = np.random.default_rng(0).normal(size=(4, 5))
    y.backward(torch.from_numpy(g))
    dx, dw, db = fixed.linear_backward(xq, wq, g, bits, rounding=rounding, seed=bwd)
    np.testing.assert_array_equal(x.grad.numpy(), dx.to_float())
    np.testing.assert_array_equal(layer.weight.grad.numpy(), dw.to_float())
    np.testing.assert_array_equal(layer.bias.grad.numpy(), db.to_float())
    assert layer.calls == 1


def test_int_linear_close_to_float_and_unbiased_at_16_bits():
    torch.manual_seed(1)
    dense = nn.Linear(16, 8, dtype=torch.float64)
    layer = IntLinear.from_linear(dense, bits=16)
    x = torch.randn(32, 16, dtype=torch.float64)
    ref = dense(x)
    # 16-bit operands: relative mapping error about 2^-14 per operand
    err = float((layer(x) - ref).detach().abs().max() / ref.detach().abs().max())
    assert err < 16 * 2.0**-14 * 16


def test_int_conv2d_equals_engine():
    torch.manual_seed(2)
    conv = IntConv2d(
        3, 4, 3, stride=2, padding=1, dilation=1, bits=8, rounding="nearest", dtype=torch.float64
    )
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    y = conv(x)
    xq = fixed.to_fixed(x.detach().numpy(), 8, "nearest")
    wq = fixed.to_fixed(conv.weight.detach().numpy(), 8, "nearest")
    ref = (
        fixed.conv2d(xq, wq, (2, 2), (1, 1), (1, 1)).to_float()
        + conv.bias.detach().numpy()[:, None, None]
    )
    np.testing.assert_array_equal(y.detach().numpy(), ref)
    g = np.random.default_rng(1).normal(size=y.shape)
    y.backward(torch.from_numpy(g))
    dx, dw = fixed.conv2d_backward(xq, wq, g, (2, 2), (1, 1), (1, 1), 8, rounding="nearest")
    np.testing.assert_array_equal(x.grad.numpy(), dx.to_float())
    np.testing.assert_array_equal(conv.weight.grad.numpy(), dw.to_float())
    np.testing.assert_allclose(conv.bias.grad.numpy(), g.sum(axis=(0, 2, 3)), rtol=1e-12)


def test_int_layer_norm_and_embedding_equal_engine():
    torch.manual_seed(3)
    ln = IntLayerNorm(8, bits=12, rounding="nearest", dtype=torch.float64)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    y = ln(x)
    ref, cache = fixed.layer_norm(
        x.detach().numpy(),
        ln.weight.detach().numpy(),
        ln.bias.detach().numpy(),
        12,
        1e-5,
        rounding="nearest",
    )
    np.testing.assert_array_equal(y.detach().numpy(), ref.to_float())
    g = np.random.default_rng(2).normal(size=(3, 8))
    y.backward(torch.from_numpy(g))
    dx, dgam, _dbet = fixed.layer_norm_backward(g, cache, rounding="nearest")
    np.testing.assert_array_equal(x.grad.numpy(), dx.to_float())
    np.testing.assert_array_equal(ln.weight.grad.numpy(), dgam.to_float())
    emb = IntEmbedding(10, 4, bits=8, rounding="nearest", dtype=torch.float64)
    ids = torch.tensor([[1, 2, 1]])
    out = emb(ids)
    tq = fixed.to_fixed(emb.weight.detach().numpy(), 8, "nearest")
    np.testing.assert_array_equal(out.detach().numpy(), fixed.embedding(tq, ids.numpy()).to_float())
    ge = np.ones((1, 3, 4))
    out.backward(torch.from_numpy(ge))
    np.testing.assert_array_equal(
        emb.weight.grad.numpy(),
        fixed.embedding_backward(ge, ids.numpy(), 10, 8, rounding="nearest").to_float(),
    )


def test_integerize_and_train_step():
    torch.manual_seed(4)
    net = nn.Sequential(
        nn.Embedding(20, 8), nn.LayerNorm(8), nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 3)
    )
    inet = integerize(net, bits=8)
    assert [type(m).__name__ for m in inet] == [
        "IntEmbedding",
        "IntLayerNorm",
        "IntLinear",
        "GELU",
        "IntLinear",
    ]
    assert inet[1].bits == 16 and inet[2].bits == 8
    assert type(net[2]) is nn.Linear  # the original is untouched
    ids = torch.randint(0, 20, (16, 5))
    target = torch.randint(0, 3, (16, 5))
    opt = torch.optim.SGD(inet.parameters(), lr=0.1)
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(inet(ids).reshape(-1, 3), target.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in inet.parameters())
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError):
        integerize(net, bits=1)
    with pytest.raises(ValueError, match="rounding"):
        IntLinear(2, 2, rounding="up")


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fused", [True, False])
def test_large_weight_mapping_equals_engine(rounding, dtype, fused, monkeypatch):
    # large tensors take the fused kernel or (past FUSED_MAX_ELEMENTS) to_fixed's scaled
    # route: either way the bits must be the reference mapping's
    from sekron.fixed import _kernels
    from sekron.fixed import _reference as R

    if not fused:
        monkeypatch.setattr(_kernels, "FUSED_MAX_ELEMENTS", 0)
    from sekron.fixed._kernels import PARALLEL_MIN_ELEMENTS
    from sekron.torch._int_base import quantize

    g = torch.Generator().manual_seed(9)
    for scale in (1e-30, 1.0, 1e30):
        w = torch.randn(PARALLEL_MIN_ELEMENTS // 64 + 1, 64, dtype=dtype, generator=g) * scale
        for bits in (4, 8, 16):
            got = quantize(w, bits, rounding, 77, _W)
            q_ref, e_ref = R.map_fixed_ref(
                w.numpy(), bits, rounding == "stochastic", R.stream_key(77, _W)
            )
            assert got.exponent == e_ref and got.bits == bits
            np.testing.assert_array_equal(got.mantissa.ravel(), q_ref)
            assert got.mantissa.dtype == fixed.mantissa_dtype(bits)


def test_integerize_checks_bits_once(monkeypatch):
    import sekron.torch._int_base as base
    import sekron.torch.int_model as int_model
    from sekron._validation import check_bits

    calls = []

    def counting(bits, name="bits"):
        calls.append(name)
        return check_bits(bits, name)

    monkeypatch.setattr(int_model, "check_bits", counting)
    monkeypatch.setattr(base, "check_bits", counting)
    net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 8), nn.Linear(8, 2))
    inet = integerize(net, bits=8, norm_bits=None)
    assert calls == ["bits"]
    assert [m.bits for m in inet] == [8, 8, 8, 8] and all(type(m.bits) is int for m in inet)
    calls.clear()
    integerize(net, bits=8, norm_bits=16)
    assert calls == ["bits", "norm_bits"]
    IntLinear(2, 2, bits=8)  # a layer built directly still validates its bits
    assert calls == ["bits", "norm_bits", "bits"]


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_int_linear_integer_route_equals_float_route(monkeypatch, rounding):
    # past 2**53 IntLinear runs fixed.linear / linear_backward: forced here, same bits
    torch.manual_seed(3)
    layer = IntLinear(6, 5, bits=12, rounding=rounding, seed=2)
    x = torch.randn(4, 6, requires_grad=True)
    gy = torch.randn(4, 5)
    out = []
    for patch in (False, True):
        if patch:
            monkeypatch.setattr(fixed, "exact_float_matmul", lambda *args: None)
        layer.calls = 0
        layer.zero_grad()
        x.grad = None
        y = layer(x)
        y.backward(gy)
        out.append(
            [y.detach().clone(), x.grad.clone(), layer.weight.grad.clone(), layer.bias.grad.clone()]
        )
    for f, s in zip(*out, strict=True):
        assert torch.equal(f, s)


def test_integer_layers_run_numpy_blas_and_numba_serially_beside_torch_threads():
    """While torch's pool has several threads, an integer layer's forward and backward run
    numpy's BLAS and numba at one thread (their spinning workers slowed torch's own ops 2x),
    and the previous counts come back afterwards, also after an error."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import numba

    from sekron.ops import blas_threads
    from sekron.torch import _int_base

    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here")
    seen = []

    @_int_base.serial_blas
    def probe(fail=False):
        seen.append((blas_threads(), numba.get_num_threads()))
        if fail:
            raise RuntimeError("inside")

    torch_threads, numba_threads = torch.get_num_threads(), numba.get_num_threads()
    try:
        with threadpoolctl.threadpool_limits(2, user_api="blas"):
            numba.set_num_threads(2)
            torch.set_num_threads(2)
            probe()
            with pytest.raises(RuntimeError, match="inside"):
                probe(fail=True)
            after = (blas_threads(), numba.get_num_threads())
            torch.set_num_threads(1)
            probe()  # torch single-threaded: nothing is capped
        assert seen == [(1, 1), (1, 1), (2, 2)]
        assert after == (2, 2)
    finally:
        torch.set_num_threads(torch_threads)
        numba.set_num_threads(numba_threads)

    # the layers' autograd functions are wrapped
    from sekron.torch import int_sekron, integer

    for fn in (integer._LinearFn, integer._Conv2dFn, int_sekron._GroupConvFn, int_sekron._BmmFn):
        assert fn.forward.__wrapped__ and fn.backward.__wrapped__
