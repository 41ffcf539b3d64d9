"""Dynamic fixed point: the :class:`FixedTensor` container, mapping and re-mapping.

A fixed-point tensor is an integer mantissa array ``q`` with a shared power-of-two
exponent and a bit-width ``b`` (sign included): ``value = q * 2**exponent`` and
``|q| <= 2**(b-1) - 1`` (DESIGN 2.7). The exponent is one int per tensor, or an int
array with one entry per slice along chosen axes (it broadcasts against ``q``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from .._validation import as_float_array, check_bits, check_rounding
from ..errors import ArgumentError, ArgumentTypeError, DTypeError, OverflowRiskError, ShapeError
from . import _kernels
from ._streams import MASK64, splitmix64_outputs, stream_key

__all__ = [
    "FixedTensor",
    "Rounding",
    "Seed",
    "mantissa_dtype",
    "requantize",
    "split_seed",
    "to_fixed",
]

Rounding = Literal["stochastic", "nearest"]
Seed = None | int | np.random.Generator
Exponent = int | np.ndarray

# |mantissa| < 2^62 everywhere, so a stochastic shift (x + r) >> s never wraps int64
_MAX_WIDE_BITS = 63


def mantissa_dtype(bits: int) -> np.dtype:
    """The narrowest signed integer dtype holding ``bits``-bit mantissas (sign included).

    Parameters
    ----------
    bits : int
        Bit-width, 1..64.

    Returns
    -------
    numpy dtype
        int8 up to 8 bits, int16 up to 16, int32 up to 32, else int64.

    Raises
    ------
    TypeError
        If ``bits`` is not an int.
    OverflowRiskError
        If ``bits`` exceeds 64.

    Examples
    --------
    >>> from sekron.fixed import mantissa_dtype
    >>> mantissa_dtype(8), mantissa_dtype(12), mantissa_dtype(40)
    (dtype('int8'), dtype('int16'), dtype('int64'))
    """
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, numbers.Integral):
        raise ArgumentTypeError(f"bits: expected an int in 1..64, got {_describe(bits)}")
    if bits < 1:
        raise ArgumentError(f"bits: expected an int in 1..64, got {int(bits)}")
    for dt in (np.int8, np.int16, np.int32, np.int64):
        if bits <= np.iinfo(dt).bits:
            return np.dtype(dt)
    raise OverflowRiskError(f"bits: expected at most 64, got {bits}")


def bits_for_bound(bound: int) -> int:
    """The bit-width ``b`` (sign included) with ``bound <= 2**(b-1) - 1``."""
    return max(2, int(bound).bit_length() + 1)


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"array of shape {x.shape} and dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"


class FixedTensor:
    """An integer mantissa array with a shared power-of-two exponent.

    Parameters
    ----------
    mantissa : ndarray of signed integers, shape (...)
        int8 for ``bits <= 8``, int16 for ``bits <= 16``; int32/int64 hold wide
        accumulators. Any signed integer dtype wide enough for ``bits`` is accepted.
    exponent : int or ndarray of int, broadcastable to ``mantissa.shape``
        ``value = mantissa * 2**exponent``. An array must have ``mantissa.ndim``
        dimensions, each 1 or equal to the mantissa's (one exponent per slice).
    bits : int
        Bit-width including the sign, 2..63: ``|mantissa| <= 2**(bits-1) - 1``.

    Raises
    ------
    DTypeError
        If the mantissa is not a signed integer array.
    ShapeError
        If the exponent does not broadcast along whole axes.
    OverflowRiskError
        If a mantissa exceeds ``2**(bits-1) - 1`` in magnitude or the dtype is too narrow.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.fixed import FixedTensor
    >>> t = FixedTensor(np.array([3, -5], dtype=np.int8), exponent=-2, bits=4)
    >>> t.to_float()
    array([ 0.75, -1.25])
    """

    __slots__ = ("bits", "exponent", "mantissa")

    mantissa: np.ndarray
    exponent: Exponent
    bits: int

    def __init__(self, mantissa: Any, exponent: Any, bits: int) -> None:
        q = np.asarray(mantissa)
        if q.dtype.kind != "i":
            raise DTypeError(f"mantissa: expected a signed integer array, got {_describe(q)}")
        if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, numbers.Integral):
            raise ArgumentTypeError(
                f"bits: expected an int in 2..{_MAX_WIDE_BITS}, got {_describe(bits)}"
            )
        bits = int(bits)
        if not 2 <= bits <= _MAX_WIDE_BITS:
            raise ArgumentError(f"bits: expected an int in 2..{_MAX_WIDE_BITS}, got {bits}")
        if q.dtype.itemsize * 8 < bits:
            raise OverflowRiskError(
                f"mantissa: dtype {q.dtype} cannot hold {bits}-bit values; "
                f"expected {mantissa_dtype(bits)} or wider"
            )
        exp = _check_exponent(exponent, q.shape)
        _check_exponent_range(exp, bits)
        m = (1 << (bits - 1)) - 1
        if q.size and int(np.max(np.abs(q.astype(np.int64)))) > m:
            raise OverflowRiskError(
                f"mantissa: expected |values| <= 2**{bits - 1} - 1 = {m} for bits={bits}, "
                f"got max |value| {int(np.max(np.abs(q.astype(np.int64))))}"
            )
        # validated once, so kept read-only: a write past the checked bound would make
        # the accumulator choices of later products unsafe (the caller's array is copied,
        # never frozen)
        q = q.copy()
        q.flags.writeable = False
        self.mantissa = q
        self.exponent = exp
        self.bits = bits

    @classmethod
    def trusted(cls, mantissa: np.ndarray, exponent: Exponent, bits: int) -> FixedTensor:
        """Build from parts whose invariants the caller guarantees (no pass over the data).

        For adapters and kernels that produced the mantissas themselves: only the O(1)
        facts are checked (a signed integer ndarray wide enough for ``bits``, ``bits`` an
        int in 2..63, an int or integer-array exponent); the magnitude bound
        ``|mantissa| <= 2**(bits-1) - 1`` and the exponent's broadcasting are the
        caller's contract, unchecked. The mantissa is kept, not copied (through a
        read-only view).

        Parameters
        ----------
        mantissa : ndarray of signed integers
        exponent : int or ndarray of int
            A size-1 array becomes a per-tensor exponent.
        bits : int

        Returns
        -------
        FixedTensor

        Raises
        ------
        DTypeError
            If ``mantissa`` is not a signed integer ndarray or ``exponent`` not integer.
        TypeError, ValueError
            If ``bits`` is not an int in 2..63.
        OverflowRiskError
            If the mantissa dtype is narrower than ``bits``.

        Examples
        --------
        >>> import numpy as np
        >>> from sekron.fixed import FixedTensor
        >>> FixedTensor.trusted(np.array([3, -5], dtype=np.int8), -2, 4).to_float()
        array([ 0.75, -1.25])
        """
        if not isinstance(mantissa, np.ndarray) or mantissa.dtype.kind != "i":
            raise DTypeError(
                f"mantissa: expected a signed integer ndarray, got {_describe(mantissa)}"
            )
        if type(bits) is not int or not 2 <= bits <= _MAX_WIDE_BITS:
            if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, numbers.Integral):
                raise ArgumentTypeError(
                    f"bits: expected an int in 2..{_MAX_WIDE_BITS}, got {_describe(bits)}"
                )
            if not 2 <= int(bits) <= _MAX_WIDE_BITS:
                raise ArgumentError(
                    f"bits: expected an int in 2..{_MAX_WIDE_BITS}, got {int(bits)}"
                )
        if mantissa.dtype.itemsize * 8 < bits:
            raise OverflowRiskError(
                f"mantissa: dtype {mantissa.dtype} cannot hold {bits}-bit values; "
                f"expected {mantissa_dtype(bits)} or wider"
            )
        if type(exponent) is not int and np.asarray(exponent).dtype.kind not in "iu":
            raise DTypeError(
                f"exponent: expected an int or an integer array, got {_describe(exponent)}"
            )
        return cls._trusted(mantissa, exponent, int(bits))

    @classmethod
    def _trusted(cls, mantissa: np.ndarray, exponent: Exponent, bits: int) -> FixedTensor:
        """Build without checks (for results whose invariants the engine proved).

        The mantissa is kept through a read-only view, as the constructor keeps its copy:
        a later write could break the bound the accumulators were chosen for, and the
        view leaves the array it was given (and its flags) as it was.
        """
        t = object.__new__(cls)
        view = np.asarray(mantissa).view()  # a 0-d result may come as a numpy scalar
        view.flags.writeable = False
        t.mantissa = view
        if type(exponent) is int:
            t.exponent = exponent
            t.bits = int(bits)
            return t
        # a single exponent, whatever its array shape, is a per-tensor exponent
        e = np.asarray(exponent, np.int64)
        t.exponent = int(e.reshape(-1)[0]) if e.size == 1 else e
        t.bits = int(bits)
        return t

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the mantissa array."""
        return tuple(self.mantissa.shape)

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return int(self.mantissa.ndim)

    @property
    def per_tensor(self) -> bool:
        """True when one exponent is shared by the whole tensor."""
        return isinstance(self.exponent, int)

    @property
    def max_mantissa(self) -> int:
        """The largest magnitude the bit-width allows, ``2**(bits-1) - 1``."""
        return (1 << (self.bits - 1)) - 1

    def to_float(self, dtype: Any = np.float64) -> np.ndarray:
        """Return ``mantissa * 2**exponent`` as a float array (a new array).

        Exact in float64 while ``|mantissa| < 2**53``.

        Examples
        --------
        >>> import numpy as np
        >>> from sekron.fixed import FixedTensor
        >>> FixedTensor(np.array([1, 2], dtype=np.int8), exponent=3, bits=3).to_float(np.float32)
        array([ 8., 16.], dtype=float32)
        """
        out = np.ldexp(self.mantissa.astype(np.float64), np.asarray(self.exponent, np.int64))
        return np.asarray(out, dtype=dtype)

    def __repr__(self) -> str:
        exp = self.exponent if self.per_tensor else f"array{np.shape(self.exponent)}"
        return (
            f"FixedTensor(shape={self.shape}, bits={self.bits}, exponent={exp}, "
            f"dtype={self.mantissa.dtype})"
        )


