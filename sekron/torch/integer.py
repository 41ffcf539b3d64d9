"""Integer training layers: forward and backward run sekron's dynamic fixed-point engine.

Each layer keeps float master weights (``nn.Parameter``; a b-bit master copy would lose
small updates, DESIGN.md 2.7) and, at every call, maps its input and weights to
``bits``-bit fixed point, runs the exact integer product of :mod:`sekron.fixed`, and
hands torch the dequantized result. The backward pass maps the incoming gradient
freshly (independent stochastic draws per product) and runs the integer backward GEMMs.
Softmax, GELU, the loss and the optimizer stay in float, as in integer fine-tuning.

Stochastic rounding draws from a counter-based generator keyed by
``(seed, call number, stream)``, so a run is reproducible whatever the thread count.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .. import fixed
from .._validation import check_bits, check_instance
from ..errors import ArgumentError, ShapeError
from ..fixed import STREAM_BIAS, STREAM_INPUT, STREAM_WEIGHT
from ._convert import to_numpy, to_torch
from ._int_base import (
    IntModule,
    dequant,
    exact_conv2d,
    numpy_view,
    quantize,
    scaled,
    serial_blas,
)

__all__ = [
    "IntConv2d",
    "IntEmbedding",
    "IntLayerNorm",
    "IntLinear",
    "IntMatmul",
    "IntSGD",
    "integer_attention",
]


def int_linear_forward(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, bits: int, rounding: Any, fwd: int
) -> tuple[torch.Tensor, Any]:
    """``deq(fixed.linear(Q(x), Q(W), Q(b)))`` bit for bit, and the operands for backward.

    The product runs on the engine's exact float route while its bound allows it (the
    bias aligned onto the accumulator's exponent), else on ``fixed.linear`` itself.
    """
    xq = quantize(x, bits, rounding, fwd, STREAM_INPUT)
    wq = quantize(w, bits, rounding, fwd, STREAM_WEIGHT)
    bq = None if b is None else quantize(b, bits, rounding, fwd, STREAM_BIAS)
    e = int(xq.exponent) + int(wq.exponent)  # type: ignore[call-overload]
    bound = fixed.accumulator_bound(xq.shape[1], xq.bits, wq.bits)
    acc = fixed.exact_float_matmul(xq.mantissa, wq.mantissa.T, bound)
    if acc is not None and bq is not None:
        bqa, bb = fixed.align_to(bq, e, rounding, fwd)
        acc = acc.astype(np.float64) + bqa[None, :] if bound + bb <= fixed.FLOAT64_EXACT else None
    if acc is None:
        return dequant(fixed.linear(xq, wq, bq, rounding=rounding, seed=fwd), x), (xq, wq)
    return scaled(acc, e, x), (xq, wq)


def int_linear_backward(
    g: torch.Tensor, xq: Any, wq: Any, bits: int, rounding: Any, bwd: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``fixed.linear_backward(xq, wq, g, bits, seed=bwd)`` dequantized, bit for bit."""
    gn = numpy_view(g)
    n, f = gn.shape
    g1 = quantize(g, bits, rounding, bwd, 1)
    g2 = quantize(g, bits, rounding, bwd, 2)
    dx = fixed.exact_float_matmul(
        g1.mantissa, wq.mantissa, fixed.accumulator_bound(f, g1.bits, wq.bits)
    )
    dw = fixed.exact_float_matmul(
        g2.mantissa.T, xq.mantissa, fixed.accumulator_bound(n, g2.bits, xq.bits)
    )
    if dx is None or dw is None:
        dxq, dwq, dbq = fixed.linear_backward(xq, wq, gn, bits, rounding=rounding, seed=bwd)
        assert dxq is not None  # the engine skips dx only when asked to
        return dequant(dxq, g), dequant(dwq, g), dequant(dbq, g)
    db = g2.mantissa.astype(np.int64).sum(axis=0).astype(np.float64)
    eg1, eg2 = int(g1.exponent), int(g2.exponent)  # type: ignore[call-overload]
    return (
        scaled(dx, eg1 + int(wq.exponent), g),
        scaled(dw, eg2 + int(xq.exponent), g),
        scaled(db, eg2, g),
    )


