"""The fused thin-stage kernel against its numpy twin, im2col + GEMM, and torch's conv2d."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sekron.ops import _conv_kernels as kern
from sekron.ops import _im2col as im2col_mod
from sekron.ops import conv2d_valid

try:
    import torch
    import torch.nn.functional as tF
except ImportError:  # pragma: no cover
    torch = None


def _tol(a, K, dtype):
    """Error bound of a K-term sum in any order: K eps sum|terms| (times a safety 4)."""
    return 4 * K * np.finfo(dtype).eps * a


@settings(max_examples=30)
@given(
    n_planes=st.integers(1, 5),
    G=st.integers(1, 3),
    Og=st.integers(1, 9),
    K=st.integers(1, 13),
    n_pos=st.integers(1, 600),  # more than one 256-position tile
    dtype=st.sampled_from([np.float32, np.float64]),
    parallel=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_kernel_equals_numpy_twin(n_planes, G, Og, K, n_pos, dtype, parallel, seed):
    rng = np.random.default_rng(seed)
    xbuf = rng.normal(size=4000).astype(dtype)
    koff = rng.integers(0, 4000 - n_pos + 1, size=(n_planes, K)).astype(np.int64)
    w = rng.normal(size=(G, Og, K)).astype(dtype)
    stride = n_pos + int(rng.integers(0, 3))  # rows with gaps between them
    ooff = rng.permutation(n_planes * Og).astype(np.int64) * stride
    size = n_planes * Og * stride
    got = np.full(size, np.nan, dtype=dtype)
    want = np.full(size, np.nan, dtype=dtype)
    if parallel:  # two shares of the planes, as two threads run them
        h = n_planes // 2
        kern.conv_flat(xbuf, koff[:h], w, got, ooff[: h * Og], n_pos, 0)
        kern.conv_flat(xbuf, koff[h:], w, got, ooff[h * Og :], n_pos, h)
    else:
        kern.conv_flat(xbuf, koff, w, got, ooff, n_pos, 0)
    kern.conv_flat_reference(xbuf, koff, w, want, ooff, n_pos)
    written = ~np.isnan(want)
    assert np.array_equal(written, ~np.isnan(got))  # the same entries, and only those
    assert written.sum() == n_planes * Og * n_pos
    # scale: sum of |terms| per output
    absw = np.abs(w)
    cols = np.abs(xbuf)[koff[:, :, None] + np.arange(n_pos)]
    scale = np.full(size, 0.0)
    for q in range(n_planes):
        s = absw[q % G] @ cols[q]
        for o in range(Og):
            scale[ooff[q * Og + o] : ooff[q * Og + o] + n_pos] = s[o]
    err = np.abs(got[written].astype(np.float64) - want[written])
    assert np.all(err <= _tol(scale[written], K, dtype) + np.finfo(dtype).tiny)


@pytest.mark.skipif(torch is None, reason="torch not installed")
@settings(max_examples=25)
@given(
    B=st.integers(1, 3),
    g=st.integers(1, 3),
    Cg=st.integers(1, 9),
    Og=st.integers(1, 9),
    kh=st.integers(1, 3),
    kw=st.integers(1, 3),
    dil=st.integers(1, 2),
    transposed=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_thin_stage_equals_torch_and_im2col(B, g, Cg, Og, kh, kw, dil, transposed, seed):
    rng = np.random.default_rng(seed)
    H, W = 11, 10
    x = rng.normal(size=(B, g * Cg, H, W))
    if transposed:  # a strided view (channels before images), as a plan's layout gives
        x = np.ascontiguousarray(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)
    w = rng.normal(size=(g * Og, Cg, kh, kw))
    got = conv2d_valid(x, w, (1, 1), (dil, dil), g)  # thin: the fused kernel
    ref = tF.conv2d(
        torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(w), dilation=dil, groups=g
    ).numpy()
    K = Cg * kh * kw
    scale = tF.conv2d(
        torch.from_numpy(np.abs(np.ascontiguousarray(x))),
        torch.from_numpy(np.abs(w)),
        dilation=dil,
        groups=g,
    ).numpy()
    assert got.shape == ref.shape
    assert np.all(np.abs(got - ref) <= _tol(scale, K, np.float64))
    thin, im2col_mod.THIN = im2col_mod.THIN, 0  # the im2col + GEMM path
    try:
        old = conv2d_valid(x, w, (1, 1), (dil, dil), g)
    finally:
        im2col_mod.THIN = thin
    assert np.all(np.abs(got - old) <= _tol(scale, K, np.float64))


def test_thin_stage_writes_into_a_callers_rows():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 6, 7, 7))
    w = rng.normal(size=(4, 6, 3, 1))  # kw = 1: output rows are contiguous
    dest = np.full((4, 2, 5, 7), np.nan).transpose(1, 0, 2, 3)  # images after channels
    res = im2col_mod.conv2d_regrouped(x, x.shape, w, (1, 1), (1, 1), 1, out=dest)
    assert res is dest and not np.isnan(dest).any()
    want = sum(np.einsum("fc,bchw->bfhw", w[:, :, u, 0], x[:, :, u : u + 5, :]) for u in range(3))
    assert np.allclose(dest, want, rtol=0, atol=1e-12 * np.abs(want).max())


def test_threads_share_the_planes(monkeypatch):
    from sekron.ops import _dispatch as dispatch_mod

    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 12, 9, 8))
    w = rng.normal(size=(6, 4, 3, 1))  # 3 groups of 4 channels, 2 outputs each
    one = conv2d_valid(x, w, (1, 1), (1, 1), 3)
    monkeypatch.setattr(dispatch_mod, "blas_threads", lambda: 2)
    monkeypatch.setattr(im2col_mod, "_PARALLEL_MACS", 0)
    two = conv2d_valid(x, w, (1, 1), (1, 1), 3)
    assert np.array_equal(one, two)  # each plane is summed the same way by any thread