EXPONENT_RANGE = (-(1 << 14), 1 << 14)
"""Exponents a :class:`FixedTensor` accepts: far past float64's range either way, yet
small enough that adding two of them, and every shift the engine computes, stays exact."""


def _check_exponent_range(exp: Exponent, bits: int) -> None:
    lo, hi = EXPONENT_RANGE
    e_min = int(np.min(exp)) if isinstance(exp, np.ndarray) and exp.size else exp
    e_max = int(np.max(exp)) if isinstance(exp, np.ndarray) and exp.size else exp
    if isinstance(e_min, int) and isinstance(e_max, int) and not lo <= e_min <= e_max <= hi:
        raise OverflowRiskError(
            f"exponent: expected values in [{lo}, {hi}], got {e_min if e_min < lo else e_max}"
        )


STREAM_LIMIT = 1 << 62
"""Streams are ints in ``[0, 2**62)``: they enter the 64-bit counter key with room to spare."""


def check_stream(stream: Any, name: str = "stream") -> int:
    """Return ``stream`` as an int in ``[0, 2**62)``, or raise naming ``name``."""
    if isinstance(stream, (bool, np.bool_)) or not isinstance(stream, numbers.Integral):
        raise DTypeError(f"{name}: expected an int in [0, 2**62), got {_describe(stream)}")
    s = int(stream)
    if not 0 <= s < STREAM_LIMIT:
        raise ArgumentError(f"{name}: expected an int in [0, 2**62), got {s}")
    return s


