"""Element-wise integer ops with exponent alignment, layer norm and embedding.

Addition aligns exponents by shifting the operand with the smaller exponent right with
stochastic rounding (DESIGN 2.7). Layer norm reduces in integers; its only float step is
the reciprocal square root of an integer variance statistic (and the product of that
per-row scale with integers), as in the integer fine-tuning paper's setting.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import numpy as np

from .._validation import as_nonnegative_float, as_positive_int, check_bits, renamed
from ..errors import ArgumentError, ArgumentTypeError, DTypeError, OverflowRiskError, ShapeError
from . import _kernels
from ._tensor import (
    FixedTensor,
    Rounding,
    Seed,
    _describe,
    bits_for_bound,
    check_requantize,
    check_rounding,
    mantissa_dtype,
    map_grad,
    requantize,
    resolve_seed,
    shift_round,
    to_fixed,
)

__all__ = [
    "LayerNormCache",
    "add",
    "align_to",
    "embedding",
    "embedding_backward",
    "layer_norm",
    "layer_norm_backward",
    "mul",
]

_INT32_MAX = (1 << 31) - 1
_SAFE = 1 << 62


def _check_fixed(t: Any, name: str) -> FixedTensor:
    if not isinstance(t, FixedTensor):
        raise ArgumentTypeError(
            f"{name}: expected a FixedTensor (see sekron.fixed.to_fixed), got {_describe(t)}"
        )
    return t


def _narrow(q: np.ndarray, bound: int) -> np.ndarray:
    return q.astype(np.int32 if bound <= _INT32_MAX else np.int64)


def align_to(
    t: FixedTensor, exponent: int, rounding: Rounding, seed: Seed
) -> tuple[np.ndarray, int]:
    """Mantissas of ``t`` re-expressed at ``exponent`` (int64), and their magnitude bound.

    Used to add a tensor onto an accumulator of another exponent (a bias onto a GEMM
    result). A coarser ``t`` shifts left (exact); a finer one shifts right with
    ``rounding``, drawing from stream 4 of ``seed``.

    Parameters
    ----------
    t : FixedTensor
        Not modified.
    exponent : int
        Target exponent.
    rounding : {"stochastic", "nearest"}
    seed : int, numpy Generator or None
        Key of the stochastic right shift.

    Returns
    -------
    mantissas : ndarray of int64, t's shape
        ``round(t.mantissa * 2**(t.exponent - exponent))``.
    bound : int
        ``t.max_mantissa * 2**max(t.exponent - exponent, 0)``, a bound on their magnitude.

    Raises
    ------
    TypeError
        If ``t`` is not a FixedTensor or ``exponent`` not an int.
    OverflowRiskError
        If a left shift would pass ``2**62``.
    ValueError
        If ``rounding`` is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.fixed import FixedTensor, align_to
    >>> b = FixedTensor(np.array([3, -1], dtype=np.int8), exponent=0, bits=4)
    >>> align_to(b, -2, "nearest", 0)
    (array([12, -4]), 28)
    >>> align_to(b, 1, "nearest", 0)[0]
    array([2, 0])
    """
    if not isinstance(t, FixedTensor):
        raise ArgumentTypeError(f"t: expected a FixedTensor, got {_describe(t)}")
    if isinstance(exponent, (bool, np.bool_)) or not isinstance(exponent, numbers.Integral):
        raise ArgumentTypeError(f"exponent: expected an int, got {_describe(exponent)}")
    exponent = int(exponent)
    diff = np.asarray(t.exponent, np.int64) - exponent
    if np.any(diff > 0) and t.bits - 1 + int(diff.max()) > 62:
        raise OverflowRiskError(
            f"cannot align a {t.bits}-bit tensor {int(diff.max())} binades up within int64"
        )
    check_requantize(None, rounding, seed)  # the seed checked, a Generator not drawn from
    q = shift_round(t.mantissa, -diff, check_rounding(rounding), seed, 4)
    bound = t.max_mantissa << max(int(diff.max()), 0)
    return q, bound


def add(
    a: FixedTensor,
    b: FixedTensor,
    out_bits: int | None = None,
    *,
    rounding: Rounding = "stochastic",
    seed: Seed = None,
) -> FixedTensor:
    """Sum of two fixed-point tensors with exponent alignment (numpy broadcasting).

    The operand with the smaller exponent is shifted right onto the larger exponent with
    stochastic (or nearest) rounding; the mantissas then add exactly.

    Parameters
    ----------
    a, b : FixedTensor
        Broadcast-compatible shapes; per-tensor or per-slice exponents.
    out_bits : int or None
        None returns the exact sum of the aligned mantissas (``max(bits) + 1`` bits);
        2..16 requantizes it.
    rounding : {"stochastic", "nearest"}
    seed : int, numpy Generator or None
        Key of the alignment (stream 5, 6) and requantization (stream 7) draws.

    Returns
    -------
    FixedTensor
        Exponent ``max(a.exponent, b.exponent)`` (elementwise for per-slice exponents).

    Raises
    ------
    ShapeError
        If the shapes do not broadcast.
    TypeError
        If an operand is not a FixedTensor.

    Examples
    --------
    >>> from sekron.fixed import to_fixed, add
    >>> a = to_fixed([1.0, 2.0], 8, rounding="nearest")
    >>> b = to_fixed([0.25, 0.5], 8, rounding="nearest")
    >>> add(a, b, rounding="nearest").to_float()
    array([1.25, 2.5 ])
    """
    check_requantize(out_bits, rounding, seed)
    a = _check_fixed(a, "a")
    b = _check_fixed(b, "b")
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ShapeError(
            f"b: expected a shape that broadcasts with a's {a.shape}, got {b.shape}"
        ) from None
    if max(a.max_mantissa, b.max_mantissa) >= _SAFE // 2:
        raise OverflowRiskError(f"add: operands of {a.bits} and {b.bits} bits may overflow int64")
    rounding_ = check_rounding(rounding)
    key = resolve_seed(seed)
    ea = np.asarray(a.exponent, np.int64)
    eb = np.asarray(b.exponent, np.int64)
    # an all-zero operand carries exponent 0 by convention: it must not set the target
    if not a.mantissa.any():
        ea = eb
    elif not b.mantissa.any():
        eb = ea
    target = np.maximum(
        ea.reshape((1,) * (len(shape) - ea.ndim) + ea.shape),
        eb.reshape((1,) * (len(shape) - eb.ndim) + eb.shape),
    )
    qa = shift_round(np.broadcast_to(a.mantissa, shape), target - ea, rounding_, key, 5)
    qb = shift_round(np.broadcast_to(b.mantissa, shape), target - eb, rounding_, key, 6)
    bound = a.max_mantissa + b.max_mantissa
    out = FixedTensor._trusted(_narrow(qa + qb, bound), target, bits_for_bound(bound))
    return out if out_bits is None else requantize(out, out_bits, rounding_, key, stream=7)


def mul(
    a: FixedTensor,
    b: FixedTensor,
    out_bits: int | None = None,
    *,
    rounding: Rounding = "stochastic",
    seed: Seed = None,
) -> FixedTensor:
    """Element-wise product: mantissas multiply exactly, exponents add.

    Parameters
    ----------
    a, b : FixedTensor
        Broadcast-compatible shapes.
    out_bits : int or None
        None returns the exact product (``bits`` from ``m_a * m_b``); 2..16 requantizes.
    rounding : {"stochastic", "nearest"}
    seed : int, numpy Generator or None

    Returns
    -------
    FixedTensor

    Raises
    ------
    ShapeError
        If the shapes do not broadcast.
    OverflowRiskError
        If ``m_a * m_b`` passes 2**62.

    Examples
    --------
    >>> from sekron.fixed import to_fixed, mul
    >>> a = to_fixed([1.5, -2.0], 8, rounding="nearest")
    >>> mul(a, to_fixed([0.5], 8, rounding="nearest")).to_float()
    array([ 0.75, -1.  ])
    """
    check_requantize(out_bits, rounding, seed)
    a = _check_fixed(a, "a")
    b = _check_fixed(b, "b")
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ShapeError(
            f"b: expected a shape that broadcasts with a's {a.shape}, got {b.shape}"
        ) from None
    bound = a.max_mantissa * b.max_mantissa
    if bound > _SAFE:
        raise OverflowRiskError(
            f"mul: the product of {a.bits}- and {b.bits}-bit mantissas may pass 2**62"
        )
    q = a.mantissa.astype(np.int64) * b.mantissa.astype(np.int64)
    ea = np.asarray(a.exponent, np.int64)
    eb = np.asarray(b.exponent, np.int64)
    nd = q.ndim
    e = ea.reshape((1,) * (nd - ea.ndim) + ea.shape) + eb.reshape((1,) * (nd - eb.ndim) + eb.shape)
    out = FixedTensor._trusted(_narrow(q, bound), e, bits_for_bound(bound))
    return out if out_bits is None else requantize(out, out_bits, rounding, seed)


class LayerNormCache(NamedTuple):
    """What :func:`layer_norm_backward` needs from the forward pass.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.fixed import layer_norm
    >>> y, cache = layer_norm([[1.0, 2.0, 3.0, 4.0]], np.ones(4), np.zeros(4), 12, rounding="nearest")
    >>> cache.bits, cache.xhat.shape, cache.rstd.shape
    (12, (1, 4), (1, 1))
    >>> np.round(cache.xhat.to_float(), 2)
    array([[-1.34, -0.45,  0.45,  1.34]])
    """

    xhat: FixedTensor  # normalized input, per-tensor exponent, shape (..., D)
    rstd: np.ndarray  # float64 per-row scale, shape (..., 1), see layer_norm Notes
    x_exponent: int
    gamma: FixedTensor
    bits: int


def _as_fixed(
    v: Any, name: str, bits: int, rounding: Rounding, key: int, stream: int
) -> FixedTensor:
    if isinstance(v, FixedTensor):
        if not v.per_tensor:
            raise ShapeError(f"{name}: expected a per-tensor exponent")
        return v if v.bits <= 16 else requantize(v, bits, rounding, key, stream=stream)
    with renamed("x", name):
        return to_fixed(v, bits, rounding, key, stream=stream)


def layer_norm(
    x: Any,
    gamma: Any,
    beta: Any,
    bits: int = 16,
    eps: float = 1e-5,
    *,
    rounding: Rounding = "stochastic",
    seed: Seed = None,
) -> tuple[FixedTensor, LayerNormCache]:
    """Integer layer normalization over the last axis.

    Parameters
    ----------
    x : array_like of float or FixedTensor, shape (..., D)
        Mapped to ``bits`` if float.
    gamma, beta : array_like of float or FixedTensor, shape (D,)
        Scale and shift (mapped to ``bits`` if float).
    bits : int
        Bit-width of the mappings and of the output, 2..16.
    eps : float
        Added to the variance, in the input's units.
    rounding : {"stochastic", "nearest"}
    seed : int, numpy Generator or None

    Returns
    -------
    y : FixedTensor, shape (..., D)
        ``gamma * xhat + beta`` at ``bits`` bits.
    cache : LayerNormCache
        For :func:`layer_norm_backward`.

    Raises
    ------
    ShapeError
        If ``gamma`` or ``beta`` do not have shape (D,).
    OverflowRiskError
        If ``D**2 * m**2`` passes 2**62 (the integer variance numerator).
    NonFiniteError
        If an input holds NaN or infinity.

    Notes
    -----
    With mantissas ``q`` (exponent ``e``) of a row of length ``D``, ``S1 = sum q`` and
    ``S2 = sum q**2`` are exact int64 reductions, ``c = D*q - S1`` and
    ``V = D*S2 - S1**2`` are exact integers, and ``xhat = c / sqrt(V + D**2 eps 2**(-2e))``.
    The reciprocal square root of the integer statistic is computed in float64 (the one
    float step), multiplied with the integer ``c`` and mapped to ``bits``; the affine part
    is an integer multiply by ``gamma`` and an aligned integer add of ``beta``.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.fixed import layer_norm
    >>> y, _ = layer_norm([[1.0, 2.0, 3.0, 4.0]], np.ones(4), np.zeros(4), bits=12, rounding="nearest")
    >>> np.round(y.to_float(), 2)
    array([[-1.34, -0.45,  0.45,  1.34]])
    """
    b = check_bits(bits)
    key = resolve_seed(seed)
    eps = as_nonnegative_float(eps, "eps", positive=True)
    xq = _as_fixed(x, "x", b, rounding, key, 1)
    if xq.ndim < 1:
        raise ShapeError(f"x: expected at least 1 dimension, got shape {xq.shape}")
    d = xq.shape[-1]
    g = _as_fixed(gamma, "gamma", b, rounding, key, 2)
    be = _as_fixed(beta, "beta", b, rounding, key, 3)
    for name, t in (("gamma", g), ("beta", be)):
        if t.shape != (d,):
            raise ShapeError(f"{name}: expected shape ({d},), got {t.shape}")
    m = xq.max_mantissa
    if d * d * m * m > _SAFE:
        raise OverflowRiskError(
            f"x: D={d} with {xq.bits}-bit mantissas overflows the int64 variance"
        )
    q = xq.mantissa.astype(np.int64)
    s1 = q.sum(axis=-1, keepdims=True)  # |S1| <= D m
    s2 = (q * q).sum(axis=-1, keepdims=True)  # S2 <= D m^2
    c = d * q - s1  # |c| <= 2 D m
    v = d * s2 - s1 * s1  # 0 <= V <= D^2 m^2 (checked above)
    e = int(xq.exponent)  # type: ignore[arg-type]
    rstd = 1.0 / np.sqrt(v.astype(np.float64) + float(d) * d * eps * 2.0 ** (-2 * e))
    xhat = to_fixed(c * rstd, b, rounding, key, stream=4)
    y = add(mul(xhat, g), be, b, rounding=rounding, seed=key)
    return y, LayerNormCache(xhat, rstd, e, g, b)


def layer_norm_backward(
    grad_out: Any,
    cache: LayerNormCache,
    *,
    rounding: Rounding = "stochastic",
    seed: Seed = None,
) -> tuple[FixedTensor, FixedTensor, FixedTensor]:
    """Gradients of :func:`layer_norm` with integer reductions.

    Parameters
    ----------
    grad_out : array_like of float or FixedTensor, shape (..., D)
        Mapped to the forward's ``bits``.
    cache : LayerNormCache
        From the forward call.
    rounding : {"stochastic", "nearest"}
    seed : int, numpy Generator or None

    Returns
    -------
    dx : FixedTensor, shape (..., D)
        ``rstd * (g - mean(g) - xhat * mean(g * xhat))`` with ``g = dy * gamma``, mapped
        to ``bits`` (per-row float scale times an exact integer bracket).
    dgamma : FixedTensor, shape (D,)
        ``sum dy * xhat`` over all rows, exact int64 accumulator.
    dbeta : FixedTensor, shape (D,)
        ``sum dy`` over all rows, exact int64 accumulator.

    Raises
    ------
    ShapeError
        If ``grad_out`` does not have the forward input's shape.
    TypeError
        If ``cache`` is not a LayerNormCache.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.fixed import layer_norm, layer_norm_backward
    >>> y, cache = layer_norm([[1.0, 2.0, 3.0, 4.0]], np.ones(4), np.zeros(4), 12, rounding="nearest")
    >>> dx, dg, db = layer_norm_backward(np.ones((1, 4)), cache, rounding="nearest")
    >>> bool(np.abs(dx.to_float()).max() < 1e-3), db.to_float()
    (True, array([1., 1., 1., 1.]))
    """
    if not isinstance(cache, LayerNormCache):
        raise ArgumentTypeError(
            f"cache: expected a LayerNormCache from layer_norm, got {_describe(cache)}"
        )
    b = cache.bits
    key = resolve_seed(seed)
    xh = cache.xhat
    dy = map_grad(grad_out, xh.shape, b, rounding, key, 1)
    if not dy.per_tensor:
        dy = requantize(dy, b, rounding, key, stream=1)
    d = xh.shape[-1]
    rows = int(np.prod(xh.shape[:-1]))
    qdy = dy.mantissa.astype(np.int64).reshape(rows, d)
    qx = xh.mantissa.astype(np.int64).reshape(rows, d)
    # column reductions: |sum| <= rows * m^2 < 2^62 for rows < 2^32 at 16 bits
    dgamma = FixedTensor._trusted(
        (qdy * qx).sum(axis=0),
        int(dy.exponent) + int(xh.exponent),  # type: ignore[arg-type]
        bits_for_bound(rows * dy.max_mantissa * xh.max_mantissa),
    )
    dbeta = FixedTensor._trusted(
        qdy.sum(axis=0),
        int(dy.exponent),  # type: ignore[arg-type]
        bits_for_bound(rows * dy.max_mantissa),
    )
    g = requantize(mul(dy, cache.gamma), b, rounding, key, stream=2)  # per-tensor exponent e_g
    qg = g.mantissa.astype(np.int64).reshape(rows, d)
    sg = qg.sum(axis=1, keepdims=True)  # |.| <= D m
    sgx = (qg * qx).sum(axis=1, keepdims=True)  # |.| <= D m^2
    if d * g.max_mantissa * xh.max_mantissa * xh.max_mantissa > _SAFE:
        raise OverflowRiskError(f"grad_out: D={d} at {b} bits overflows the int64 bracket")
    eg, ex = int(g.exponent), int(xh.exponent)  # type: ignore[arg-type]
    t1 = FixedTensor._trusted(d * qg - sg, eg, bits_for_bound(2 * d * g.max_mantissa))
    t2 = FixedTensor._trusted(
        -(qx * sgx), eg + 2 * ex, bits_for_bound(d * g.max_mantissa * xh.max_mantissa**2)
    )
    bracket = add(t1, t2, rounding=rounding, seed=key)  # exponent max(eg, eg + 2 ex)
    # dx = rstd_real / D * bracket with rstd_real = D * rstd * 2^-e_x (see layer_norm Notes)
    scale = cache.rstd.reshape(rows, 1) * 2.0 ** (-cache.x_exponent)
    dx_f = bracket.to_float() * scale
    dx = to_fixed(dx_f.reshape(xh.shape), b, rounding, key, stream=3)
    return dx, dgamma, dbeta


def _check_ids(ids: Any, n: int) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.dtype.kind not in "iu":
        raise DTypeError(f"ids: expected an integer array, got {_describe(arr)}")
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise ArgumentError(
            f"ids: expected values in 0..{n - 1}, got min {arr.min()} and max {arr.max()}"
        )
    return arr.astype(np.int64)


def embedding(table: FixedTensor, ids: Any) -> FixedTensor:
    """Integer embedding lookup: gather rows of the mantissa table (exponent unchanged).

    Parameters
    ----------
    table : FixedTensor, shape (V, D)
        Per-tensor exponent (or one per column).
    ids : array_like of int, shape (...)
        Row indices in ``0..V-1``.

    Returns
    -------
    FixedTensor, shape (..., D)

    Raises
    ------
    ShapeError
        If ``table`` is not 2-d or has per-row exponents.
    ValueError, DTypeError
        If ``ids`` are out of range or not integers.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.fixed import to_fixed, embedding
    >>> table = to_fixed(np.arange(6.0).reshape(3, 2), 8, rounding="nearest")
    >>> embedding(table, [2, 0]).to_float()
    array([[4., 5.], [0., 1.]])
    """
    table = _check_fixed(table, "table")
    if table.ndim != 2:
        raise ShapeError(f"table: expected a 2-d FixedTensor, got shape {table.shape}")
    if not table.per_tensor and np.shape(table.exponent)[0] != 1:
        raise ShapeError("table: expected an exponent shared along the rows")
    idx = _check_ids(ids, table.shape[0])
    q = table.mantissa[idx]
    e = (
        table.exponent
        if table.per_tensor
        else np.asarray(table.exponent).reshape((1,) * idx.ndim + (-1,))
    )
    return FixedTensor._trusted(q, e, table.bits)


def embedding_backward(
    grad_out: Any,
    ids: Any,
    num_embeddings: int,
    bits: int = 16,
    *,
    rounding: Rounding = "stochastic",
    seed: Seed = None,
) -> FixedTensor:
    """Gradient of :func:`embedding`: integer scatter-add of mapped ``dY`` rows.

    Parameters
    ----------
    grad_out : array_like of float or FixedTensor, shape (..., D)
        Gradient with respect to the looked-up rows.
    ids : array_like of int, shape (...)
        The forward's indices.
    num_embeddings : int
        V, the number of rows of the table.
    bits : int
        Bit-width of the mapped gradient, 2..16.
    rounding : {"stochastic", "nearest"}
    seed : int, numpy Generator or None

    Returns
    -------
    FixedTensor, shape (V, D)
        Exact accumulator: int32 when ``max_count(id) * m`` fits, else int64.

    Raises
    ------
    ShapeError
        If ``grad_out`` does not have shape ``ids.shape + (D,)``.
    ValueError, DTypeError
        If ``ids`` are out of range or not integers.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.fixed import embedding_backward
    >>> g = embedding_backward(np.ones((3, 2)), [1, 1, 0], 3, bits=8, rounding="nearest")
    >>> g.to_float()
    array([[1., 1.], [2., 2.], [0., 0.]])
    """
    b = check_bits(bits)
    idx = _check_ids(ids, as_positive_int(num_embeddings, "num_embeddings"))
    gshape = (
        np.shape(grad_out.mantissa) if isinstance(grad_out, FixedTensor) else np.shape(grad_out)
    )
    if len(gshape) != idx.ndim + 1 or tuple(gshape[:-1]) != idx.shape:
        raise ShapeError(f"grad_out: expected shape {idx.shape} + (D,), got {tuple(gshape)}")
    with renamed("x", "grad_out"):
        g = map_grad(grad_out, tuple(gshape), b, rounding, resolve_seed(seed), 1)
    if not g.per_tensor:
        g = requantize(g, b, rounding, seed, stream=1)
    d = gshape[-1]
    flat = idx.ravel()
    max_count = int(np.bincount(flat, minlength=1).max()) if flat.size else 0
    bound = max_count * g.max_mantissa  # a row receives at most max_count terms
    acc_dt = np.int32 if bound <= _INT32_MAX else np.int64
    out = np.zeros((int(num_embeddings), d), dtype=acc_dt)
    rows = np.ascontiguousarray(g.mantissa.reshape(-1, d), dtype=mantissa_dtype(g.bits))
    _kernels.scatter_add_rows(flat, rows, out)
    return FixedTensor._trusted(out, int(g.exponent), bits_for_bound(bound))  # type: ignore[arg-type]
