"""Exact integer GEMM on fixed-point mantissas: path and accumulator chosen before launch.

With ``m_a = 2**(b_a-1) - 1``, ``m_b = 2**(b_b-1) - 1`` and K terms, every partial sum of
a row-by-column product is bounded by ``K * m_a * m_b``. That bound, known before any
kernel runs, decides everything:

=================================  =========================================
bound ``K * m_a * m_b``            exact paths
=================================  =========================================
``<= 2**24``                       float32 BLAS (sgemm), numba int32
``<= 2**31 - 1``                   numba int32, float64 BLAS (dgemm)
``<= 2**53``                       numba int32 chunks carried into int64,
                                   numba int64, float64 BLAS
``<= 2**62``                       numba int64
=================================  =========================================

Nothing wraps silently: a pinned accumulator or a forced path that the bound does not
allow raises :class:`~sekron.errors.OverflowRiskError`.
"""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple

import numpy as np

from .._validation import as_positive_int, check_bits
from ..errors import ArgumentError, ArgumentTypeError, DTypeError, OverflowRiskError, ShapeError
from . import _kernels
from ._exact import FLOAT32_EXACT, FLOAT64_EXACT, exact_float_matmul
from ._tensor import (
    Exponent,
    FixedTensor,
    Rounding,
    Seed,
    _describe,
    bits_for_bound,
    check_requantize,
    requantize,
)

__all__ = ["GemmPlan", "Method", "batched_matmul", "matmul", "plan_gemm"]

Method = Literal["auto", "numba", "blas"]

INT32_MAX = (1 << 31) - 1
INT64_SAFE = 1 << 62  # keeps later stochastic shifts (x + r) >> s from wrapping
# below this chunk length the int32-chunk path loses to plain int64 accumulation
_MIN_CHUNK = 2048
# from this many multiply-adds on, "auto" runs an exact GEMM through float BLAS: measured
# on a quiet 2-core AVX-512 machine at 1024^3, sgemm on int8 mantissas ran at 0.7-0.8x
# of plain sgemm against 0.3-0.45x for the numba int32 kernel, and dgemm on 16-bit
# mantissas at 0.25-0.35x against 0.17-0.28x for numba int64; below it (training-step
# sizes) the serial numba kernels win on call overhead
BLAS_MIN_MACS = 1 << 24


class GemmPlan(NamedTuple):
    """How an exact integer GEMM will run.

    Attributes
    ----------
    path : str
        One of ``"numba-int32"``, ``"numba-int32-chunked"``, ``"numba-int64"``,
        ``"blas-float32"``, ``"blas-float64"``.
    acc_dtype : numpy dtype
        Dtype of the exact result (int32 or int64).
    bound : int
        ``K * m_a * m_b``, the largest magnitude any partial sum can reach.
    chunk : int
        Reduction chunk length for the chunked path (else K).

    Examples
    --------
    >>> from sekron.fixed import plan_gemm
    >>> plan = plan_gemm(1024, 8)
    >>> plan.path, plan.acc_dtype, plan.bound == 1024 * 127 * 127, plan.chunk
    ('numba-int32', dtype('int32'), True, 1024)
    >>> plan.for_size(1024**3).path
    'blas-float32'
    >>> plan_gemm(1 << 16, 16).path
    'numba-int64'
    """

    path: str
    acc_dtype: np.dtype
    bound: int
    chunk: int
    auto: bool = False

    def for_size(self, macs: int) -> GemmPlan:
        """The plan "auto" would pick for a GEMM of ``macs`` multiply-adds (BLAS if large)."""
        if not self.auto or self.path.startswith("blas") or macs < BLAS_MIN_MACS:
            return self
        if self.bound <= FLOAT32_EXACT:
            return self._replace(path="blas-float32", chunk=self.chunk)
        if self.bound <= FLOAT64_EXACT:
            return self._replace(path="blas-float64", chunk=self.chunk)
        return self


