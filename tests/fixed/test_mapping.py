"""Mapping float -> dynamic fixed point, stochastic rounding and requantization."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sekron.errors import ArgumentError, DTypeError, NonFiniteError, OverflowRiskError, ShapeError
from sekron.fixed import FixedTensor, requantize, to_fixed
from sekron.fixed import _kernels as K
from sekron.fixed import _reference as R

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64)
arrays = hnp.arrays(
    np.float64, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6), elements=finite
)
bits_st = st.integers(2, 16)


def _unit(t: FixedTensor) -> np.ndarray:
    return np.ldexp(1.0, np.asarray(t.exponent))


@settings(max_examples=60, deadline=None)
@given(x=arrays, bits=bits_st, seed=st.integers(0, 2**63))
def test_mapping_invariants(x, bits, seed):
    for rounding in ("stochastic", "nearest"):
        t = to_fixed(x, bits, rounding, seed)
        m = (1 << (bits - 1)) - 1
        assert t.mantissa.dtype == (np.int8 if bits <= 8 else np.int16)
        assert t.shape == x.shape
        assert np.abs(t.mantissa.astype(np.int64)).max(initial=0) <= m
        nz = x[x != 0]
        if nz.size == 0:
            assert t.exponent == 0 and not t.mantissa.any()
            continue
        e_max = int(np.floor(np.log2(np.abs(nz).max())))
        assert t.exponent == e_max - (bits - 2)
        err = np.abs(t.to_float() - x)
        unit = 2.0**t.exponent
        # stochastic: strictly below one unit; nearest: half a unit except the clamped
        # top (|x| rounding up to 2^(b-1) is clamped to 2^(b-1)-1, at most one unit off)
        assert np.all(err <= unit)
        if rounding == "nearest":
            clamped = np.abs(t.mantissa.astype(np.int64)) == m
            assert np.all(err[~clamped] <= unit / 2)


def test_all_zero_and_per_axis():
    t = to_fixed(np.zeros((2, 3)), 8)
    assert t.exponent == 0 and not t.mantissa.any()
    x = np.array([[1.0, -0.5], [0.0, 0.0], [100.0, 3.0]])
    t = to_fixed(x, 8, "nearest", axis=0)
    assert np.shape(t.exponent) == (3, 1)
    assert np.array_equal(np.asarray(t.exponent).ravel(), [-6, 0, 0])
    assert np.abs(t.to_float() - x).max() <= 2.0**0  # within the widest cell's half unit
    np.testing.assert_array_equal(t.to_float()[0], x[0])


def test_stochastic_rounding_unbiased():
    # one value repeated n times: each element gets independent bits, so the mean of the
    # dequantized values estimates E[x_hat]; its std is <= unit * sqrt(p(1-p) / n)
    n = 200_000
    for v in (0.3, -0.3, 1.0 / 3.0, -2.7):
        x = np.full(n, v)
        x[0] = 4.0  # pins the exponent: unit = 2^(2 - (8 - 2)) = 1/16
        t = to_fixed(x, 8, "stochastic", seed=1234)
        unit = 2.0**t.exponent
        frac = (v / unit) - np.floor(v / unit)
        sigma = unit * np.sqrt(frac * (1 - frac) / (n - 1))
        assert abs(t.to_float()[1:].mean() - v) <= 5 * sigma


def test_seed_determinism_and_streams():
    x = np.random.default_rng(0).normal(size=1000)
    a = to_fixed(x, 6, seed=7)
    b = to_fixed(x, 6, seed=7)
    c = to_fixed(x, 6, seed=7, stream=1)
    assert np.array_equal(a.mantissa, b.mantissa)
    assert not np.array_equal(a.mantissa, c.mantissa)
    g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
    assert np.array_equal(to_fixed(x, 6, seed=g1).mantissa, to_fixed(x, 6, seed=g2).mantissa)


@settings(max_examples=30, deadline=None)
@given(
    y=hnp.arrays(np.float64, st.integers(0, 200), elements=st.floats(-300, 300, width=64)),
    seed=st.integers(0, 2**64 - 1),
    stream=st.integers(0, 10),
    qmax=st.sampled_from([1, 127, 32767]),
)
def test_round_stochastic_kernel_matches_reference(y, seed, stream, qmax):
    key = R.stream_key(seed, stream)
    for kernel in (K.round_stochastic, K.round_stochastic_serial):
        out = np.empty(y.size, np.int64)
        kernel(y, key, np.int64(qmax), out)
        assert np.array_equal(out, R.round_stochastic_ref(y, key, qmax))


@settings(max_examples=30, deadline=None)
@given(
    data=st.data(),
    n=st.integers(0, 100),
    seed=st.integers(0, 2**64 - 1),
)
def test_shift_stochastic_kernel_matches_reference(data, n, seed):
    x = data.draw(hnp.arrays(np.int64, n, elements=st.integers(-(2**61), 2**61)))
    s = data.draw(hnp.arrays(np.int64, n, elements=st.integers(0, 130)))
    key = R.stream_key(seed, 0)
    for kernel in (K.shift_stochastic, K.shift_stochastic_serial):
        out = np.empty(n, np.int64)
        kernel(x, s, key, out)
        assert np.array_equal(out, R.shift_stochastic_ref(x, s, key))


def test_shift_stochastic_unbiased_negative():
    # SR(x >> s) = (x + r) >> s is exact in expectation, negative x included
    n = 100_000
    for v, s in ((-37, 4), (37, 4), (-5, 70)):
        x = np.full(n, v, np.int64)
        out = np.empty(n, np.int64)
        K.shift_stochastic(x, np.full(n, s, np.int64), R.stream_key(99, 0), out)
        p = abs(v) / 2.0**s - np.floor(abs(v) / 2.0**s)
        sigma = np.sqrt(p * (1 - p) / n)
        assert abs(out.mean() - v / 2.0**s) <= 5 * sigma + 1e-300


@settings(max_examples=40, deadline=None)
@given(
    q=hnp.arrays(
        np.int64, hnp.array_shapes(max_dims=2, max_side=8), elements=st.integers(-(2**40), 2**40)
    ),
    e=st.integers(-50, 50),
    bits=bits_st,
)
def test_requantize_nearest_equals_mapping_of_exact_value(q, e, bits):
    acc = FixedTensor(q, e, 42)
    r = requantize(acc, bits, "nearest")
    t = to_fixed(acc.to_float(), bits, "nearest")
    assert r.exponent == t.exponent
    assert np.array_equal(r.mantissa, t.mantissa)


def test_requantize_stochastic_unbiased_and_per_axis():
    n = 100_000
    q = np.full(n, 1000, np.int32)
    q[0] = 2047  # the largest 12-bit value sets the shift
    acc = FixedTensor(q, -10, 12)
    r = requantize(acc, 4, seed=5)  # shift 11 - 3 = 8: 1000 / 256 = 3.906
    vals = r.mantissa[1:].astype(np.float64) * 2.0 ** (r.exponent + 10)
    sigma = 256 * np.sqrt(0.906 * 0.094 / n)
    assert abs(vals.mean() - 1000) <= 5 * sigma
    per_row = FixedTensor(np.array([[1000, 3], [1, -1]], np.int32), np.array([[-3], [0]]), 12)
    rr = requantize(per_row, 4, "nearest")
    assert np.array_equal(np.asarray(rr.exponent).ravel(), [4, -2])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rejected(bad):
    x = np.array([1.0, bad])
    with pytest.raises(NonFiniteError, match="x"):
        to_fixed(x, 8)


@pytest.mark.parametrize("bits", [1, 17, 0, 2.5, True])
def test_bad_bits(bits):
    with pytest.raises((ValueError, TypeError), match="bits"):
        to_fixed([1.0], bits)


def test_bad_arguments():
    with pytest.raises(ValueError, match="rounding"):
        to_fixed([1.0], 8, rounding="up")  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match="axis"):
        to_fixed(np.ones((2, 2)), 8, axis=3)
    with pytest.raises(DTypeError):
        to_fixed(np.array(["a"]), 8)
    with pytest.raises(ValueError, match="seed"):
        to_fixed([1.0], 8, seed=-1)
    with pytest.raises(OverflowRiskError, match="mantissa"):
        FixedTensor(np.array([200], np.int16), 0, 8)
    with pytest.raises(OverflowRiskError, match="dtype"):
        FixedTensor(np.array([1], np.int8), 0, 12)
    with pytest.raises(DTypeError, match="mantissa"):
        FixedTensor(np.array([1.0]), 0, 8)
    with pytest.raises(ShapeError, match="exponent"):
        FixedTensor(np.zeros((2, 3), np.int8), np.zeros((3, 1), np.int64), 8)
    with pytest.raises(TypeError, match="FixedTensor"):
        requantize(np.ones(3), 8)  # type: ignore[arg-type]


def test_inputs_not_modified():
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    x0 = x.copy()
    to_fixed(x, 8, axis=1)
    assert np.array_equal(x, x0)
    q = np.array([1000, -7], np.int32)
    requantize(FixedTensor(q, 0, 12), 4)
    assert np.array_equal(q, [1000, -7])


def test_fixed_tensor_is_immutable_after_validation_and_leaves_its_input_alone():
    q = np.array([127, -3], dtype=np.int8)
    t = FixedTensor(q, 0, 8)
    with pytest.raises(ValueError):
        t.mantissa[0] = -128  # would pass the validated bound silently
    q[0] = 5  # the caller's array stays theirs, and writable
    assert t.mantissa[0] == 127


def test_results_of_the_engine_are_read_only_too():
    # to_fixed and every op build their results without a second validation pass;
    # those mantissas may not be written either, and trusted() leaves its input writable
    x = np.array([[0.5, -1.0], [2.0, 0.25]])
    t = to_fixed(x, 8, rounding="nearest")
    with pytest.raises(ValueError):
        t.mantissa[0, 0] = -128
    with pytest.raises(ValueError):
        requantize(t, 4).mantissa[0, 0] = 7
    q = np.array([3, -5], dtype=np.int8)
    u = FixedTensor.trusted(q, -2, 4)
    with pytest.raises(ValueError):
        u.mantissa[0] = 7
    q[0] = 1
    assert q.flags.writeable and u.mantissa[0] == 1  # kept, not copied


@pytest.mark.parametrize("exponent", [2**80, -(2**80), 2**15])
def test_fixed_tensor_refuses_exponents_out_of_range(exponent):
    with pytest.raises(OverflowRiskError, match="exponent"):
        FixedTensor(np.array([1], np.int8), exponent, 8)


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (-1, ArgumentError),
        (2**70, ArgumentError),
        ("a", DTypeError),
        (1.5, DTypeError),
        (True, DTypeError),
    ],
)
def test_to_fixed_checks_its_stream(stream, error):
    x = np.ones(4)
    before = x.copy()
    with pytest.raises(error, match="stream"):
        to_fixed(x, 8, stream=stream)
    assert np.array_equal(x, before)