def _check_exponent(exponent: Any, shape: tuple[int, ...]) -> Exponent:
    if isinstance(exponent, numbers.Integral) and not isinstance(exponent, (bool, np.bool_)):
        return int(exponent)
    e = np.asarray(exponent)
    if e.size == 1 and e.dtype.kind in "iu" and e.ndim <= len(shape):
        return int(e.reshape(-1)[0])
    if e.dtype.kind not in "iu":
        raise DTypeError(f"exponent: expected an int or an integer array, got {_describe(e)}")
    if e.ndim != len(shape) or any(d not in (1, s) for d, s in zip(e.shape, shape, strict=True)):
        raise ShapeError(
            f"exponent: expected an int or an array of ndim {len(shape)} whose axes are 1 or "
            f"match the mantissa shape {shape}, got shape {e.shape}"
        )
    return e.astype(np.int64)


def check_requantize(out_bits: Any, rounding: Any, seed: Any) -> None:
    """Validate an op's requantization options up front, also when ``out_bits`` is None.

    So that a typo in ``rounding`` or ``seed`` is never silently ignored, and a bad
    ``out_bits`` is reported by its own name.
    """
    if out_bits is not None:
        check_bits(out_bits, "out_bits")
    check_rounding(rounding)
    if not isinstance(seed, np.random.Generator):  # a Generator would be drawn from
        resolve_seed(seed)