class _LinearFn(torch.autograd.Function):
    @staticmethod
    @serial_blas
    def forward(
        ctx: Any,
        x: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor | None,
        bits: int,
        rounding: Any,
        seed: int,
    ) -> torch.Tensor:  # type: ignore[override]
        fwd, bwd = fixed.forward_backward_keys(seed)
        y, (xq, wq) = int_linear_forward(x, w, b, bits, rounding, fwd)
        ctx.saved = (xq, wq, bits, rounding, bwd, b is not None)
        return y

    @staticmethod
    @serial_blas
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        xq, wq, bits, rounding, bwd, has_b = ctx.saved
        dx, dw, db = int_linear_backward(g.contiguous(), xq, wq, bits, rounding, bwd)
        return (dx, dw, db if has_b else None, None, None, None)


class IntLinear(IntModule):
    """``nn.Linear`` whose forward and backward are integer GEMMs on ``bits``-bit operands.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool, default True
    bits : int in 2..16, default 8
        Bit-width (sign included) of every mapped operand: input, weight, bias, gradient.
    rounding : {"stochastic", "nearest"}, default "stochastic"
    seed : int, default 0
        Base key of the stochastic rounding; call ``t`` uses ``(seed, t)``.

    Notes
    -----
    ``y = deq(Q(x) Q(W)^T + Q(b))`` exactly (the bias is aligned onto the accumulator's
    exponent); backward ``dx = deq(Q(dy) Q(W))``, ``dW = deq(Q'(dy)^T Q(x))``,
    ``db = deq(Σ Q'(dy))`` with ``Q`` and ``Q'`` independent mappings
    (:func:`sekron.fixed.linear_backward`).

    Examples
    --------
    >>> import torch
    >>> from sekron.torch import IntLinear
    >>> _ = torch.manual_seed(0)
    >>> layer = IntLinear(4, 3, bits=8, rounding="nearest")
    >>> y = layer(torch.randn(2, 4))
    >>> y.shape, y.dtype
    (torch.Size([2, 3]), torch.float32)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        bits: int = 8,
        rounding: str = "stochastic",
        seed: int = 0,
        device: Any = None,
        dtype: Any = None,
    ):
        super().__init__()
        ref = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.in_features, self.out_features = in_features, out_features
        self.weight = ref.weight
        self.bias = ref.bias
        self._init_int(bits, rounding, seed)

    @classmethod
    def from_linear(cls, layer: nn.Linear, bits: int = 8, **kw: Any) -> IntLinear:
        """An integer copy of ``layer`` (weights copied)."""
        check_instance(layer, "layer", nn.Linear, "an nn.Linear")
        out = cls(
            layer.in_features,
            layer.out_features,
            layer.bias is not None,
            bits=bits,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
            **kw,
        )
        out.load_state_dict(layer.state_dict())
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``x`` (last axis ``in_features``) in integer arithmetic."""
        lead = x.shape[:-1]
        y = _LinearFn.apply(
            x.reshape(-1, self.in_features),
            self.weight,
            self.bias,
            self.bits,
            self.rounding,
            self.next_seed(),
        )
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        """The module's settings for its printed form."""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, {self._int_repr()}"


class _Conv2dFn(torch.autograd.Function):
    @staticmethod
    @serial_blas
    def forward(
        ctx: Any,
        x: torch.Tensor,
        w: torch.Tensor,
        bits: int,
        rounding: Any,
        seed: int,
        geo: tuple[Any, Any, Any],
    ) -> torch.Tensor:  # type: ignore[override]
        fwd, bwd = fixed.forward_backward_keys(seed)
        # the mapping reads float32/float64 views directly: the same bits as a float64 copy
        xq = quantize(x, bits, rounding, fwd, STREAM_INPUT)
        wq = quantize(w, bits, rounding, fwd, STREAM_WEIGHT)
        ctx.saved = (xq, wq, bits, rounding, bwd, geo)
        return exact_conv2d(xq, wq, *geo, 1, x)

    @staticmethod
    @serial_blas
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        xq, wq, bits, rounding, bwd, geo = ctx.saved
        stride, padding, dilation = geo
        dx, dw = fixed.conv2d_backward(
            xq,
            wq,
            to_numpy(g, np.float64),
            stride=stride,
            padding=padding,
            dilation=dilation,
            bits=bits,
            rounding=rounding,
            seed=bwd,
        )
        return (
            to_torch(dx.to_float(), like=g, copy=False),
            to_torch(dw.to_float(), like=g, copy=False),
            None,
            None,
            None,
            None,
        )


