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

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import fixed
from .._validation import check_bits
from ..fixed._ops import align_to
from ..fixed._tensor import mantissa_dtype, round_scaled
from ._convert import to_numpy, to_torch

__all__ = ["IntLinear", "IntConv2d", "IntLayerNorm", "IntEmbedding", "integerize"]

_MASK = (1 << 62) - 1
# streams of the forward mappings; the engine's backward uses streams 1..4 of its own seed
_X, _W, _B = 11, 12, 13


_F32_EXACT = 1 << 24
_F64_EXACT = 1 << 53
_NP_FLOAT: dict[torch.dtype, np.dtype] = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


def _mant(t: torch.Tensor) -> np.ndarray:
    """A CPU numpy view (no copy) of a float tensor, for ``fixed.to_fixed``."""
    return t.detach().to("cpu").numpy()


def _quantize(t: torch.Tensor, bits: int, rounding: Any, key: int, stream: int) -> fixed.FixedTensor:
    """``fixed.to_fixed(t, bits, rounding, key, stream=stream)``, bit for bit.

    Large tensors (weights) take a shorter route to the same mantissas: the exponent
    from ``max |t|``, the power-of-two scaling as a multiply (exact, as the engine's
    ``ldexp``, which was 1 ms of a 512×512 mapping) and the engine's own rounding kernel
    (``round_scaled``): 0.24 ms against 0.97 ms for ``to_fixed`` on 512×512, one thread.
    Small tensors, non-finite values, zeros and extreme exponents go to ``to_fixed``.
    """
    arr = _mant(t)
    if arr.size < _DIRECT_MIN:
        return fixed.to_fixed(arr, bits, rounding, key, stream=stream)
    a = arr.astype(np.float64)
    amax = float(np.abs(a).max())
    if not math.isfinite(amax) or amax == 0.0:
        return fixed.to_fixed(arr, bits, rounding, key, stream=stream)
    e = math.frexp(amax)[1] - 1 - (bits - 2)
    if abs(e) > 960:
        return fixed.to_fixed(arr, bits, rounding, key, stream=stream)
    q = round_scaled(a * 2.0 ** (-e), (1 << (bits - 1)) - 1, rounding, key, stream)
    return fixed.FixedTensor._trusted(q.astype(mantissa_dtype(bits)), e, bits)


_DIRECT_MIN = 1 << 15


def _int_gemm(a: np.ndarray, b: np.ndarray, bound: int) -> np.ndarray | None:
    """Exact ``a @ b`` of integer mantissas in float BLAS, or None past ``2**53``.

    Every partial sum is an integer of magnitude ``<= bound``: exact in float32 while
    ``bound <= 2**24`` and in float64 while ``<= 2**53`` (the engine's ``"blas"`` path,
    without its integer round trip).
    """
    if bound <= _F32_EXACT:
        return np.matmul(a.astype(np.float32), b.astype(np.float32))
    if bound <= _F64_EXACT:
        return np.matmul(a.astype(np.float64), b.astype(np.float64))
    return None


def _scaled(acc: np.ndarray, e: int, like: torch.Tensor) -> torch.Tensor:
    """``acc · 2**e`` (``acc`` exact integers in float) in ``like``'s dtype, bit for bit
    the engine's ``FixedTensor(acc, e).to_float()`` cast to that dtype."""
    target = _NP_FLOAT.get(like.dtype, np.dtype(np.float64))
    if acc.dtype == target == np.float32 and -120 <= e <= 100:
        out = acc * np.float32(2.0**e)  # exact: |acc| < 2**24 and the result stays normal
    elif -960 <= e <= 960:
        out = (acc.astype(np.float64) * (2.0**e)).astype(target, copy=False)
    else:
        out = np.ldexp(acc.astype(np.float64), e).astype(target, copy=False)
    t = torch.from_numpy(np.ascontiguousarray(out))
    return t.to(device=like.device, dtype=like.dtype)


