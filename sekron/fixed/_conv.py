"""Integer 2-d convolution (NCHW) lowered to the exact integer GEMM by im2col."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._validation import as_pair, as_positive_int, check_bits
from ..errors import ShapeError
from ._exact import accumulator_bound, exact_float_dtype, result_dtype
from ._gemm import Method, check_operand, gemm_nt, plan_gemm, transposed
from ._tensor import (
    FixedTensor,
    Rounding,
    Seed,
    bits_for_bound,
    check_requantize,
    map_grad,
    requantize,
    resolve_seed,
)

__all__ = ["conv2d", "conv2d_backward", "conv2d_float"]


def _pair(x: Any, name: str, minimum: int) -> tuple[int, int]:
    return as_pair(x, name, minimum=minimum)  # the one parser: same mistake, same error


def _per_tensor(t: FixedTensor, name: str) -> int:
    if not t.per_tensor:
        raise ShapeError(
            f"{name}: expected a per-tensor exponent, got one of shape {np.shape(t.exponent)}"
        )
    return int(t.exponent)  # type: ignore[arg-type]


def _check_groups(groups: Any, x: FixedTensor, weight: FixedTensor) -> int:
    g = as_positive_int(groups, "groups")
    if x.shape[1] % g or weight.shape[0] % g:
        raise ShapeError(
            f"groups: expected a divisor of the {x.shape[1]} input channels and the "
            f"{weight.shape[0]} filters, got {g}"
        )
    return g


def _channels(t: FixedTensor, groups: int, i: int) -> FixedTensor:
    """Slice ``i`` of ``groups`` equal slices of ``t``'s axis 1 (same exponent and bits)."""
    c = t.shape[1] // groups
    return FixedTensor._trusted(
        np.ascontiguousarray(t.mantissa[:, i * c : (i + 1) * c]), t.exponent, t.bits
    )


def _filters(w: FixedTensor, groups: int, i: int) -> FixedTensor:
    f = w.shape[0] // groups
    return FixedTensor._trusted(
        np.ascontiguousarray(w.mantissa[i * f : (i + 1) * f]), w.exponent, w.bits
    )


def _geometry(x_shape, w_shape, stride, padding, dilation):  # type: ignore[no-untyped-def]
    n, c, h, w = x_shape
    f, cw, kh, kw = w_shape
    if c != cw:
        raise ShapeError(
            f"weight: expected {c} input channels to match x of shape {x_shape}, got shape {w_shape}"
        )
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if ho < 1 or wo < 1:
        raise ShapeError(
            f"x: input of shape {x_shape} is smaller than the dilated kernel {w_shape} "
            f"with padding {padding} and dilation {dilation}"
        )
    return n, c, h, w, f, kh, kw, ho, wo


def im2col(
    xq: np.ndarray, kh: int, kw: int, ho: int, wo: int, stride, padding, dilation
) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Columns (N*Ho*Wo, C*kh*kw) of the padded integer input (exact copy)."""
    n, c = xq.shape[:2]
    xp = np.pad(xq, ((0, 0), (0, 0), (padding[0], padding[0]), (padding[1], padding[1])))
    cols = np.empty((n, ho, wo, c, kh, kw), dtype=xq.dtype)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilation[0], j * dilation[1]
            patch = xp[
                :,
                :,
                r0 : r0 + stride[0] * (ho - 1) + 1 : stride[0],
                c0 : c0 + stride[1] * (wo - 1) + 1 : stride[1],
            ]
            cols[:, :, :, :, i, j] = patch.transpose(0, 2, 3, 1)
    return cols.reshape(n * ho * wo, c * kh * kw)


def col2im(dcols: np.ndarray, x_shape, kh, kw, ho, wo, stride, padding, dilation) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Scatter-add columns back onto the input grid in int64 (exact; each input pixel receives at most kh*kw terms)."""
    n, c, h, w = x_shape
    d = dcols.reshape(n, ho, wo, c, kh, kw).astype(np.int64)
    xp = np.zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            r0, c0 = i * dilation[0], j * dilation[1]
            xp[
                :,
                :,
                r0 : r0 + stride[0] * (ho - 1) + 1 : stride[0],
                c0 : c0 + stride[1] * (wo - 1) + 1 : stride[1],
            ] += d[:, :, :, :, i, j].transpose(0, 3, 1, 2)
    return xp[:, :, padding[0] : padding[0] + h, padding[1] : padding[1] + w]