class IntConv2d(IntModule):
    """``nn.Conv2d`` (groups 1, zero padding) whose convolution is an integer GEMM.

    The bias is added in float after the integer convolution, and its gradient is the
    float sum of the incoming gradient. Parameters are those of ``nn.Conv2d`` plus
    ``bits``, ``rounding`` and ``seed`` as in :class:`IntLinear`.

    Examples
    --------
    >>> import torch
    >>> from sekron.torch import IntConv2d
    >>> conv = IntConv2d(2, 3, 3, padding=1, bits=8)
    >>> conv(torch.randn(1, 2, 5, 5)).shape
    torch.Size([1, 3, 5, 5])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Any,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        bias: bool = True,
        *,
        bits: int = 8,
        rounding: str = "stochastic",
        seed: int = 0,
        device: Any = None,
        dtype: Any = None,
    ):
        super().__init__()
        ref = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            bias=bias,
            device=device,
            dtype=dtype,
        )
        if isinstance(ref.padding, str):
            raise ArgumentError("padding: IntConv2d needs explicit padding, got a string")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = (
            ref.kernel_size,
            ref.stride,
            ref.padding,
            ref.dilation,
        )
        self.weight, self.bias = ref.weight, ref.bias
        self._init_int(bits, rounding, seed)

    @classmethod
    def from_conv(cls, layer: nn.Conv2d, bits: int = 8, **kw: Any) -> IntConv2d:
        """An integer copy of ``layer`` (``groups=1``, zero padding, explicit padding)."""
        if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ArgumentError(
                "layer: IntConv2d needs groups=1, padding_mode='zeros' and explicit padding"
            )
        out = cls(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.bias is not None,
            bits=bits,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
            **kw,
        )
        out.load_state_dict(layer.state_dict())
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``x`` of shape ``(n, C, H, W)`` as an integer convolution."""
        y = _Conv2dFn.apply(
            x,
            self.weight,
            self.bits,
            self.rounding,
            self.next_seed(),
            (self.stride, self.padding, self.dilation),
        )
        return y if self.bias is None else y + self.bias[:, None, None]

    def extra_repr(self) -> str:
        """The module's settings for its printed form."""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, {self._int_repr()}"
        )


class _LayerNormFn(torch.autograd.Function):
    @staticmethod
    @serial_blas
    def forward(
        ctx: Any,
        x: torch.Tensor,
        gamma: torch.Tensor,
        beta: torch.Tensor,
        bits: int,
        eps: float,
        rounding: Any,
        seed: int,
    ) -> torch.Tensor:  # type: ignore[override]
        fwd, bwd = fixed.forward_backward_keys(seed)
        y, cache = fixed.layer_norm(
            to_numpy(x, np.float64),
            to_numpy(gamma, np.float64),
            to_numpy(beta, np.float64),
            bits,
            eps,
            rounding=rounding,
            seed=fwd,
        )
        ctx.saved = (cache, rounding, bwd)
        return to_torch(y.to_float(), like=x, copy=False)

    @staticmethod
    @serial_blas
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        cache, rounding, bwd = ctx.saved
        dx, dgamma, dbeta = fixed.layer_norm_backward(
            to_numpy(g, np.float64), cache, rounding=rounding, seed=bwd
        )
        return (
            to_torch(dx.to_float(), like=g, copy=False),
            to_torch(dgamma.to_float(), like=g, copy=False),
            to_torch(dbeta.to_float(), like=g, copy=False),
            None,
            None,
            None,
            None,
        )


class IntLayerNorm(IntModule):
    """Layer normalization over the last axis with integer statistics and affine part.

    See :func:`sekron.fixed.layer_norm`: sums and the variance numerator are exact
    integers; the one float step is the reciprocal square root. ``elementwise_affine``
    is always on (as the engine's ``gamma``/``beta``); default ``bits=16``.

    Examples
    --------
    >>> import torch
    >>> from sekron.torch import IntLayerNorm
    >>> ln = IntLayerNorm(8, bits=16, rounding="nearest")
    >>> y = ln(torch.randn(3, 8))
    >>> bool(y.mean(-1).abs().max() < 1e-3)
    True
    """

    def __init__(
        self,
        normalized_shape: int,
        eps: float = 1e-5,
        *,
        bits: int = 16,
        rounding: str = "stochastic",
        seed: int = 0,
        device: Any = None,
        dtype: Any = None,
    ):
        super().__init__()
        self.normalized_shape = (int(normalized_shape),)
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(self.normalized_shape, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(self.normalized_shape, device=device, dtype=dtype))
        self._init_int(bits, rounding, seed)

    @classmethod
    def from_layer_norm(cls, layer: nn.LayerNorm, bits: int = 16, **kw: Any) -> IntLayerNorm:
        """An integer copy of an ``nn.LayerNorm`` over one trailing axis, with affine weights."""
        if len(layer.normalized_shape) != 1 or layer.weight is None or layer.bias is None:
            raise ArgumentError(
                "layer: IntLayerNorm needs one normalized axis and elementwise_affine with bias"
            )
        out = cls(
            layer.normalized_shape[0],
            layer.eps,
            bits=bits,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
            **kw,
        )
        out.load_state_dict(layer.state_dict())
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``x``: integer layer normalization over the trailing axes."""
        return _LayerNormFn.apply(
            x, self.weight, self.bias, self.bits, self.eps, self.rounding, self.next_seed()
        )

    def extra_repr(self) -> str:
        """The module's settings for its printed form."""
        return f"{self.normalized_shape}, eps={self.eps}, {self._int_repr()}"


