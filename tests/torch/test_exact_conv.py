"""The integer layers' exact convolution routes against an int64 reference.

``_int_base.exact_conv2d`` picks torch's direct float32 convolution (bound <= 2**24),
the balanced-digit split into several exact float32 products (10 to 16 bits), or the
engine's float64 / integer routes. Every route must equal the int64 convolution scaled
by its power of two, at full-range mantissas, with groups, stride, padding, dilation.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from sekron import fixed  # noqa: E402
from sekron.errors import DTypeError  # noqa: E402
from sekron.torch._int_base import exact_conv2d  # noqa: E402


def conv_ref(x, w, stride, padding, dilation, groups):
    """Grouped int64 cross-correlation, one output pixel at a time (independent of the code)."""
    x, w = x.astype(np.int64), w.astype(np.int64)
    n, _, h, wd = x.shape
    f, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, f, ho, wo), np.int64)
    fg = f // groups
    for g in range(groups):
        xs = xp[:, g * cg : (g + 1) * cg]
        ws = w[g * fg : (g + 1) * fg]
        for i in range(ho):
            for j in range(wo):
                patch = xs[
                    :,
                    :,
                    i * sh : i * sh + dh * (kh - 1) + 1 : dh,
                    j * sw : j * sw + dw * (kw - 1) + 1 : dw,
                ]
                out[:, g * fg : (g + 1) * fg, i, j] = np.einsum("nckl,fckl->nf", patch, ws)
    return out


def _mantissas(rng, shape, bits, extreme):
    m = 2 ** (bits - 1) - 1
    q = rng.integers(-m, m + 1, size=shape)
    if extreme:  # worst case: every entry at +-m
        q = np.where(rng.random(shape) < 0.5, -m, m)
    return q.astype(np.int8 if bits <= 8 else np.int16)


@pytest.mark.parametrize("bits", [8, 10, 12, 16])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("extreme", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_conv2d_equals_int64_reference(bits, groups, extreme, dtype):
    rng = np.random.default_rng(bits * 10 + groups)
    c, f = 8 * groups, 6 * groups
    x = _mantissas(rng, (3, c, 9, 8), bits, extreme)
    w = _mantissas(rng, (f, c // groups, 3, 3), bits, extreme)
    xq, wq = fixed.FixedTensor(x, -7, bits), fixed.FixedTensor(w, 3, bits)
    for geo in (((1, 1), (1, 1), (1, 1)), ((2, 1), (0, 2), (1, 2))):
        got = exact_conv2d(xq, wq, *geo, groups, torch.zeros(1, dtype=dtype))
        ref = np.ldexp(conv_ref(x, w, *geo, groups).astype(np.float64), -4)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got.numpy(), ref.astype(got.numpy().dtype))


@pytest.mark.parametrize("c", [28, 29])  # 16 bits: 9 * c * 128**2 just below / above 2**24
def test_exact_conv2d_at_the_digit_split_limit(c):
    # 16-bit mantissas split in two 8-bit digits: each digit product exact while
    # K * 128 * 128 <= 2**24 (K <= 1024); past it another split or route is taken
    rng = np.random.default_rng(c)
    m = 2**15 - 1
    x = np.where(rng.random((2, c * 4, 4, 4)) < 0.5, -m, m).astype(np.int16)
    w = np.where(rng.random((3, c * 4, 3, 3)) < 0.5, -m, m).astype(np.int16)
    xq, wq = fixed.FixedTensor(x, 0, 16), fixed.FixedTensor(w, 0, 16)
    got = exact_conv2d(xq, wq, (1, 1), (1, 1), (1, 1), 1, torch.zeros(1, dtype=torch.float64))
    np.testing.assert_array_equal(got.numpy(), conv_ref(x, w, (1, 1), (1, 1), (1, 1), 1))


@settings(max_examples=200, deadline=None)
@given(
    k=st.integers(0, 5000),
    bits_a=st.integers(2, 16),
    bits_b=st.integers(2, 16),
)
def test_float32_split_certifies_every_digit_product(k, bits_a, bits_b):
    ma, mb = 2 ** (bits_a - 1) - 1, 2 ** (bits_b - 1) - 1
    split = fixed.float32_split(k, ma, mb)
    if split is None:
        return
    pa, wa, pb, wb = split
    assert pa * pb <= 4
    # the digits of every representable mantissa, computed by split_digits itself
    da = fixed.split_digits(np.arange(-ma, ma + 1), wa, pa)
    db = fixed.split_digits(np.arange(-mb, mb + 1), wb, pb)
    np.testing.assert_array_equal(
        sum(d << (wa * i) for i, d in enumerate(da)), np.arange(-ma, ma + 1)
    )
    np.testing.assert_array_equal(
        sum(d << (wb * j) for j, d in enumerate(db)), np.arange(-mb, mb + 1)
    )
    top_a = [int(np.abs(d).max()) for d in da]
    top_b = [int(np.abs(d).max()) for d in db]
    assert k * max(top_a) * max(top_b) <= 2**24
    assert (
        k
        * sum(t << (wa * i) for i, t in enumerate(top_a))
        * sum(t << (wb * j) for j, t in enumerate(top_b))
        <= 2**53
    )
    if k * ma * mb <= 2**24:
        assert (pa, pb) == (1, 1)  # no split when none is needed


def test_split_digits_ranges_and_errors():
    q = np.arange(-32767, 32768)
    for width, parts in ((8, 2), (5, 3), (6, 3), (3, 5)):
        d = fixed.split_digits(q.astype(np.int16), width, parts)
        assert len(d) == parts and all(x.dtype == np.int64 for x in d)
        for lo in d[:-1]:
            assert lo.min() >= -(2 ** (width - 1)) and lo.max() <= 2 ** (width - 1) - 1
        np.testing.assert_array_equal(sum(x << (width * i) for i, x in enumerate(d)), q)
    with pytest.raises(DTypeError, match="q"):
        fixed.split_digits(q.astype(np.float32), 8, 2)
    with pytest.raises(ValueError, match="width"):
        fixed.split_digits(q, 63, 2)
    with pytest.raises(ValueError, match="parts"):
        fixed.split_digits(q, 8, 0)
