"""The public API adapters use, against exact references (int64 products, Python ints)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sekron import fixed
from sekron.errors import DTypeError, NonFiniteError, OverflowRiskError, ShapeError
from sekron.fixed import _reference as R
from sekron.fixed._kernels import PARALLEL_MIN_ELEMENTS

ADAPTER_API = [
    "mantissa_dtype",
    "align_to",
    "batched_matmul",
    "FLOAT32_EXACT",
    "FLOAT64_EXACT",
    "accumulator_bound",
    "exact_float_dtype",
    "exact_float_matmul",
    "scaled_to_float",
    "GAMMA",
    "M1",
    "M2",
    "MASK64",
    "MASK62",
    "STREAM_INPUT",
    "STREAM_WEIGHT",
    "STREAM_BIAS",
    "mix64",
    "stream_key",
    "splitmix64_outputs",
    "call_key",
    "forward_backward_keys",
    "stage_key",
]


def test_adapter_names_are_exported():
    assert set(ADAPTER_API) <= set(fixed.__all__)
    assert all(hasattr(fixed, n) for n in ADAPTER_API)


def conv_ref(x, w, stride, padding):
    """Direct int64 cross-correlation (dilation 1), one output pixel at a time."""
    x, w = x.astype(np.int64), w.astype(np.int64)
    (sh, sw), (ph, pw) = stride, padding
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    kh, kw = w.shape[2:]
    ho, wo = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    out = np.zeros((x.shape[0], w.shape[0], ho, wo), np.int64)
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * sh : i * sh + kh, j * sw : j * sw + kw]
            out[:, :, i, j] = np.einsum("nckl,fckl->nf", patch, w)
    return out


@pytest.mark.parametrize(
    "name", [n for n in ADAPTER_API if callable(getattr(fixed, n))] + ["FixedTensor.trusted"]
)
def test_adapter_callables_have_numpydoc_with_examples(name):
    import inspect

    obj = fixed.FixedTensor.trusted if name == "FixedTensor.trusted" else getattr(fixed, name)
    doc = inspect.getdoc(obj)
    for section in ("Parameters\n---", "Returns\n---", "Examples\n---"):
        assert section in doc, f"{name}: no {section.split()[0]} section"
    assert ">>> " in doc.split("Examples", 1)[1]


def _worst(shape, bits, rng, dtype=None):
    """Mantissas of magnitude exactly m = 2**(bits-1) - 1 with random signs."""
    m = 2 ** (bits - 1) - 1
    q = m * rng.choice(np.array([-1, 1]), size=shape)
    return q.astype(dtype or fixed.mantissa_dtype(bits))


@settings(max_examples=40, deadline=None)
@given(k=st.integers(0, 10**6), ba=st.integers(2, 16), bb=st.integers(2, 16))
def test_accumulator_bound_is_the_largest_partial_sum(k, ba, bb):
    ma, mb = 2 ** (ba - 1) - 1, 2 ** (bb - 1) - 1
    assert fixed.accumulator_bound(k, ba, bb) == k * ma * mb
    assert fixed.accumulator_bound(k, ba) == k * ma * ma


def test_accumulator_bound_rejects_bad_input():
    with pytest.raises(ValueError, match="k"):
        fixed.accumulator_bound(-1, 8)
    with pytest.raises(ValueError, match="bits_b"):
        fixed.accumulator_bound(4, 8, 17)
    with pytest.raises(TypeError, match="bits_a"):
        fixed.accumulator_bound(4, 8.0)


def test_exact_float_dtype_limits():
    # float32 has a 24-bit significand, float64 a 53-bit one: every integer up to 2**p is exact
    assert fixed.FLOAT32_EXACT == 2 ** (np.finfo(np.float32).nmant + 1)
    assert fixed.FLOAT64_EXACT == 2 ** (np.finfo(np.float64).nmant + 1)
    assert fixed.exact_float_dtype(0) == np.float32
    assert fixed.exact_float_dtype(2**24) == np.float32
    assert fixed.exact_float_dtype(2**24 + 1) == np.float64
    assert fixed.exact_float_dtype(2**53) == np.float64
    assert fixed.exact_float_dtype(2**53 + 1) is None
    assert fixed.exact_float_dtype(np.int64(5)) == np.float32
    with pytest.raises(ValueError, match="bound"):
        fixed.exact_float_dtype(-1)
    with pytest.raises(TypeError, match="bound"):
        fixed.exact_float_dtype(1.5)


@pytest.mark.parametrize("bits,k", [(8, 1040), (8, 1041), (16, 8192), (12, 2**20 // 64)])
def test_exact_float_matmul_worst_case_equals_int64(bits, k):
    # k=1040 at 8 bits is the last K whose bound 127**2 K fits 2**24; 1041 needs float64
    rng = np.random.default_rng(k)
    a, b = _worst((3, k), bits, rng), _worst((k, 2), bits, rng)
    a[0], b[:, 0] = abs(a[0]), abs(b[:, 0])  # one entry reaches the bound exactly
    bound = fixed.accumulator_bound(k, bits)
    got = fixed.exact_float_matmul(a, b, bound)
    assert got is not None and got.dtype == fixed.exact_float_dtype(bound)
    ref = a.astype(np.int64) @ b.astype(np.int64)
    assert ref[0, 0] == bound
    np.testing.assert_array_equal(got.astype(np.int64), ref)


def test_exact_float_matmul_batched_and_past_the_limit():
    rng = np.random.default_rng(1)
    a, b = _worst((4, 3, 50), 8, rng), _worst((4, 50, 5), 8, rng)
    got = fixed.exact_float_matmul(a, np.ascontiguousarray(b), fixed.accumulator_bound(50, 8))
    np.testing.assert_array_equal(
        got, np.einsum("pmk,pkn->pmn", a.astype(np.int64), b.astype(np.int64))
    )
    assert fixed.exact_float_matmul(a, b, 2**53 + 1) is None
    with pytest.raises(DTypeError, match="a_q"):
        fixed.exact_float_matmul([[1]], b, 4)
    with pytest.raises(DTypeError, match="b_q"):
        fixed.exact_float_matmul(a, b.astype(bool), 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("e", [-1100, -961, -960, -130, -121, -120, -3, 0, 7, 100, 101, 960, 961])
def test_scaled_to_float_equals_ldexp_then_cast(dtype, e):
    rng = np.random.default_rng(abs(e))
    for acc in (
        rng.integers(-(2**24), 2**24 + 1, size=50).astype(np.float32),
        rng.integers(-(2**53), 2**53, size=50).astype(np.float64),
        rng.integers(-(2**62), 2**62, size=50),
    ):
        with np.errstate(over="ignore"):
            ref = np.ldexp(acc.astype(np.float64), e).astype(dtype)
            got = fixed.scaled_to_float(acc, e, dtype)
        assert got.dtype == dtype and got.flags.c_contiguous
        np.testing.assert_array_equal(got, ref)


def test_scaled_to_float_rejects_bad_input():
    acc = np.ones(3)
    with pytest.raises(DTypeError, match="dtype"):
        fixed.scaled_to_float(acc, 0, np.int32)
    with pytest.raises(DTypeError, match="acc"):
        fixed.scaled_to_float([1.0], 0)
    with pytest.raises(TypeError, match="exponent"):
        fixed.scaled_to_float(acc, 0.5)
    np.testing.assert_array_equal(acc, np.ones(3))


@pytest.mark.parametrize("bits,k", [(8, 64), (16, 3), (16, 4096)])
def test_batched_matmul_worst_case_equals_int64(bits, k):
    rng = np.random.default_rng(bits + k)
    aq, bq = _worst((3, 4, k), bits, rng), _worst((3, k, 2), bits, rng)
    a, b = fixed.FixedTensor(aq, -3, bits), fixed.FixedTensor(bq, 5, bits)
    out = fixed.batched_matmul(a, b)
    ref = np.einsum("pmk,pkn->pmn", aq.astype(np.int64), bq.astype(np.int64))
    np.testing.assert_array_equal(out.mantissa, ref)
    assert out.exponent == 2 and out.shape == (3, 4, 2)
    assert 2 ** (out.bits - 1) - 1 >= fixed.accumulator_bound(k, bits)
    for method in ("numba", "blas"):
        np.testing.assert_array_equal(fixed.batched_matmul(a, b, method=method).mantissa, ref)
    two = fixed.batched_matmul(fixed.FixedTensor(aq[0], 0, bits), fixed.FixedTensor(bq[0], 0, bits))
    np.testing.assert_array_equal(two.mantissa, ref[0])


def test_batched_matmul_rejects_bad_shapes():
    a = fixed.FixedTensor(np.ones((2, 3, 4), np.int8), 0, 8)
    with pytest.raises(ShapeError, match="b"):
        fixed.batched_matmul(a, fixed.FixedTensor(np.ones((2, 5, 4), np.int8), 0, 8))
    with pytest.raises(ShapeError, match="b"):
        fixed.batched_matmul(a, fixed.FixedTensor(np.ones((4, 2), np.int8), 0, 8))
    per_slice = fixed.FixedTensor(
        np.ones((2, 4, 1), np.int8), np.array([[[0]], [[1]]], np.int64), 8
    )
    with pytest.raises(ShapeError, match="b"):
        fixed.batched_matmul(a, per_slice)
    with pytest.raises(TypeError, match="a"):
        fixed.batched_matmul(np.ones((2, 3, 4)), a)


@settings(max_examples=15, deadline=None)
@given(
    groups=st.sampled_from([1, 2, 3]),
    cg=st.integers(1, 2),
    fg=st.integers(1, 2),
    bits=st.sampled_from([4, 8, 16]),
    seed=st.integers(0, 2**32),
)
def test_grouped_conv2d_equals_per_group_int64(groups, cg, fg, bits, seed):
    rng = np.random.default_rng(seed)
    xq, wq = _worst((2, groups * cg, 5, 6), bits, rng), _worst((groups * fg, cg, 3, 2), bits, rng)
    x, w = fixed.FixedTensor(xq, 1, bits), fixed.FixedTensor(wq, -2, bits)
    out = fixed.conv2d(x, w, (1, 2), (1, 0), (1, 1), groups=groups)
    ref = np.concatenate(
        [
            conv_ref(xq[:, i * cg : (i + 1) * cg], wq[i * fg : (i + 1) * fg], (1, 2), (1, 0))
            for i in range(groups)
        ],
        axis=1,
    )
    np.testing.assert_array_equal(out.mantissa, ref)
    assert out.exponent == -1


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_grouped_conv2d_backward_equals_per_group(rounding):
    rng = np.random.default_rng(3)
    groups, bits = 2, 8
    x = fixed.FixedTensor(_worst((2, 4, 5, 5), bits, rng), 0, bits)
    w = fixed.FixedTensor(_worst((6, 2, 3, 3), bits, rng), -1, bits)
    g = rng.normal(size=(2, 6, 3, 3))
    dx, dw = fixed.conv2d_backward(x, w, g, bits=bits, rounding=rounding, seed=11, groups=groups)
    g1 = fixed.to_fixed(g, bits, rounding, 11, stream=1)  # one mapping over all groups
    g2 = fixed.to_fixed(g, bits, rounding, 11, stream=2)
    for i in range(groups):
        xs = fixed.FixedTensor(x.mantissa[:, 2 * i : 2 * i + 2], 0, bits)
        ws = fixed.FixedTensor(w.mantissa[3 * i : 3 * i + 3], -1, bits)
        g1s = fixed.FixedTensor(g1.mantissa[:, 3 * i : 3 * i + 3], g1.exponent, bits)
        g2s = fixed.FixedTensor(g2.mantissa[:, 3 * i : 3 * i + 3], g2.exponent, bits)
        dx_i, _ = fixed.conv2d_backward(xs, ws, g1s, bits=bits, rounding=rounding, seed=11)
        _, dw_i = fixed.conv2d_backward(xs, ws, g2s, bits=bits, rounding=rounding, seed=11)
        np.testing.assert_array_equal(dx.mantissa[:, 2 * i : 2 * i + 2], dx_i.mantissa)
        np.testing.assert_array_equal(dw.mantissa[3 * i : 3 * i + 3], dw_i.mantissa)
        assert dx.exponent == dx_i.exponent and dw.exponent == dw_i.exponent


def test_grouped_conv2d_rejects_bad_groups():
    x = fixed.FixedTensor(np.ones((1, 4, 3, 3), np.int8), 0, 8)
    w = fixed.FixedTensor(np.ones((3, 2, 1, 1), np.int8), 0, 8)
    with pytest.raises(ShapeError, match="groups"):
        fixed.conv2d(x, w, groups=2)
    with pytest.raises(ValueError, match="groups"):
        fixed.conv2d(x, w, groups=0)
    with pytest.raises(ShapeError, match="groups"):
        fixed.conv2d_backward(x, w, np.ones((1, 3, 3, 3)), groups=2)


@settings(max_examples=40, deadline=None)
@given(
    bits=st.integers(2, 16),
    e_t=st.integers(-20, 20),
    e=st.integers(-40, 40),
    rounding=st.sampled_from(["nearest", "stochastic"]),
    seed=st.integers(0, 2**40),
)
def test_align_to_equals_python_int_shifts(bits, e_t, e, rounding, seed):
    m = 2 ** (bits - 1) - 1
    q = np.array([m, -m, 1, -1, 0, m // 2], dtype=fixed.mantissa_dtype(bits))
    t = fixed.FixedTensor(q, e_t, bits)
    d = e_t - e
    if bits - 1 + d > 62:  # the left shift would leave int64's safe range
        with pytest.raises(OverflowRiskError, match="align"):
            fixed.align_to(t, e, rounding, seed)
        return
    got, bound = fixed.align_to(t, e, rounding, seed)
    assert bound == m << max(d, 0)
    if d >= 0:
        assert got.tolist() == [int(v) << d for v in q]
    elif rounding == "nearest":
        s = -d
        assert got.tolist() == [(int(v) + (1 << (s - 1))) >> s for v in q]
    else:
        s = -d
        # stochastic: one of the two neighbours, from stream 4 of the seed
        assert all(
            int(v) >> s <= g <= (int(v) >> s) + 1 for v, g in zip(q, got.tolist(), strict=True)
        )
        ref = R.shift_ref(q, s, True, R.stream_key(seed, 4)) if s <= 62 else None
        if ref is not None:
            assert got.tolist() == ref.tolist()
    np.testing.assert_array_equal(t.mantissa, q)


def test_align_to_rejects_bad_input():
    t = fixed.FixedTensor(np.array([3], np.int16), 0, 16)
    with pytest.raises(OverflowRiskError):
        fixed.align_to(t, -50, "nearest", 0)
    with pytest.raises(TypeError, match="t"):
        fixed.align_to(np.array([3]), 0, "nearest", 0)
    with pytest.raises(TypeError, match="exponent"):
        fixed.align_to(t, 0.5, "nearest", 0)
    with pytest.raises(ValueError, match="rounding"):
        fixed.align_to(t, -1, "up", 0)


def test_trusted_keeps_the_array_and_checks_only_o1_facts():
    q = np.array([3, -5], dtype=np.int8)
    t = fixed.FixedTensor.trusted(q, np.array([-2]), 4)
    # kept (a read-only view of the same memory), not copied
    assert (
        t.mantissa.base is q and np.shares_memory(t.mantissa, q) and not t.mantissa.flags.writeable
    )
    assert t.exponent == -2 and t.per_tensor and t.bits == 4
    np.testing.assert_array_equal(t.to_float(), [0.75, -1.25])
    with pytest.raises(DTypeError, match="mantissa"):
        fixed.FixedTensor.trusted(q.astype(np.float32), 0, 4)
    with pytest.raises(DTypeError, match="mantissa"):
        fixed.FixedTensor.trusted([3], 0, 4)
    with pytest.raises(OverflowRiskError, match="mantissa"):
        fixed.FixedTensor.trusted(q, 0, 12)
    with pytest.raises(TypeError, match="bits"):
        fixed.FixedTensor.trusted(q, 0, 4.0)
    with pytest.raises(ValueError, match="bits"):
        fixed.FixedTensor.trusted(q, 0, 1)
    with pytest.raises(DTypeError, match="exponent"):
        fixed.FixedTensor.trusted(q, 0.5, 4)


def test_mantissa_dtype_is_the_narrowest():
    for bits in range(1, 65):
        dt = fixed.mantissa_dtype(bits)
        assert dt.kind == "i" and dt.itemsize * 8 >= bits
        assert dt.itemsize == 1 or (dt.itemsize // 2) * 8 < bits
    with pytest.raises(OverflowRiskError, match="bits"):
        fixed.mantissa_dtype(65)
    with pytest.raises(TypeError, match="bits"):
        fixed.mantissa_dtype(8.0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**64 - 1), n=st.integers(0, 6))
def test_splitmix_outputs_equal_the_numpy_reference(seed, n):
    assert fixed.splitmix64_outputs(seed, n) == R.split_seed_ref(seed, n)
    assert fixed.split_seed(seed, n) == R.split_seed_ref(seed, n)
    words = R.hash_stream(np.uint64(seed), 1)
    assert fixed.mix64(seed + fixed.GAMMA) == int(words[0])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**40), call=st.integers(0, 2**31), stage=st.integers(0, 64))
def test_adapter_keys_keep_their_formulas(seed, call, stage):
    # the torch integer layers' keys before they moved into the engine, written out
    mask = (1 << 62) - 1
    assert fixed.call_key(seed, call) == ((seed & 0xFFFFFFFF) << 30 | (call & 0x3FFFFFFF)) & mask
    fwd, bwd = fixed.forward_backward_keys(seed)
    assert fwd == (seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & mask
    assert bwd == (seed * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & mask
    assert (
        fixed.stage_key(seed, stage)
        == (seed * 0xD6E8FEB86659FD93 + stage * 0x9E3779B97F4A7C15 + 1) & mask
    )
    assert (fixed.STREAM_INPUT, fixed.STREAM_WEIGHT, fixed.STREAM_BIAS) == (11, 12, 13)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fused", [True, False])
def test_to_fixed_large_route_equals_reference(rounding, dtype, fused, monkeypatch):
    # large arrays run the fused one-pass kernel, or (past FUSED_MAX_ELEMENTS) the scaled route
    if not fused:
        from sekron.fixed import _kernels

        monkeypatch.setattr(_kernels, "FUSED_MAX_ELEMENTS", 0)
    rng = np.random.default_rng(5)
    base = rng.normal(size=(PARALLEL_MIN_ELEMENTS // 64 + 1, 64))
    for scale in (1e-300, 1e-30, 1.0, 1e30, 1e300):
        with np.errstate(over="ignore"):
            x = (base * scale).astype(dtype)
        if not np.all(np.isfinite(x)) or not np.any(x):
            continue  # float32 cannot hold the extreme scales
        for bits in (2, 8, 16):
            got = fixed.to_fixed(x, bits, rounding, 3, stream=12)
            q_ref, e_ref = R.map_fixed_ref(x, bits, rounding == "stochastic", R.stream_key(3, 12))
            assert got.exponent == e_ref and got.mantissa.dtype == fixed.mantissa_dtype(bits)
            np.testing.assert_array_equal(got.mantissa.ravel(), q_ref)
    zeros = fixed.to_fixed(np.zeros(PARALLEL_MIN_ELEMENTS + 1), 8, rounding, 0)
    assert zeros.exponent == 0 and not zeros.mantissa.any()
    bad = base.copy()
    bad[3, 3] = np.nan
    with pytest.raises(NonFiniteError):
        fixed.to_fixed(bad, 8, rounding, 0)
