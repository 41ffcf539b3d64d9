"""sekron.ops.conv2d, conv2d_plan and execute_plan against independent convolutions."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sekron as sk
from sekron.errors import NonFiniteError, ShapeError
from sekron.ops import ConvStep, NumpyBackend, ReshapeStep, conv2d, conv2d_plan, execute_plan

try:  # torch is optional: a second, independent reference when present
    import torch
    import torch.nn.functional as tF
except ImportError:  # pragma: no cover
    torch = None


def random_sekron(structure, rng, dtype=np.float64):
    return sk.SeKronTensor([rng.normal(size=s).astype(dtype) for s in structure.factor_shapes])


def direct_conv(x, W, stride, padding, dilation):
    """Independent reference: one channel contraction per kernel offset (no im2col)."""
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    F, _C, Kh, Kw = W.shape
    Ho = (xp.shape[2] - dh * (Kh - 1) - 1) // sh + 1
    Wo = (xp.shape[3] - dw * (Kw - 1) - 1) // sw + 1
    out = np.zeros((x.shape[0], F, Ho, Wo))
    for u in range(Kh):
        for v in range(Kw):
            patch = xp[
                :,
                :,
                u * dh : u * dh + sh * (Ho - 1) + 1 : sh,
                v * dw : v * dw + sw * (Wo - 1) + 1 : sw,
            ]
            out += np.einsum("fc,nchw->nfhw", W[:, :, u, v], patch)
    return out


@st.composite
def kernel_structures(draw):
    """S = 2..4 factor shapes (F_k, C_k, Kh_k, Kw_k), small; ranks 1..full (capped at 3)."""
    S = draw(st.integers(2, 4))
    caps = (6, 6, 5, 5)
    shapes = [[1, 1, 1, 1] for _ in range(S)]
    for n in range(4):
        for k in range(S):
            total = math.prod(s[n] for s in shapes)
            shapes[k][n] = draw(st.integers(1, max(1, min(3, caps[n] // total))))
    base = sk.Structure(shapes)
    return base.with_ranks(tuple(draw(st.integers(1, min(r, 3))) for r in base.max_ranks))


def pairs(lo, hi):
    return st.one_of(st.integers(lo, hi), st.tuples(st.integers(lo, hi), st.integers(lo, hi)))


def as_pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def check_close(got, want, scale, dtype, reduction):
    assert got.shape == want.shape
    tol = 4.0 * float(np.finfo(dtype).eps) * (reduction + 2)
    err = np.abs(got.astype(np.float64) - want)
    assert np.all(err <= tol * scale + np.finfo(dtype).tiny), float(np.max(err - tol * scale))


@settings(max_examples=60, deadline=None)
@given(
    struct=kernel_structures(),
    n=st.integers(1, 3),
    h=st.integers(5, 11),
    w=st.integers(5, 11),
    stride=pairs(1, 3),
    padding=pairs(0, 2),
    dilation=pairs(1, 2),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_sekron_conv_equals_dense(struct, n, h, w, stride, padding, dilation, dtype, seed):
    _F, C, Kh, Kw = struct.shape
    s, p, d = as_pair(stride), as_pair(padding), as_pair(dilation)
    if h + 2 * p[0] < d[0] * (Kh - 1) + 1 or w + 2 * p[1] < d[1] * (Kw - 1) + 1:
        with pytest.raises(ShapeError, match="smaller than the dilated kernel"):
            conv2d(
                np.zeros((n, C, h, w), dtype),
                random_sekron(struct, np.random.default_rng(0), dtype),
                stride=stride,
                padding=padding,
                dilation=dilation,
            )
        return
    rng = np.random.default_rng(seed)
    kernel = random_sekron(struct, rng, dtype)
    x = rng.normal(size=(n, C, h, w)).astype(dtype)
    W64, x64 = kernel.astype(np.float64).to_dense(), x.astype(np.float64)
    want = direct_conv(x64, W64, s, p, d)
    Wabs = sk.SeKronTensor([np.abs(f.astype(np.float64)) for f in kernel.factors]).to_dense()
    scale = direct_conv(np.abs(x64), Wabs, s, p, d)
    K = C * Kh * Kw * math.prod(struct.ranks)
    for path in ("staged", "dense", "auto"):  # both paths, and the cost table's choice
        got = conv2d(x, kernel, stride=stride, padding=padding, dilation=dilation, path=path)
        assert got.dtype == dtype
        check_close(got, want, scale, dtype, K)
    # the dense path (im2col + GEMM) on the densified kernel agrees too
    check_close(
        conv2d(x, kernel.to_dense(), stride=stride, padding=padding, dilation=dilation),
        want,
        scale,
        dtype,
        K,
    )
    if torch is not None:
        ref = tF.conv2d(
            torch.from_numpy(x64), torch.from_numpy(W64), stride=s, padding=p, dilation=d
        )
        check_close(got, ref.numpy(), scale, dtype, K)


class CountingBackend(NumpyBackend):
    """Counts the multiply-adds the conv steps issue."""

    def __init__(self):
        self.macs = 0

    def conv2d(self, x, weight, stride, dilation, groups):
        out = super().conv2d(x, weight, stride, dilation, groups)
        self.macs += out.size * (x.shape[1] // groups) * weight.shape[2] * weight.shape[3]
        return out


@settings(max_examples=40, deadline=None)
@given(
    struct=kernel_structures(),
    n=st.integers(1, 3),
    h=st.integers(6, 10),
    w=st.integers(6, 10),
    stride=pairs(1, 3),
    padding=pairs(1, 2),
    dilation=st.integers(1, 2),
    seed=st.integers(0, 2**32 - 1),
)
def test_cost_model_counts_the_plans_macs(struct, n, h, w, stride, padding, dilation, seed):
    F, C, Kh, Kw = struct.shape
    p = as_pair(padding)
    if h + 2 * p[0] < dilation * (Kh - 1) + 1 or w + 2 * p[1] < dilation * (Kw - 1) + 1:
        return
    rng = np.random.default_rng(seed)
    kernel = random_sekron(struct, rng)
    plan = conv2d_plan(struct, (h, w), stride, padding, dilation)
    be = CountingBackend()
    y = execute_plan(plan, rng.normal(size=(n, C, h, w)), kernel.factors, be)
    cost = struct.macs_conv2d(h, w, stride, padding, dilation)
    assert be.macs == n * cost["sekron"] == n * plan.macs
    Ho, Wo = y.shape[2:]
    assert cost["dense"] == F * C * Kh * Kw * Ho * Wo


def test_plan_is_frozen_batch_agnostic_and_matches_structure():
    rng = np.random.default_rng(0)
    struct = sk.Structure([(2, 2, 3, 1), (2, 2, 1, 3), (2, 2, 1, 1)], ranks=(2, 3))
    kernel = random_sekron(struct, rng)
    plan = conv2d_plan(struct, (7, 8), stride=2, padding=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.macs = 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.steps[0].pad = (0, 0, 0, 0)
    assert all(s.shape[0] == -1 for s in plan.steps if isinstance(s, ReshapeStep))
    convs = [s for s in plan.steps if isinstance(s, ConvStep)]
    assert [s.factor for s in convs] == [2, 1, 0]  # innermost factor first
    assert convs[0].dilation == (1, 1) and convs[1].dilation == (1, 1)
    # W stride: factor 0 has width 1, so it can run in factor 1's stage; H stride: factor 0
    assert convs[1].stride == (1, 2) and convs[2].stride == (2, 1)
    for n in (1, 4):  # one plan, any batch size
        x = rng.normal(size=(n, 8, 7, 8))
        y = execute_plan(plan, x, kernel.factors)
        assert y.shape == (n, *plan.out_shape)
        Wabs = sk.SeKronTensor([np.abs(f) for f in kernel.factors]).to_dense()
        scale = direct_conv(np.abs(x), Wabs, (2, 2), (1, 1), (1, 1))
        check_close(
            y,
            direct_conv(x, kernel.to_dense(), (2, 2), (1, 1), (1, 1)),
            scale,
            np.float64,
            8 * 9 * 6,
        )
    assert conv2d_plan(struct, (7, 8), stride=2, padding=1) is plan  # cached


def test_stride_goes_to_the_cheapest_valid_stage():
    # 3x1 ⊗ 1x3: along H only factor 0 has extent, along W only factor 1; so the W stride
    # runs in the first stage (factor 1) and the H stride in the last (factor 0)
    plan = conv2d_plan(sk.Structure([(4, 4, 3, 1), (4, 4, 1, 3)], 1), (16, 16), stride=2, padding=1)
    convs = [s for s in plan.steps if isinstance(s, ConvStep)]
    assert convs[0].factor == 1 and convs[0].stride == (1, 2)
    assert convs[1].factor == 0 and convs[1].stride == (2, 1)
    # a 1x1 outer factor lets the whole stride run in the first stage
    plan = conv2d_plan(sk.Structure([(4, 4, 1, 1), (4, 4, 3, 3)], 1), (16, 16), stride=2, padding=1)
    convs = [s for s in plan.steps if isinstance(s, ConvStep)]
    assert convs[0].stride == (2, 2) and convs[1].stride == (1, 1)


def test_bias_and_dtypes():
    rng = np.random.default_rng(1)
    kernel = random_sekron(sk.Structure([(2, 2, 3, 1), (3, 2, 1, 3)], ranks=2), rng, np.float32)
    x = rng.normal(size=(2, 4, 6, 6)).astype(np.float32)
    b = rng.normal(size=6).astype(np.float32)
    y0 = conv2d(x, kernel, padding=1)
    y = conv2d(x, kernel, padding=1, bias=b)
    assert y.dtype == np.float32
    assert np.allclose(
        y - y0,
        np.broadcast_to(b[:, None, None], y.shape),
        rtol=0,
        atol=8 * np.finfo(np.float32).eps * (np.abs(y0).max() + np.abs(b).max()),
    )
    assert conv2d(x.astype(np.float64), kernel, padding=1).dtype == np.float64


def test_inputs_are_not_modified():
    rng = np.random.default_rng(2)
    kernel = random_sekron(sk.Structure([(2, 2, 1, 1), (2, 2, 3, 3)], ranks=2), rng)
    x, b = rng.normal(size=(1, 4, 5, 5)), rng.normal(size=4)
    x0, b0 = x.copy(), b.copy()
    conv2d(x, kernel, padding=1, bias=b)
    conv2d(x, kernel.to_dense(), padding=1, bias=b)
    assert np.array_equal(x, x0) and np.array_equal(b, b0)


def test_errors():
    rng = np.random.default_rng(0)
    kernel = random_sekron(sk.Structure([(2, 2, 3, 1), (2, 2, 1, 3)], ranks=1), rng)  # (4, 4, 3, 3)
    x = rng.normal(size=(1, 4, 6, 6))
    with pytest.raises(ShapeError, match="input channels"):
        conv2d(rng.normal(size=(1, 3, 6, 6)), kernel)
    with pytest.raises(ShapeError, match="input channels"):
        conv2d(rng.normal(size=(1, 3, 6, 6)), kernel.to_dense())
    with pytest.raises(ShapeError, match="4-D"):
        conv2d(x, random_sekron(sk.Structure([(2, 2), (2, 2)], ranks=1), rng))
    with pytest.raises(ShapeError, match="kernel"):
        conv2d(x, np.ones((4, 4, 3)))
    with pytest.raises(ShapeError, match="x"):
        conv2d(x[0], kernel)
    with pytest.raises(ValueError, match="stride"):
        conv2d(x, kernel, stride=0)
    with pytest.raises(ValueError, match="padding"):
        conv2d(x, kernel, padding=-1)
    with pytest.raises(ValueError, match="dilation"):
        conv2d(x, kernel, dilation=(1, 0))
    with pytest.raises(TypeError, match="stride"):
        conv2d(x, kernel, stride=1.5)
    with pytest.raises(ShapeError, match="bias"):
        conv2d(x, kernel, bias=np.ones(3))
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        conv2d(bad, kernel)
    with pytest.raises(NonFiniteError):
        conv2d(x, kernel, bias=np.array([1.0, np.inf, 0.0, 0.0]))
    with pytest.raises(ShapeError, match="smaller than the dilated kernel"):
        conv2d(rng.normal(size=(1, 4, 2, 2)), kernel)
    with pytest.raises(TypeError, match="Structure"):
        conv2d_plan((4, 4, 3, 3), (6, 6))


def test_memoised_offsets_follow_the_input_layout():
    """The thin-stage kernel's offsets are memoised per geometry: inputs of one shape laid
    out differently (contiguous, rows in a wider buffer, channels or images strided, a
    transposed batch/channel view), in any order and repeated, all equal the reference."""
    from sekron.ops import conv2d_valid

    rng = np.random.default_rng(11)
    w = rng.normal(size=(4, 6, 3, 1)).astype(np.float32)
    big = rng.normal(size=(6, 12, 9, 13)).astype(np.float32)
    layouts = [
        np.ascontiguousarray(big[:3, :6, :, :7]),
        big[:3, :6, :, :7],  # rows 13 apart
        big[:3, ::2, :, 3:10],  # channels two planes apart
        big[::2, 6:, :, :7],  # images two apart
        np.ascontiguousarray(big[:6, :3, :, :7]).transpose(1, 0, 2, 3),  # (3, 6): transposed
    ]
    for _ in range(2):
        for x in layouts:
            assert x.shape == (3, 6, 9, 7)
            got = conv2d_valid(x, w)
            want = direct_conv(x.astype(np.float64), w.astype(np.float64), (1, 1), (0, 0), (1, 1))
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
