"""Integer execution of SeKron layers: every stage's product runs on the integer engine.

A SeKron linear layer is a short sequence of small GEMMs and a SeKron convolution is
the core's conv plan (a few grouped convolutions); here each of those products maps its
two operands to ``bits``-bit fixed point (one per-tensor exponent each) and runs exactly
in :mod:`sekron.fixed`, forward and backward, while the factors stay float master
parameters (as :class:`sekron.torch.IntLinear` does for a dense weight).

Stage ``s`` of call ``t`` draws its stochastic rounding from ``stage_seed(seed_t, s)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight

from .. import fixed
from ..contraction import execute_linear, linear_plan
from ..fixed import STREAM_INPUT, STREAM_WEIGHT
from ..ops import conv2d_plan, execute_plan
from ..structure import Structure
from ._conv import TorchBackend
from ._int_base import IntModule, exact_conv2d, numpy_view, quantize, scaled, serial_blas
from .layers import SeKronConv2d, SeKronLinear

__all__ = [
    "IntSeKronConv2d",
    "IntSeKronLinear",
    "IntTorchBackend",
    "IntLinearBackend",
    "int_bmm",
    "stage_seed",
]

#: The key of stage ``stage`` of a call keyed ``seed``: the engine's :func:`sekron.fixed.stage_key`.
stage_seed = fixed.stage_key


def _swap(t: fixed.FixedTensor) -> fixed.FixedTensor:
    """The slice-wise transpose of a stack of matrices (a view; same exponent and bits)."""
    return fixed.FixedTensor.trusted(np.swapaxes(t.mantissa, 1, 2), t.exponent, t.bits)


class _BmmFn(torch.autograd.Function):
    """``a @ b`` for ``a`` (P, M, K), ``b`` (P, K, N): slice p is ``fixed.matmul`` of slices."""

    @staticmethod
    @serial_blas
    def forward(
        ctx: Any, a: torch.Tensor, b: torch.Tensor, bits: int, rounding: Any, seed: int
    ) -> torch.Tensor:  # type: ignore[override]
        fwd, bwd = fixed.forward_backward_keys(seed)
        aq = quantize(a, bits, rounding, fwd, STREAM_INPUT)
        bq = quantize(b, bits, rounding, fwd, STREAM_WEIGHT)
        ctx.saved = (aq, bq, bits, rounding, bwd)
        acc = fixed.exact_float_matmul(
            aq.mantissa, bq.mantissa, fixed.accumulator_bound(a.shape[2], bits)
        )
        if acc is None:
            exact = fixed.batched_matmul(aq, bq)
            return scaled(exact.mantissa, int(exact.exponent), a)  # type: ignore[call-overload]
        return scaled(acc, int(aq.exponent) + int(bq.exponent), a)  # type: ignore[call-overload]

    @staticmethod
    @serial_blas
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        aq, bq, bits, rounding, bwd = ctx.saved
        gn = numpy_view(g.contiguous())
        g1 = quantize(g, bits, rounding, bwd, 1)
        g2 = quantize(g, bits, rounding, bwd, 2)
        M, N = gn.shape[1], gn.shape[2]
        da = fixed.exact_float_matmul(
            g1.mantissa, np.swapaxes(bq.mantissa, 1, 2), fixed.accumulator_bound(N, bits)
        )
        db = fixed.exact_float_matmul(
            np.swapaxes(aq.mantissa, 1, 2), g2.mantissa, fixed.accumulator_bound(M, bits)
        )
        if da is None or db is None:
            # past 2**53: the engine's integer kernels, the same mapped operands
            dq = fixed.batched_matmul(g1, _swap(bq))
            wq = fixed.batched_matmul(_swap(aq), g2)
            return (
                scaled(dq.mantissa, int(dq.exponent), g),
                scaled(wq.mantissa, int(wq.exponent), g),
                None,
                None,
                None,
            )  # type: ignore[call-overload]
        e1, e2 = int(g1.exponent), int(g2.exponent)  # type: ignore[call-overload]
        return (
            scaled(da, e1 + int(bq.exponent), g),  # type: ignore[call-overload]
            scaled(db, int(aq.exponent) + e2, g),  # type: ignore[call-overload]
            None,
            None,
            None,
        )


def int_bmm(a: torch.Tensor, b: torch.Tensor, bits: int, rounding: Any, seed: int) -> torch.Tensor:
    """Integer ``a @ b`` (2-D or batched 3-D): exactly ``fixed.matmul`` of the mapped operands.

    Forward maps ``a`` and ``b`` once each (streams 11 and 12 of the forward key of
    ``seed``); backward maps the gradient twice (streams 1 and 2 of the backward key) and
    runs ``da = Q(g) Q(b)^T``, ``db = Q(a)^T Q'(g)`` as :func:`sekron.fixed.matmul_backward`.
    """
    if a.ndim == 2:
        return _BmmFn.apply(a[None], b[None], bits, rounding, seed)[0]
    return _BmmFn.apply(a, b, bits, rounding, seed)


class IntLinearBackend(TorchBackend):
    """The linear plan's backend for integer layers: every matmul step is one integer GEMM.

    Runs :func:`sekron.contraction.execute_linear` (the one linear contraction of sekron)
    with reshapes and permutations in torch and each :class:`~sekron.contraction.MatmulStep`
    as :func:`int_bmm`: both operands mapped to ``bits`` bits with per-tensor exponents,
    step ``s`` of a call keyed ``seed`` drawing from ``stage_seed(seed, s)``.
    """

    def __init__(self, bits: int, rounding: Any, seed: int) -> None:
        self.bits, self.rounding, self.seed, self.stage = bits, rounding, seed, 0

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Integer ``a @ b`` for a 2-D or batched operand pair (a shared 2-D side is one GEMM)."""
        key = stage_seed(self.seed, self.stage)
        self.stage += 1
        if a.ndim == b.ndim:
            return int_bmm(a, b, self.bits, self.rounding, key)
        if a.ndim == 2:  # shared weight (M, K) against a batch (G, K, N): one (M, K) @ (K, G N)
            G, K, N = b.shape
            z = int_bmm(a, b.permute(1, 0, 2).reshape(K, G * N), self.bits, self.rounding, key)
            return z.reshape(a.shape[0], G, N).permute(1, 0, 2)
        G, M, K = a.shape  # a batch (G, M, K) against a shared (K, N): one (G M, K) @ (K, N)
        z = int_bmm(a.reshape(G * M, K), b, self.bits, self.rounding, key)
        return z.reshape(G, M, b.shape[-1])