def _max_mantissa(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def plan_gemm(
    k: int,
    bits_a: int,
    bits_b: int | None = None,
    *,
    method: Method = "auto",
    acc_dtype: Any = None,
    macs: int | None = None,
) -> GemmPlan:
    """Choose the exact path and accumulator of a K-term integer GEMM, before launch.

    Parameters
    ----------
    k : int
        Reduction length K (>= 0).
    bits_a, bits_b : int
        Operand bit-widths, 2..16 (``bits_b`` defaults to ``bits_a``).
    method : {"auto", "numba", "blas"}
        "auto" picks the fastest exact path measured on our machines: the numba int32
        kernel whenever int32 holds the bound, int32 chunks carried into int64 when a
        chunk holds at least 2048 terms, else the numba int64 kernel. "blas" uses sgemm
        while the bound is <= 2**24, else dgemm while <= 2**53.
    acc_dtype : None, "int32", "int64" or a numpy dtype
        Pin the accumulator (and result) dtype.
    macs : int, optional
        ``M * N * K`` of the product. With "auto", from ``BLAS_MIN_MACS`` (2**24) on an
        exact float BLAS path is chosen instead (sgemm while the bound is <= 2**24, else
        dgemm while <= 2**53): large exact GEMMs run faster through BLAS, small ones
        through the numba kernels. :func:`matmul` passes it.

    Returns
    -------
    GemmPlan

    Raises
    ------
    OverflowRiskError
        If the pinned accumulator or forced path cannot hold ``K * m_a * m_b`` exactly.
    ValueError, TypeError
        For bad bit-widths, methods or dtypes.

    Examples
    --------
    >>> from sekron.fixed import plan_gemm
    >>> plan_gemm(1024, 8).path
    'numba-int32'
    >>> plan_gemm(1024, 8, method="blas").path
    'blas-float32'
    >>> plan_gemm(1024, 8, macs=1024**3).path, plan_gemm(1024, 16, macs=1024**3).path
    ('blas-float32', 'blas-float64')
    >>> plan_gemm(4096, 16).acc_dtype
    dtype('int64')
    """
    k = as_positive_int(k, "k", minimum=0)
    ba = check_bits(bits_a, "bits_a")
    bb = ba if bits_b is None else check_bits(bits_b, "bits_b")
    if method not in ("auto", "numba", "blas"):
        raise ArgumentError(f"method: expected 'auto', 'numba' or 'blas', got {method!r}")
    bound = k * _max_mantissa(ba) * _max_mantissa(bb)
    what = f"K={k} terms of {ba}-bit x {bb}-bit mantissas (bound K*m_a*m_b = {bound}"
    if bound > INT64_SAFE:
        raise OverflowRiskError(f"{what} exceeds 2**62); split the reduction")
    pinned = None if acc_dtype is None else _as_acc_dtype(acc_dtype)
    need32 = bound <= INT32_MAX
    if pinned == np.int32 and not need32:
        raise OverflowRiskError(
            f"acc_dtype: int32 cannot hold {what} > 2**31 - 1); use int64 or leave acc_dtype=None"
        )
    out = pinned if pinned is not None else np.dtype(np.int32 if need32 else np.int64)
    chunk = k
    if method == "blas":
        if bound <= FLOAT32_EXACT:
            path = "blas-float32"
        elif bound <= FLOAT64_EXACT:
            path = "blas-float64"
        else:
            raise OverflowRiskError(f"method='blas': float64 is not exact for {what} > 2**53)")
    elif need32:
        path = "numba-int32"
    else:
        chunk = INT32_MAX // (_max_mantissa(ba) * _max_mantissa(bb))
        path = "numba-int32-chunked" if chunk >= _MIN_CHUNK else "numba-int64"
        if path == "numba-int64":
            chunk = k
    plan = GemmPlan(path, out, bound, chunk, auto=method == "auto" and pinned is None)
    return plan if macs is None else plan.for_size(int(macs))


@functools.lru_cache(maxsize=512)
def _plan_cached(k: int, bits_a: int, bits_b: int, method: str) -> GemmPlan:
    return plan_gemm(k, bits_a, bits_b, method=method)  # type: ignore[arg-type]


def plan_for(
    k: int, bits_a: int, bits_b: int, method: Any = "auto", acc_dtype: Any = None
) -> GemmPlan:
    """:func:`plan_gemm` for internal callers, memoized for the common hashable arguments (a plan depends only on them; errors are raised, never cached)."""
    if (
        acc_dtype is None
        and type(method) is str
        and type(k) is int
        and type(bits_a) is int
        and type(bits_b) is int
    ):
        return _plan_cached(k, bits_a, bits_b, method)
    return plan_gemm(k, bits_a, bits_b, method=method, acc_dtype=acc_dtype)


def _as_acc_dtype(acc_dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(acc_dtype)
    except TypeError as exc:
        raise ArgumentTypeError(
            f"acc_dtype: expected None, 'int32' or 'int64', got {acc_dtype!r}"
        ) from exc
    if dt not in (np.dtype(np.int32), np.dtype(np.int64)):
        raise DTypeError(f"acc_dtype: expected None, 'int32' or 'int64', got {dt}")
    return dt


def _operand_dtypes(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Give both operands one kernel dtype (int8 or int16) to bound the specializations."""
    wide = (
        np.int16
        if np.int16 in (a.dtype, b.dtype) or a.dtype.itemsize > 1 or b.dtype.itemsize > 1
        else np.int8
    )
    return (
        np.ascontiguousarray(a, dtype=wide),
        np.ascontiguousarray(b, dtype=wide),
    )


def transposed(q: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``q.T`` (2-d): a tiled parallel numba copy for large int8/int16 operands, numpy's otherwise. Same values either way."""
    if q.size >= _kernels.PARALLEL_MIN_ELEMENTS and q.dtype in _NARROW and q.flags.c_contiguous:
        out = np.empty((q.shape[1], q.shape[0]), q.dtype)
        _kernels.transpose_blocked(q, out)
        return out
    return np.ascontiguousarray(q.T)


_NARROW = (np.dtype(np.int8), np.dtype(np.int16))


def _gemm_blas(a_q: np.ndarray, b_q: np.ndarray, plan: GemmPlan) -> np.ndarray:
    """Exact ``a_q @ b_q`` on float BLAS: every partial sum is an integer below the float's 2**24 / 2**53 (``plan.bound``), so any summation order gives the exact result."""
    prod = exact_float_matmul(a_q, b_q, plan.bound)
    assert prod is not None  # a blas plan exists only for bounds <= 2**53
    return prod.astype(plan.acc_dtype)


def gemm_nt(a_q: np.ndarray, bt_q: np.ndarray, plan: GemmPlan) -> np.ndarray:
    """Exact ``a_q @ bt_q.T`` for mantissas ``a_q`` (M, K), ``bt_q`` (N, K) under ``plan``.

    Internal: the caller has validated shapes and built ``plan`` from K and the bit-widths.
    """
    a, bt = _operand_dtypes(a_q, bt_q)
    m, k = a.shape
    n = bt.shape[0]
    if plan.path.startswith("blas"):
        return _gemm_blas(a, bt.T, plan)
    big = m * n * k >= _kernels.PARALLEL_MIN_MACS
    acc32 = _kernels.gemm_acc32 if big else _kernels.gemm_acc32_serial
    if plan.path == "numba-int32":
        out32 = np.empty((m, n), dtype=np.int32)
        acc32(a, bt, out32)
        return out32 if plan.acc_dtype == np.int32 else out32.astype(plan.acc_dtype)
    if plan.path != "numba-int32-chunked":  # the int64 kernel writes every element
        out = np.empty((m, n), dtype=np.int64)
        (_kernels.gemm_acc64 if big else _kernels.gemm_acc64_serial)(a, bt, out)
        return out
    out = np.zeros((m, n), dtype=np.int64)
    # chunk * m_a * m_b <= 2**31 - 1, so each chunk is exact in int32
    tmp = np.empty((m, n), dtype=np.int32)
    for p0 in range(0, k, plan.chunk):
        a_c = np.ascontiguousarray(a[:, p0 : p0 + plan.chunk])
        b_c = np.ascontiguousarray(bt[:, p0 : p0 + plan.chunk])
        acc32(a_c, b_c, tmp)
        out += tmp
    return out


def check_operand(t: Any, name: str, ndim: int | None = None) -> FixedTensor:
    if not isinstance(t, FixedTensor):
        raise ArgumentTypeError(
            f"{name}: expected a FixedTensor (see sekron.fixed.to_fixed), got {_describe(t)}"
        )
    if t.bits > 16:
        raise ArgumentError(
            f"{name}: expected operand mantissas of at most 16 bits, got bits={t.bits} "
            f"(requantize the accumulator first)"
        )
    if ndim is not None and t.ndim != ndim:
        raise ShapeError(f"{name}: expected a {ndim}-d FixedTensor, got shape {t.shape}")
    return t


def _axis_exponent(t: FixedTensor, name: str, contracted: int) -> Exponent:
    if t.per_tensor:
        return t.exponent
    e = np.asarray(t.exponent)
    if e.shape[contracted] != 1:
        raise ShapeError(
            f"{name}: the exponent must be shared along the contracted axis {contracted}, "
            f"got a per-slice exponent of shape {e.shape}"
        )
    return e


def matmul(
    a: FixedTensor,
    b: FixedTensor,
    out_bits: int | None = None,
    *,
    method: Method = "auto",
    acc_dtype: Any = None,
    rounding: Rounding = "stochastic",
    seed: Seed = None,
) -> FixedTensor:
    """Exact integer matrix product of two fixed-point matrices.

    Parameters
    ----------
    a : FixedTensor, shape (M, K)
        Per-tensor exponent, or one exponent per row (``axis=0``).
    b : FixedTensor, shape (K, N)
        Per-tensor exponent, or one exponent per column (``axis=1``).
    out_bits : int or None
        None returns the exact accumulator; 2..16 requantizes it to that width.
    method : {"auto", "numba", "blas"}
        Force a path (see :func:`plan_gemm`); every path gives the same bits.
    acc_dtype : None, "int32" or "int64"
        Pin the accumulator.
    rounding : {"stochastic", "nearest"}
        Rounding of the requantization (with ``out_bits`` only).
    seed : int, numpy Generator or None
        Random key of the requantization.

    Returns
    -------
    FixedTensor, shape (M, N)
        The exact product: int32/int64 mantissas, exponent ``a.exponent + b.exponent``,
        ``bits`` from the bound ``K * m_a * m_b``; or the requantized tensor.

    Raises
    ------
    ShapeError
        If the inner dimensions differ, an operand is not 2-d, or an exponent varies
        along the contracted axis.
    OverflowRiskError
        If a pinned accumulator or forced path cannot hold the bound exactly.
    TypeError, ValueError
        If an operand is not a FixedTensor of at most 16 bits.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.fixed import to_fixed, matmul
    >>> a = to_fixed([[1.0, 2.0], [3.0, 4.0]], bits=8, rounding="nearest")
    >>> c = matmul(a, a)
    >>> c.mantissa.dtype, c.to_float()
    (dtype('int32'), array([[ 7., 10.], [15., 22.]]))
    """
    check_requantize(out_bits, rounding, seed)
    a = check_operand(a, "a", 2)
    b = check_operand(b, "b", 2)
    if a.shape[1] != b.shape[0]:
        raise ShapeError(
            f"b: expected {a.shape[1]} rows to match a of shape {a.shape}, got shape {b.shape}"
        )
    ea = _axis_exponent(a, "a", 1)
    eb = _axis_exponent(b, "b", 0)
    m, k = a.shape
    n = b.shape[1]
    plan = plan_for(k, a.bits, b.bits, method, acc_dtype).for_size(m * n * k)
    if plan.path.startswith("blas"):
        acc = _gemm_blas(a.mantissa, b.mantissa, plan)  # no transposed copy needed
    else:
        acc = gemm_nt(a.mantissa, transposed(b.mantissa), plan)
    exponent = np.asarray(ea, np.int64) + np.asarray(eb, np.int64)
    out = FixedTensor._trusted(acc, exponent, bits_for_bound(plan.bound))
    if out_bits is None:
        return out
    return requantize(out, out_bits, rounding, seed)


def batched_matmul(a: FixedTensor, b: FixedTensor, *, method: Method = "auto") -> FixedTensor:
    """Exact integer product of two stacks of fixed-point matrices, slice by slice.

    Parameters
    ----------
    a : FixedTensor, shape (P, M, K) or (M, K)
        Per-tensor exponent.
    b : FixedTensor, shape (P, K, N) or (K, N)
        Per-tensor exponent; as many slices as ``a``.
    method : {"auto", "numba", "blas"}
        GEMM path of every slice (see :func:`plan_gemm`); every path gives the same bits.

    Returns
    -------
    FixedTensor, shape (P, M, N) (or (M, N))
        Slice ``p`` is ``matmul(a[p], b[p])``: the exact accumulator (int32/int64),
        exponent ``a.exponent + b.exponent``, bits from the bound ``K * m_a * m_b``.

    Raises
    ------
    ShapeError
        If the operands are not both 2-d or both 3-d, the slice counts or inner
        dimensions differ, or an exponent is per-slice.
    TypeError, ValueError
        If an operand is not a FixedTensor of at most 16 bits.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.fixed import to_fixed, batched_matmul
    >>> a = to_fixed(np.stack([np.eye(2), 2 * np.eye(2)]), bits=8, rounding="nearest")
    >>> batched_matmul(a, a).to_float()[1]
    array([[4., 0.], [0., 4.]])
    """
    a = check_operand(a, "a")
    b = check_operand(b, "b")
    if a.ndim == b.ndim == 2:
        return matmul(a, b, method=method)
    if a.ndim != 3 or b.ndim != 3:
        raise ShapeError(
            f"b: expected two 2-d or two 3-d operands, got shapes {a.shape} and {b.shape}"
        )
    if a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise ShapeError(
            f"b: expected shape ({a.shape[0]}, {a.shape[2]}, N) to match a of shape {a.shape}, got {b.shape}"
        )
    for name, t in (("a", a), ("b", b)):
        if not t.per_tensor:
            raise ShapeError(
                f"{name}: expected a per-tensor exponent, got one of shape {np.shape(t.exponent)}"
            )
    p, m, k = a.shape
    n = b.shape[2]
    plan = plan_for(k, a.bits, b.bits, method).for_size(m * n * k)
    if plan.path.startswith("blas"):
        acc = _gemm_blas(a.mantissa, b.mantissa, plan)  # one stacked BLAS call
    else:
        acc = np.empty((p, m, n), plan.acc_dtype)
        for i in range(p):
            acc[i] = gemm_nt(a.mantissa[i], transposed(np.ascontiguousarray(b.mantissa[i])), plan)
    e = int(a.exponent) + int(b.exponent)  # type: ignore[call-overload]
    return FixedTensor._trusted(acc, e, bits_for_bound(plan.bound))