def conv2d(
    x: FixedTensor,
    weight: FixedTensor,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    out_bits: int | None = None,
    *,
    method: Method = "auto",
    acc_dtype: Any = None,
    rounding: Rounding = "stochastic",
    seed: Seed = None,
    groups: int = 1,
) -> FixedTensor:
    """Exact integer 2-d cross-correlation (NCHW), lowered to the integer GEMM.

    Parameters
    ----------
    x : FixedTensor, shape (N, C, H, W)
        Per-tensor exponent.
    weight : FixedTensor, shape (F, C // groups, kh, kw)
        Per-tensor exponent.
    stride, padding, dilation : int or pair of int
        As in ``torch.nn.functional.conv2d`` (zero padding).
    out_bits : int or None
        None returns the exact accumulator; 2..16 requantizes it.
    method, acc_dtype :
        As in :func:`matmul`; the reduction length is ``C // groups * kh * kw``.
    rounding, seed :
        Rounding of the requantization (with ``out_bits`` only).
    groups : int, keyword-only, default 1
        As in ``torch.nn.functional.conv2d``: group ``i`` convolves input channels
        ``i*C/groups ..`` with filters ``i*F/groups ..``; ``groups`` divides C and F.

    Returns
    -------
    FixedTensor, shape (N, F, Ho, Wo)
        Exponent ``x.exponent + weight.exponent``.

    Raises
    ------
    ShapeError
        If channels differ, ranks are not 4, the kernel does not fit, or an exponent is
        per-slice.
    OverflowRiskError
        If a pinned accumulator cannot hold ``C*kh*kw * m_x * m_w``.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.fixed import to_fixed, conv2d
    >>> x = to_fixed(np.arange(16.0).reshape(1, 1, 4, 4), bits=8, rounding="nearest")
    >>> w = to_fixed(np.ones((1, 1, 2, 2)), bits=8, rounding="nearest")
    >>> conv2d(x, w, stride=2).to_float()
    array([[[[10., 18.], [42., 50.]]]])
    >>> x2 = to_fixed(np.ones((1, 2, 2, 2)), bits=8, rounding="nearest")
    >>> w2 = to_fixed(np.stack([np.ones((1, 2, 2)), 2 * np.ones((1, 2, 2))]), bits=8, rounding="nearest")
    >>> conv2d(x2, w2, groups=2).to_float().ravel()
    array([4., 8.])
    """
    check_requantize(out_bits, rounding, seed)
    x = check_operand(x, "x", 4)
    weight = check_operand(weight, "weight", 4)
    if groups != 1:
        g = _check_groups(groups, x, weight)
        if g > 1:
            parts = [
                conv2d(
                    _channels(x, g, i),
                    _filters(weight, g, i),
                    stride,
                    padding,
                    dilation,
                    method=method,
                    acc_dtype=acc_dtype,
                )
                for i in range(g)
            ]
            # every group has the same reduction length, so the same accumulator and bits
            out = FixedTensor._trusted(
                np.concatenate([p.mantissa for p in parts], axis=1),
                parts[0].exponent,
                parts[0].bits,
            )
            return out if out_bits is None else requantize(out, out_bits, rounding, seed)
    st, pd, dl = (
        _pair(stride, "stride", 1),
        _pair(padding, "padding", 0),
        _pair(dilation, "dilation", 1),
    )
    ex, ew = _per_tensor(x, "x"), _per_tensor(weight, "weight")
    n, c, _, _, f, kh, kw, ho, wo = _geometry(x.shape, weight.shape, st, pd, dl)
    plan = plan_gemm(
        c * kh * kw,
        x.bits,
        weight.bits,
        method=method,
        acc_dtype=acc_dtype,
        macs=n * ho * wo * f * c * kh * kw,
    )
    cols = im2col(x.mantissa, kh, kw, ho, wo, st, pd, dl)
    acc = gemm_nt(cols, weight.mantissa.reshape(f, -1), plan)
    out_q = np.ascontiguousarray(acc.reshape(n, ho, wo, f).transpose(0, 3, 1, 2))
    out = FixedTensor._trusted(out_q, ex + ew, bits_for_bound(plan.bound))
    return out if out_bits is None else requantize(out, out_bits, rounding, seed)