def int_sekron_linear(
    x: torch.Tensor,
    factors: Sequence[torch.Tensor],
    structure: Structure,
    bits: int,
    rounding: Any,
    seed: int,
) -> torch.Tensor:
    """``x @ W.T`` by the shared linear plan (rows layout, cheaper order), in integers."""
    plan = linear_plan(structure.shapes, structure.ranks, layout="rows", order="auto")
    return execute_linear(plan, x, list(factors), IntLinearBackend(bits, rounding, seed))


class IntSeKronLinear(IntModule, SeKronLinear):
    """:class:`SeKronLinear` whose stages are integer GEMMs (float master factors).

    Parameters are those of :class:`SeKronLinear` plus ``bits``, ``rounding`` and
    ``seed`` as in :class:`sekron.torch.IntLinear`. The bias is added in float.

    Notes
    -----
    The contraction is sekron's one linear plan (:func:`sekron.contraction.linear_plan`,
    rows layout, the cheaper order), run by :class:`IntLinearBackend`: every matmul step
    of the plan is one integer GEMM whose two operands are mapped with per-tensor
    exponents, as :class:`SeKronLinear` runs the same plan in float.

    Examples
    --------
    >>> import torch, sekron as sk
    >>> from sekron.torch import IntSeKronLinear
    >>> _ = torch.manual_seed(0)
    >>> layer = IntSeKronLinear(sk.Structure([(4, 8), (4, 8)], ranks=2), bits=16)
    >>> x = torch.randn(3, 64)
    >>> float((layer(x) - layer.to_dense()(x)).abs().max()) < 1e-2
    True
    """

    def __init__(
        self,
        structure: Structure,
        bias: bool = True,
        *,
        bits: int = 8,
        rounding: str = "stochastic",
        seed: int = 0,
        device: Any = None,
        dtype: Any = None,
    ):
        SeKronLinear.__init__(self, structure, bias, path="structured", device=device, dtype=dtype)
        self._init_int(bits, rounding, seed)

    @classmethod
    def from_sekron(cls, layer: SeKronLinear, bits: int = 8, **kw: Any) -> IntSeKronLinear:
        """An integer copy of ``layer`` (factors and bias copied)."""
        w = layer.factors[0]
        out = cls(
            layer.structure, layer.bias is not None, bits=bits, device=w.device, dtype=w.dtype, **kw
        )
        out.load_state_dict(layer.state_dict())
        out.fit_relative_error = layer.fit_relative_error
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``x`` (last axis ``in_features``) through integer SeKron stages."""
        lead = x.shape[:-1]
        y = int_sekron_linear(
            x.reshape(-1, self.in_features),
            list(self.factors),
            self.structure,
            self.bits,
            self.rounding,
            self.next_seed(),
        )
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        """The module's settings for its printed form."""
        return f"{SeKronLinear.extra_repr(self)}, {self._int_repr()}"


