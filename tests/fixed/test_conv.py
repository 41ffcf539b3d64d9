"""Integer conv2d (im2col + exact GEMM) against a direct int64 reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sekron.errors import OverflowRiskError, ShapeError
from sekron.fixed import FixedTensor, conv2d, to_fixed


def conv_ref(x, w, stride, padding, dilation):
    """Direct int64 cross-correlation, one output pixel at a time."""
    x = x.astype(np.int64)
    w = w.astype(np.int64)
    n, _c, h, wd = x.shape
    f, _, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, f, ho, wo), np.int64)
    for i in range(ho):
        for j in range(wo):
            patch = xp[
                :,
                :,
                i * sh : i * sh + dh * (kh - 1) + 1 : dh,
                j * sw : j * sw + dw * (kw - 1) + 1 : dw,
            ]
            out[:, :, i, j] = np.einsum("nckl,fckl->nf", patch, w)
    return out


def _fixed(q, bits):
    return FixedTensor(q.astype(np.int8 if bits <= 8 else np.int16), 0, bits)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 2),
    c=st.integers(1, 3),
    f=st.integers(1, 3),
    h=st.integers(3, 8),
    w=st.integers(3, 8),
    kh=st.integers(1, 3),
    kw=st.integers(1, 3),
    sh=st.integers(1, 2),
    sw=st.integers(1, 2),
    ph=st.integers(0, 2),
    pw=st.integers(0, 2),
    dh=st.integers(1, 2),
    dw=st.integers(1, 2),
    bits=st.sampled_from([4, 8, 12, 16]),
    seed=st.integers(0, 2**32),
)
def test_conv2d_equals_reference(n, c, f, h, w, kh, kw, sh, sw, ph, pw, dh, dw, bits, seed):
    if h + 2 * ph < dh * (kh - 1) + 1 or w + 2 * pw < dw * (kw - 1) + 1:
        return
    rng = np.random.default_rng(seed)
    m = 2 ** (bits - 1) - 1
    x = rng.integers(-m, m + 1, size=(n, c, h, w))
    k = rng.integers(-m, m + 1, size=(f, c, kh, kw))
    out = conv2d(_fixed(x, bits), _fixed(k, bits), (sh, sw), (ph, pw), (dh, dw))
    assert np.array_equal(out.mantissa, conv_ref(x, k, (sh, sw), (ph, pw), (dh, dw)))


@pytest.mark.parametrize("bits,c", [(8, 14_800), (10, 914), (12, 57), (16, 1)])
def test_conv2d_worst_case_past_int32(bits, c):
    # K = C * 3 * 3 just past the int32 bound for the bit-width
    m = 2 ** (bits - 1) - 1
    assert c * 9 * m * m > 2**31 - 1
    x = np.full((1, c, 3, 3), -m)
    k = np.full((2, c, 3, 3), m)
    for method in ("auto", "numba", "blas"):
        out = conv2d(_fixed(x, bits), _fixed(k, bits), method=method)
        assert out.mantissa.dtype == np.int64
        assert np.array_equal(out.mantissa, conv_ref(x, k, (1, 1), (0, 0), (1, 1)))
    with pytest.raises(OverflowRiskError):
        conv2d(_fixed(x, bits), _fixed(k, bits), acc_dtype="int32")


def test_conv2d_values_and_errors():
    rng = np.random.default_rng(0)
    x = to_fixed(rng.normal(size=(2, 3, 5, 5)), 8, seed=1)
    w = to_fixed(rng.normal(size=(4, 3, 3, 3)), 8, seed=2)
    y = conv2d(x, w, padding=1)
    assert y.shape == (2, 4, 5, 5)
    assert y.exponent == x.exponent + w.exponent
    ref = conv_ref(x.mantissa, w.mantissa, (1, 1), (1, 1), (1, 1))
    np.testing.assert_array_equal(y.to_float(), np.ldexp(ref.astype(float), y.exponent))
    q = conv2d(x, w, padding=1, out_bits=8, seed=3)
    assert q.mantissa.dtype == np.int8
    with pytest.raises(ShapeError, match="channels"):
        conv2d(x, to_fixed(np.ones((4, 2, 3, 3)), 8))
    with pytest.raises(ShapeError, match="smaller"):
        conv2d(x, to_fixed(np.ones((4, 3, 7, 7)), 8))
    with pytest.raises(ValueError, match="stride"):
        conv2d(x, w, stride=0)
    with pytest.raises(ShapeError, match="4-d"):
        conv2d(to_fixed(np.ones((3, 5, 5)), 8), w)


# ------------------------------------------------------------- conv2d_float (inference)
from sekron.errors import DTypeError  # noqa: E402
from sekron.fixed import conv2d_float  # noqa: E402


def _float_ref(x, k, ex, ek, geo, dtype):
    """The int64 reference scaled by ldexp in float64, then one rounding to ``dtype``."""
    return np.ldexp(conv_ref(x, k, *geo).astype(np.float64), ex + ek).astype(dtype)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 2),
    c=st.integers(1, 3),
    f=st.integers(1, 3),
    hw=st.integers(3, 7),
    kk=st.integers(1, 3),
    s=st.integers(1, 2),
    p=st.integers(0, 1),
    d=st.integers(1, 2),
    bits=st.sampled_from([2, 5, 8, 12, 16]),
    ex=st.sampled_from([-1100, -200, -130, -20, 0, 7, 90, 120, 900]),
    ek=st.integers(-12, 12),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**32),
)
def test_conv2d_float_equals_scaled_reference(n, c, f, hw, kk, s, p, d, bits, ex, ek, dtype, seed):
    # exponents span the fused route and every fallback (float32 overflow and subnormal
    # results, ldexp past float64's normal range)
    if hw + 2 * p < d * (kk - 1) + 1:
        return
    rng = np.random.default_rng(seed)
    m = 2 ** (bits - 1) - 1
    x = rng.integers(-m, m + 1, size=(n, c, hw, hw))
    k = rng.integers(-m, m + 1, size=(f, c, kk, kk))
    mdt = np.int8 if bits <= 8 else np.int16
    xt, kt = FixedTensor(x.astype(mdt), ex, bits), FixedTensor(k.astype(mdt), ek, bits)
    geo = ((s, s), (p, p), (d, d))
    with np.errstate(over="ignore", under="ignore"):
        want = _float_ref(x, k, ex, ek, geo, dtype)
        got = conv2d_float(xt, kt, *geo, dtype=dtype)
        promised = conv2d(xt, kt, *geo).to_float().astype(dtype)  # the docstring's words
    assert got.dtype == dtype and got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, promised)


@pytest.mark.parametrize("c", [115, 116])  # K * 127**2 just below / above 2**24 at 8 bits
def test_conv2d_float_worst_case_at_the_float32_limit(c):
    m = 127
    x = np.full((1, c, 3, 3), -m)
    x[0, 0, 0, 0] = m  # not all equal: the sums are not all a single product
    k = np.full((2, c, 3, 3), m)
    xt, kt = FixedTensor(x.astype(np.int8), -3, 8), FixedTensor(k.astype(np.int8), 2, 8)
    for dtype in (np.float32, np.float64):
        got = conv2d_float(xt, kt, dtype=dtype)
        np.testing.assert_array_equal(got, _float_ref(x, k, -3, 2, ((1, 1), (0, 0), (1, 1)), dtype))


def test_conv2d_float_groups_and_errors():
    rng = np.random.default_rng(4)
    x = to_fixed(rng.normal(size=(2, 4, 5, 5)), 8, seed=1)
    w = to_fixed(rng.normal(size=(6, 2, 3, 3)), 8, seed=2)
    got = conv2d_float(x, w, padding=1, groups=2, dtype=np.float32)
    np.testing.assert_array_equal(
        got, conv2d(x, w, padding=1, groups=2).to_float().astype(np.float32)
    )
    before = x.mantissa.copy()
    for bad in (np.int32, "float16", "nope", object):
        with pytest.raises(DTypeError, match="dtype"):
            conv2d_float(x, w, groups=2, dtype=bad)
    np.testing.assert_array_equal(x.mantissa, before)
    with pytest.raises(ShapeError, match="channels"):
        conv2d_float(x, w)
