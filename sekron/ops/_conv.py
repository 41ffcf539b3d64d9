"""2-D convolution with a SeKron kernel (staged plan) or a dense kernel (im2col + GEMM)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._cost import as_pair
from .._validation import as_float_array
from ..errors import ShapeError
from ..tensor import SeKronTensor
from ._im2col import conv2d_valid, pad2d
from ._plan import conv2d_plan, execute_plan

__all__ = ["conv2d"]


def conv2d(
    x: Any,
    kernel: Any,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    bias: Any = None,
) -> np.ndarray:
    """2-D cross-correlation of an NCHW batch with a SeKron or dense kernel.

    Parameters
    ----------
    x : array_like of shape (N, C, H, W)
    kernel : SeKronTensor or array_like of shape (F, C, Kh, Kw)
        A SeKron kernel (any number of factors, any ranks) runs the staged plan of
        :func:`conv2d_plan`, never forming the dense kernel; a dense kernel runs im2col +
        GEMM.
    stride, padding, dilation : int or pair of ints
        PyTorch semantics (``torch.nn.functional.conv2d``): stride and dilation >= 1,
        zero padding >= 0 on both sides of each spatial axis.
    bias : array_like of shape (F,), optional

    Returns
    -------
    ndarray of shape (N, F, Ho, Wo)
        ``Ho = (H + 2 p_h - d_h (Kh - 1) - 1) // s_h + 1`` (likewise ``Wo``); dtype
        ``result_type(x, kernel)`` (float32 or float64).

    Raises
    ------
    ShapeError
        If ``x`` or the kernel is not 4-D, the channel counts differ, ``bias`` is not
        ``(F,)``, or the kernel does not fit the padded input.
    ValueError, TypeError
        For a stride or dilation < 1, a negative padding, or non-integer values.
    NonFiniteError
        If ``x`` or ``bias`` holds NaN or infinity.

    Notes
    -----
    ``y[n, f, i, j] = b[f] + sum_{c,u,v} W[f, c, u, v] xp[n, c, s_h i + d_h u, s_w j + d_w v]``
    with ``xp`` the padded input. For a SeKron kernel the multiply-adds per image are
    ``Structure.macs_conv2d(H, W, stride, padding, dilation)["sekron"]``, against
    ``F C Kh Kw Ho Wo`` dense (DESIGN.md 2.6).

    Examples
    --------
    >>> import numpy as np
    >>> import sekron as sk
    >>> rng = np.random.default_rng(0)
    >>> k = sk.SeKronTensor([rng.normal(size=(1, 4, 2, 3, 1)), rng.normal(size=(1, 2, 4, 1, 3))])
    >>> x = rng.normal(size=(2, 8, 9, 9))
    >>> y = sk.conv2d(x, k, stride=2, padding=1)
    >>> y.shape
    (2, 8, 5, 5)
    >>> np.allclose(y, sk.conv2d(x, k.to_dense(), stride=2, padding=1))
    True
    """
    xa = as_float_array(x, "x", ndim=4)
    if isinstance(kernel, SeKronTensor):
        if kernel.ndim != 4:
            raise ShapeError(f"kernel: expected a 4-D (F, C, Kh, Kw) kernel, got shape {kernel.shape}")
        kshape, kdtype = kernel.shape, kernel.dtype
    else:
        kernel = as_float_array(kernel, "kernel", ndim=4)
        kshape, kdtype = kernel.shape, kernel.dtype
    if xa.shape[1] != kshape[1]:
        raise ShapeError(
            f"x: expected {kshape[1]} input channels for a kernel of shape {kshape}, "
            f"got x of shape {xa.shape}"
        )
    st = as_pair(stride, "stride", 1)
    pd = as_pair(padding, "padding", 0)
    dl = as_pair(dilation, "dilation", 1)
    dtype = np.result_type(xa.dtype, kdtype)
    b = None
    if bias is not None:
        b = as_float_array(bias, "bias", ndim=1)
        if b.shape != (kshape[0],):
            raise ShapeError(f"bias: expected shape ({kshape[0]},), got {b.shape}")
        dtype = np.result_type(dtype, b.dtype)
    xa = xa.astype(dtype, copy=False)
    if isinstance(kernel, SeKronTensor):
        plan = conv2d_plan(kernel.structure, xa.shape[2:], st, pd, dl)
        factors = [f.astype(dtype, copy=False) for f in kernel.factors]
        y = execute_plan(plan, xa, factors)
    else:
        Hp, Wp = xa.shape[2] + 2 * pd[0], xa.shape[3] + 2 * pd[1]
        for n, kk, d, axis in ((Hp, kshape[2], dl[0], "height"), (Wp, kshape[3], dl[1], "width")):
            if n < d * (kk - 1) + 1:
                raise ShapeError(
                    f"x: padded {axis} {n} is smaller than the dilated kernel extent "
                    f"{d * (kk - 1) + 1} (kernel {kk}, dilation {d})"
                )
        xp = pad2d(xa, (pd[0], pd[0], pd[1], pd[1]))
        y = conv2d_valid(xp, kernel.astype(dtype, copy=False), st, dl, 1)
    y = np.ascontiguousarray(y)
    if b is not None:
        y += b.astype(dtype, copy=False)[:, None, None]
    return y