def _exact_float(bound: int) -> torch.dtype:
    """float32 while every partial sum (an integer <= ``bound``) is exact in it, else float64."""
    return torch.float32 if fixed.exact_float_dtype(bound) == np.float32 else torch.float64


def _tof(q: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(q.astype(np.float32 if dtype == torch.float32 else np.float64))


class _GroupConvFn(torch.autograd.Function):
    """Grouped 'valid' convolution of the mapped operands, exact, as ``fixed.conv2d(groups=)``.

    Forward is ``_int_base.exact_conv2d``: torch's direct float32 convolution of the
    mantissas while every partial sum is an integer below ``2**24``, the engine's float64
    route below ``2**53``, its grouped integer convolution past it. Backward runs torch's
    float convolutions (no transform-based algorithm) on the mantissas under the same
    rule (:func:`sekron.fixed.exact_float_dtype`). Backward maps the gradient twice (streams 1 and 2
    of the backward key, as :func:`sekron.fixed.conv2d_backward`) with one exponent over
    all groups.
    """

    @staticmethod
    @serial_blas
    def forward(
        ctx: Any,
        x: torch.Tensor,
        w: torch.Tensor,
        bits: int,
        rounding: Any,
        seed: int,
        geo: tuple[Any, Any, int],
    ) -> torch.Tensor:  # type: ignore[override]
        fwd, bwd = fixed.forward_backward_keys(seed)
        stride, dilation, groups = geo
        xq = quantize(x, bits, rounding, fwd, STREAM_INPUT)
        wq = quantize(w, bits, rounding, fwd, STREAM_WEIGHT)
        ctx.saved = (xq, wq, bits, rounding, bwd, geo)
        return exact_conv2d(xq, wq, stride, 0, dilation, groups, x)

    @staticmethod
    @serial_blas
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        xq, wq, bits, rounding, bwd, (stride, dilation, groups) = ctx.saved
        gn = np.ascontiguousarray(numpy_view(g))
        N, Fo, Ho, Wo = gn.shape
        kh, kw = wq.shape[2], wq.shape[3]
        bound_x = fixed.accumulator_bound((Fo // groups) * kh * kw, bits)
        bound_w = fixed.accumulator_bound(N * Ho * Wo, bits)
        if fixed.exact_float_dtype(max(bound_x, bound_w)) is None:
            dxq, dwq = fixed.conv2d_backward(
                xq, wq, gn, stride, 0, dilation, bits, rounding=rounding, seed=bwd, groups=groups
            )
            return (
                scaled(dxq.mantissa, int(dxq.exponent), g),
                scaled(dwq.mantissa, int(dwq.exponent), g),
                None,
                None,
                None,
                None,
            )  # type: ignore[call-overload]
        g1 = quantize(g, bits, rounding, bwd, 1)
        g2 = quantize(g, bits, rounding, bwd, 2)
        with torch.backends.nnpack.flags(enabled=False):
            ft = _exact_float(bound_x)
            dx = conv2d_input(
                tuple(xq.shape),
                _tof(wq.mantissa, ft),
                _tof(g1.mantissa, ft),
                stride=stride,
                dilation=dilation,
                groups=groups,
            )
            dw = _conv_weight_grad(xq, wq, g2, stride, dilation, groups)
        return (
            scaled(dx.double().numpy(), int(g1.exponent) + int(wq.exponent), g),  # type: ignore[call-overload]
            scaled(dw.numpy(), int(g2.exponent) + int(xq.exponent), g),  # type: ignore[call-overload]
            None,
            None,
            None,
            None,
        )


def _conv_weight_grad(
    xq: fixed.FixedTensor,
    wq: fixed.FixedTensor,
    g2: fixed.FixedTensor,
    stride: Any,
    dilation: Any,
    groups: int,
) -> torch.Tensor:
    """Exact dW in float64: images in chunks whose sums are exact in float32, summed in float64."""
    n, _, ho, wo = g2.shape
    per_image = fixed.accumulator_bound(ho * wo, xq.bits, g2.bits)
    chunk = max(1, fixed.FLOAT32_EXACT // per_image) if per_image <= fixed.FLOAT32_EXACT else n
    ft = _exact_float(per_image * min(chunk, n))
    dw = torch.zeros(tuple(wq.shape), dtype=torch.float64)
    for i in range(0, n, chunk):
        xs, gs = xq.mantissa[i : i + chunk], g2.mantissa[i : i + chunk]
        dw += conv2d_weight(
            _tof(xs, ft),
            tuple(wq.shape),
            _tof(gs, ft),
            stride=stride,
            dilation=dilation,
            groups=groups,
        ).double()
    return dw


class IntTorchBackend(TorchBackend):
    """:class:`TorchBackend` whose ``conv2d`` is an integer (grouped) convolution.

    Each call of ``conv2d`` is one stage: it maps its input and weight to ``bits`` bits
    (per-tensor exponents) and runs :func:`sekron.fixed.conv2d` per group, forward and
    backward. ``seed`` keys the call; stage ``s`` uses ``stage_seed(seed, s)``.

    Examples
    --------
    >>> import torch, sekron as sk
    >>> from sekron.torch import IntTorchBackend, TorchBackend
    >>> s = sk.Structure([(2, 2, 3, 1), (2, 2, 1, 3)], ranks=1)
    >>> plan = sk.ops.conv2d_plan(s, (5, 5), padding=1)
    >>> _ = torch.manual_seed(0)
    >>> fs, x = [torch.randn(f) for f in s.factor_shapes], torch.randn(1, 4, 5, 5)
    >>> be = IntTorchBackend(bits=16, rounding="nearest", seed=0)
    >>> y = sk.ops.execute_plan(plan, x, fs, be)
    >>> ref = sk.ops.execute_plan(plan, x, fs, TorchBackend())
    >>> be.stage, y.shape, bool((y - ref).abs().max() < 1e-2 * ref.abs().max())
    (2, torch.Size([1, 4, 5, 5]), True)
    """

    name = "torch-int"

    def __init__(self, bits: int, rounding: Any, seed: int):
        self.bits, self.rounding, self.seed, self.stage = bits, rounding, seed, 0

    def conv2d(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        stride: Sequence[int] = (1, 1),
        dilation: Sequence[int] = (1, 1),
        groups: int = 1,
    ) -> torch.Tensor:
        """One integer (grouped) convolution stage of ``x`` with ``weight``."""
        s = stage_seed(self.seed, self.stage)
        self.stage += 1
        geo = (tuple(int(v) for v in stride), tuple(int(v) for v in dilation), int(groups))
        return _GroupConvFn.apply(x, weight, self.bits, self.rounding, s, geo)


class IntSeKronConv2d(IntModule, SeKronConv2d):
    """:class:`SeKronConv2d` whose plan runs on :class:`IntTorchBackend` (float master factors).

    Parameters are those of :class:`SeKronConv2d` plus ``bits``, ``rounding``, ``seed``.
    Padding is applied in float before the integer stages (zeros are exact). ``path``
    follows :meth:`SeKronConv2d.uses_structured_path`: where the staged convolution does
    not pay (tiny images) the kernel is rebuilt in float from the master factors and run
    as one integer stage (torch's CPU grouped convolutions, forward and backward, made
    the staged integer fine-tuning of the demo's 8×8 images take minutes per epoch).

    Examples
    --------
    >>> import torch, sekron as sk
    >>> from sekron.torch import IntSeKronConv2d
    >>> _ = torch.manual_seed(0)
    >>> conv = IntSeKronConv2d(sk.Structure([(2, 2, 3, 1), (2, 2, 1, 3)], ranks=1), padding=1, bits=16)
    >>> x = torch.randn(1, 4, 5, 5)
    >>> float((conv(x) - conv.to_dense()(x)).abs().max()) < 1e-2
    True
    """

    def __init__(
        self,
        structure: Structure,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        bias: bool = True,
        *,
        path: str = "auto",
        bits: int = 8,
        rounding: str = "stochastic",
        seed: int = 0,
        device: Any = None,
        dtype: Any = None,
    ):
        SeKronConv2d.__init__(
            self, structure, stride, padding, dilation, bias, path=path, device=device, dtype=dtype
        )
        self._init_int(bits, rounding, seed)

    @classmethod
    def from_sekron(cls, layer: SeKronConv2d, bits: int = 8, **kw: Any) -> IntSeKronConv2d:
        """An integer copy of ``layer``."""
        w = layer.factors[0]
        kw.setdefault("path", layer.path)
        out = cls(
            layer.structure,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.bias is not None,
            bits=bits,
            device=w.device,
            dtype=w.dtype,
            **kw,
        )
        out.load_state_dict(layer.state_dict())
        out.fit_relative_error = layer.fit_relative_error
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``x`` of shape ``(n, C, H, W)`` as an integer SeKron convolution."""
        top, bottom, left, right = self._pads
        xp = F.pad(x, (left, right, top, bottom)) if any(self._pads) else x
        backend = IntTorchBackend(self.bits, self.rounding, self.next_seed())
        if not self.uses_structured_path((int(x.shape[-2]), int(x.shape[-1]))):
            # one integer stage: the kernel rebuilt in float from the master factors
            y = backend.conv2d(xp, self.dense_weight(), self.stride, self.dilation, 1)
            return y if self.bias is None else y + self.bias[:, None, None]
        plan = conv2d_plan(
            self.structure, (int(xp.shape[-2]), int(xp.shape[-1])), self.stride, 0, self.dilation
        )
        y = execute_plan(plan, xp, list(self.factors), backend)
        return y if self.bias is None else y + self.bias[:, None, None]

    def extra_repr(self) -> str:
        """The module's settings for its printed form."""
        return f"{SeKronConv2d.extra_repr(self)}, {self._int_repr()}"