class _EmbeddingFn(torch.autograd.Function):
    @staticmethod
    @serial_blas
    def forward(
        ctx: Any, ids: torch.Tensor, table: torch.Tensor, bits: int, rounding: Any, seed: int
    ) -> torch.Tensor:  # type: ignore[override]
        fwd, bwd = fixed.forward_backward_keys(seed)
        tq = fixed.to_fixed(to_numpy(table, np.float64), bits, rounding, fwd, stream=STREAM_WEIGHT)
        ids_np = to_numpy(ids).astype(np.int64)
        y = fixed.embedding(tq, ids_np)
        ctx.saved = (ids_np, table.shape[0], bits, rounding, bwd)
        return to_torch(y.to_float(), like=table, copy=False)

    @staticmethod
    @serial_blas
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        ids_np, v, bits, rounding, bwd = ctx.saved
        dt = fixed.embedding_backward(
            to_numpy(g, np.float64), ids_np, v, bits, rounding=rounding, seed=bwd
        )
        return None, to_torch(dt.to_float(), like=g, copy=False), None, None, None


class IntEmbedding(IntModule):
    """Embedding lookup of a ``bits``-bit table; the gradient is an integer scatter-add.

    Examples
    --------
    >>> import torch
    >>> from sekron.torch import IntEmbedding
    >>> emb = IntEmbedding(10, 4, bits=8)
    >>> emb(torch.tensor([[1, 2]])).shape
    torch.Size([1, 2, 4])
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        *,
        bits: int = 8,
        rounding: str = "stochastic",
        seed: int = 0,
        device: Any = None,
        dtype: Any = None,
    ):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = nn.Parameter(
            torch.randn(num_embeddings, embedding_dim, device=device, dtype=dtype)
        )
        self._init_int(bits, rounding, seed)

    @classmethod
    def from_embedding(cls, layer: nn.Embedding, bits: int = 8, **kw: Any) -> IntEmbedding:
        """An integer copy of ``layer`` (no ``max_norm``, not sparse)."""
        if layer.max_norm is not None or layer.sparse:
            raise ArgumentError("layer: IntEmbedding needs max_norm=None and sparse=False")
        out = cls(
            layer.num_embeddings,
            layer.embedding_dim,
            bits=bits,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
            **kw,
        )
        out.load_state_dict(layer.state_dict())
        return out

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Look up the embedding rows of ``ids`` (the table mapped to ``bits`` bits)."""
        return _EmbeddingFn.apply(ids, self.weight, self.bits, self.rounding, self.next_seed())

    def extra_repr(self) -> str:
        """The module's settings for its printed form."""
        return f"{self.num_embeddings}, {self.embedding_dim}, {self._int_repr()}"


def _stacked_product(a: Any, b: Any, bits_a: int, bits_b: int) -> np.ndarray:
    """Exact ``a @ b`` of two stacks of mantissas (same leading shape), as integers in floats.

    Float BLAS while the bound allows it (:func:`sekron.fixed.exact_float_matmul`), else
    the engine's :func:`sekron.fixed.batched_matmul` (int64 accumulators).
    """
    k = a.shape[-1]
    acc = fixed.exact_float_matmul(a, b, fixed.accumulator_bound(k, bits_a, bits_b))
    if acc is not None:
        return acc
    lead = a.shape[:-2]
    a3 = fixed.FixedTensor(np.ascontiguousarray(a).reshape(-1, *a.shape[-2:]), 0, bits_a)
    b3 = fixed.FixedTensor(np.ascontiguousarray(b).reshape(-1, *b.shape[-2:]), 0, bits_b)
    out = fixed.batched_matmul(a3, b3).mantissa
    return out.reshape(*lead, *out.shape[-2:])


