"""What every integer layer shares: bit-width, rounding, the per-call key, tensor moves.

The moves are those between torch tensors and :mod:`sekron.fixed`'s mantissas.

The arithmetic itself (mapping, exact products, the float-exactness rules, the key
scheme) is the engine's public API; this module only adapts tensors to it.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import fixed
from .._validation import check_bits
from ..errors import ArgumentError
from ..ops import limit_blas_threads
from ._convert import to_torch

_NP_FLOAT: dict[torch.dtype, np.dtype] = {
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
}


class CheckedBits(int):
    """A bit-width already validated by :func:`check_bits` (``integerize`` checks once)."""


def numpy_view(t: torch.Tensor) -> np.ndarray:
    """A CPU numpy view (no copy) of a float tensor, for ``fixed.to_fixed``."""
    return t.detach().to("cpu").numpy()


def quantize(t: torch.Tensor, bits: int, rounding: Any, key: int, stream: int) -> fixed.FixedTensor:
    """``fixed.to_fixed`` of a float tensor with one per-tensor exponent."""
    return fixed.to_fixed(numpy_view(t), bits, rounding, key, stream=stream)


def scaled(acc: np.ndarray, e: int, like: torch.Tensor) -> torch.Tensor:
    """``acc * 2**e`` (exact integers) as a tensor of ``like``'s dtype and device.

    It is bit for bit the engine's ``FixedTensor(acc, e).to_float()`` cast to that dtype.
    """
    target = _NP_FLOAT.get(like.dtype, np.dtype(np.float64))
    out = torch.from_numpy(fixed.scaled_to_float(acc, e, target))
    return out.to(device=like.device, dtype=like.dtype)


def _torch_conv(
    x: np.ndarray, w: np.ndarray, stride: Any, padding: Any, dilation: Any, groups: int
) -> torch.Tensor:
    """Torch's direct float32 convolution of integer-valued arrays (NNPACK's transforms off)."""
    with torch.backends.nnpack.flags(enabled=False):
        return F.conv2d(
            torch.from_numpy(x.astype(np.float32)),
            torch.from_numpy(w.astype(np.float32)),
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
        )


def exact_conv2d(
    xq: fixed.FixedTensor,
    wq: fixed.FixedTensor,
    stride: Any,
    padding: Any,
    dilation: Any,
    groups: int,
    like: torch.Tensor,
) -> torch.Tensor:
    """``fixed.conv2d(xq, wq, ...).to_float()`` in ``like``'s dtype, bit for bit, by the fastest exact route.

    While every partial sum is an integer below ``2**24`` the mantissas run through
    torch's own float32 convolution, a direct algorithm (NNPACK, whose Winograd and FFT
    transforms are not exact, is switched off), so any summation order gives the exact
    sums; measured 3-7x faster than im2col and sgemm on the demo's 3x3 convolutions.
    Past it, while :func:`sekron.fixed.float32_split` finds a split into balanced digits
    with at most two digit products (10 bits on ordinary layers), the digits of
    the input are stacked along the batch and those of the weight along the filters
    (group by group), one float32 convolution computes every digit product exactly, and
    they are combined with their powers of two in float64 (exact below ``2**53``); with
    four products (16 bits) this measured slower than the dgemm route. Otherwise the
    engine's :func:`sekron.fixed.conv2d_float` (im2col and dgemm, or the
    integer kernels past ``2**53``).
    """
    k = wq.shape[1] * wq.shape[2] * wq.shape[3]
    e = int(xq.exponent) + int(wq.exponent)  # type: ignore[call-overload]
    # two digit products at most: four (16 bits) measured slower than one dgemm
    split = fixed.float32_split(k, xq.max_mantissa, wq.max_mantissa, max_products=2)
    if split is not None and split[0] == split[2] == 1:  # no split: exact as it is
        y = _torch_conv(xq.mantissa, wq.mantissa, stride, padding, dilation, groups)
        return scaled(y.numpy(), e, like)
    if split is not None:
        pa, wa, pb, wb = split
        n, f = xq.shape[0], wq.shape[0]
        xd = np.concatenate(fixed.split_digits(xq.mantissa, wa, pa), axis=0)
        wd = np.stack(fixed.split_digits(wq.mantissa, wb, pb))  # (pb, F, C/g, kh, kw)
        fg = f // groups  # filters group-major, each group's digit blocks side by side
        wd = wd.reshape(pb, groups, fg, *wq.shape[1:]).transpose(1, 0, 2, 3, 4, 5)
        y = _torch_conv(
            xd, wd.reshape(groups * pb * fg, *wq.shape[1:]), stride, padding, dilation, groups
        )
        ys = y.numpy().reshape(pa, n, groups, pb, fg, *y.shape[2:])
        acc = np.zeros((n, groups, fg, *y.shape[2:]), dtype=np.float64)
        for i in range(pa):
            for j in range(pb):  # exact: integers, and k * sum|digits| bounds every sum by 2**53
                acc += ys[i, :, :, j] * float(2 ** (wa * i + wb * j))
        return scaled(acc.reshape(n, f, *y.shape[2:]), e, like)
    target = _NP_FLOAT.get(like.dtype, np.dtype(np.float64))
    y64 = fixed.conv2d_float(xq, wq, stride, padding, dilation, dtype=target, groups=groups)
    return torch.from_numpy(y64).to(device=like.device, dtype=like.dtype)


def dequant(t: fixed.FixedTensor, like: torch.Tensor) -> torch.Tensor:
    """``t.to_float()`` as a torch tensor in ``like``'s dtype and device."""
    return to_torch(t.to_float(), like=like, copy=False)


