"""The numpy convolution primitive and plan executor against independent references.

``conv2d_valid`` / ``conv2d_regrouped`` read strided views (wide rows, transposed
leading axes) and may write into a caller's view; ``run_plan`` chunks the batch, holds the
padding back and writes the last stage into the result. All of it must agree with a
direct per-offset convolution and with the generic step-by-step ``NumpyBackend`` run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sekron as sk
from sekron.ops import NumpyBackend, conv2d_plan, conv2d_valid, execute_plan
from sekron.ops import _conv as conv_mod
from sekron.ops import _fused as fused_mod
from sekron.ops import _im2col as im2col_mod
from sekron.ops._conv import run_plan
from sekron.ops._im2col import _split_axes, conv2d_regrouped, pad2d


def direct_conv(x, w, stride, dilation, groups):
    """Independent reference: valid grouped cross-correlation, one offset at a time."""
    B, _C, H, W = x.shape
    F, Cg, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    Ho, Wo = (H - dh * (kh - 1) - 1) // sh + 1, (W - dw * (kw - 1) - 1) // sw + 1
    Og = F // groups
    out = np.zeros((B, F, Ho, Wo))
    for gi in range(groups):
        xs = x[:, gi * Cg : (gi + 1) * Cg].astype(np.float64)
        ws = w[gi * Og : (gi + 1) * Og].astype(np.float64)
        for u in range(kh):
            for v in range(kw):
                patch = xs[
                    :,
                    :,
                    u * dh : u * dh + sh * (Ho - 1) + 1 : sh,
                    v * dw : v * dw + sw * (Wo - 1) + 1 : sw,
                ]
                out[:, gi * Og : (gi + 1) * Og] += np.einsum("oc,bchw->bohw", ws[:, :, u, v], patch)
    return out


def assert_close(got, want, scale, dtype, reduction):
    assert got.shape == want.shape
    tol = 4.0 * float(np.finfo(dtype).eps) * (reduction + 2)
    err = np.abs(np.asarray(got, dtype=np.float64) - want)
    assert np.all(err <= tol * scale + np.finfo(dtype).tiny), float(np.max(err - tol * scale))


@st.composite
def conv_problems(draw):
    g = draw(st.integers(1, 3))
    Cg, Og = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    H = draw(st.integers(dilation[0] * (kh - 1) + 1, 9))
    W = draw(st.integers(dilation[1] * (kw - 1) + 1, 9))
    B = draw(st.integers(1, 4))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return B, g, Cg, Og, (kh, kw), stride, dilation, (H, W), dtype


@settings(max_examples=40, deadline=None)
@given(
    p=conv_problems(), extra=st.integers(0, 3), seed=st.integers(0, 2**32 - 1), flip=st.booleans()
)
def test_conv2d_valid_on_strided_views(p, extra, seed, flip):
    B, g, Cg, Og, (kh, kw), stride, dilation, (H, W), dtype = p
    rng = np.random.default_rng(seed)
    # a view with wide rows (extra columns), and optionally reversed images and channels
    base = rng.normal(size=(B, g * Cg, H, W + extra)).astype(dtype)
    x = base[..., :W]
    if flip:
        x = x[::-1, ::-1]
    w = rng.normal(size=(g * Og, Cg, kh, kw)).astype(dtype)
    x0 = x.copy()
    got = conv2d_valid(x, w, stride, dilation, g)
    assert got.dtype == dtype
    want = direct_conv(x, w, stride, dilation, g)
    scale = direct_conv(np.abs(x), np.abs(w), stride, dilation, g)
    assert_close(got, want, scale, dtype, Cg * kh * kw)
    assert np.array_equal(x, x0)


@settings(max_examples=40, deadline=None)
@given(p=conv_problems(), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_conv2d_regrouped_reads_and_writes_transposed_views(p, seed, data):
    B, g, Cg, Og, (kh, kw), stride, dilation, (H, W), dtype = p
    rng = np.random.default_rng(seed)
    C = g * Cg
    # split the leading B*C entries into a few axes, store them permuted, read them back
    # through a transposed view (what a plan's Reshape-Transpose-Reshape produces)
    lead = _factorizations(B * C, data)
    perm = data.draw(st.permutations(range(len(lead))))
    stored = rng.normal(size=(*tuple(lead[a] for a in perm), H, W)).astype(dtype)
    xv = stored.transpose(*np.argsort(perm), len(lead), len(lead) + 1)
    assert xv.shape[:-2] == tuple(lead)
    logical = np.reshape(xv, (B, C, H, W))
    w = rng.normal(size=(g * Og, Cg, kh, kw)).astype(dtype)
    want = direct_conv(logical, w, stride, dilation, g)
    scale = direct_conv(np.abs(logical), np.abs(w), stride, dilation, g)
    got = conv2d_regrouped(xv, (-1, C, H, W), w, stride, dilation, g)
    assert_close(got, want, scale, dtype, Cg * kh * kw)
    # into a caller's view: dest stored as (Ho, Wo)-planes in permuted image order
    F = g * Og
    Ho, Wo = want.shape[2:]
    olead = _factorizations(B * F, data)
    operm = data.draw(st.permutations(range(len(olead))))
    dest = np.full((*tuple(olead[a] for a in operm), Ho, Wo), np.nan, dtype=dtype)
    out = dest.transpose(*np.argsort(operm), len(olead), len(olead) + 1)
    res = conv2d_regrouped(xv, (-1, C, H, W), w, stride, dilation, g, out=out)
    if res is out:
        assert_close(np.reshape(out, (B, F, Ho, Wo)), want, scale, dtype, Cg * kh * kw)
    else:
        assert np.isnan(dest).all()  # untouched
        assert_close(res, want, scale, dtype, Cg * kh * kw)


def _factorizations(n, data):
    """Draw a factorization of n into 1-3 factors (order matters)."""
    factors = []
    rest = n
    for _ in range(data.draw(st.integers(0, 2))):
        divisors = [d for d in range(1, rest + 1) if rest % d == 0]
        d = data.draw(st.sampled_from(divisors))
        factors.append(d)
        rest //= d
    return [*factors, rest]


def test_regrouped_writes_into_contiguous_rows_and_copies_otherwise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 5, 5))
    w = rng.normal(size=(4, 3, 3, 1))
    dest = np.zeros((2, 4, 3, 5))
    assert conv2d_regrouped(x, x.shape, w, (1, 1), (1, 1), 1, out=dest) is dest
    assert np.allclose(dest, direct_conv(x, w, (1, 1), (1, 1), 1))
    # a 1-wide kernel keeps the rows contiguous; a 3-wide one reads wide rows -> new array
    w3 = rng.normal(size=(4, 3, 3, 3))
    dest3 = np.zeros((2, 4, 3, 3))
    res = conv2d_regrouped(x, x.shape, w3, (1, 1), (1, 1), 1, out=dest3)
    assert res is not dest3 and not dest3.any()
    assert np.allclose(res, direct_conv(x, w3, (1, 1), (1, 1), 1))


def test_split_axes_exact():
    # (6, 4) C-contiguous regrouped as (2, 3 | 4): the 6-axis splits, strides follow
    axes = [(6, 16), (4, 4)]
    assert _split_axes(axes, (2, 3, 4)) == ([(2, 48)], [(3, 16)], [(4, 4)])
    # groups that merge back into single axes
    assert _split_axes([(2, 48), (3, 16), (4, 4)], (24, 1, 1)) == ([(24, 4)], [(1, 0)], [(1, 0)])
    # a boundary that cuts an axis unevenly has no view
    assert _split_axes([(6, 4)], (4, 3, 1)) is None
    # non-mergeable neighbours stay separate axes
    assert _split_axes([(2, 4), (3, 32)], (6, 1, 1)) == ([(2, 4), (3, 32)], [(1, 0)], [(1, 0)])


@st.composite
def kernel_structures(draw):
    S = draw(st.integers(2, 3))
    shapes = [
        [
            draw(st.integers(1, 3)),
            draw(st.integers(1, 3)),
            draw(st.integers(1, 3)),
            draw(st.integers(1, 3)),
        ]
        for _ in range(S)
    ]
    base = sk.Structure(shapes)
    return base.with_ranks(tuple(draw(st.integers(1, min(r, 2))) for r in base.max_ranks))


@settings(max_examples=30, deadline=None)
@given(
    struct=kernel_structures(),
    n=st.integers(1, 5),
    stride=st.integers(1, 2),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    seed=st.integers(0, 2**32 - 1),
    small=st.booleans(),
    fused=st.booleans(),
)
def test_run_plan_equals_generic_backend(
    struct, n, stride, padding, dilation, seed, small, fused, monkeypatch_module
):
    _F, C, Kh, Kw = struct.shape
    h = w = 9
    if h + 2 * padding < dilation * (Kh - 1) + 1 or w + 2 * padding < dilation * (Kw - 1) + 1:
        return
    rng = np.random.default_rng(seed)
    kernel = sk.SeKronTensor([rng.normal(size=s) for s in struct.factor_shapes])
    x = rng.normal(size=(n, C, h, w))
    plan = conv2d_plan(struct, (h, w), stride, padding, dilation)
    # stride-1 plans run as a fused program unless it is switched off (chunked steps)
    monkeypatch_module.setattr(fused_mod, "ENABLED", fused)
    if small:  # force several batch chunks and several column chunks per stage
        monkeypatch_module.setattr(conv_mod, "_BATCH_BYTES", 64)
        monkeypatch_module.setattr(im2col_mod, "_CHUNK_BYTES", 64)
    try:
        got = run_plan(plan, x, kernel.factors)
    finally:
        monkeypatch_module.undo()
    assert got.flags.c_contiguous and got.shape == (n, *plan.out_shape)
    want = execute_plan(plan, x, kernel.factors, NumpyBackend())
    Wabs = sk.SeKronTensor([np.abs(f) for f in kernel.factors]).to_dense()
    scale = direct_conv(
        pad2d(np.abs(x), (padding,) * 4), Wabs, (stride, stride), (dilation, dilation), 1
    )
    K = C * Kh * Kw * math.prod(struct.ranks)
    assert_close(got, want, scale, np.float64, K)
    ref = direct_conv(
        pad2d(x, (padding,) * 4), kernel.to_dense(), (stride, stride), (dilation, dilation), 1
    )
    assert_close(got, ref, scale, np.float64, K)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_public_conv2d_is_contiguous_and_leaves_inputs_alone():
    rng = np.random.default_rng(3)
    kernel = sk.SeKronTensor(
        [
            rng.normal(size=(1, 4, 2, 3, 3)).astype(np.float32),
            rng.normal(size=(1, 2, 4, 1, 1)).astype(np.float32),
        ]
    )
    x = rng.normal(size=(3, 8, 7, 7)).astype(np.float32)
    x0 = x.copy()
    for k in (kernel, kernel.to_dense()):
        y = sk.conv2d(x, k, padding=1)
        assert y.flags.c_contiguous and y.dtype == np.float32 and y.shape == (3, 8, 7, 7)
    assert np.array_equal(x, x0)


def _plan_weights(plan, kernel):
    from sekron.ops import ConvStep, conv_weight

    be = NumpyBackend()
    return [
        np.ascontiguousarray(conv_weight(s, kernel.factors[s.factor], be))
        for s in plan.steps
        if isinstance(s, ConvStep)
    ]


@settings(max_examples=40, deadline=None)
@given(
    struct=kernel_structures(),
    n=st.integers(1, 4),
    hw=st.tuples(st.integers(4, 12), st.integers(4, 12)),
    padding=st.tuples(st.integers(0, 2), st.integers(0, 2)),
    dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    threads=st.integers(1, 3),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_fused_program_equals_its_twin_and_direct_conv(
    struct, n, hw, padding, dilation, threads, dtype, seed, monkeypatch_module
):
    _F, C, Kh, Kw = struct.shape
    (h, w), (ph, pw), (dh, dw) = hw, padding, dilation
    if h + 2 * ph < dh * (Kh - 1) + 1 or w + 2 * pw < dw * (Kw - 1) + 1:
        return
    rng = np.random.default_rng(seed)
    kernel = sk.SeKronTensor([rng.normal(size=s).astype(dtype) for s in struct.factor_shapes])
    x = rng.normal(size=(n, C, h, w)).astype(dtype)
    x_before = x.copy()
    plan = conv2d_plan(struct, (h, w), 1, padding, dilation)
    assert fused_mod.fused_program(plan) is not None  # every stride-1 plan has one
    weights = _plan_weights(plan, kernel)
    got = np.full((n, *plan.out_shape), np.nan, dtype=dtype)
    twin = np.full_like(got, np.nan)
    # fewer images than threads: bands of rows, each with its halo (the threshold that
    # keeps small work on one thread is lifted)
    monkeypatch_module.setattr(fused_mod, "THREAD_MACS", 0)
    try:
        assert fused_mod.run_fused(plan, x, weights, got, threads)
    finally:
        monkeypatch_module.undo()
    assert fused_mod.run_fused(plan, x, weights, twin, 1, reference=True)
    assert np.array_equal(x, x_before)
    Wabs = sk.SeKronTensor([np.abs(f).astype(np.float64) for f in kernel.factors]).to_dense()
    pads = (ph, ph, pw, pw)
    scale = direct_conv(pad2d(np.abs(x).astype(np.float64), pads), Wabs, (1, 1), dilation, 1)
    ref = direct_conv(pad2d(x.astype(np.float64), pads), kernel.to_dense(), (1, 1), dilation, 1)
    K = C * Kh * Kw * math.prod(struct.ranks)
    assert_close(got, twin, scale, dtype, K)
    assert_close(got, ref, scale, dtype, K)
    assert_close(twin, ref, scale, dtype, K)


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [1, 2])
def test_fused_bands_match_torch_conv2d(threads, n, monkeypatch):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as tF

    monkeypatch.setattr(fused_mod, "THREAD_MACS", 0)  # small work shared all the same

    rng = np.random.default_rng(threads)
    struct = sk.Structure([(4, 4, 3, 1), (4, 4, 1, 3)], 2)
    kernel = sk.SeKronTensor([rng.normal(size=s) for s in struct.factor_shapes])
    x = rng.normal(size=(n, 16, 13, 11))
    plan = conv2d_plan(struct, (13, 11), 1, (1, 2), (2, 1))
    got = np.empty((n, *plan.out_shape))
    assert fused_mod.run_fused(plan, x, _plan_weights(plan, kernel), got, threads)
    want = tF.conv2d(
        torch.from_numpy(x), torch.from_numpy(kernel.to_dense()), padding=(1, 2), dilation=(2, 1)
    ).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize("stride", [(2, 1), (1, 2), (2, 2)])
def test_strided_plans_have_no_fused_program(stride):
    struct = sk.Structure([(2, 2, 3, 1), (2, 2, 1, 3)], 1)
    plan = conv2d_plan(struct, (9, 9), stride, 1)
    assert fused_mod.fused_program(plan) is None
    x = np.random.default_rng(0).normal(size=(1, 4, 9, 9))
    out = np.empty((1, *plan.out_shape))
    assert not fused_mod.run_fused(plan, x, [], out)
