"""Fused serial kernels: bit-identical to the unfused public ops and to numpy references.

The fused paths run for tensors below ``_kernels.PARALLEL_MIN_ELEMENTS``; setting that
threshold to 0 forces the general (unfused) paths, so each test runs the same public call
both ways with the same seeds and compares every bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sekron.errors import NonFiniteError
from sekron.fixed import (
    FixedTensor,
    linear,
    linear_backward,
    requantize,
    sgd_step,
    to_fixed,
)
from sekron.fixed import _kernels as K
from sekron.fixed import _reference as R
from sekron.fixed._tensor import shift_round

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, allow_subnormal=True, width=64)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6)
seeds = st.integers(0, 2**64 - 1)


def _unfused(fn):
    with pytest.MonkeyPatch.context() as m:
        m.setattr(K, "PARALLEL_MIN_ELEMENTS", 0)
        return fn()


def _same(a: FixedTensor, b: FixedTensor) -> None:
    assert a.mantissa.dtype == b.mantissa.dtype and a.shape == b.shape and a.bits == b.bits
    np.testing.assert_array_equal(a.mantissa, b.mantissa)
    assert a.exponent == b.exponent and isinstance(a.exponent, int) and isinstance(b.exponent, int)


def test_stream_key_matches_reference():
    for seed in (0, 1, 2**63 + 5, 2**64 - 1):
        for stream in (0, 1, 7):
            assert K.stream_key_nb(np.uint64(seed), stream) == R.stream_key(seed, stream)


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(st.sampled_from([np.float32, np.float64]), shapes, elements=finite),
       bits=st.integers(2, 16), seed=seeds, stochastic=st.booleans(), stream=st.integers(0, 9))
def test_map_fixed_kernel_matches_reference(x, bits, seed, stochastic, stream):
    out = np.empty(x.size, np.int16)
    e = K.map_fixed_flat(x.reshape(-1), bits, stochastic, np.uint64(seed), stream, out)
    q_ref, e_ref = R.map_fixed_ref(x, bits, stochastic, R.stream_key(seed, stream))
    np.testing.assert_array_equal(out.astype(np.int64), q_ref)
    assert e == e_ref


@settings(max_examples=60, deadline=None)
@given(x=hnp.arrays(st.sampled_from([np.float32, np.float64]), shapes, elements=finite),
       bits=st.integers(2, 16), seed=seeds, rounding=st.sampled_from(["stochastic", "nearest"]))
def test_to_fixed_fast_path_is_bit_identical(x, bits, seed, rounding):
    fast = to_fixed(x, bits, rounding, seed, stream=3)
    slow = _unfused(lambda: to_fixed(x, bits, rounding, seed, stream=3))
    _same(fast, slow)


def test_to_fixed_fast_path_generator_and_errors():
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(3):  # a Generator is asked for one seed per call on both paths
        _same(to_fixed(x, 12, seed=g1), _unfused(lambda: to_fixed(x, 12, seed=g2)))
    assert g1.integers(1 << 30) == g2.integers(1 << 30)
    bad = x.copy()
    bad[2, 3] = np.nan
    with pytest.raises(NonFiniteError):
        to_fixed(bad, 8, seed=0)
    _same(to_fixed(np.zeros((3, 2)), 8, seed=0), _unfused(lambda: to_fixed(np.zeros((3, 2)), 8, seed=0)))


wide = hnp.arrays(np.int64, hnp.array_shapes(min_dims=1, max_dims=2, max_side=7),
                  elements=st.integers(-(2**40), 2**40))


@settings(max_examples=60, deadline=None)
@given(q=wide, e=st.integers(-40, 40), bits=st.integers(2, 16), seed=seeds, stochastic=st.booleans(),
       scale=st.integers(0, 38))
def test_requant_kernel_matches_reference(q, e, bits, seed, stochastic, scale):
    q = q >> scale  # small magnitudes too, so requantization also shifts left
    out = np.empty(q.size, np.int16)
    got_e = K.requant_flat(q.reshape(-1), e, bits, stochastic, np.uint64(seed), 2, np.zeros(1, bool), False, out)
    q_ref, e_ref = R.requant_ref(q, e, bits, stochastic, R.stream_key(seed, 2))
    np.testing.assert_array_equal(out.astype(np.int64), q_ref)
    assert got_e == e_ref
    mask = np.arange(q.size) % 3 != 0
    out_m = np.empty(q.size, np.int16)
    K.requant_flat(q.reshape(-1), e, bits, stochastic, np.uint64(seed), 2, mask, True, out_m)
    np.testing.assert_array_equal(out_m, np.where(mask, out, 0))


@settings(max_examples=60, deadline=None)
@given(q=wide, e=st.integers(-40, 40), bits=st.integers(2, 16), seed=seeds,
       rounding=st.sampled_from(["stochastic", "nearest"]), scale=st.integers(0, 38),
       dtype=st.sampled_from([np.int16, np.int32, np.int64]))
def test_requantize_fast_path_is_bit_identical(q, e, bits, seed, rounding, scale, dtype):
    q = q >> scale
    info = np.iinfo(dtype)
    q = np.clip(q, -info.max, info.max).astype(dtype)
    t = FixedTensor(q, e, min(62, info.bits))
    _same(requantize(t, bits, rounding, seed, stream=5),
          _unfused(lambda: requantize(t, bits, rounding, seed, stream=5)))


@settings(max_examples=60, deadline=None)
@given(q=wide, shift=st.integers(-20, 62), seed=seeds, rounding=st.sampled_from(["stochastic", "nearest"]))
def test_scalar_shift_fast_path_is_bit_identical(q, shift, seed, rounding):
    q = q >> 21  # |q| < 2^19: a left shift by up to 20 stays far inside int64
    fast = shift_round(q, np.array(shift), rounding, seed, 4)
    slow = _unfused(lambda: shift_round(q, np.array(shift), rounding, seed, 4))
    np.testing.assert_array_equal(fast, slow)
    np.testing.assert_array_equal(fast.reshape(-1), R.shift_ref(q, shift, rounding == "stochastic",
                                                                R.stream_key(seed, 4)))


def _layer_grads(x, w, b, g, bits, seed):
    xq, wq, bq = (to_fixed(v, bits, seed=seed + i) for i, v in enumerate((x, w, b)))
    y = linear(xq, wq, bq, out_bits=bits, seed=seed + 3)
    return (y, *linear_backward(xq, wq, g, bits, seed=seed + 4))


@pytest.mark.parametrize("bits", [8, 12, 16])
def test_linear_forward_backward_fast_paths_are_bit_identical(bits):
    rng = np.random.default_rng(bits)
    x = rng.normal(size=(9, 6)).astype(np.float32)
    w = rng.normal(size=(4, 6)).astype(np.float32)
    b = (rng.normal(size=4) * 1e-3).astype(np.float32)
    g = rng.normal(size=(9, 4)).astype(np.float32)
    fast = _layer_grads(x, w, b, g, bits, 11)
    slow = _unfused(lambda: _layer_grads(x, w, b, g, bits, 11))
    for f, s in zip(fast, slow, strict=True):
        _same(f, s)


def _sgd_run(w0, grads, bits, momentum, weight_decay, seed):
    w, state = w0.copy(), None
    out = []
    for i, g in enumerate(grads):
        w, state = sgd_step(w, g, state, lr=0.05, momentum=momentum, weight_decay=weight_decay,
                            bits=bits, seed=seed + i)
        out.append((w, state))
    return out


@pytest.mark.parametrize("bits", [4, 16])
@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.0, 0.0), (0.9, 0.0), (0.0, 1e-3), (0.9, 1e-4)])
@pytest.mark.parametrize("wdtype", [np.float32, np.float64])
@pytest.mark.parametrize("fixed_grad", [True, False])
def test_fused_sgd_is_bit_identical(bits, momentum, weight_decay, wdtype, fixed_grad):
    rng = np.random.default_rng(bits)
    w0 = rng.normal(size=(6, 5)).astype(wdtype)
    grads = [rng.normal(size=(6, 5)) * 10.0**-i for i in range(5)]
    if fixed_grad:  # exact wide accumulators, as linear_backward returns them
        grads = [FixedTensor(np.round(g * 2**20).astype(np.int64), -20 - i, 40) for i, g in enumerate(grads)]
    grads.append(FixedTensor(np.zeros((6, 5), np.int32), 0, 20) if fixed_grad else np.zeros((6, 5)))
    fast = _sgd_run(w0, grads, bits, momentum, weight_decay, 2**64 - 3)  # keys wrap past 2^64
    slow = _unfused(lambda: _sgd_run(w0, grads, bits, momentum, weight_decay, 2**64 - 3))
    for (wf, sf), (ws, ss) in zip(fast, slow, strict=True):
        assert wf.dtype == ws.dtype == wdtype
        np.testing.assert_array_equal(wf, ws)
        assert sf.step == ss.step
        assert (sf.velocity is None) == (ss.velocity is None)
        if sf.velocity is not None:
            _same(sf.velocity, ss.velocity)


def test_fused_sgd_falls_back_on_nonfinite_weights():
    w = np.array([1.0, np.inf])
    with pytest.raises(NonFiniteError):
        sgd_step(w, np.ones(2), lr=0.1, bits=8, seed=0)