class IntModule(nn.Module):
    """Bit-width, rounding and the per-call key counter shared by the integer layers."""

    def _init_int(self, bits: int, rounding: Any, seed: int) -> None:
        self.bits = int(bits) if type(bits) is CheckedBits else check_bits(bits)
        if rounding not in ("stochastic", "nearest"):
            raise ArgumentError(f"rounding: expected 'stochastic' or 'nearest', got {rounding!r}")
        self.rounding: Any = rounding
        self.seed = int(seed)
        self.calls = 0

    def next_seed(self) -> int:
        """The key of the next forward call (:func:`sekron.fixed.call_key`)."""
        s = fixed.call_key(self.seed, self.calls)
        self.calls += 1
        return s

    def _int_repr(self) -> str:
        return f"bits={self.bits}, rounding={self.rounding!r}"


_F = TypeVar("_F", bound=Callable[..., Any])

#: Whether :func:`serial_blas` also runs numba at one thread (benchmarks/bench_thread_cap.py
#: switches the whole cap off through this and ``limit_blas_threads`` for its A/B)
SERIAL_NUMBA = True


def serial_blas(fn: _F) -> _F:
    """Run an integer layer's forward or backward with numpy's BLAS at one thread.

    Only while torch's intra-op pool has more than one thread. The integer layers' exact GEMMs run on numpy's OpenBLAS, next to torch's own pool. With
    both pools at two threads on two cores, OpenBLAS's workers keep spinning after each
    call and torch's ops that follow (softmax, GELU, the float layers) wait for the cores:
    on a two-layer MLP the float step that followed integer steps took 50 ms instead of
    24 ms, and a 16-bit MiniLM student step 2.7 s instead of 0.5 s. One BLAS thread inside
    the integer layers left the integer step's own time unchanged (117 vs 120 ms).
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if torch.get_num_threads() > 1:
            numba = sys.modules.get("numba")
            saved = numba.get_num_threads() if SERIAL_NUMBA and numba is not None else 1
            if saved > 1:
                numba.set_num_threads(1)  # type: ignore[union-attr]
            try:
                with limit_blas_threads(1):
                    return fn(*args, **kwargs)
            finally:
                if saved > 1:
                    numba.set_num_threads(saved)  # type: ignore[union-attr]
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
