"""Integer linear layer and the backward passes of the integer matrix product.

Backward passes map the incoming float gradient freshly, once per product, with
independent stochastic draws (streams 1 and 2 of one seed): DESIGN 2.7, notes A3.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._validation import check_bits
from ..errors import ArgumentError, ShapeError
from . import _kernels
from ._gemm import Method, check_operand, gemm_nt, plan_for, transposed
from ._tensor import (
    FixedTensor,
    Rounding,
    Seed,
    _describe,
    bits_for_bound,
    check_requantize,
    map_grad,
    requantize,
    resolve_seed,
)

_NO_BIAS = np.zeros(1, dtype=np.int16)
_NO_FLOAT = np.zeros(1, dtype=np.float64)
_NO_GRAD = np.zeros((1, 1), dtype=np.int16)
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

__all__ = ["linear", "linear_backward", "linear_relu", "matmul_backward"]

_NO_MASK = np.zeros(1, dtype=bool)


def _small(n: int, d: int, f: int) -> bool:
    """Sizes for the fused serial kernels.

    The same thresholds as the other fast paths: setting ``PARALLEL_MIN_ELEMENTS`` to 0
    turns every fused path off.
    """
    return (
        n * d * f < _kernels.PARALLEL_MIN_MACS
        and max(n * d, n * f, f * d) < _kernels.PARALLEL_MIN_ELEMENTS
    )


def _fusable(x: FixedTensor, weight: FixedTensor, out_bits: Any, rounding: Any) -> bool:
    """True when the fused forward applies; anything unusual (bad ``out_bits`` or ``rounding`` included) takes the unfused path, which raises the usual errors."""
    n, d = x.shape
    f = weight.shape[0]
    return (
        n > 0
        and d > 0
        and f > 0
        and _small(n, d, f)
        and rounding in ("stochastic", "nearest")
        and (out_bits is None or (type(out_bits) is int and 2 <= out_bits <= 16))
    )


def _linear_fused(
    x: FixedTensor,
    weight: FixedTensor,
    bias: FixedTensor | None,
    out_bits: int | None,
    plan_bound: int,
    rounding: Rounding,
    seed: Seed,
    relu: bool,
) -> tuple[FixedTensor, np.ndarray] | None:
    """``linear`` (+ ReLU) in one serial kernel, or None when a fallback is needed (an alignment shift past 62 bits or an accumulator bound past 2**62)."""
    ex, ew = x.exponent, weight.exponent
    if type(ex) is not int or type(ew) is not int:
        return None
    e_acc = ex + ew
    bound = plan_bound
    b_shift = 0
    bq = _NO_BIAS
    if bias is not None:
        if type(bias.exponent) is not int:
            return None
        b_shift = e_acc - bias.exponent
        if not -62 <= b_shift <= 62 or bias.bits - 1 - b_shift > 62:
            return None
        bound += bias.max_mantissa << max(-b_shift, 0)
        bq = bias.mantissa
    if bound >= 1 << 62:
        return None
    n, f = x.shape[0], weight.shape[0]
    stochastic = rounding == "stochastic"
    # resolve the seed once per draw, in the order of the unfused path (bias, then output)
    key = np.uint64(resolve_seed(seed)) if stochastic and bias is not None else np.uint64(0)
    key_r = np.uint64(resolve_seed(seed)) if stochastic and out_bits is not None else np.uint64(0)
    if out_bits is None:
        out = np.empty((n, f), np.int64)
        bits = bits_for_bound(bound)
    else:
        out = np.empty((n, f), np.int8 if out_bits <= 8 else np.int16)
        bits = out_bits
    mask = np.empty((n, f), bool) if relu else _NO_MASK
    e = _kernels.linear_fwd_flat(
        x.mantissa,
        weight.mantissa,
        bq,
        b_shift,
        bias is not None,
        e_acc,
        0 if out_bits is None else out_bits,
        out_bits is not None,
        stochastic,
        key,
        key_r,
        relu,
        out,
        mask,
    )
    return FixedTensor._trusted(out, int(e), bits), mask


def _scalar_exp(t: FixedTensor, name: str) -> int:
    if not t.per_tensor:
        raise ShapeError(
            f"{name}: expected a per-tensor exponent, got one of shape {np.shape(t.exponent)}"
        )
    return int(t.exponent)  # type: ignore[arg-type]


def linear(
    x: FixedTensor,
    weight: FixedTensor,
    bias: FixedTensor | None = None,
    out_bits: int | None = None,
    *,
    method: Method = "auto",
    rounding: Rounding = "stochastic",
    seed: Seed = None,
) -> FixedTensor:
    """Integer linear layer ``y = x @ weight.T + bias``.

    Parameters
    ----------
    x : FixedTensor, shape (N, D)
    weight : FixedTensor, shape (F, D)
    bias : FixedTensor, shape (F,), or None
        Added in the accumulator: the bias is shifted onto the accumulator's exponent
        (left, exact, when it is coarser; right with stochastic rounding otherwise).
    out_bits : int or None
        None returns the exact accumulator (int64 when a bias is added); else requantized.
    method : {"auto", "numba", "blas"}
        GEMM path.
    rounding, seed :
        Rounding of the bias alignment and the requantization.

    Returns
    -------
    FixedTensor, shape (N, F)

    Raises
    ------
    ShapeError
        If the feature dimensions or the bias length do not match.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.fixed import to_fixed, linear
    >>> x = to_fixed([[1.0, 2.0]], 8, rounding="nearest")
    >>> w = to_fixed([[1.0, 1.0], [0.5, -1.0]], 8, rounding="nearest")
    >>> b = to_fixed([0.25, 0.0], 8, rounding="nearest")
    >>> linear(x, w, b).to_float()
    array([[ 3.25, -1.5 ]])
    """
    check_requantize(out_bits, rounding, seed)
    x = check_operand(x, "x", 2)
    weight = check_operand(weight, "weight", 2)
    if x.shape[1] != weight.shape[1]:
        raise ShapeError(
            f"weight: expected {x.shape[1]} input features to match x of shape {x.shape}, got shape {weight.shape}"
        )
    ex, ew = _scalar_exp(x, "x"), _scalar_exp(weight, "weight")
    plan = plan_for(x.shape[1], x.bits, weight.bits, method)
    if bias is not None:
        bias = check_operand(bias, "bias", 1)
        if bias.shape[0] != weight.shape[0]:
            raise ShapeError(f"bias: expected shape ({weight.shape[0]},), got {bias.shape}")
    if (bias is not None or out_bits is not None) and _fusable(x, weight, out_bits, rounding):
        fused = _linear_fused(x, weight, bias, out_bits, plan.bound, rounding, seed, False)
        if fused is not None:
            return fused[0]
    acc = gemm_nt(x.mantissa, weight.mantissa, plan)
    e_acc = ex + ew
    bound = plan.bound
    if bias is not None:
        from ._ops import align_to

        bq, bbound = align_to(bias, e_acc, rounding, seed)
        acc = acc.astype(np.int64) + bq[None, :]
        bound += bbound
    out = FixedTensor._trusted(acc, e_acc, bits_for_bound(bound))
    return out if out_bits is None else requantize(out, out_bits, rounding, seed, stream=3)


def linear_relu(
    x: FixedTensor,
    weight: FixedTensor,
    bias: FixedTensor | None = None,
    out_bits: int = 16,
    *,
    method: Method = "auto",
    rounding: Rounding = "stochastic",
    seed: Seed = None,
) -> tuple[FixedTensor, np.ndarray]:
    """Integer linear layer, requantization and ReLU in one call: ``relu(linear(...))``.

    Parameters
    ----------
    x : FixedTensor, shape (N, D)
    weight : FixedTensor, shape (F, D)
    bias : FixedTensor, shape (F,), or None
    out_bits : int
        Bit-width of the output, 2..16.
    method : {"auto", "numba", "blas"}
        GEMM path of the unfused fallback (every path gives the same bits).
    rounding, seed :
        As in :func:`linear` (bias alignment on stream 4, requantization on stream 3).

    Returns
    -------
    y : FixedTensor, shape (N, F)
        ``linear(x, weight, bias, out_bits, ...)`` with negative mantissas set to 0: the
        requantization sees the whole accumulator, then ReLU applies (exact on the grid).
    mask : ndarray of bool, shape (N, F)
        ``y.mantissa > 0``, what :func:`linear_backward` needs as ``dx_mask``.

    Raises
    ------
    ShapeError
        If the feature dimensions or the bias length do not match.
    ValueError, TypeError
        For bad bit-widths, roundings or operands.

    Notes
    -----
    Small per-tensor operands (below the parallel thresholds) run one serial kernel
    (``_kernels.linear_fwd_flat``: exact int64 GEMM, bias alignment, requantization and
    ReLU); larger ones compose :func:`linear` and a mask. Both give the same bits.

    Examples
    --------
    >>> from sekron.fixed import to_fixed, linear_relu
    >>> x = to_fixed([[1.0, 2.0]], 8, rounding="nearest")
    >>> w = to_fixed([[1.0, 1.0], [0.5, -1.0]], 8, rounding="nearest")
    >>> y, mask = linear_relu(x, w, out_bits=8, rounding="nearest")
    >>> y.to_float(), mask
    (array([[3., 0.]]), array([[ True, False]]))
    """
    x = check_operand(x, "x", 2)
    weight = check_operand(weight, "weight", 2)
    if x.shape[1] != weight.shape[1]:
        raise ShapeError(
            f"weight: expected {x.shape[1]} input features to match x of shape {x.shape}, got shape {weight.shape}"
        )
    ob = check_bits(out_bits, "out_bits")
    _scalar_exp(x, "x")
    _scalar_exp(weight, "weight")
    if bias is not None:
        bias = check_operand(bias, "bias", 1)
        if bias.shape[0] != weight.shape[0]:
            raise ShapeError(f"bias: expected shape ({weight.shape[0]},), got {bias.shape}")
    if _fusable(x, weight, ob, rounding):
        plan = plan_for(x.shape[1], x.bits, weight.bits, method)
        fused = _linear_fused(x, weight, bias, ob, plan.bound, rounding, seed, True)
        if fused is not None:
            return fused
    y = linear(x, weight, bias, ob, method=method, rounding=rounding, seed=seed)
    mask = y.mantissa > 0
    return FixedTensor._trusted(
        np.where(mask, y.mantissa, 0).astype(y.mantissa.dtype), y.exponent, y.bits
    ), mask


def matmul_backward(
    a: FixedTensor,
    b: FixedTensor,
    grad_out: Any,
    bits: int | None = None,
    *,
    method: Method = "auto",
    rounding: Rounding = "stochastic",
    seed: Seed = None,
) -> tuple[FixedTensor, FixedTensor]:
    """Gradients of ``c = a @ b``: ``da = dC @ b^T`` and ``db = a^T @ dC`` as integer GEMMs.

    Parameters
    ----------
    a : FixedTensor, shape (M, K)
    b : FixedTensor, shape (K, N)
        The forward operands (per-tensor exponents).
    grad_out : array_like of float or FixedTensor, shape (M, N)
        Gradient of the loss with respect to ``c``; mapped twice to ``bits`` with
        independent draws.
    bits : int or None
        Bit-width of the mapped gradient (default ``max(a.bits, b.bits)``).
    method : {"auto", "numba", "blas"}
    rounding : {"stochastic", "nearest"}
    seed : int, numpy Generator or None

    Returns
    -------
    da : FixedTensor, shape (M, K)
        Exact accumulator, exponent ``e_dC + e_b``.
    db : FixedTensor, shape (K, N)
        Exact accumulator, exponent ``e_a + e_dC``.

    Raises
    ------
    ShapeError
        If shapes do not chain or ``grad_out`` has the wrong shape.
    NonFiniteError
        If ``grad_out`` holds NaN or infinity.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.fixed import to_fixed, matmul_backward
    >>> a = to_fixed([[1.0, 2.0]], 8, rounding="nearest")
    >>> b = to_fixed([[1.0], [-1.0]], 8, rounding="nearest")
    >>> da, db = matmul_backward(a, b, [[0.5]], rounding="nearest")
    >>> da.to_float(), db.to_float()
    (array([[ 0.5, -0.5]]), array([[0.5], [1. ]]))
    """
    a = check_operand(a, "a", 2)
    b = check_operand(b, "b", 2)
    if a.shape[1] != b.shape[0]:
        raise ShapeError(
            f"b: expected {a.shape[1]} rows to match a of shape {a.shape}, got shape {b.shape}"
        )
    ea, eb = _scalar_exp(a, "a"), _scalar_exp(b, "b")
    m, _k = a.shape
    n = b.shape[1]
    nb = max(a.bits, b.bits) if bits is None else check_bits(bits)
    key = resolve_seed(seed)
    g1 = map_grad(grad_out, (m, n), nb, rounding, key, 1)
    g2 = map_grad(grad_out, (m, n), nb, rounding, key, 2)
    plan_a = plan_for(n, g1.bits, b.bits, method)
    da = gemm_nt(g1.mantissa, b.mantissa, plan_a)  # (M, N) x (K, N)^T
    plan_b = plan_for(m, a.bits, g2.bits, method)
    db = gemm_nt(transposed(a.mantissa), transposed(g2.mantissa), plan_b)
    return (
        FixedTensor._trusted(da, _scalar_exp(g1, "grad_out") + eb, bits_for_bound(plan_a.bound)),
        FixedTensor._trusted(db, ea + _scalar_exp(g2, "grad_out"), bits_for_bound(plan_b.bound)),
    )


def linear_backward(
    x: FixedTensor,
    weight: FixedTensor,
    grad_out: Any,
    bits: int | None = None,
    *,
    method: Method = "auto",
    rounding: Rounding = "stochastic",
    seed: Seed = None,
    need_dx: bool = True,
    dx_bits: int | None = None,
    dx_mask: Any = None,
) -> tuple[FixedTensor | None, FixedTensor, FixedTensor]:
    """Gradients of :func:`linear`: ``dx = dY @ W``, ``dW = dY^T @ x``, ``db = sum_n dY``.

    Parameters
    ----------
    x : FixedTensor, shape (N, D)
    weight : FixedTensor, shape (F, D)
    grad_out : array_like of float or FixedTensor, shape (N, F)
        Mapped twice to ``bits`` with independent draws (one for dx, one for dW and db).
    bits : int or None
        Bit-width of the mapped gradient (default ``weight.bits``).
    method : {"auto", "numba", "blas"}
    rounding : {"stochastic", "nearest"}
    seed : int, numpy Generator or None
    need_dx : bool, keyword-only
        False skips dx (and its gradient mapping, stream 1): e.g. the first layer. dW and
        db do not change.
    dx_bits : int or None, keyword-only
        Requantize dx to this width (stream 3 of the seed), as ``requantize(dx, dx_bits,
        rounding, seed, stream=3)``; None returns the exact accumulator.
    dx_mask : ndarray of bool, shape (N, D), or None, keyword-only
        With ``dx_bits``: dx is zeroed where the mask is False after the requantization
        (the ReLU backward of the layer below; see :func:`linear_relu`).

    Returns
    -------
    dx : FixedTensor, shape (N, D), or None
        None when ``need_dx`` is False.
    dweight : FixedTensor, shape (F, D)
    dbias : FixedTensor, shape (F,)
        Exact integer accumulators (int32/int64).

    Notes
    -----
    Small per-tensor operands (below the parallel thresholds) run one serial kernel
    (``_kernels.linear_bwd_flat``: both gradient mappings, the two GEMMs reading the
    operands in place, the bias sum and the dx requantization); the same bits as the
    unfused path.

    Raises
    ------
    ShapeError
        If shapes do not match.
    NonFiniteError
        If ``grad_out`` holds NaN or infinity.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.fixed import to_fixed, linear_backward
    >>> x = to_fixed([[1.0, 2.0]], 8, rounding="nearest")
    >>> w = to_fixed([[1.0, -1.0]], 8, rounding="nearest")
    >>> dx, dw, db = linear_backward(x, w, [[2.0]], rounding="nearest")
    >>> dx.to_float(), dw.to_float(), db.to_float()
    (array([[ 2., -2.]]), array([[2., 4.]]), array([2.]))
    >>> linear_backward(x, w, [[2.0]], rounding="nearest", need_dx=False)[0] is None
    True
    """
    x = check_operand(x, "x", 2)
    weight = check_operand(weight, "weight", 2)
    if x.shape[1] != weight.shape[1]:
        raise ShapeError(
            f"weight: expected {x.shape[1]} input features to match x of shape {x.shape}, got shape {weight.shape}"
        )
    if not isinstance(grad_out, FixedTensor) and np.ndim(grad_out) != 2:
        raise ShapeError(f"grad_out: expected a 2-d array, got {_describe(np.asarray(grad_out))}")
    ex, ew = _scalar_exp(x, "x"), _scalar_exp(weight, "weight")
    n, d = x.shape
    f = weight.shape[0]
    nb = weight.bits if bits is None else check_bits(bits)
    dxb = None if dx_bits is None else check_bits(dx_bits, "dx_bits")
    mask = None
    if dx_mask is not None:
        if dxb is None:
            raise ArgumentError(
                "dx_mask: expected dx_bits to be given with a mask (the mask applies after requantization)"
            )
        mask = np.asarray(dx_mask)
        if mask.dtype != np.bool_ or mask.shape != (n, d):
            raise ShapeError(
                f"dx_mask: expected a bool array of shape {(n, d)}, got {_describe(mask)}"
            )
    key = resolve_seed(seed)
    need_dx = bool(need_dx)
    if n and d and f and _small(n, d, f) and rounding in ("stochastic", "nearest"):
        fused = _linear_backward_fused(
            x, weight, grad_out, nb, dxb, mask, need_dx, method, rounding, key
        )
        if fused is not None:
            return fused
    g2 = map_grad(grad_out, (n, f), nb, rounding, key, 2)
    eg2 = _scalar_exp(g2, "grad_out")
    dx_t = None
    if need_dx:
        g1 = map_grad(grad_out, (n, f), nb, rounding, key, 1)
        eg1 = _scalar_exp(g1, "grad_out")
        plan_x = plan_for(f, g1.bits, weight.bits, method)
        dx = gemm_nt(g1.mantissa, transposed(weight.mantissa), plan_x)
        dx_t = FixedTensor._trusted(dx, eg1 + ew, bits_for_bound(plan_x.bound))
        if dxb is not None:
            dx_t = requantize(dx_t, dxb, rounding, key, stream=3)
            if mask is not None:
                dx_t = FixedTensor._trusted(
                    np.where(mask, dx_t.mantissa, 0).astype(dx_t.mantissa.dtype),
                    dx_t.exponent,
                    dx_t.bits,
                )
    plan_w = plan_for(n, g2.bits, x.bits, method)
    dw = gemm_nt(transposed(g2.mantissa), transposed(x.mantissa), plan_w)
    db = g2.mantissa.astype(np.int64).sum(axis=0)  # |sum| <= N * m_g, far inside int64
    return (
        dx_t,
        FixedTensor._trusted(dw, eg2 + ex, bits_for_bound(plan_w.bound)),
        FixedTensor._trusted(db, eg2, bits_for_bound(n * g2.max_mantissa)),
    )


def _linear_backward_fused(
    x: FixedTensor,
    weight: FixedTensor,
    grad_out: Any,
    nb: int,
    dxb: int | None,
    mask: np.ndarray | None,
    need_dx: bool,
    method: Any,
    rounding: Rounding,
    key: int,
) -> tuple[FixedTensor | None, FixedTensor, FixedTensor] | None:
    """``linear_backward`` in one serial kernel; None (unfused path) for inputs it does not take: a gradient that is not a float32/float64 array or a per-tensor FixedTensor of at most ``nb`` bits, or a non-finite gradient (the unfused path raises)."""
    n, d = x.shape
    f = weight.shape[0]
    ex, ew = x.exponent, weight.exponent
    if type(ex) is not int or type(ew) is not int:
        return None
    if isinstance(grad_out, FixedTensor):
        if grad_out.shape != (n, f) or type(grad_out.exponent) is not int or grad_out.bits > nb:
            return None
        gf, gq, from_float, e_g, g_bits = (
            _NO_FLOAT,
            grad_out.mantissa,
            False,
            grad_out.exponent,
            grad_out.bits,
        )
    elif type(grad_out) is np.ndarray and grad_out.dtype in _FLOATS and grad_out.shape == (n, f):
        gf, gq, from_float, e_g, g_bits = grad_out.reshape(-1), _NO_GRAD, True, 0, nb
    else:
        return None
    plan_x = plan_for(f, g_bits, weight.bits, method) if need_dx else None
    plan_w = plan_for(n, g_bits, x.bits, method)
    if need_dx and dxb is not None:
        dx_out = np.empty((n, d), np.int8 if dxb <= 8 else np.int16)
    else:
        dx_out = np.empty(
            (n, d) if need_dx else (1, 1), plan_x.acc_dtype if plan_x is not None else np.int64
        )
    dw_out = np.empty((f, d), plan_w.acc_dtype)
    db_out = np.empty(f, np.int64)
    e_dx, e_dw, e_db = _kernels.linear_bwd_flat(
        x.mantissa,
        weight.mantissa,
        gf,
        gq,
        from_float,
        nb,
        rounding == "stochastic",
        np.uint64(key),
        ex,
        ew,
        e_g,
        need_dx,
        0 if dxb is None else dxb,
        _NO_MASK if mask is None else mask,
        mask is not None,
        dx_out,
        dw_out,
        db_out,
    )
    if e_dx == _kernels.NONFINITE:
        return None
    dx_t = None
    if plan_x is not None:
        dx_t = (
            FixedTensor._trusted(dx_out, int(e_dx), bits_for_bound(plan_x.bound))
            if dxb is None
            else FixedTensor._trusted(dx_out, int(e_dx), dxb)
        )
    m_g = (1 << (g_bits - 1)) - 1
    return (
        dx_t,
        FixedTensor._trusted(dw_out, int(e_dw), bits_for_bound(plan_w.bound)),
        FixedTensor._trusted(db_out, int(e_db), bits_for_bound(n * m_g)),
    )