def _dequant(t: fixed.FixedTensor, like: torch.Tensor) -> torch.Tensor:
    """``t.to_float()`` as a torch tensor in ``like``'s dtype and device."""
    return to_torch(t.to_float(), like=like, copy=False)


def _bound(k: int, bits_a: int, bits_b: int) -> int:
    return k * ((1 << (bits_a - 1)) - 1) * ((1 << (bits_b - 1)) - 1)


def _split_seed(seed: int) -> tuple[int, int]:
    """Independent keys for the forward mappings and for the backward pass."""
    fwd = (seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & _MASK
    bwd = (seed * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & _MASK
    return fwd, bwd


class _IntModule(nn.Module):
    """Bit-width, rounding and the per-call seed counter shared by the integer layers."""

    def _init_int(self, bits: int, rounding: Any, seed: int) -> None:
        self.bits = check_bits(bits)
        if rounding not in ("stochastic", "nearest"):
            raise ValueError(f"rounding: expected 'stochastic' or 'nearest', got {rounding!r}")
        self.rounding: Any = rounding
        self.seed = int(seed)
        self.calls = 0

    def next_seed(self) -> int:
        """The key of the next forward call: ``(seed, call number)`` hashed to 62 bits."""
        s = ((self.seed & 0xFFFFFFFF) << 30 | (self.calls & 0x3FFFFFFF)) & _MASK
        self.calls += 1
        return s

    def _int_repr(self) -> str:
        return f"bits={self.bits}, rounding={self.rounding!r}"


def int_linear_forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, bits: int, rounding: Any, fwd: int) -> tuple[torch.Tensor, Any]:
    """``deq(fixed.linear(Q(x), Q(W), Q(b)))`` bit for bit, and the operands for backward."""
    xq = _quantize(x, bits, rounding, fwd, _X)
    wq = _quantize(w, bits, rounding, fwd, _W)
    bq = None if b is None else _quantize(b, bits, rounding, fwd, _B)
    e = int(xq.exponent) + int(wq.exponent)  # type: ignore[call-overload]
    bound = _bound(xq.shape[1], xq.bits, wq.bits)
    acc = _int_gemm(xq.mantissa, wq.mantissa.T, bound)
    if acc is not None and bq is not None:
        bqa, bb = align_to(bq, e, rounding, fwd)
        acc = acc.astype(np.float64) + bqa[None, :] if bound + bb <= _F64_EXACT else None
    if acc is None:
        y = _dequant(fixed.linear(xq, wq, bq, rounding=rounding, seed=fwd), x)
    else:
        y = _scaled(acc, e, x)
    return y, (xq, wq)


def int_linear_backward(g: torch.Tensor, xq: Any, wq: Any, bits: int, rounding: Any, bwd: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``fixed.linear_backward(xq, wq, g, bits, seed=bwd)`` dequantized, bit for bit."""
    gn = _mant(g)
    n, f = gn.shape
    g1 = _quantize(g, bits, rounding, bwd, 1)
    g2 = _quantize(g, bits, rounding, bwd, 2)
    dx = _int_gemm(g1.mantissa, wq.mantissa, _bound(f, g1.bits, wq.bits))
    dw = _int_gemm(g2.mantissa.T, xq.mantissa, _bound(n, g2.bits, xq.bits))
    if dx is None or dw is None:
        dxq, dwq, dbq = fixed.linear_backward(xq, wq, gn, bits, rounding=rounding, seed=bwd)
        assert dxq is not None  # the engine skips dx only when asked to
        return _dequant(dxq, g), _dequant(dwq, g), _dequant(dbq, g)
    db = g2.mantissa.astype(np.int64).sum(axis=0).astype(np.float64)
    eg1, eg2 = int(g1.exponent), int(g2.exponent)  # type: ignore[call-overload]
    return (
        _scaled(dx, eg1 + int(wq.exponent), g),
        _scaled(dw, eg2 + int(xq.exponent), g),
        _scaled(db, eg2, g),
    )


class _LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, bits: int, rounding: Any, seed: int) -> torch.Tensor:  # type: ignore[override]
        fwd, bwd = _split_seed(seed)
        y, (xq, wq) = int_linear_forward(x, w, b, bits, rounding, fwd)
        ctx.saved = (xq, wq, bits, rounding, bwd, b is not None)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        xq, wq, bits, rounding, bwd, has_b = ctx.saved
        dx, dw, db = int_linear_backward(g.contiguous(), xq, wq, bits, rounding, bwd)
        return (dx, dw, db if has_b else None, None, None, None)


class IntLinear(_IntModule):
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

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, bits: int = 8, rounding: str = "stochastic", seed: int = 0, device: Any = None, dtype: Any = None):
        super().__init__()
        ref = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.in_features, self.out_features = in_features, out_features
        self.weight = ref.weight
        self.bias = ref.bias
        self._init_int(bits, rounding, seed)

    @classmethod
    def from_linear(cls, layer: nn.Linear, bits: int = 8, **kw: Any) -> IntLinear:
        """An integer copy of ``layer`` (weights copied)."""
        out = cls(layer.in_features, layer.out_features, layer.bias is not None, bits=bits, device=layer.weight.device, dtype=layer.weight.dtype, **kw)
        out.load_state_dict(layer.state_dict())
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = _LinearFn.apply(x.reshape(-1, self.in_features), self.weight, self.bias, self.bits, self.rounding, self.next_seed())
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, {self._int_repr()}"


class _Conv2dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, bits: int, rounding: Any, seed: int, geo: tuple[Any, Any, Any]) -> torch.Tensor:  # type: ignore[override]
        fwd, bwd = _split_seed(seed)
        xq = fixed.to_fixed(to_numpy(x, np.float64), bits, rounding, fwd, stream=_X)
        wq = fixed.to_fixed(to_numpy(w, np.float64), bits, rounding, fwd, stream=_W)
        y = fixed.conv2d(xq, wq, *geo)
        ctx.saved = (xq, wq, bits, rounding, bwd, geo)
        return to_torch(y.to_float(), like=x, copy=False)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        xq, wq, bits, rounding, bwd, geo = ctx.saved
        stride, padding, dilation = geo
        dx, dw = fixed.conv2d_backward(
            xq, wq, to_numpy(g, np.float64), stride=stride, padding=padding, dilation=dilation, bits=bits, rounding=rounding, seed=bwd
        )
        return to_torch(dx.to_float(), like=g, copy=False), to_torch(dw.to_float(), like=g, copy=False), None, None, None, None


class IntConv2d(_IntModule):
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

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0, dilation: Any = 1, bias: bool = True, *, bits: int = 8, rounding: str = "stochastic", seed: int = 0, device: Any = None, dtype: Any = None):
        super().__init__()
        ref = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=bias, device=device, dtype=dtype)
        if isinstance(ref.padding, str):
            raise ValueError("padding: IntConv2d needs explicit padding, got a string")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = ref.kernel_size, ref.stride, ref.padding, ref.dilation
        self.weight, self.bias = ref.weight, ref.bias
        self._init_int(bits, rounding, seed)

    @classmethod
    def from_conv(cls, layer: nn.Conv2d, bits: int = 8, **kw: Any) -> IntConv2d:
        """An integer copy of ``layer`` (``groups=1``, zero padding, explicit padding)."""
        if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ValueError("layer: IntConv2d needs groups=1, padding_mode='zeros' and explicit padding")
        out = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.bias is not None, bits=bits, device=layer.weight.device, dtype=layer.weight.dtype, **kw)
        out.load_state_dict(layer.state_dict())
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _Conv2dFn.apply(x, self.weight, self.bits, self.rounding, self.next_seed(), (self.stride, self.padding, self.dilation))
        return y if self.bias is None else y + self.bias[:, None, None]

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, {self._int_repr()}"
        )


class _LayerNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, bits: int, eps: float, rounding: Any, seed: int) -> torch.Tensor:  # type: ignore[override]
        fwd, bwd = _split_seed(seed)
        y, cache = fixed.layer_norm(to_numpy(x, np.float64), to_numpy(gamma, np.float64), to_numpy(beta, np.float64), bits, eps, rounding=rounding, seed=fwd)
        ctx.saved = (cache, rounding, bwd)
        return to_torch(y.to_float(), like=x, copy=False)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        cache, rounding, bwd = ctx.saved
        dx, dgamma, dbeta = fixed.layer_norm_backward(to_numpy(g, np.float64), cache, rounding=rounding, seed=bwd)
        return (to_torch(dx.to_float(), like=g, copy=False), to_torch(dgamma.to_float(), like=g, copy=False), to_torch(dbeta.to_float(), like=g, copy=False), None, None, None, None)


class IntLayerNorm(_IntModule):
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

    def __init__(self, normalized_shape: int, eps: float = 1e-5, *, bits: int = 16, rounding: str = "stochastic", seed: int = 0, device: Any = None, dtype: Any = None):
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
            raise ValueError("layer: IntLayerNorm needs one normalized axis and elementwise_affine with bias")
        out = cls(layer.normalized_shape[0], layer.eps, bits=bits, device=layer.weight.device, dtype=layer.weight.dtype, **kw)
        out.load_state_dict(layer.state_dict())
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LayerNormFn.apply(x, self.weight, self.bias, self.bits, self.eps, self.rounding, self.next_seed())

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, {self._int_repr()}"


class _EmbeddingFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, ids: torch.Tensor, table: torch.Tensor, bits: int, rounding: Any, seed: int) -> torch.Tensor:  # type: ignore[override]
        fwd, bwd = _split_seed(seed)
        tq = fixed.to_fixed(to_numpy(table, np.float64), bits, rounding, fwd, stream=_W)
        ids_np = to_numpy(ids).astype(np.int64)
        y = fixed.embedding(tq, ids_np)
        ctx.saved = (ids_np, table.shape[0], bits, rounding, bwd)
        return to_torch(y.to_float(), like=table, copy=False)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        ids_np, v, bits, rounding, bwd = ctx.saved
        dt = fixed.embedding_backward(to_numpy(g, np.float64), ids_np, v, bits, rounding=rounding, seed=bwd)
        return None, to_torch(dt.to_float(), like=g, copy=False), None, None, None


class IntEmbedding(_IntModule):
    """Embedding lookup of a ``bits``-bit table; the gradient is an integer scatter-add.

    Examples
    --------
    >>> import torch
    >>> from sekron.torch import IntEmbedding
    >>> emb = IntEmbedding(10, 4, bits=8)
    >>> emb(torch.tensor([[1, 2]])).shape
    torch.Size([1, 2, 4])
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, *, bits: int = 8, rounding: str = "stochastic", seed: int = 0, device: Any = None, dtype: Any = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.weight = nn.Parameter(torch.randn(num_embeddings, embedding_dim, device=device, dtype=dtype))
        self._init_int(bits, rounding, seed)

    @classmethod
    def from_embedding(cls, layer: nn.Embedding, bits: int = 8, **kw: Any) -> IntEmbedding:
        """An integer copy of ``layer`` (no ``max_norm``, not sparse)."""
        if layer.max_norm is not None or layer.sparse:
            raise ValueError("layer: IntEmbedding needs max_norm=None and sparse=False")
        out = cls(layer.num_embeddings, layer.embedding_dim, bits=bits, device=layer.weight.device, dtype=layer.weight.dtype, **kw)
        out.load_state_dict(layer.state_dict())
        return out

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return _EmbeddingFn.apply(ids, self.weight, self.bits, self.rounding, self.next_seed())

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self._int_repr()}"


def _integer_twin(mod: nn.Module, bits: int, kw: dict[str, Any]) -> nn.Module | None:
    t = type(mod)
    from .int_sekron import IntSeKronConv2d, IntSeKronLinear
    from .layers import SeKronConv2d, SeKronLinear

    if t is SeKronLinear:
        return IntSeKronLinear.from_sekron(mod, bits, **kw)  # type: ignore[arg-type]
    if t is SeKronConv2d:
        return IntSeKronConv2d.from_sekron(mod, bits, **kw)  # type: ignore[arg-type]
    if t is nn.Linear:
        return IntLinear.from_linear(mod, bits, **kw)  # type: ignore[arg-type]
    if t is nn.Conv2d and mod.groups == 1 and mod.padding_mode == "zeros" and not isinstance(mod.padding, str):  # type: ignore[union-attr]
        return IntConv2d.from_conv(mod, bits, **kw)  # type: ignore[arg-type]
    if t is nn.LayerNorm and len(mod.normalized_shape) == 1 and mod.weight is not None and mod.bias is not None:  # type: ignore[arg-type,union-attr]
        return IntLayerNorm.from_layer_norm(mod, bits, **kw)  # type: ignore[arg-type]
    if t is nn.Embedding and mod.max_norm is None and not mod.sparse:  # type: ignore[union-attr]
        return IntEmbedding.from_embedding(mod, bits, **kw)  # type: ignore[arg-type]
    return None


def integerize(
    model: nn.Module,
    bits: int = 8,
    *,
    rounding: str = "stochastic",
    seed: int = 0,
    norm_bits: int | None = 16,
    inplace: bool = False,
) -> nn.Module:
    """Replace ``nn.Linear``, ``nn.Conv2d``, ``nn.LayerNorm``, ``nn.Embedding`` and SeKron layers by integer layers.

    Parameters
    ----------
    model : nn.Module
    bits : int in 2..16, default 8
        Bit-width of the linear, convolution and embedding operands and gradients.
    rounding : {"stochastic", "nearest"}, default "stochastic"
    seed : int, default 0
        Base key; layer i gets ``seed + i`` so layers draw independent bits.
    norm_bits : int or None, default 16
        Bit-width of the layer norms (None: ``bits``); normalization is the most
        precision-hungry layer.
    inplace : bool, default False
        Modify ``model``; by default a deep copy is converted.

    Returns
    -------
    nn.Module
        ``SeKronLinear`` / ``SeKronConv2d`` become ``IntSeKronLinear`` /
        ``IntSeKronConv2d`` (every stage an integer product). Other layers (activations,
        softmax, ``KroneckerEmbedding``, grouped convolutions, layers with ``max_norm`` or
        string padding) are left in float.

    Raises
    ------
    ValueError
        If ``bits`` is outside 2..16 (``TypeError`` if not an int).

    Examples
    --------
    >>> import torch
    >>> from sekron.torch import integerize
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> [type(m).__name__ for m in integerize(net, bits=8)]
    ['IntLinear', 'ReLU', 'IntLinear']
    """
    b = check_bits(bits)
    nb = b if norm_bits is None else check_bits(norm_bits, "norm_bits")
    target = model if inplace else copy.deepcopy(model)
    swaps = []
    for i, (name, mod) in enumerate(target.named_modules()):
        if not name:
            continue
        kw: dict[str, Any] = {"rounding": rounding, "seed": int(seed) + i}
        twin = _integer_twin(mod, nb if type(mod) is nn.LayerNorm else b, kw)
        if twin is not None:
            twin.train(mod.training)
            swaps.append((name, twin))
    for name, twin in swaps:
        parent_name, _, attr = name.rpartition(".")
        parent = target.get_submodule(parent_name) if parent_name else target
        setattr(parent, attr, twin)
    return target

