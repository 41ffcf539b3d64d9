"""Exact float limits and the accumulator bound: when float arithmetic is integer-exact.

An integer GEMM of K terms on ``b_a``- and ``b_b``-bit mantissas has every partial sum
bounded by ``K * (2**(b_a-1) - 1) * (2**(b_b-1) - 1)`` (DESIGN 2.7). float32 represents
every integer up to ``2**24`` and float64 every integer up to ``2**53``, so while the
bound stays below the limit any float BLAS, in any summation order, returns the exact
integer result. The engine's ``"blas"`` GEMM path and the adapters' float routes
(``sekron.torch``'s integer layers) both decide with these functions.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any

import numpy as np

from .._validation import as_positive_int, check_bits
from ..errors import ArgumentError, ArgumentTypeError, DTypeError
from ._tensor import _describe

__all__ = [
    "FLOAT32_EXACT",
    "FLOAT64_EXACT",
    "accumulator_bound",
    "exact_float_dtype",
    "exact_float_matmul",
    "float32_split",
    "scaled_to_float",
    "split_digits",
]

FLOAT32_EXACT = 1 << 24
FLOAT64_EXACT = 1 << 53


def accumulator_bound(k: int, bits_a: int, bits_b: int | None = None) -> int:
    """The largest magnitude a partial sum of a K-term integer product can reach.

    Parameters
    ----------
    k : int
        Reduction length (>= 0).
    bits_a, bits_b : int
        Operand bit-widths, 2..16 (``bits_b`` defaults to ``bits_a``).

    Returns
    -------
    int
        ``k * (2**(bits_a-1) - 1) * (2**(bits_b-1) - 1)``.

    Raises
    ------
    TypeError, ValueError
        If ``k`` is not an int >= 0 or a bit-width is outside 2..16.

    Examples
    --------
    >>> from sekron.fixed import accumulator_bound
    >>> accumulator_bound(512, 8)
    8258048
    """
    k = as_positive_int(k, "k", minimum=0)
    ba = check_bits(bits_a, "bits_a")
    bb = ba if bits_b is None else check_bits(bits_b, "bits_b")
    return k * ((1 << (ba - 1)) - 1) * ((1 << (bb - 1)) - 1)


def exact_float_dtype(bound: int) -> np.dtype | None:
    """The narrowest float dtype in which integers up to ``bound`` add exactly, or None.

    Parameters
    ----------
    bound : int
        Magnitude bound of every partial sum (>= 0), e.g. :func:`accumulator_bound`.

    Returns
    -------
    numpy dtype or None
        float32 while ``bound <= 2**24``, float64 while ``bound <= 2**53``, else None.

    Raises
    ------
    TypeError, ValueError
        If ``bound`` is not an int >= 0.

    Examples
    --------
    >>> from sekron.fixed import exact_float_dtype
    >>> exact_float_dtype(2**24), exact_float_dtype(2**24 + 1), exact_float_dtype(2**53 + 1)
    (dtype('float32'), dtype('float64'), None)
    """
    if type(bound) is not int:  # the adapters' hot path passes ints
        bound = as_positive_int(bound, "bound", minimum=0)
    elif bound < 0:
        raise ArgumentError(f"bound: expected an integer >= 0, got {bound}")
    if bound <= FLOAT32_EXACT:
        return np.dtype(np.float32)
    if bound <= FLOAT64_EXACT:
        return np.dtype(np.float64)
    return None


def exact_float_matmul(a_q: np.ndarray, b_q: np.ndarray, bound: int) -> np.ndarray | None:
    """Exact ``a_q @ b_q`` of integer mantissas through float BLAS, or None past ``2**53``.

    Parameters
    ----------
    a_q, b_q : ndarray of integers (or floats holding integers)
        Shapes as for ``np.matmul``: (M, K) @ (K, N), or stacks (P, M, K) @ (P, K, N).
    bound : int
        A bound on every partial sum, normally
        ``accumulator_bound(K, bits_a, bits_b)``. The caller guarantees it: the
        operands' values are not inspected.

    Returns
    -------
    ndarray or None
        The product in float32 (``bound <= 2**24``) or float64 (``<= 2**53``), every
        element an exact integer; None when no float is exact for ``bound``.

    Raises
    ------
    DTypeError
        If an operand is not a real numeric array.
    TypeError, ValueError
        If ``bound`` is not an int >= 0.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.fixed import accumulator_bound, exact_float_matmul
    >>> a = np.array([[127, -127], [1, 2]], dtype=np.int8)
    >>> exact_float_matmul(a, a, accumulator_bound(2, 8))
    array([[ 16002., -16383.],
           [   129.,   -123.]], dtype=float32)
    """
    ft = exact_float_dtype(bound)
    for name, q in (("a_q", a_q), ("b_q", b_q)):
        if not isinstance(q, np.ndarray) or q.dtype.kind not in "iuf":
            raise DTypeError(f"{name}: expected an integer numpy array, got {_describe(q)}")
    if ft is None:
        return None
    return np.matmul(a_q.astype(ft, copy=False), b_q.astype(ft, copy=False))


def _digit_bounds(m: int, width: int, parts: int) -> list[int]:
    """Magnitude bounds of the ``parts`` balanced base-``2**width`` digits of ``|q| <= m``."""
    if parts == 1:
        return [m]
    half = 1 << (width - 1)
    out, rest = [], m
    for _ in range(parts - 1):
        out.append(half)
        rest = (rest + half) >> width  # |hi| <= (|q| + half) / 2**width, an integer
    return [*out, rest]


def _best_digits(m: int, parts: int) -> tuple[int, list[int]]:
    """The digit width whose largest digit bound is least, for ``parts`` digits of ``|q| <= m``."""
    if parts == 1:
        return max(1, m.bit_length()), [m]
    best: tuple[int, list[int]] | None = None
    for width in range(1, max(2, m.bit_length() + 1)):
        b = _digit_bounds(m, width, parts)
        if best is None or max(b) < max(best[1]):
            best = (width, b)
    assert best is not None
    return best


def float32_split(
    k: int, max_a: int, max_b: int, *, max_products: int = 4
) -> tuple[int, int, int, int] | None:
    """Split two operands' mantissas into balanced digits whose products are exact in float32.

    With ``a = sum_i a_i 2**(w_a i)`` and ``b = sum_j b_j 2**(w_b j)`` (see
    :func:`split_digits`), ``a @ b`` (or a convolution with reduction length ``k``) is
    ``sum_ij (a_i @ b_j) 2**(w_a i + w_b j)``. Each digit product is exact in float32
    when ``k * max|a_i| * max|b_j| <= 2**24``, and their combination is exact in float64
    when ``k * sum_i max|a_i| 2**(w_a i) * sum_j max|b_j| 2**(w_b j) <= 2**53``. This
    returns the split with the fewest digit products (at most ``max_products``) that
    satisfies both, or None.

    Parameters
    ----------
    k : int
        Reduction length (>= 0).
    max_a, max_b : int
        Bounds on the operands' mantissa magnitudes (>= 0), e.g. ``2**(bits-1) - 1``.
    max_products : int, keyword-only
        Largest ``parts_a * parts_b`` considered.

    Returns
    -------
    (parts_a, width_a, parts_b, width_b) or None
        ``parts_a == 1`` means ``a`` is not split (``width_a`` is then its bit length).

    Examples
    --------
    >>> from sekron.fixed import float32_split
    >>> float32_split(288, 127, 127)       # 8 bits: exact as it is
    (1, 7, 1, 7)
    >>> float32_split(288, 511, 511)       # 10 bits: split one operand in two
    (1, 9, 2, 5)
    >>> float32_split(288, 32767, 32767)   # 16 bits: both, four products
    (2, 8, 2, 8)
    """
    return _float32_split(
        as_positive_int(k, "k", minimum=0),
        as_positive_int(max_a, "max_a", minimum=0),
        as_positive_int(max_b, "max_b", minimum=0),
        as_positive_int(max_products, "max_products"),
    )


# the integer layers ask once per call with the same few (k, bits) pairs: 25 us uncached
@functools.lru_cache(maxsize=512)
def _float32_split(
    k: int, max_a: int, max_b: int, max_products: int
) -> tuple[int, int, int, int] | None:
    best: tuple[int, tuple[int, int, int, int]] | None = None
    for pa in range(1, max_products + 1):
        wa, da = _best_digits(max_a, pa)
        for pb in range(1, max_products // pa + 1):
            wb, db = _best_digits(max_b, pb)
            if k * max(da) * max(db) > FLOAT32_EXACT:
                continue
            total = k * sum(d << (wa * i) for i, d in enumerate(da))
            if total * sum(d << (wb * j) for j, d in enumerate(db)) > FLOAT64_EXACT:
                continue
            cand = (pa * pb, (pa, wa, pb, wb))
            if best is None or cand[0] < best[0]:
                best = cand
    return None if best is None else best[1]


def split_digits(q: np.ndarray, width: int, parts: int) -> list[np.ndarray]:
    """Balanced base-``2**width`` digits of integer mantissas: ``q == sum_i d[i] * 2**(width * i)``.

    Every digit but the last lies in ``[-2**(width-1), 2**(width-1) - 1]``; the last
    holds the rest, ``(q - lower digits) / 2**(width * (parts-1))`` exactly. The split is
    exact integer arithmetic (int64 shifts).

    Parameters
    ----------
    q : ndarray of integers
    width : int
        Digit width in bits (1..62).
    parts : int
        Number of digits (>= 1); one returns ``q`` itself (as int64).

    Returns
    -------
    list of ndarray (int64), ``parts`` arrays of ``q``'s shape

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.fixed import split_digits
    >>> q = np.array([32767, -32767, 1000, -129])
    >>> lo, hi = split_digits(q, 8, 2)
    >>> lo, hi
    (array([ -1,   1, -24, 127]), array([ 128, -128,    4,   -1]))
    >>> bool(np.array_equal(lo + hi * 256, q))
    True
    """
    if not isinstance(q, np.ndarray) or q.dtype.kind not in "iu":
        raise DTypeError(f"q: expected an integer numpy array, got {_describe(q)}")
    width = as_positive_int(width, "width")
    parts = as_positive_int(parts, "parts")
    if width > 62:
        raise ArgumentError(f"width: expected at most 62 bits, got {width}")
    rest = q.astype(np.int64)
    out = []
    half, mask = np.int64(1 << (width - 1)), np.int64((1 << width) - 1)
    for _ in range(parts - 1):
        lo = ((rest + half) & mask) - half
        out.append(lo)
        rest = (rest - lo) >> width  # exact: rest - lo is a multiple of 2**width
    out.append(rest)
    return out


def scaled_to_float(acc: np.ndarray, exponent: int, dtype: Any = np.float64) -> np.ndarray:
    """``acc * 2**exponent`` in ``dtype``, bit for bit ``FixedTensor(acc, exponent).to_float()`` cast to ``dtype``, without its float64 round trip where that is exact.

    Parameters
    ----------
    acc : ndarray
        Exact integers (integer dtype, or a float dtype holding integers, as returned by
        :func:`exact_float_matmul`), magnitudes below ``2**53``.
    exponent : int
        One power-of-two exponent for the whole array.
    dtype : float32 or float64
        Result dtype.

    Returns
    -------
    ndarray
        A new C-contiguous array (or ``acc`` itself scaled in a fresh array).

    Raises
    ------
    DTypeError
        If ``dtype`` is not float32 or float64, or ``acc`` is not numeric.
    TypeError
        If ``exponent`` is not an int.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.fixed import scaled_to_float
    >>> scaled_to_float(np.array([3.0, -5.0], dtype=np.float32), -2, np.float32)
    array([ 0.75, -1.25], dtype=float32)
    """
    target = result_dtype(dtype)
    if not isinstance(acc, np.ndarray) or acc.dtype.kind not in "iuf":
        raise DTypeError(f"acc: expected a numeric numpy array, got {_describe(acc)}")
    if isinstance(exponent, (bool, np.bool_)) or not isinstance(exponent, numbers.Integral):
        raise ArgumentTypeError(f"exponent: expected an int, got {_describe(exponent)}")
    e = int(exponent)
    if acc.dtype == target == np.float32 and -120 <= e <= 100:
        out = acc * np.float32(2.0**e)  # exact: |acc| < 2**24 and the result stays normal
    elif -960 <= e <= 960:
        # exact in float64 (the result stays normal), then one rounding to the target,
        # as ldexp followed by the cast
        out = (acc.astype(np.float64) * (2.0**e)).astype(target, copy=False)
    else:
        out = np.ldexp(acc.astype(np.float64), e).astype(target, copy=False)
    return np.ascontiguousarray(out)


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def result_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as float32 or float64 (numpy's spelling rules), else a DTypeError naming ``dtype``."""
    try:
        target = np.dtype(dtype)
    except TypeError:
        target = None
    if target is None or target not in _FLOATS:  # None first: dtype(float64) == None
        raise DTypeError(f"dtype: expected float32 or float64, got {dtype!r}")
    return target