def conv2d_float(
    x: FixedTensor,
    weight: FixedTensor,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    *,
    dtype: Any = np.float64,
    groups: int = 1,
) -> np.ndarray:
    """The exact convolution, scaled to float: bit for bit ``conv2d(...).to_float()`` cast to ``dtype``.

    Inference needs the float output, not the integer accumulator. While every partial
    sum fits a float's exact integers (``C*kh*kw * m_x * m_w <= 2**24`` for float32,
    ``<= 2**53`` for float64) the GEMM runs on float BLAS, and the power-of-two scaling
    and the NCHW transpose are one pass over the result; otherwise (and for ``groups >
    1``) it is :func:`conv2d` followed by ``to_float``. Either way the values are those of
    the exact integer result, rounded once to ``dtype``.

    Parameters
    ----------
    x, weight, stride, padding, dilation, groups :
        As in :func:`conv2d`.
    dtype : float32 or float64, keyword-only
        Result dtype.

    Returns
    -------
    ndarray, shape (N, F, Ho, Wo)
        A new C-contiguous array.

    Raises
    ------
    ShapeError, TypeError, ValueError
        As :func:`conv2d`.
    DTypeError
        If ``dtype`` is not float32 or float64.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.fixed import to_fixed, conv2d_float
    >>> x = to_fixed(np.arange(16.0).reshape(1, 1, 4, 4), bits=8, rounding="nearest")
    >>> w = to_fixed(np.ones((1, 1, 2, 2)), bits=8, rounding="nearest")
    >>> conv2d_float(x, w, stride=2, dtype=np.float32)
    array([[[[10., 18.],
             [42., 50.]]]], dtype=float32)
    """
    target = result_dtype(dtype)
    x = check_operand(x, "x", 4)
    weight = check_operand(weight, "weight", 4)
    st, pd, dl = (
        _pair(stride, "stride", 1),
        _pair(padding, "padding", 0),
        _pair(dilation, "dilation", 1),
    )
    ex, ew = _per_tensor(x, "x"), _per_tensor(weight, "weight")
    e = ex + ew
    ft = None
    if groups == 1:
        n, c, _, _, f, kh, kw, ho, wo = _geometry(x.shape, weight.shape, st, pd, dl)
        ft = exact_float_dtype(accumulator_bound(c * kh * kw, x.bits, weight.bits))
    # the fused scaling is exact only where the scaled result stays a normal float
    if ft is None or not (-120 <= e <= 100 if ft == np.float32 else -960 <= e <= 960):
        out = conv2d(x, weight, st, pd, dl, groups=groups).to_float()
        return np.ascontiguousarray(out, dtype=target)
    cols = im2col(x.mantissa, kh, kw, ho, wo, st, pd, dl).astype(ft)
    prod = cols @ weight.mantissa.reshape(f, -1).astype(ft).T  # exact integers
    out = np.empty((n, f, ho, wo), dtype=target)
    # exact power-of-two scaling in ``ft``, then (float64 -> float32) one rounding
    np.multiply(
        prod.reshape(n, ho, wo, f).transpose(0, 3, 1, 2),
        ft.type(2.0**e),
        out=out,
        casting="same_kind",
    )
    return out


