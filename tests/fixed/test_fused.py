"""Fused serial kernels: bit-identical to the unfused public ops and to numpy references.

The fused paths run for tensors below ``_kernels.PARALLEL_MIN_ELEMENTS`` (and, up to
``_kernels.FUSED_MAX_ELEMENTS``, above it); setting those thresholds to 0 forces the general (unfused) paths, so each test runs the same public call
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
        m.setattr(K, "FUSED_MAX_ELEMENTS", 0)
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
@given(
    x=hnp.arrays(st.sampled_from([np.float32, np.float64]), shapes, elements=finite),
    bits=st.integers(2, 16),
    seed=seeds,
    stochastic=st.booleans(),
    stream=st.integers(0, 9),
)
def test_map_fixed_kernel_matches_reference(x, bits, seed, stochastic, stream):
    out = np.empty(x.size, np.int16)
    e = K.map_fixed_flat(x.reshape(-1), bits, stochastic, np.uint64(seed), stream, out)
    q_ref, e_ref = R.map_fixed_ref(x, bits, stochastic, R.stream_key(seed, stream))
    np.testing.assert_array_equal(out.astype(np.int64), q_ref)
    assert e == e_ref


@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(st.sampled_from([np.float32, np.float64]), shapes, elements=finite),
    bits=st.integers(2, 16),
    seed=seeds,
    rounding=st.sampled_from(["stochastic", "nearest"]),
)
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
    _same(
        to_fixed(np.zeros((3, 2)), 8, seed=0),
        _unfused(lambda: to_fixed(np.zeros((3, 2)), 8, seed=0)),
    )


wide = hnp.arrays(
    np.int64,
    hnp.array_shapes(min_dims=1, max_dims=2, max_side=7),
    elements=st.integers(-(2**40), 2**40),
)


@settings(max_examples=60, deadline=None)
@given(
    q=wide,
    e=st.integers(-40, 40),
    bits=st.integers(2, 16),
    seed=seeds,
    stochastic=st.booleans(),
    scale=st.integers(0, 38),
)
def test_requant_kernel_matches_reference(q, e, bits, seed, stochastic, scale):
    q = q >> scale  # small magnitudes too, so requantization also shifts left
    out = np.empty(q.size, np.int16)
    got_e = K.requant_flat(
        q.reshape(-1), e, bits, stochastic, np.uint64(seed), 2, np.zeros(1, bool), False, out
    )
    q_ref, e_ref = R.requant_ref(q, e, bits, stochastic, R.stream_key(seed, 2))
    np.testing.assert_array_equal(out.astype(np.int64), q_ref)
    assert got_e == e_ref
    mask = np.arange(q.size) % 3 != 0
    out_m = np.empty(q.size, np.int16)
    K.requant_flat(q.reshape(-1), e, bits, stochastic, np.uint64(seed), 2, mask, True, out_m)
    np.testing.assert_array_equal(out_m, np.where(mask, out, 0))


@settings(max_examples=60, deadline=None)
@given(
    q=wide,
    e=st.integers(-40, 40),
    bits=st.integers(2, 16),
    seed=seeds,
    rounding=st.sampled_from(["stochastic", "nearest"]),
    scale=st.integers(0, 38),
    dtype=st.sampled_from([np.int16, np.int32, np.int64]),
)
def test_requantize_fast_path_is_bit_identical(q, e, bits, seed, rounding, scale, dtype):
    q = q >> scale
    info = np.iinfo(dtype)
    q = np.clip(q, -info.max, info.max).astype(dtype)
    t = FixedTensor(q, e, min(62, info.bits))
    _same(
        requantize(t, bits, rounding, seed, stream=5),
        _unfused(lambda: requantize(t, bits, rounding, seed, stream=5)),
    )


@settings(max_examples=60, deadline=None)
@given(
    q=wide,
    shift=st.integers(-20, 62),
    seed=seeds,
    rounding=st.sampled_from(["stochastic", "nearest"]),
)
def test_scalar_shift_fast_path_is_bit_identical(q, shift, seed, rounding):
    q = q >> 21  # |q| < 2^19: a left shift by up to 20 stays far inside int64
    fast = shift_round(q, np.array(shift), rounding, seed, 4)
    slow = _unfused(lambda: shift_round(q, np.array(shift), rounding, seed, 4))
    np.testing.assert_array_equal(fast, slow)
    np.testing.assert_array_equal(
        fast.reshape(-1), R.shift_ref(q, shift, rounding == "stochastic", R.stream_key(seed, 4))
    )


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
        w, state = sgd_step(
            w,
            g,
            state,
            lr=0.05,
            momentum=momentum,
            weight_decay=weight_decay,
            bits=bits,
            seed=seed + i,
        )
        out.append((w, state))
    return out


@pytest.mark.parametrize("bits", [4, 16])
@pytest.mark.parametrize(
    ("momentum", "weight_decay"), [(0.0, 0.0), (0.9, 0.0), (0.0, 1e-3), (0.9, 1e-4)]
)
@pytest.mark.parametrize("wdtype", [np.float32, np.float64])
@pytest.mark.parametrize("fixed_grad", [True, False])
def test_fused_sgd_is_bit_identical(bits, momentum, weight_decay, wdtype, fixed_grad):
    rng = np.random.default_rng(bits)
    w0 = rng.normal(size=(6, 5)).astype(wdtype)
    grads = [rng.normal(size=(6, 5)) * 10.0**-i for i in range(5)]
    if fixed_grad:  # exact wide accumulators, as linear_backward returns them
        grads = [
            FixedTensor(np.round(g * 2**20).astype(np.int64), -20 - i, 40)
            for i, g in enumerate(grads)
        ]
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


def test_fused_sgd_is_bit_identical_on_a_large_tensor():
    # above the parallel threshold the unfused chain runs its prange kernels: same bits
    rng = np.random.default_rng(5)
    n = K.PARALLEL_MIN_ELEMENTS + 7
    w0 = rng.normal(size=n).astype(np.float32)
    grads = [rng.normal(size=n) * 10.0**-i for i in range(3)]
    fast = _sgd_run(w0, grads, 16, 0.9, 1e-4, 11)
    slow = _unfused(lambda: _sgd_run(w0, grads, 16, 0.9, 1e-4, 11))
    for (wf, sf), (ws, ss) in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(wf, ws)
        _same(sf.velocity, ss.velocity)


def test_fused_sgd_falls_back_on_nonfinite_weights():
    w = np.array([1.0, np.inf])
    with pytest.raises(NonFiniteError):
        sgd_step(w, np.ones(2), lr=0.1, bits=8, seed=0)


# ---------------------------------------------------------------- fused linear layers (issue 6)
from sekron.errors import ShapeError  # noqa: E402
from sekron.fixed import linear_relu, split_seed  # noqa: E402


def _mant(rng, shape, bits):
    m = (1 << (bits - 1)) - 1
    return rng.integers(-m, m + 1, size=shape).astype(np.int8 if bits <= 8 else np.int16)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 6),
    d=st.integers(1, 7),
    f=st.integers(1, 6),
    bits=st.integers(2, 16),
    b_shift=st.integers(-30, 62),
    has_bias=st.booleans(),
    requant=st.booleans(),
    relu=st.booleans(),
    stochastic=st.booleans(),
    seed=seeds,
    data_seed=st.integers(0, 2**32 - 1),
)
def test_linear_fwd_kernel_matches_reference(
    n, d, f, bits, b_shift, has_bias, requant, relu, stochastic, seed, data_seed
):
    rng = np.random.default_rng(data_seed)
    x, w, bq = _mant(rng, (n, d), bits), _mant(rng, (f, d), bits), _mant(rng, f, bits)
    out = np.empty((n, f), np.int16 if requant else np.int64)
    mask = np.empty((n, f), bool)
    e = K.linear_fwd_flat(
        x,
        w,
        bq,
        b_shift,
        has_bias,
        -7,
        bits,
        requant,
        stochastic,
        np.uint64(seed),
        np.uint64(seed),
        relu,
        out,
        mask,
    )
    q_ref, m_ref, e_ref = R.linear_fwd_ref(
        x,
        w,
        bq if has_bias else None,
        b_shift,
        -7,
        bits if requant else None,
        stochastic,
        seed,
        relu,
    )
    np.testing.assert_array_equal(out.astype(np.int64), q_ref)
    assert e == e_ref
    if relu:
        np.testing.assert_array_equal(mask, m_ref)
    if not requant and not has_bias:  # the raw accumulator is the exact product
        exact = np.array(
            [
                [sum(int(x[i, p]) * int(w[j, p]) for p in range(d)) for j in range(f)]
                for i in range(n)
            ],
            dtype=object,
        )
        exact = np.where(exact > 0, exact, 0) if relu else exact
        assert (out.astype(object) == exact).all()


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 6),
    d=st.integers(1, 7),
    f=st.integers(1, 6),
    bits=st.integers(2, 16),
    from_float=st.booleans(),
    need_dx=st.booleans(),
    dx_bits=st.sampled_from([0, 4, 8, 16]),
    use_mask=st.booleans(),
    stochastic=st.booleans(),
    seed=seeds,
    data_seed=st.integers(0, 2**32 - 1),
)
def test_linear_bwd_kernel_matches_reference(
    n, d, f, bits, from_float, need_dx, dx_bits, use_mask, stochastic, seed, data_seed
):
    rng = np.random.default_rng(data_seed)
    x, w = _mant(rng, (n, d), bits), _mant(rng, (f, d), bits)
    gf = rng.normal(size=(n, f)) * 2.0 ** rng.integers(-20, 20)
    gq = _mant(rng, (n, f), bits)
    mask = rng.random((n, d)) < 0.5
    use_mask = use_mask and dx_bits > 0
    dx_out = np.empty((n, d), np.int16 if dx_bits else np.int64)
    dw_out, db_out = np.empty((f, d), np.int64), np.empty(f, np.int64)
    e_dx, e_dw, e_db = K.linear_bwd_flat(
        x,
        w,
        gf.reshape(-1),
        gq,
        from_float,
        bits,
        stochastic,
        np.uint64(seed),
        3,
        -5,
        11,
        need_dx,
        dx_bits,
        mask,
        use_mask,
        dx_out,
        dw_out,
        db_out,
    )
    (dx, edx), (dw, edw), (db, edb) = R.linear_bwd_ref(
        x,
        w,
        gf if from_float else gq,
        None if from_float else 11,
        bits,
        stochastic,
        seed,
        3,
        -5,
        dx_bits or None,
        mask if use_mask else None,
    )
    np.testing.assert_array_equal(dw_out, dw)
    np.testing.assert_array_equal(db_out, db)
    assert (e_dw, e_db) == (edw, edb)
    if need_dx:
        np.testing.assert_array_equal(dx_out.astype(np.int64), dx)
        assert e_dx == edx


def test_fused_linear_gemms_are_exact_past_int32():
    """Extreme 16-bit mantissas: sums reach 2**36, checked against Python integers."""
    n, d, f = 64, 64, 3
    x = np.full((n, d), 32767, np.int16)
    x[::2] = -32767
    w = np.full((f, d), -32767, np.int16)
    g = np.full((n, f), 32767, np.int16)
    out = np.empty((n, f), np.int64)
    K.linear_fwd_flat(
        x,
        w,
        w[:, 0],
        0,
        False,
        0,
        16,
        False,
        False,
        np.uint64(0),
        np.uint64(0),
        False,
        out,
        np.zeros(1, bool),
    )
    xo, wo, go = (a.astype(object) for a in (x, w, g))
    assert (out.astype(object) == xo.dot(wo.T)).all()
    dx_out, dw_out, db_out = (
        np.empty((n, d), np.int64),
        np.empty((f, d), np.int64),
        np.empty(f, np.int64),
    )
    K.linear_bwd_flat(
        x,
        w,
        np.zeros(1),
        g,
        False,
        16,
        False,
        np.uint64(0),
        0,
        0,
        0,
        True,
        0,
        np.zeros(1, bool),
        False,
        dx_out,
        dw_out,
        db_out,
    )
    assert (dx_out.astype(object) == go.dot(wo)).all()
    assert (dw_out.astype(object) == go.T.dot(xo)).all()
    assert abs(int(dw_out[0, 0])) < 2**31 and abs(int(dx_out[0, 0])) > 2**31  # past int32


def _public_layer(x, w, b, g, bits, seed, rounding):
    h, mask = linear_relu(x, w, b, bits, rounding=rounding, seed=seed)
    outs = [
        h,
        linear(x, w, b, rounding=rounding, seed=seed),
        linear(x, w, None, bits, rounding=rounding, seed=seed),
        linear(x, w, b, bits, rounding=rounding, seed=seed),
    ]
    for need_dx in (True, False):
        for dxb, m in (
            (None, None),
            (bits, None),
            (bits, np.arange(x.mantissa.size).reshape(x.shape) % 3 > 0),
        ):
            outs += [
                t
                for t in linear_backward(
                    x,
                    w,
                    g,
                    bits,
                    rounding=rounding,
                    seed=seed,
                    need_dx=need_dx,
                    dx_bits=dxb,
                    dx_mask=m,
                )
                if t is not None
            ]
    return outs, mask


@pytest.mark.parametrize("bits", [4, 8, 12, 16])
@pytest.mark.parametrize("rounding", ["stochastic", "nearest"])
@pytest.mark.parametrize("grad_kind", ["float32", "float64", "fixed"])
@pytest.mark.parametrize("seed_kind", ["int", "generator"])
def test_fused_linear_public_paths_are_bit_identical(bits, rounding, grad_kind, seed_kind):
    rng = np.random.default_rng(bits)
    x = to_fixed(rng.normal(size=(9, 6)), bits, seed=1)
    w = to_fixed(rng.normal(size=(4, 6)), bits, seed=2)
    b = to_fixed(rng.normal(size=4) * 1e-3, bits, seed=3)
    g = rng.normal(size=(9, 4))
    g = to_fixed(g, bits, seed=4) if grad_kind == "fixed" else g.astype(grad_kind)

    def run():
        seed = 2**64 - 9 if seed_kind == "int" else np.random.default_rng(5)
        return _public_layer(x, w, b, g, bits, seed, rounding)

    (fast, mf), (slow, ms) = run(), _unfused(run)
    np.testing.assert_array_equal(mf, ms)
    for f_, s_ in zip(fast, slow, strict=True):
        _same(f_, s_)
    np.testing.assert_array_equal(mf, fast[0].mantissa > 0)
    assert (fast[0].mantissa >= 0).all()


def test_fused_linear_backward_errors_and_fallbacks():
    x = to_fixed(np.ones((3, 2)), 8, seed=0)
    w = to_fixed(np.ones((4, 2)), 8, seed=0)
    with pytest.raises(ShapeError):
        linear_backward(x, w, np.ones((3, 4)), dx_bits=8, dx_mask=np.ones((3, 3), bool))
    with pytest.raises(ValueError):
        linear_backward(x, w, np.ones((3, 4)), dx_mask=np.ones((3, 2), bool))
    bad = np.ones((3, 4))
    bad[1, 1] = np.inf
    with pytest.raises(NonFiniteError):
        linear_backward(x, w, bad, seed=0, need_dx=False)
    with pytest.raises(ValueError):
        linear_relu(x, w, out_bits=17)
    with pytest.raises(ShapeError):
        linear_relu(x, w, to_fixed(np.ones(3), 8, seed=0))


def test_fused_requantizations_are_unbiased():
    """Mean over seeds of the requantized outputs equals the exact accumulator, within a
    tolerance from the rounding variance (<= (2**s)**2 / 4 per draw)."""
    rng = np.random.default_rng(0)
    bits, ns = 6, 1500
    x = FixedTensor(_mant(rng, (3, 5), 8), -3, 8)
    w = FixedTensor(_mant(rng, (4, 5), 8), -2, 8)
    g = FixedTensor(_mant(rng, (3, 4), 8), -4, 8)
    exact_y = x.mantissa.astype(np.int64) @ w.mantissa.astype(np.int64).T * 2.0**-5
    exact_dx = g.mantissa.astype(np.int64) @ w.mantissa.astype(np.int64) * 2.0**-6
    for exact, draw in (
        (np.maximum(exact_y, 0), lambda s: linear_relu(x, w, None, bits, seed=s)[0]),
        (exact_y, lambda s: linear(x, w, None, bits, seed=s)),
        (exact_dx, lambda s: linear_backward(x, w, g, 8, seed=s, dx_bits=bits)[0]),
    ):
        ts = [draw(s) for s in split_seed(1, ns)]
        unit = 2.0 ** ts[0].exponent
        assert all(t.exponent == ts[0].exponent for t in ts)  # the shift depends on the max only
        mean = np.mean([t.to_float() for t in ts], axis=0)
        inner = np.abs(exact) <= (2 ** (bits - 1) - 1) * unit  # clamping at the max is not unbiased
        tol = 6 * (unit / 2) / np.sqrt(ns)
        assert inner.sum() > 0 and np.all(np.abs(mean - exact)[inner] <= tol)


def test_split_seed_matches_reference_and_is_deterministic():
    for s in (0, 1, 2**64 - 1, 12345):
        assert split_seed(s, 5) == R.split_seed_ref(s, 5)
        assert split_seed(s, 0) == ()
    assert len(set(split_seed(3, 100))) == 100
    g1, g2 = np.random.default_rng(4), np.random.default_rng(4)
    assert split_seed(g1, 3) == split_seed(g2, 3)
    with pytest.raises(ValueError):
        split_seed(1, -1)
    with pytest.raises(ValueError):
        split_seed(-1, 2)