def int_matmul_forward(
    a: torch.Tensor, b: torch.Tensor, bits: int, rounding: Any, fwd: int
) -> tuple[torch.Tensor, Any]:
    """``deq(Q(a) @ Q(b))`` for stacks ``(..., M, K) @ (..., K, N)``, and the operands.

    Each operand is mapped with one exponent over the whole stack, so every slice's
    product is an exact integer GEMM with exponent ``e_a + e_b``.
    """
    if a.dim() < 2 or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
        raise ShapeError(
            f"b: expected shape (*{tuple(a.shape[:-2])}, {a.shape[-1]}, N) for a of shape "
            f"{tuple(a.shape)} (no broadcasting), got {tuple(b.shape)}"
        )
    aq = quantize(a, bits, rounding, fwd, STREAM_INPUT)
    bq = quantize(b, bits, rounding, fwd, STREAM_WEIGHT)
    acc = _stacked_product(aq.mantissa, bq.mantissa, aq.bits, bq.bits)
    return scaled(acc, int(aq.exponent) + int(bq.exponent), a), (aq, bq)  # type: ignore[call-overload]


def int_matmul_backward(
    g: torch.Tensor, aq: Any, bq: Any, bits: int, rounding: Any, bwd: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``da = deq(Q(g) @ Q(b)^T)`` and ``db = deq(Q(a)^T @ Q'(g))``, ``Q``, ``Q'`` independent."""
    g1 = quantize(g, bits, rounding, bwd, 1)
    g2 = quantize(g, bits, rounding, bwd, 2)
    da = _stacked_product(g1.mantissa, np.swapaxes(bq.mantissa, -1, -2), g1.bits, bq.bits)
    db = _stacked_product(np.swapaxes(aq.mantissa, -1, -2), g2.mantissa, aq.bits, g2.bits)
    return (
        scaled(da, int(g1.exponent) + int(bq.exponent), g),  # type: ignore[call-overload]
        scaled(db, int(aq.exponent) + int(g2.exponent), g),  # type: ignore[call-overload]
    )


class _MatmulFn(torch.autograd.Function):
    @staticmethod
    @serial_blas
    def forward(
        ctx: Any, a: torch.Tensor, b: torch.Tensor, bits: int, rounding: Any, seed: int
    ) -> torch.Tensor:  # type: ignore[override]
        fwd, bwd = fixed.forward_backward_keys(seed)
        y, (aq, bq) = int_matmul_forward(a, b, bits, rounding, fwd)
        ctx.saved = (aq, bq, bits, rounding, bwd)
        return y

    @staticmethod
    @serial_blas
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        aq, bq, bits, rounding, bwd = ctx.saved
        da, db = int_matmul_backward(g.contiguous(), aq, bq, bits, rounding, bwd)
        return da, db, None, None, None


class IntMatmul(IntModule):
    """``a @ b`` of two activation stacks (attention's scores and context) in integers.

    Both operands are mapped to ``bits`` bits, one exponent per tensor; the product of
    every slice is an exact integer GEMM (float BLAS while exact, else the engine's
    int64 :func:`sekron.fixed.batched_matmul`). The backward maps the incoming gradient
    twice with independent draws: ``da = deq(Q(g) Q(b)^T)``, ``db = deq(Q(a)^T Q'(g))``.
    Leading dimensions must be equal (no broadcasting). Parameters ``bits``,
    ``rounding`` and ``seed`` as in :class:`IntLinear`.

    Examples
    --------
    >>> import torch
    >>> from sekron.torch.integer import IntMatmul
    >>> mm = IntMatmul(bits=8, rounding="nearest")
    >>> a, b = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 5, 6)
    >>> y = mm(a, b)
    >>> y.shape, bool((y - a @ b).abs().max() < 0.2)
    (torch.Size([2, 3, 4, 6]), True)
    """

    def __init__(self, *, bits: int = 8, rounding: str = "stochastic", seed: int = 0):
        super().__init__()
        self._init_int(bits, rounding, seed)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The integer product ``a @ b`` of stacks ``(..., M, K)`` and ``(..., K, N)``."""
        return _MatmulFn.apply(a, b, self.bits, self.rounding, self.next_seed())

    def extra_repr(self) -> str:
        """The module's settings for its printed form."""
        return self._int_repr()


def integer_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention whose two batched products run on ``module.int_matmul``.

    The signature is the attention-function interface of Hugging Face ``transformers``
    (``AttentionInterface``); :func:`sekron.torch.integerize` registers it under the
    name ``"sekron_integer"`` and gives every self-attention module an
    :class:`IntMatmul`. ``Q K^T`` and ``P V`` are integer products; the scaling, the
    additive mask, softmax and dropout stay in float (as in integer fine-tuning). A
    module without ``int_matmul`` gets the float products (same arithmetic as eager).

    Parameters
    ----------
    module : nn.Module
        The attention module; its ``int_matmul`` (if any) does the products.
    query, key, value : Tensor, shape (batch, heads, seq, head_dim)
    attention_mask : Tensor or None
        Additive mask broadcastable to (batch, heads, seq_q, seq_k).
    scaling : float or None
        Factor of the scores (default ``head_dim ** -0.5``).
    dropout : float
        Dropout probability on the attention weights (only in training mode).
    **kwargs
        Ignored (the interface passes model-specific flags).

    Returns
    -------
    output : Tensor, shape (batch, seq, heads, head_dim)
    weights : Tensor, shape (batch, heads, seq_q, seq_k)

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from sekron.torch.integer import IntMatmul, integer_attention
    >>> m = nn.Module()
    >>> m.int_matmul = IntMatmul(bits=16, rounding="nearest")
    >>> q, k, v = torch.randn(3, 1, 2, 4, 8).unbind(0)
    >>> out, w = integer_attention(m, q, k, v, None)
    >>> ref = torch.softmax(q @ k.transpose(2, 3) / 8**0.5, -1) @ v
    >>> bool((out.transpose(1, 2) - ref).abs().max() < 1e-3)
    True
    """
    mm = getattr(module, "int_matmul", None)
    product = mm if isinstance(mm, IntMatmul) else torch.matmul
    scale = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = product(query, key.transpose(2, 3)) * scale
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = product(weights, value)
    return out.transpose(1, 2).contiguous(), weights


class IntSGD(torch.optim.Optimizer):
    """Momentum SGD whose every step is :func:`sekron.fixed.sgd_step` (integer products).

    ``g' = g + wd w``, ``v = mu v + g'``, ``w = w - lr v`` with the gradient, weight,
    velocity and the scalars mapped to ``bits`` bits and multiplied as integers; the
    parameter stays a float master copy (``mode="master"``: a ``bits``-bit master would
    lose small updates). The learning rate is read from ``param_groups`` at each step,
    so torch's schedulers work.

    Parameters
    ----------
    params : iterable of Tensor or dicts
        CPU float parameters.
    lr : float
    momentum : float in [0, 1), default 0
    weight_decay : float >= 0, default 0
    bits : int in 2..16, default 16
    rounding : {"stochastic", "nearest"}, default "stochastic"
    seed : int, default 0
        Parameter ``i`` (in the order of ``params``) at step ``t`` draws with key
        ``call_key(seed + 7919 * i, t)``.

    Examples
    --------
    >>> import torch
    >>> from sekron.torch.integer import IntSGD
    >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    >>> opt = IntSGD([w], lr=0.5, bits=16, rounding="nearest")
    >>> w.grad = torch.tensor([0.5, 0.25])
    >>> opt.step()
    >>> w.detach()
    tensor([ 0.7500, -2.1250])
    """

    def __init__(
        self,
        params: Any,
        lr: float,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        *,
        bits: int = 16,
        rounding: str = "stochastic",
        seed: int = 0,
    ):
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.bits = check_bits(bits)
        if rounding not in ("stochastic", "nearest"):
            raise ValueError(f"rounding: expected 'stochastic' or 'nearest', got {rounding!r}")
        self.rounding: Any = rounding
        self.seed, self.t = int(seed), 0

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """Update every parameter that has a gradient; ``closure`` as in torch."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    st = self.state[p]
                    w, st["fixed"] = fixed.sgd_step(
                        numpy_view(p),
                        numpy_view(p.grad),
                        st.get("fixed"),
                        lr=float(group["lr"]),
                        momentum=float(group["momentum"]),
                        weight_decay=float(group["weight_decay"]),
                        bits=self.bits,
                        rounding=self.rounding,
                        seed=fixed.call_key(self.seed + 7919 * i, self.t),
                    )
                    p.copy_(to_torch(np.asarray(w), like=p, copy=False))
                i += 1
        self.t += 1
        return loss