def resolve_seed(seed: Seed, name: str = "seed") -> int:
    """Turn ``None``, an int >= 0 or a Generator into a 64-bit seed."""
    if type(seed) is int and seed >= 0:  # the common case, without the ABC checks below
        return seed & MASK64
    if seed is None:
        return int(np.random.SeedSequence().generate_state(1, np.uint64)[0])
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(0, 1 << 64, dtype=np.uint64))
    if isinstance(seed, numbers.Integral) and not isinstance(seed, (bool, np.bool_)):
        if int(seed) < 0:
            raise ArgumentError(f"{name}: expected a non-negative int, got {int(seed)}")
        return int(seed) & MASK64
    raise ArgumentTypeError(
        f"{name}: expected None, an int or a numpy Generator, got {_describe(seed)}"
    )


def split_seed(seed: Seed, n: int) -> tuple[int, ...]:
    """Split one seed into ``n`` independent 64-bit seeds (one per call of a training step).

    Parameters
    ----------
    seed : int, numpy Generator or None
        The step's seed (a Generator is asked for one 64-bit value; None: fresh entropy).
    n : int
        Number of seeds (>= 0).

    Returns
    -------
    tuple of int
        ``s_i = splitmix64(seed + (i + 1) * GAMMA)`` for ``i = 0..n-1`` (arithmetic modulo
        2**64): the first ``n`` outputs of a splitmix64 generator started at ``seed``.

    Raises
    ------
    ValueError, TypeError
        If ``seed`` is negative or not a seed, or ``n`` is negative.

    Notes
    -----
    The stream scheme of a training step: draw one 64-bit step seed, split it into one
    seed per public call (``s_0`` for the first ``to_fixed``, ``s_1`` for the next, ...).
    Inside a call, sub-stream ``j`` (e.g. 1 and 2 for the two gradient mappings of
    :func:`linear_backward`, 3 for its requantization, 4 for the bias alignment of
    :func:`linear`) draws element ``i``'s bits as
    ``splitmix64(key + (i + 1) * GAMMA)`` with
    ``key = mix(mix(s + GAMMA) xor (j * M2 + GAMMA))``. Every random bit is therefore a
    function of (step seed, call index, sub-stream, element index) only: the step is
    deterministic and independent of the thread count, and distinct calls get unrelated
    keys (splitmix64's output function is a bijection of its 64-bit state).

    Examples
    --------
    >>> from sekron.fixed import split_seed
    >>> a, b = split_seed(7, 2)
    >>> split_seed(7, 3)[:2] == (a, b), a != b
    (True, True)
    """
    s = resolve_seed(seed)
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) or int(n) < 0:
        raise ArgumentError(f"n: expected a non-negative int, got {n!r}")
    return splitmix64_outputs(s, int(n))