def conv2d_backward(
    x: FixedTensor,
    weight: FixedTensor,
    grad_out: Any,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    bits: int | None = None,
    *,
    method: Method = "auto",
    rounding: Rounding = "stochastic",
    seed: Seed = None,
    groups: int = 1,
) -> tuple[FixedTensor, FixedTensor]:
    """Gradients of :func:`conv2d` with respect to ``x`` and ``weight``, as integer GEMMs.

    ``grad_out`` is mapped to ``bits`` twice with independent stochastic draws, once for
    each product: ``dcols = dY @ W`` followed by an exact integer col2im gives dX;
    ``dW = dY^T @ cols(X)`` reuses the forward mantissas of X.

    Parameters
    ----------
    x, weight : FixedTensor
        The forward operands, shapes (N, C, H, W) and (F, C, kh, kw).
    grad_out : array_like of float or FixedTensor, shape (N, F, Ho, Wo)
        Gradient of the loss with respect to the convolution's output.
    stride, padding, dilation : int or pair of int
        As in the forward call.
    bits : int or None
        Bit-width of the mapped gradient (default: the weight's bits).
    method : {"auto", "numba", "blas"}
        GEMM path.
    rounding : {"stochastic", "nearest"}
        Mapping of ``grad_out``.
    seed : int, numpy Generator or None
        Key of the two mapping draws (streams 1 and 2).
    groups : int, keyword-only, default 1
        As in the forward call. ``grad_out`` is mapped once over all groups (one
        exponent per mapping), then each group's products run as above.

    Returns
    -------
    dx : FixedTensor, shape (N, C, H, W)
        Exact accumulator (int64), exponent ``e_dY + e_W``.
    dweight : FixedTensor, shape (F, C, kh, kw)
        Exact accumulator, exponent ``e_dY + e_X``.

    Raises
    ------
    ShapeError
        If ``grad_out`` does not have the forward output's shape.
    NonFiniteError
        If ``grad_out`` holds NaN or infinity.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.fixed import to_fixed, conv2d_backward
    >>> x = to_fixed(np.ones((1, 1, 3, 3)), 8, rounding="nearest")
    >>> w = to_fixed(np.ones((1, 1, 2, 2)), 8, rounding="nearest")
    >>> dx, dw = conv2d_backward(x, w, np.ones((1, 1, 2, 2)), rounding="nearest")
    >>> dx.to_float()[0, 0]
    array([[1., 2., 1.], [2., 4., 2.], [1., 2., 1.]])
    >>> dw.to_float()[0, 0]
    array([[4., 4.], [4., 4.]])
    """
    x = check_operand(x, "x", 4)
    weight = check_operand(weight, "weight", 4)
    g = 1 if groups == 1 else _check_groups(groups, x, weight)
    st, pd, dl = (
        _pair(stride, "stride", 1),
        _pair(padding, "padding", 0),
        _pair(dilation, "dilation", 1),
    )
    _per_tensor(x, "x")
    _per_tensor(weight, "weight")
    x_group = (x.shape[0], x.shape[1] // g, *x.shape[2:])
    n, _, _, _, f, _, _, ho, wo = _geometry(x_group, weight.shape, st, pd, dl)
    b = weight.bits if bits is None else check_bits(bits)
    key = resolve_seed(seed)
    g1 = map_grad(grad_out, (n, f, ho, wo), b, rounding, key, 1)
    g2 = map_grad(grad_out, (n, f, ho, wo), b, rounding, key, 2)
    _per_tensor(g1, "grad_out")
    _per_tensor(g2, "grad_out")
    if g == 1:
        return _backward_mapped(x, weight, g1, g2, st, pd, dl, method)
    parts = [
        _backward_mapped(
            _channels(x, g, i),
            _filters(weight, g, i),
            _channels(g1, g, i),
            _channels(g2, g, i),
            st,
            pd,
            dl,
            method,
        )
        for i in range(g)
    ]
    dx0, dw0 = parts[0]
    dx = FixedTensor._trusted(
        np.concatenate([p[0].mantissa for p in parts], axis=1), dx0.exponent, dx0.bits
    )
    dw = FixedTensor._trusted(
        np.concatenate([p[1].mantissa for p in parts], axis=0), dw0.exponent, dw0.bits
    )
    return dx, dw


def _backward_mapped(
    x: FixedTensor,
    weight: FixedTensor,
    g1: FixedTensor,
    g2: FixedTensor,
    st: tuple[int, int],
    pd: tuple[int, int],
    dl: tuple[int, int],
    method: Method,
) -> tuple[FixedTensor, FixedTensor]:
    """DX from ``g1`` and dW from ``g2``, both mapped gradients of one group (checked)."""
    ex, ew, eg1, eg2 = int(x.exponent), int(weight.exponent), int(g1.exponent), int(g2.exponent)  # type: ignore[call-overload]
    n, _c, _, _, f, kh, kw, ho, wo = _geometry(x.shape, weight.shape, st, pd, dl)
    g1_mat = g1.mantissa.transpose(0, 2, 3, 1).reshape(-1, f)  # (N*Ho*Wo, F)
    g2_mat = g2.mantissa.transpose(0, 2, 3, 1).reshape(-1, f)
    w_mat = weight.mantissa.reshape(f, -1)  # (F, C*kh*kw)
    plan_x = plan_gemm(f, g1.bits, weight.bits, method=method, acc_dtype=np.int64)
    dcols = gemm_nt(g1_mat, transposed(w_mat), plan_x)
    dx_q = col2im(dcols, x.shape, kh, kw, ho, wo, st, pd, dl)
    dx = FixedTensor._trusted(
        np.ascontiguousarray(dx_q), eg1 + ew, bits_for_bound(plan_x.bound * kh * kw)
    )
    cols = im2col(x.mantissa, kh, kw, ho, wo, st, pd, dl)  # (N*Ho*Wo, C*kh*kw)
    plan_w = plan_gemm(n * ho * wo, g2.bits, x.bits, method=method)
    dw_q = gemm_nt(transposed(g2_mat), transposed(cols), plan_w)
    dw = FixedTensor._trusted(dw_q.reshape(weight.shape), eg2 + ex, bits_for_bound(plan_w.bound))
    return dx, dw
