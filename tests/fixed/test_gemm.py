"""Exact integer GEMM: every path equals the int64 reference, bounds are enforced."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sekron.errors import OverflowRiskError, ShapeError
from sekron.fixed import FixedTensor, matmul, plan_gemm, to_fixed
from sekron.fixed import _kernels as K
from sekron.fixed import _reference as R

INT32_MAX = 2**31 - 1


def _fixed(q: np.ndarray, bits: int, exponent=0) -> FixedTensor:
    dt = np.int8 if bits <= 8 else np.int16
    return FixedTensor(q.astype(dt), exponent, bits)


def _random(rng, shape, bits):
    m = 2 ** (bits - 1) - 1
    return rng.integers(-m, m + 1, size=shape)


@pytest.mark.parametrize("bits", [8, 10, 12, 16])
@pytest.mark.parametrize("method", ["auto", "numba", "blas"])
def test_matmul_equals_int64_reference(bits, method):
    rng = np.random.default_rng(bits)
    a, b = _random(rng, (13, 37), bits), _random(rng, (37, 9), bits)
    c = matmul(_fixed(a, bits, -3), _fixed(b, bits, 2), method=method)
    assert np.array_equal(c.mantissa, a @ b)
    assert c.exponent == -1
    bound = 37 * (2 ** (bits - 1) - 1) ** 2
    assert c.mantissa.dtype == (np.int32 if bound <= INT32_MAX else np.int64)


# reduction lengths just past the int32 bound K * m^2 > 2^31 - 1 (DESIGN 2.7 table)
_PAST_INT32 = {8: 133_145, 10: 8_225, 12: 513, 16: 3}


@pytest.mark.parametrize("bits", [8, 10, 12, 16])
@pytest.mark.parametrize("sign", [1, -1])
def test_worst_case_operands_past_int32_bound(bits, sign):
    m = 2 ** (bits - 1) - 1
    k = _PAST_INT32[bits]
    assert k * m * m > INT32_MAX >= (k - 1) * m * m
    a = np.full((2, k), m)
    b = np.full((k, 3), sign * m)
    b[:, 1] = -sign * m
    expected = a @ b  # int64
    for method in ("auto", "numba", "blas"):
        c = matmul(_fixed(a, bits), _fixed(b, bits), method=method)
        assert c.mantissa.dtype == np.int64
        assert np.array_equal(c.mantissa, expected), method
    with pytest.raises(OverflowRiskError, match="int32"):
        matmul(_fixed(a, bits), _fixed(b, bits), acc_dtype="int32")
    # one term fewer still fits int32, and the int32 kernel is then exact
    c = matmul(_fixed(a[:, 1:], bits), _fixed(b[1:], bits), acc_dtype="int32", method="numba")
    assert c.mantissa.dtype == np.int32
    assert np.array_equal(c.mantissa, a[:, 1:] @ b[1:])


def test_plan_table():
    assert plan_gemm(1040, 8, method="blas").path == "blas-float32"
    assert plan_gemm(1041, 8, method="blas").path == "blas-float64"
    assert plan_gemm(133_144, 8).acc_dtype == np.int32
    assert plan_gemm(133_145, 8).acc_dtype == np.int64
    assert plan_gemm(8_224, 10).path == "numba-int32"
    assert plan_gemm(8_225, 10).path == "numba-int32-chunked"
    assert plan_gemm(4096, 12).path == "numba-int64"  # chunk of 512 is too short
    assert plan_gemm(8_000_000, 16, method="blas").path == "blas-float64"
    with pytest.raises(OverflowRiskError, match="2\\*\\*53"):
        plan_gemm(9_000_000, 16, method="blas")
    # 2 * 32767^2 fits int32; 3 terms would not
    assert plan_gemm(2, 16, acc_dtype=np.int32).acc_dtype == np.int32
    with pytest.raises(OverflowRiskError):
        plan_gemm(3, 16, acc_dtype="int32")
    with pytest.raises(ValueError, match="method"):
        plan_gemm(3, 8, method="gpu")  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(0, 9),
    k=st.integers(0, 40),
    n=st.integers(0, 9),
    bits=st.sampled_from([2, 5, 8, 11, 16]),
    seed=st.integers(0, 2**32),
)
def test_kernels_match_reference_any_shape(m, k, n, bits, seed):
    rng = np.random.default_rng(seed)
    dt = np.int8 if bits <= 8 else np.int16
    a = _random(rng, (m, k), bits).astype(dt)
    bt = _random(rng, (n, k), bits).astype(dt)
    ref = R.gemm_ref(a, bt)
    for kernel in (K.gemm_acc64, K.gemm_acc64_serial):
        out64 = np.empty((m, n), np.int64)
        kernel(a, bt, out64)
        assert np.array_equal(out64, ref)
    if k * (2 ** (bits - 1) - 1) ** 2 <= INT32_MAX:
        for kernel in (K.gemm_acc32, K.gemm_acc32_serial):
            out32 = np.empty((m, n), np.int32)
            kernel(a, bt, out32)
            assert np.array_equal(out32, ref)


def test_chunked_path_exact():
    rng = np.random.default_rng(0)
    a, b = _random(rng, (5, 20_000), 10), _random(rng, (20_000, 4), 10)
    c = matmul(_fixed(a, 10), _fixed(b, 10), method="numba")
    assert plan_gemm(20_000, 10).path == "numba-int32-chunked"
    assert np.array_equal(c.mantissa, a @ b)


def test_matmul_out_bits_and_per_axis_exponents():
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=(6, 5)), rng.normal(size=(5, 4))
    a = to_fixed(x, 12, "nearest", axis=0)  # one exponent per row
    b = to_fixed(w, 12, "nearest", axis=1)  # one exponent per column
    c = matmul(a, b)
    assert np.shape(c.exponent) == (6, 4)
    np.testing.assert_array_equal(c.to_float(), a.to_float() @ b.to_float())
    r = matmul(a, b, out_bits=8, rounding="nearest")
    assert r.mantissa.dtype == np.int8
    with pytest.raises(ShapeError, match="contracted"):
        matmul(to_fixed(x, 8, axis=1), b)


def test_matmul_bad_inputs_and_no_mutation():
    a = to_fixed(np.ones((2, 3)), 8)
    b = to_fixed(np.ones((4, 2)), 8)
    qa = a.mantissa.copy()
    with pytest.raises(ShapeError, match="rows"):
        matmul(a, b)
    with pytest.raises(TypeError, match="FixedTensor"):
        matmul(np.ones((2, 3)), b)  # type: ignore[arg-type]
    wide = FixedTensor(np.ones((3, 2), np.int32), 0, 20)
    with pytest.raises(ValueError, match="requantize"):
        matmul(a, wide)
    with pytest.raises(ShapeError, match="2-d"):
        matmul(to_fixed(np.ones(3), 8), b)
    assert np.array_equal(a.mantissa, qa)


@pytest.mark.parametrize("shape", [(1, 1), (3, 70), (130, 1100), (513, 300)])
@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32])
def test_transposed_copy_matches_numpy(shape, dtype):
    from sekron.fixed._gemm import transposed

    q = np.random.default_rng(shape[0]).integers(-100, 100, size=shape).astype(dtype)
    t = transposed(q)
    assert t.flags.c_contiguous and t.dtype == q.dtype
    np.testing.assert_array_equal(t, q.T)
    np.testing.assert_array_equal(transposed(q[:, ::2]), q[:, ::2].T)  # non-contiguous input
