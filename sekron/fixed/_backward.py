"""Integer linear layer and the backward passes of the integer matrix product.

Backward passes map the incoming float gradient freshly, once per product, with
independent stochastic draws (streams 1 and 2 of one seed): DESIGN 2.7, notes A3.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._validation import check_bits
from ..errors import ShapeError
from ._gemm import Method, check_operand, gemm_nt, plan_for
from ._tensor import (
    FixedTensor,
    Rounding,
    Seed,
    _describe,
    bits_for_bound,
    map_grad,
    requantize,
    resolve_seed,
)

__all__ = ["linear", "matmul_backward", "linear_backward"]


def _scalar_exp(t: FixedTensor, name: str) -> int:
    if not t.per_tensor:
        raise ShapeError(f"{name}: expected a per-tensor exponent, got one of shape {np.shape(t.exponent)}")
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
    x = check_operand(x, "x", 2)
    weight = check_operand(weight, "weight", 2)
    if x.shape[1] != weight.shape[1]:
        raise ShapeError(
            f"weight: expected {x.shape[1]} input features to match x of shape {x.shape}, got shape {weight.shape}"
        )
    ex, ew = _scalar_exp(x, "x"), _scalar_exp(weight, "weight")
    plan = plan_for(x.shape[1], x.bits, weight.bits, method)
    acc = gemm_nt(x.mantissa, weight.mantissa, plan)
    e_acc = ex + ew
    bound = plan.bound
    if bias is not None:
        bias = check_operand(bias, "bias", 1)
        if bias.shape[0] != weight.shape[0]:
            raise ShapeError(f"bias: expected shape ({weight.shape[0]},), got {bias.shape}")
        from ._ops import align_to

        bq, bbound = align_to(bias, e_acc, rounding, seed)
        acc = acc.astype(np.int64) + bq[None, :]
        bound += bbound
    out = FixedTensor._trusted(acc, e_acc, bits_for_bound(bound))
    return out if out_bits is None else requantize(out, out_bits, rounding, seed, stream=3)


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
        raise ShapeError(f"b: expected {a.shape[1]} rows to match a of shape {a.shape}, got shape {b.shape}")
    ea, eb = _scalar_exp(a, "a"), _scalar_exp(b, "b")
    m, k = a.shape
    n = b.shape[1]
    nb = max(a.bits, b.bits) if bits is None else check_bits(bits)
    key = resolve_seed(seed)
    g1 = map_grad(grad_out, (m, n), nb, rounding, key, 1)
    g2 = map_grad(grad_out, (m, n), nb, rounding, key, 2)
    plan_a = plan_for(n, g1.bits, b.bits, method)
    da = gemm_nt(g1.mantissa, b.mantissa, plan_a)  # (M, N) x (K, N)^T
    plan_b = plan_for(m, a.bits, g2.bits, method)
    db = gemm_nt(np.ascontiguousarray(a.mantissa.T), np.ascontiguousarray(g2.mantissa.T), plan_b)
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
) -> tuple[FixedTensor, FixedTensor, FixedTensor]:
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

    Returns
    -------
    dx : FixedTensor, shape (N, D)
    dweight : FixedTensor, shape (F, D)
    dbias : FixedTensor, shape (F,)
        Exact integer accumulators (int32/int64).

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
    key = resolve_seed(seed)
    g1 = map_grad(grad_out, (n, f), nb, rounding, key, 1)
    g2 = map_grad(grad_out, (n, f), nb, rounding, key, 2)
    eg1, eg2 = _scalar_exp(g1, "grad_out"), _scalar_exp(g2, "grad_out")
    plan_x = plan_for(f, g1.bits, weight.bits, method)
    dx = gemm_nt(g1.mantissa, np.ascontiguousarray(weight.mantissa.T), plan_x)
    plan_w = plan_for(n, g2.bits, x.bits, method)
    dw = gemm_nt(np.ascontiguousarray(g2.mantissa.T), np.ascontiguousarray(x.mantissa.T), plan_w)
    db = g2.mantissa.astype(np.int64).sum(axis=0)  # |sum| <= N * m_g, far inside int64
    return (
        FixedTensor._trusted(dx, eg1 + ew, bits_for_bound(plan_x.bound)),
        FixedTensor._trusted(dw, eg2 + ex, bits_for_bound(plan_w.bound)),
        FixedTensor._trusted(db, eg2, bits_for_bound(n * g2.max_mantissa)),
    )
