"""SeKronLinear, SeKronConv2d, KroneckerEmbedding against the dense layers they stand for."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

import sekron as sk  # noqa: E402
from sekron.errors import ShapeError  # noqa: E402
from sekron.testing import strategies as sks  # noqa: E402
from sekron.torch import KroneckerEmbedding, SeKronConv2d, SeKronLinear  # noqa: E402

EPS64 = float(np.finfo(np.float64).eps)


def _split(n: int, parts: int, draw) -> tuple[int, ...]:
    """An ordered factorization of n into `parts` factors."""
    out = []
    for _ in range(parts - 1):
        divs = [d for d in range(1, n + 1) if n % d == 0]
        d = draw(st.sampled_from(divs))
        out.append(d)
        n //= d
    out.append(n)
    return tuple(out)


@st.composite
def structures_of(draw, dims: tuple[int, ...], max_factors: int = 3):
    S = draw(st.integers(2, max_factors))
    per_mode = [_split(d, S, draw) for d in dims]
    shapes = [tuple(per_mode[n][k] for n in range(len(dims))) for k in range(S)]
    ranks = tuple(draw(st.integers(1, 3)) for _ in range(S - 1))
    return sk.Structure(shapes, ranks, clip=True)


def _tol(*tensors: torch.Tensor, n_terms: int) -> float:
    """Rounding bound for float64 sums of n_terms products of entries of these sizes."""
    scale = math.prod(float(t.detach().abs().max()) + 1.0 for t in tensors)
    return 8 * EPS64 * n_terms * scale


def _randomize(layer: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))


# -- SeKronLinear -----------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(
    st.sampled_from([(6, 4), (8, 12), (12, 8), (4, 18)]).flatmap(structures_of),
    st.sampled_from(["structured", "dense"]),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_linear_forward_backward_match_dense(structure, path, bias, seed):
    layer = SeKronLinear(structure, bias=bias, path=path, dtype=torch.float64)
    _randomize(layer, seed)
    dense = layer.to_dense()
    x = torch.randn(
        5, 2, structure.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, y_ref = layer(x1), dense(x2)
    n_terms = structure.shape[1] * math.prod(structure.ranks) * structure.n_factors
    tol = _tol(x, *layer.factors, n_terms=n_terms)
    assert y.shape == y_ref.shape == (5, 2, structure.shape[0])
    torch.testing.assert_close(y, y_ref, atol=tol, rtol=0)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (y_ref * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=tol * float(g.abs().max()), rtol=0)
    # the weight gradient, pulled back to the factors through the dense reconstruction
    w = layer.dense_weight()
    grads = torch.autograd.grad(w, list(layer.factors), grad_outputs=dense.weight.grad)
    for p, gp in zip(layer.factors, grads, strict=True):
        torch.testing.assert_close(
            p.grad, gp, atol=tol * float(g.abs().max()) * x.numel(), rtol=1e-9
        )


@pytest.mark.parametrize("order", ["right", "left"])
def test_linear_orders_agree(order):
    from sekron.torch._contract import sekron_linear

    s = sk.Structure([(2, 3), (3, 2), (2, 2)], ranks=(2, 3))
    g = torch.Generator().manual_seed(1)
    fs = [torch.randn(sh, dtype=torch.float64, generator=g) for sh in s.factor_shapes]
    x = torch.randn(4, s.shape[1], dtype=torch.float64, generator=g)
    W = torch.from_numpy(sk.SeKronTensor([f.numpy() for f in fs]).to_dense())
    torch.testing.assert_close(
        sekron_linear(x, fs, s, order), x @ W.T, atol=_tol(x, *fs, n_terms=100), rtol=0
    )


@settings(max_examples=25, deadline=None)
@given(
    sks.structures(ndim=2, max_size=144, max_rank=3),
    st.sampled_from(["columns", "rows"]),
    st.booleans(),
    st.sampled_from(["inner", "outer"]),
    st.integers(0, 2**16),
)
def test_linear_plan_on_torch_equals_dense_and_numpy(structure, layout, transpose, order, seed):
    from sekron.contraction import execute_linear, linear_plan
    from sekron.torch import TorchBackend
    from sekron.torch._contract import dense_from_factors

    plan = linear_plan(
        structure.shapes, structure.ranks, layout=layout, transpose=transpose, order=order
    )
    g = torch.Generator().manual_seed(seed)
    fs = [
        torch.randn(sh, dtype=torch.float64, generator=g, requires_grad=True)
        for sh in structure.factor_shapes
    ]
    W = sk.SeKronTensor([f.detach().numpy() for f in fs]).to_dense()
    W = torch.from_numpy(W.T if transpose else W)
    x = torch.randn(
        *((plan.in_size, 3) if layout == "columns" else (3, plan.in_size)),
        dtype=torch.float64,
        generator=g,
    )
    y = execute_linear(plan, x, fs, TorchBackend())
    want = W @ x if layout == "columns" else x @ W.T
    tol = _tol(x, *fs, n_terms=plan.in_size * math.prod(structure.ranks) * structure.n_factors)
    torch.testing.assert_close(y, want, atol=tol, rtol=0)
    ref = execute_linear(plan, x.numpy(), [f.detach().numpy() for f in fs])
    torch.testing.assert_close(y.detach(), torch.from_numpy(ref), atol=tol, rtol=0)
    # autograd through the plan equals autograd through the dense reconstruction
    gy = torch.randn(y.shape, dtype=torch.float64, generator=g)
    grads = torch.autograd.grad(y, fs, grad_outputs=gy)
    w = dense_from_factors(fs, structure)
    w = w.T if transpose else w
    y_ref = w @ x if layout == "columns" else x @ w.T
    grads_ref = torch.autograd.grad(y_ref, fs, grad_outputs=gy)
    for a, b in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(a, b, atol=tol * float(gy.abs().max()) * x.numel(), rtol=0)


def test_linear_gradcheck_float64():
    layer = SeKronLinear(
        sk.Structure([(2, 3), (2, 2)], ranks=2), path="structured", dtype=torch.float64
    )
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: layer(x), (x, *layer.factors))


def test_linear_auto_path_follows_cost_model():
    cheap = SeKronLinear(sk.Structure([(16, 16), (16, 16)], ranks=1))
    costly = SeKronLinear(sk.Structure([(2, 2), (2, 2)], ranks=4))
    assert cheap.uses_structured_path() and not costly.uses_structured_path()
    c = sk.torch.linear_macs(cheap.structure)
    assert c["dense"] == 256 * 256 and c["sekron"] == 16 * 16 * 16 * 2
    assert cheap.macs(3) == {"sekron": 3 * c["sekron"], "dense": 3 * c["dense"]}
    assert cheap.structure.macs_matmul(1) == {"sekron": c["sekron"], "dense": c["dense"]}


def test_from_linear_equals_core_fit():
    torch.manual_seed(0)
    dense = nn.Linear(12, 8)
    st_ = sk.Structure([(2, 3), (4, 4)], ranks=2)
    layer = SeKronLinear.from_linear(dense, st_)
    ref = sk.nkp(dense.weight.detach().double().numpy(), (2, 3), rank=2)
    for p, a in zip(layer.factors, ref.factors, strict=True):
        np.testing.assert_array_equal(p.detach().numpy(), a.astype(np.float32))
    assert layer.fit_relative_error == pytest.approx(ref.relative_error_bound, rel=1e-12)
    torch.testing.assert_close(layer.bias, dense.bias, rtol=0, atol=0)
    # the certified error is the error of the layer's dense weight
    err = float(
        torch.linalg.norm(layer.dense_weight().detach().double() - dense.weight.detach().double())
    )
    rel = err / float(torch.linalg.norm(dense.weight.detach().double()))
    assert rel == pytest.approx(layer.fit_relative_error, rel=1e-4, abs=1e-6)


def test_from_linear_three_factors_equals_sekron_fit():
    torch.manual_seed(1)
    dense = nn.Linear(8, 8, dtype=torch.float64)
    st_ = sk.Structure([(2, 2), (2, 2), (2, 2)], ranks=(2, 3))
    layer = SeKronLinear.from_linear(dense, st_)
    ref = sk.sekron(dense.weight.detach().numpy(), st_)
    for p, a in zip(layer.factors, ref.factors, strict=True):
        np.testing.assert_array_equal(p.detach().numpy(), a)


@pytest.mark.parametrize("ratio", [2, 4.5, 8])
def test_from_linear_ratio_meets_budget(ratio):
    torch.manual_seed(2)
    dense = nn.Linear(24, 16)
    layer = SeKronLinear.from_linear(dense, ratio=ratio)
    assert layer.structure.n_params <= 24 * 16 / ratio
    assert 0 <= layer.fit_relative_error < 1


def test_from_linear_tol_meets_error():
    torch.manual_seed(3)
    dense = nn.Linear(16, 16, dtype=torch.float64)
    with torch.no_grad():  # a Kronecker-rank-2 weight plus a little noise
        a, b = torch.randn(2, 4, 4, dtype=torch.float64), torch.randn(2, 4, 4, dtype=torch.float64)
        dense.weight.copy_(
            torch.kron(a[0], b[0]) + torch.kron(a[1], b[1]) + 0.05 * torch.randn(16, 16)
        )
    layer = SeKronLinear.from_linear(dense, tol=0.3)
    assert layer.structure.n_params < 256
    assert layer.fit_relative_error <= 0.3 + 1e-12
    W = dense.weight.detach()
    rel = float(torch.linalg.norm(layer.dense_weight().detach() - W) / torch.linalg.norm(W))
    assert rel <= 0.3 + 1e-9


def test_linear_bad_inputs():
    with pytest.raises(ValueError, match="ratio"):
        SeKronLinear.from_linear(nn.Linear(8, 8), ratio=0.5)
    with pytest.raises(ValueError, match="exactly one"):
        SeKronLinear.from_linear(nn.Linear(8, 8), ratio=2, tol=0.1)
    with pytest.raises(TypeError, match=r"nn.Linear"):
        SeKronLinear.from_linear(nn.Conv2d(2, 2, 1), ratio=2)
    with pytest.raises(ShapeError, match="compression"):
        SeKronLinear.from_linear(nn.Linear(4, 2), ratio=100)
    with pytest.raises(ShapeError, match="no fewer than the dense"):
        SeKronLinear.from_linear(nn.Linear(16, 16), tol=0.01)
    with pytest.raises(ShapeError):
        SeKronLinear(sk.Structure([(2, 2, 1), (2, 2, 1)]))
    layer = SeKronLinear(sk.Structure([(2, 2), (2, 2)], ranks=1))
    with pytest.raises(ShapeError, match="last axis"):
        layer(torch.randn(3, 5))
    with pytest.raises(ValueError, match="path"):
        SeKronLinear(sk.Structure([(2, 2), (2, 2)], ranks=1), path="fast")


def test_linear_state_dict_round_trip():
    s = sk.Structure([(2, 4), (3, 2)], ranks=3)
    a, b = SeKronLinear(s), SeKronLinear(s)
    b.load_state_dict(a.state_dict())
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb
        if isinstance(va, torch.Tensor):
            assert torch.equal(va, vb)
    x = torch.randn(2, 8)
    assert torch.equal(a(x), b(x))
    other = SeKronLinear(sk.Structure([(2, 4), (3, 2)], ranks=2))
    with pytest.raises((ShapeError, RuntimeError)):
        other.load_state_dict(a.state_dict())
    assert "structure=" in repr(a) and "compression=" in repr(a)


# -- SeKronConv2d ------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(
    st.sampled_from([(4, 6, 3, 3), (6, 4, 2, 3), (4, 4, 4, 1), (2, 6, 1, 1)]).flatmap(
        structures_of
    ),
    st.sampled_from([1, 2, (2, 1)]),
    st.sampled_from([0, 1, (2, 0)]),
    st.sampled_from([1, 2, (1, 2)]),
    st.booleans(),
    st.integers(0, 2**16),
)
def test_conv_forward_backward_match_dense(structure, stride, padding, dilation, bias, seed):
    conv = SeKronConv2d(
        structure, stride, padding, dilation, bias, path="structured", dtype=torch.float64
    )
    _randomize(conv, seed)
    dense = conv.to_dense()
    x = torch.randn(
        2,
        structure.shape[1],
        10,
        9,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(seed),
    )
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, y_ref = conv(x1), dense(x2)
    assert y.shape == y_ref.shape
    n_terms = math.prod(structure.shape[1:]) * math.prod(structure.ranks) * structure.n_factors
    tol = _tol(x, *conv.factors, n_terms=n_terms)
    torch.testing.assert_close(y, y_ref, atol=tol, rtol=0)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    (y_ref * g).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=tol * float(g.abs().max()) * 4, rtol=0)
    grads = torch.autograd.grad(
        conv.dense_weight(), list(conv.factors), grad_outputs=dense.weight.grad
    )
    for p, gp in zip(conv.factors, grads, strict=True):
        torch.testing.assert_close(
            p.grad, gp, atol=tol * float(g.abs().max()) * y.numel(), rtol=1e-9
        )
    if bias:
        torch.testing.assert_close(conv.bias.grad, dense.bias.grad, atol=tol * y.numel(), rtol=0)


def test_conv_same_padding_and_gradcheck():
    s = sk.Structure([(2, 1, 3, 1), (1, 2, 1, 3)], ranks=1)
    conv = SeKronConv2d(s, padding="same", dilation=2, path="structured", dtype=torch.float64)
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(conv(x), conv.to_dense()(x), atol=1e-12, rtol=0)
    assert torch.autograd.gradcheck(lambda x, *p: conv(x), (x, *conv.factors))
    even = SeKronConv2d(
        sk.Structure([(2, 1, 2, 1), (1, 2, 2, 2)], ranks=1),
        padding="same",
        path="structured",
        dtype=torch.float64,
    )
    torch.testing.assert_close(even(x), even.to_dense()(x), atol=1e-12, rtol=0)


def test_conv_macs_counted_and_auto_path():
    s = sk.Structure([(8, 8, 3, 1), (8, 8, 1, 3)], ranks=1)
    conv = SeKronConv2d(s, padding=1)
    c = conv.macs((32, 32))
    assert c == s.macs_conv2d(32, 32, padding=1)
    assert c["dense"] == 64 * 64 * 9 * 32 * 32
    # stage 2: 8 channel groups × (8·8·3) per pixel on a 34×32 map; stage 1: 8 × (8·8·3) on 32×32
    assert c["sekron"] == 8 * 8 * 8 * 3 * 34 * 32 + 8 * 8 * 8 * 3 * 32 * 32
    assert conv.uses_structured_path((32, 32))
    assert not SeKronConv2d(
        sk.Structure([(2, 2, 1, 1), (2, 2, 1, 1)], ranks=4)
    ).uses_structured_path((8, 8))
    # tiny images stay dense even at a 4x MAC reduction (the staged path is slower there)
    assert 4 * conv.macs((8, 8))["sekron"] < conv.macs((8, 8))["dense"]
    assert not conv.uses_structured_path((8, 8))
    # a MAC saving under 2x stays dense too
    near = SeKronConv2d(sk.Structure([(8, 8, 3, 3), (8, 8, 1, 1)], ranks=6), padding=1)
    m = near.macs((32, 32))
    assert m["sekron"] < m["dense"] < 2 * m["sekron"] and not near.uses_structured_path((32, 32))


def test_dense_weight_of_a_converted_tt_layer_matches_core():
    # a 4-way TT as SeKron: the last factors are stored P_k = r_1..r_k times
    s = sk.Structure(
        [(8, 1, 1, 1), (1, 8, 1, 1), (1, 1, 3, 1), (1, 1, 1, 3)], ranks=(8, 8, 3), clip=True
    )
    conv = SeKronConv2d(s, padding=1, dtype=torch.float64)
    _randomize(conv, 5)
    ref = sk.SeKronTensor([f.detach().numpy() for f in conv.factors]).to_dense()
    W = conv.dense_weight().detach().numpy()
    assert np.allclose(
        W, ref, rtol=0, atol=64 * EPS64 * float(np.abs(ref).max()) * math.prod(s.ranks)
    )


def test_from_conv_equals_core_fit_and_keeps_settings():
    torch.manual_seed(0)
    dense = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    s = sk.Structure([(2, 2, 3, 1), (3, 2, 1, 2)], ranks=2)
    conv = SeKronConv2d.from_conv(dense, s)
    ref = sk.nkp(dense.weight.detach().double().numpy(), (2, 2, 3, 1), rank=2)
    for p, a in zip(conv.factors, ref.factors, strict=True):
        np.testing.assert_array_equal(p.detach().numpy(), a.astype(np.float32))
    assert (conv.stride, conv.padding, conv.dilation) == (
        dense.stride,
        dense.padding,
        dense.dilation,
    )
    back = conv.to_dense()
    assert (back.stride, back.padding, back.dilation) == (
        dense.stride,
        dense.padding,
        dense.dilation,
    )
    with pytest.raises(ValueError, match="groups"):
        SeKronConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2), ratio=2)
    conv3 = SeKronConv2d.from_conv(dense, ratio=3, n_factors=3)
    assert conv3.structure.n_factors == 3 and conv3.structure.n_params * 3 <= dense.weight.numel()


def test_conv_state_dict_round_trip():
    s = sk.Structure([(2, 2, 3, 1), (2, 2, 1, 3)], ranks=2)
    a, b = SeKronConv2d(s, padding=1), SeKronConv2d(s, padding=1)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 4, 6, 6)
    assert torch.equal(a(x), b(x))


# -- KroneckerEmbedding ---------------------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(st.sampled_from([1, 2, 4, 8]), st.integers(1, 3), st.integers(0, 2**16))
def test_embedding_matches_dense(n, rank, seed):
    s = sk.Structure([(11, 8 // n), (1, n)], ranks=rank, clip=True)
    emb = KroneckerEmbedding(s, dtype=torch.float64)
    _randomize(emb, seed)
    dense = emb.to_dense()
    ids = torch.randint(0, 11, (3, 4), generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(emb(ids), dense(ids), atol=_tol(*emb.factors, n_terms=rank), rtol=0)
    g = torch.randn(3, 4, 8, dtype=torch.float64)
    (emb(ids) * g).sum().backward()
    (dense(ids) * g).sum().backward()
    grads = torch.autograd.grad(
        emb.dense_weight(), list(emb.factors), grad_outputs=dense.weight.grad
    )
    for p, gp in zip(emb.factors, grads, strict=True):
        torch.testing.assert_close(p.grad, gp, atol=1e-10, rtol=1e-10)


def test_from_embedding_equals_nkp():
    torch.manual_seed(0)
    dense = nn.Embedding(30, 12)
    emb = KroneckerEmbedding.from_embedding(dense, ratio=3)
    (v, a2), (one, n) = emb.structure.shapes
    assert (v, one, a2 * n) == (30, 1, 12)
    ref = sk.nkp(dense.weight.detach().double().numpy(), (30, a2), rank=emb.structure.ranks[0])
    for p, a in zip(emb.factors, ref.factors, strict=True):
        np.testing.assert_array_equal(p.detach().numpy(), a.astype(np.float32))
    with pytest.raises(ShapeError):
        KroneckerEmbedding(sk.Structure([(5, 2), (2, 2)]))
    b = KroneckerEmbedding(emb.structure)
    b.load_state_dict(emb.state_dict())
    ids = torch.tensor([0, 5, 29])
    assert torch.equal(b(ids), emb(ids))


def test_dense_path_weight_cache_follows_factor_updates():
    conv = SeKronConv2d(
        sk.Structure([(2, 2, 3, 1), (2, 2, 1, 3)], ranks=2),
        padding=1,
        path="dense",
        dtype=torch.float64,
    )
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    with torch.no_grad():
        y1 = conv(x)
        conv.factors[0].mul_(2.0)  # an in-place update bumps the version: the cache is rebuilt
        y2 = conv(x)
        conv.factors[1].copy_(torch.zeros_like(conv.factors[1]))
        y3 = conv(x)
    torch.testing.assert_close(y2 - conv.bias[:, None, None], 2 * (y1 - conv.bias[:, None, None]))
    torch.testing.assert_close(y3, conv.bias[:, None, None].expand_as(y3))
    # with gradients recorded, the weight is rebuilt and differentiable
    conv(x).sum().backward()
    assert all(p.grad is not None for p in conv.factors)