def _kept_axes(axis: Any, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return ()
    axes = (axis,) if isinstance(axis, numbers.Integral) else axis
    if not isinstance(axes, Sequence) or isinstance(axes, str):
        raise ArgumentTypeError(
            f"axis: expected None, an int or a tuple of ints, got {_describe(axis)}"
        )
    out = []
    for a in axes:
        if isinstance(a, (bool, np.bool_)) or not isinstance(a, numbers.Integral):
            raise ArgumentTypeError(f"axis: expected ints, got {_describe(axis)}")
        if not -ndim <= int(a) < ndim:
            raise ShapeError(
                f"axis: expected axes in [-{ndim}, {ndim}) for a {ndim}-d array, got {axis!r}"
            )
        out.append(int(a) % ndim)
    return tuple(sorted(set(out)))


def _cell_max(mag: np.ndarray, exponent_shape: tuple[int, ...] | None) -> np.ndarray:
    """Max of ``mag`` over every axis along which the exponent is shared (keepdims)."""
    if exponent_shape is None:
        return np.asarray(mag.max(initial=0)).reshape((1,) * mag.ndim)
    red = tuple(i for i, d in enumerate(exponent_shape) if d == 1)
    return mag.max(axis=red, keepdims=True, initial=0) if red else mag.copy()


def round_scaled(y: np.ndarray, qmax: int, rounding: str, seed: Seed, stream: int) -> np.ndarray:
    """Round the float64 array ``y`` (already scaled) to int64, clamped to ``±qmax``."""
    if rounding == "nearest":
        return np.clip(np.floor(y + 0.5), -qmax, qmax).astype(np.int64)
    flat = np.ascontiguousarray(y, dtype=np.float64).ravel()
    out = np.empty(flat.size, dtype=np.int64)
    if flat.size:
        kernel = (
            _kernels.round_stochastic
            if flat.size >= _kernels.PARALLEL_MIN_ELEMENTS
            else _kernels.round_stochastic_serial
        )
        kernel(flat, stream_key(resolve_seed(seed), stream), np.int64(qmax), out)
    return out.reshape(y.shape)


def to_fixed(
    x: Any,
    bits: int,
    rounding: Rounding = "stochastic",
    seed: Seed = None,
    axis: int | Sequence[int] | None = None,
    *,
    stream: int = 0,
) -> FixedTensor:
    """Map a float array to dynamic fixed point with ``bits`` bits (DESIGN 2.7).

    Parameters
    ----------
    x : array_like of float, shape (...)
        Finite values; not modified.
    bits : int
        Bit-width including the sign, 2..16. Mantissas are int8 for ``bits <= 8``,
        int16 otherwise.
    rounding : {"stochastic", "nearest"}
        Stochastic rounding is unbiased (``E[q * 2**e] = x``); nearest rounds half up.
    seed : int, numpy Generator or None
        Key of the counter-based random bits (stochastic rounding only). The same seed
        and ``stream`` give the same bits whatever the thread count; a Generator is
        asked for one 64-bit seed; None draws fresh entropy.
    axis : int, tuple of int or None
        None shares one exponent over the tensor; otherwise one exponent per slice
        along these axes (e.g. ``axis=0`` for one exponent per row).
    stream : int, keyword-only
        Stream id mixed into the key, to draw independent bits from one seed.

    Returns
    -------
    FixedTensor
        ``exponent = floor(log2 max|x|) - (bits - 2)`` per exponent cell, so the largest
        magnitude uses ``bits - 1`` bits; mantissas clamped to ``±(2**(bits-1) - 1)``.
        An all-zero cell gets mantissas 0 and exponent 0.

    Raises
    ------
    NonFiniteError
        If ``x`` holds NaN or infinity.
    ValueError, TypeError
        If ``bits`` is outside 2..16, ``rounding`` unknown, ``seed`` or ``axis`` invalid.
    DTypeError
        If ``x`` is not real numeric.

    Examples
    --------
    >>> from sekron.fixed import to_fixed
    >>> t = to_fixed([0.5, -1.5, 3.0], bits=4, rounding="nearest")
    >>> t.mantissa, t.exponent
    (array([ 1, -3,  6], dtype=int8), -1)
    >>> t.to_float()
    array([ 0.5, -1.5,  3. ])
    """
    b = check_bits(bits)
    rounding_ = check_rounding(rounding)
    stream = check_stream(stream)
    if (
        axis is None
        and type(x) is np.ndarray
        and x.dtype in _FLOATS
        and x.size < _kernels.FUSED_MAX_ELEMENTS
    ):
        fast = _to_fixed_flat(x, b, rounding_ == "stochastic", seed, stream)
        if fast is not None:
            return fast
    if axis is None and type(x) is np.ndarray and x.dtype in _FLOATS:
        scaled = _to_fixed_scaled(x, b, rounding_, seed, stream)
        if scaled is not None:
            return scaled
    arr = as_float_array(x, "x").astype(np.float64)
    kept = _kept_axes(axis, arr.ndim)
    exp_shape = None if not kept else tuple(s if i in kept else 1 for i, s in enumerate(arr.shape))
    amax = _cell_max(np.abs(arr), exp_shape)
    e_max = np.frexp(amax)[1].astype(np.int64) - 1
    exponent = np.where(amax > 0, e_max - (b - 2), 0).astype(np.int64)
    y = np.ldexp(arr, -exponent)  # exact: a power-of-two scaling
    q = round_scaled(y, (1 << (b - 1)) - 1, rounding_, seed, stream)
    exp_out: Exponent = int(exponent.reshape(-1)[0]) if exp_shape is None else exponent
    return FixedTensor._trusted(q.astype(mantissa_dtype(b)), exp_out, b)


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
# past this |exponent| a power-of-two multiply could overflow or go subnormal: use ldexp
_SCALE_EXP_MAX = 960


def _to_fixed_scaled(
    x: np.ndarray, bits: int, rounding: Rounding, seed: Seed, stream: int
) -> FixedTensor | None:
    """``to_fixed(x, bits, axis=None)`` of a large float array, the same bits by a shorter route.

    The scaling is one multiply by ``2**-e`` (exact, as ``ldexp``, which cost 1 ms of a
    512x512 mapping) after one ``max |x|`` pass; 0.24 ms against 0.97 ms on 512x512, one
    thread. None (the general path decides) for non-finite values, all zeros and extreme
    exponents.
    """
    a = x.astype(np.float64)
    amax = float(np.abs(a).max()) if a.size else 0.0
    if not math.isfinite(amax) or amax == 0.0:
        return None
    e = math.frexp(amax)[1] - 1 - (bits - 2)
    if abs(e) > _SCALE_EXP_MAX:
        return None
    q = round_scaled(a * 2.0 ** (-e), (1 << (bits - 1)) - 1, rounding, seed, stream)
    return FixedTensor._trusted(q.astype(mantissa_dtype(bits)), e, bits)


_NO_MASK = np.zeros(1, dtype=bool)


def _to_fixed_flat(
    x: np.ndarray, bits: int, stochastic: bool, seed: Seed, stream: int
) -> FixedTensor | None:
    """``to_fixed(x, bits, axis=None)`` of a float32/float64 array in one serial kernel.

    Same bits as the general path (the tests compare both); None when ``x`` is not finite
    (the general path then raises the error). The seed is resolved exactly when the
    general path resolves it (stochastic rounding of a non-empty array).
    """
    out = np.empty(x.size, dtype=np.int8 if bits <= 8 else np.int16)
    if not x.size:
        return FixedTensor._trusted(out.reshape(x.shape), 0, bits)
    key = np.uint64(resolve_seed(seed)) if stochastic else np.uint64(0)
    e = _kernels.map_fixed_flat(x.reshape(-1), bits, stochastic, key, stream, out)
    if e == _kernels.NONFINITE:
        return None
    return FixedTensor._trusted(out.reshape(x.shape), int(e), bits)


def requantize_flat(
    t: FixedTensor,
    bits: int,
    stochastic: bool,
    seed: Seed,
    stream: int,
    mask: np.ndarray | None = None,
) -> FixedTensor:
    """``requantize`` of a per-tensor FixedTensor in one serial kernel (trusted inputs).

    With ``mask`` (a bool array of ``t``'s shape), elements where it is False are zeroed
    after rounding. Same bits as the general path; the seed is resolved when it is.
    """
    q = t.mantissa.reshape(-1)
    out = np.empty(q.size, dtype=np.int8 if bits <= 8 else np.int16)
    if not q.size:
        return FixedTensor._trusted(out.reshape(t.mantissa.shape), 0, bits)
    key = np.uint64(resolve_seed(seed)) if stochastic else np.uint64(0)
    m = _NO_MASK if mask is None else mask.reshape(-1)
    e = _kernels.requant_flat(
        q, t.exponent, bits, stochastic, key, stream, m, mask is not None, out
    )
    return FixedTensor._trusted(out.reshape(t.mantissa.shape), int(e), bits)


def bit_length(v: np.ndarray) -> np.ndarray:
    """Exact bit length of non-negative int64 values (0 for 0), elementwise."""
    v = np.asarray(v, dtype=np.int64)
    e = np.frexp(v.astype(np.float64))[1].astype(np.int64)
    # float64 rounding can carry 2^k - 1 up to 2^k for values past 2^53: correct it
    high = e >= 1
    too_big = np.zeros(high.shape, dtype=bool)
    too_big[high] = (np.int64(1) << (e[high] - 1)) > v[high]
    return np.where(too_big, e - 1, e)


def shift_round(
    q: np.ndarray, shift: np.ndarray, rounding: str, seed: Seed, stream: int
) -> np.ndarray:
    """``q / 2**shift`` rounded (int64), ``shift`` broadcast against ``q``; ``<= 0`` shifts left."""
    q64 = np.asarray(q, dtype=np.int64)
    if np.size(shift) == 1 and q64.size < _kernels.FUSED_MAX_ELEMENTS:
        s1 = int(np.asarray(shift).reshape(-1)[0])
        if -62 <= s1 <= 62:  # one shift for every element: one serial kernel, the same bits
            res = np.empty(q64.size, dtype=np.int64)
            if res.size:
                stochastic = rounding != "nearest"
                key = np.uint64(resolve_seed(seed)) if stochastic else np.uint64(0)
                _kernels.shift_flat(q64.reshape(-1), s1, stochastic, key, stream, res)
            return res.reshape(q64.shape)
    s = np.broadcast_to(np.asarray(shift, dtype=np.int64), q64.shape)
    if rounding == "nearest":
        out = np.empty(q64.shape, dtype=np.int64)
        left = s <= 0
        out[left] = q64[left] << (-s[left])
        right = ~left
        sr = np.minimum(s[right], 63)
        half = np.int64(1) << (sr - 1)
        out[right] = np.where(sr >= 63, 0, (q64[right] + half) >> np.minimum(sr, 62))
        return out
    flat = np.ascontiguousarray(q64).ravel()
    res = np.empty(flat.size, dtype=np.int64)
    if flat.size:
        key = stream_key(resolve_seed(seed), stream)
        kernel = (
            _kernels.shift_stochastic
            if flat.size >= _kernels.PARALLEL_MIN_ELEMENTS
            else _kernels.shift_stochastic_serial
        )
        kernel(flat, np.ascontiguousarray(s).ravel(), key, res)
    return res.reshape(q64.shape)


def requantize(
    t: FixedTensor,
    bits: int,
    rounding: Rounding = "stochastic",
    seed: Seed = None,
    *,
    stream: int = 0,
) -> FixedTensor:
    """Re-map a (wide) fixed-point tensor to ``bits`` bits with integer shifts only.

    The shift is ``bitlength(max|q|) - (bits - 1)`` per exponent cell; the exponent moves
    by the same amount, so the largest magnitude again uses ``bits - 1`` bits (a negative
    shift is an exact left shift). This equals :func:`to_fixed` of the exact value.

    Parameters
    ----------
    t : FixedTensor
        Typically an accumulator (int32/int64 mantissa); not modified.
    bits : int
        Target bit-width, 2..16.
    rounding : {"stochastic", "nearest"}
        Stochastic: ``(q + r) >> s`` with ``r`` uniform in ``[0, 2**s)``, unbiased.
        Nearest: ``(q + 2**(s-1)) >> s`` (half up), within half a unit.
    seed : int, numpy Generator or None
        Key of the random bits (see :func:`to_fixed`).
    stream : int, keyword-only
        Stream id mixed into the key.

    Returns
    -------
    FixedTensor
        int8/int16 mantissas, exponents ``t.exponent + shift``.

    Raises
    ------
    TypeError
        If ``t`` is not a FixedTensor.
    ValueError
        If ``bits`` is outside 2..16 or ``rounding`` is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.fixed import FixedTensor, requantize
    >>> acc = FixedTensor(np.array([1000, -300], dtype=np.int32), exponent=-10, bits=12)
    >>> r = requantize(acc, bits=4, rounding="nearest")
    >>> r.mantissa, r.exponent
    (array([ 7, -2], dtype=int8), -3)
    """
    if not isinstance(t, FixedTensor):
        raise ArgumentTypeError(f"t: expected a FixedTensor, got {_describe(t)}")
    b = check_bits(bits)
    rounding_ = check_rounding(rounding)
    if t.per_tensor and t.mantissa.size < _kernels.FUSED_MAX_ELEMENTS:
        return requantize_flat(t, b, rounding_ == "stochastic", seed, stream)
    q = t.mantissa.astype(np.int64)
    exp_shape = None if t.per_tensor else np.shape(t.exponent)
    length = bit_length(_cell_max(np.abs(q), exp_shape))
    shift = np.where(length > 0, length - (b - 1), 0)
    new_q = np.clip(
        shift_round(q, shift, rounding_, seed, stream), -((1 << (b - 1)) - 1), (1 << (b - 1)) - 1
    )
    new_exp = np.asarray(t.exponent, np.int64) + shift
    new_exp = np.where(length > 0, new_exp, 0)
    exp_out: Exponent = int(new_exp.reshape(-1)[0]) if exp_shape is None else new_exp
    return FixedTensor._trusted(new_q.astype(mantissa_dtype(b)), exp_out, b)


def map_grad(
    g: Any, shape: tuple[int, ...], bits: int, rounding: Rounding, key: int, stream: int
) -> FixedTensor:
    """Map a float gradient freshly (one independent draw per stream), or requantize one."""
    if isinstance(g, FixedTensor):
        if g.shape != shape:
            raise ShapeError(f"grad_out: expected shape {shape}, got {g.shape}")
        if g.bits <= bits and g.per_tensor:
            return g
        return requantize(g, bits, rounding, key, stream=stream)
    t = to_fixed(g, bits, rounding, key, stream=stream)
    if t.shape != shape:
        raise ShapeError(f"grad_out: expected shape {shape}, got {t.shape}")
    return t
