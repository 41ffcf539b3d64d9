"""Integer execution of SeKron layers: every stage's product runs on the integer engine.

A SeKron linear layer is a short sequence of small GEMMs and a SeKron convolution is
the core's conv plan (a few grouped convolutions); here each of those products maps its
two operands to ``bits``-bit fixed point (one per-tensor exponent each) and runs exactly
in :mod:`sekron.fixed`, forward and backward, while the factors stay float master
parameters (as :class:`sekron.torch.IntLinear` does for a dense weight).

Stage ``s`` of call ``t`` draws its stochastic rounding from ``stage_seed(seed_t, s)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input, conv2d_weight

from .. import fixed
from ..ops import conv2d_plan, execute_plan
from ..structure import Structure
from ._conv import TorchBackend
from .integer import (
    _W,
    _X,
    _bound,
    _int_gemm,
    _IntModule,
    _quantize,
    _scaled,
    _split_seed,
)
from .layers import SeKronConv2d, SeKronLinear

__all__ = ["IntSeKronLinear", "IntSeKronConv2d", "IntTorchBackend", "int_bmm", "stage_seed"]

_MASK = (1 << 62) - 1


def stage_seed(seed: int, stage: int) -> int:
    """The key of stage ``stage`` of a call keyed ``seed`` (62 bits)."""
    return (seed * 0xD6E8FEB86659FD93 + stage * 0x9E3779B97F4A7C15 + 1) & _MASK


def _slice(t: fixed.FixedTensor, i: int) -> fixed.FixedTensor:
    return fixed.FixedTensor._trusted(np.ascontiguousarray(t.mantissa[i]), t.exponent, t.bits)


class _BmmFn(torch.autograd.Function):
    """``a @ b`` for ``a`` (P, M, K), ``b`` (P, K, N): slice p is ``fixed.matmul`` of slices."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor, bits: int, rounding: Any, seed: int) -> torch.Tensor:  # type: ignore[override]
        fwd, bwd = _split_seed(seed)
        aq = _quantize(a, bits, rounding, fwd, _X)
        bq = _quantize(b, bits, rounding, fwd, _W)
        K = a.shape[2]
        e = int(aq.exponent) + int(bq.exponent)  # type: ignore[call-overload]
        accs = [_int_gemm(aq.mantissa[p], bq.mantissa[p], _bound(K, bits, bits)) for p in range(a.shape[0])]
        ctx.saved = (aq, bq, bits, rounding, bwd)
        if any(acc is None for acc in accs):
            outs = [fixed.matmul(_slice(aq, p), _slice(bq, p)).to_float() for p in range(a.shape[0])]
            return _scaled(np.stack(outs), 0, a)
        return _scaled(np.stack(accs), e, a)  # type: ignore[arg-type]

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        aq, bq, bits, rounding, bwd = ctx.saved
        gn = g.detach().contiguous().numpy()
        g1 = _quantize(g, bits, rounding, bwd, 1)
        g2 = _quantize(g, bits, rounding, bwd, 2)
        M, N = gn.shape[1], gn.shape[2]
        da = [_int_gemm(g1.mantissa[p], bq.mantissa[p].T, _bound(N, bits, bits)) for p in range(gn.shape[0])]
        db = [_int_gemm(aq.mantissa[p].T, g2.mantissa[p], _bound(M, bits, bits)) for p in range(gn.shape[0])]
        if any(x is None for x in da + db):
            pairs = [
                fixed.matmul_backward(_slice(aq, p), _slice(bq, p), _slice(g1, p), bits, rounding=rounding, seed=bwd)
                for p in range(gn.shape[0])
            ]
            return _scaled(np.stack([d.to_float() for d, _ in pairs]), 0, g), _scaled(np.stack([d.to_float() for _, d in pairs]), 0, g), None, None, None
        e1, e2 = int(g1.exponent), int(g2.exponent)  # type: ignore[call-overload]
        return (
            _scaled(np.stack(da), e1 + int(bq.exponent), g),  # type: ignore[arg-type, call-overload]
            _scaled(np.stack(db), int(aq.exponent) + e2, g),  # type: ignore[arg-type, call-overload]
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


def int_sekron_linear(x: torch.Tensor, factors: Sequence[torch.Tensor], structure: Structure, bits: int, rounding: Any, seed: int) -> torch.Tensor:
    """``x @ W.T`` right to left, every stage one integer GEMM (:func:`int_bmm`)."""
    S, ranks = structure.n_factors, structure.ranks
    m = [s[0] for s in structure.shapes]
    n = [s[1] for s in structure.shapes]
    B = x.shape[0]
    P_last = math.prod(ranks)
    F_last = factors[-1].reshape(P_last * m[-1], n[-1])
    Z = int_bmm(x.reshape(B * math.prod(n[:-1]), n[-1]), F_last.t(), bits, rounding, stage_seed(seed, 0))
    for stage, k in enumerate(range(S - 2, -1, -1), start=1):
        P, R, mk, nk = math.prod(ranks[:k]), ranks[k], m[k], n[k]
        G, T = B * math.prod(n[:k]), math.prod(m[k + 1 :])
        A = factors[k].reshape(P, R, mk, nk).permute(0, 2, 3, 1).reshape(P, mk, nk * R)
        Zp = Z.reshape(G, nk, P, R, T).permute(2, 1, 3, 0, 4).reshape(P, nk * R, G * T)
        Z = int_bmm(A, Zp, bits, rounding, stage_seed(seed, stage)).reshape(P, mk, G, T).permute(2, 0, 1, 3)
    return Z.reshape(B, math.prod(m))


class IntSeKronLinear(_IntModule, SeKronLinear):
    """:class:`SeKronLinear` whose stages are integer GEMMs (float master factors).

    Parameters are those of :class:`SeKronLinear` plus ``bits``, ``rounding`` and
    ``seed`` as in :class:`sekron.torch.IntLinear`. The bias is added in float.

    Notes
    -----
    Right to left, stage 0 is ``X (B N_<S, n_S) @ A_S^T`` and stage ``s`` contracts factor
    ``S - s`` as one (batched over the prefix ranks) GEMM, as :class:`SeKronLinear`
    does in float; each stage maps its two operands with per-tensor exponents.

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

    def __init__(self, structure: Structure, bias: bool = True, *, bits: int = 8, rounding: str = "stochastic", seed: int = 0, device: Any = None, dtype: Any = None):
        SeKronLinear.__init__(self, structure, bias, path="structured", device=device, dtype=dtype)
        self._init_int(bits, rounding, seed)

    @classmethod
    def from_sekron(cls, layer: SeKronLinear, bits: int = 8, **kw: Any) -> IntSeKronLinear:
        """An integer copy of ``layer`` (factors and bias copied)."""
        w = layer.factors[0]
        out = cls(layer.structure, layer.bias is not None, bits=bits, device=w.device, dtype=w.dtype, **kw)
        out.load_state_dict(layer.state_dict())
        out.fit_relative_error = layer.fit_relative_error
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = int_sekron_linear(x.reshape(-1, self.in_features), list(self.factors), self.structure, self.bits, self.rounding, self.next_seed())
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"{SeKronLinear.extra_repr(self)}, {self._int_repr()}"


_F64_EXACT = 1 << 53


_F32_EXACT = 1 << 24


def _exact_float(bound: int) -> torch.dtype:
    """float32 while every partial sum (an integer <= ``bound``) is exact in it, else float64."""
    return torch.float32 if bound <= _F32_EXACT else torch.float64


def _tof(q: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(q.astype(np.float32 if dtype == torch.float32 else np.float64))


class _GroupConvFn(torch.autograd.Function):
    """Grouped 'valid' convolution of the mapped operands, exact, as ``fixed.conv2d`` per group.

    The mantissas run through torch's float64 convolution (im2col and GEMM, no
    transform-based algorithm for float64), exact while every partial sum is an integer
    below ``2**53``; past that bound the engine runs group by group. Backward maps the
    gradient twice (streams 1 and 2 of the backward key, as
    :func:`sekron.fixed.conv2d_backward`) with one exponent over all groups.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, bits: int, rounding: Any, seed: int, geo: tuple[Any, Any, int]) -> torch.Tensor:  # type: ignore[override]
        fwd, bwd = _split_seed(seed)
        stride, dilation, groups = geo
        xq = _quantize(x, bits, rounding, fwd, _X)
        wq = _quantize(w, bits, rounding, fwd, _W)
        ctx.saved = (xq, wq, bits, rounding, bwd, geo)
        k = w.shape[1] * w.shape[2] * w.shape[3]
        bound = _bound(k, bits, bits)
        if bound <= _F64_EXACT:
            ft = _exact_float(bound)
            with torch.backends.nnpack.flags(enabled=False):  # no Winograd/FFT: exact sums only
                y = F.conv2d(_tof(xq.mantissa, ft), _tof(wq.mantissa, ft), stride=stride, dilation=dilation, groups=groups)
            return _scaled(y.numpy(), int(xq.exponent) + int(wq.exponent), x)  # type: ignore[call-overload]
        xs, ws = _group_slices(xq, wq, groups)
        ys = [fixed.conv2d(xs[i], ws[i], stride, 0, dilation).to_float() for i in range(groups)]
        return _scaled(np.concatenate(ys, axis=1), 0, x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        xq, wq, bits, rounding, bwd, (stride, dilation, groups) = ctx.saved
        gn = np.ascontiguousarray(g.detach().numpy())
        g1 = _quantize(g, bits, rounding, bwd, 1)
        g2 = _quantize(g, bits, rounding, bwd, 2)
        N, Fo, Ho, Wo = gn.shape
        kh, kw = wq.shape[2], wq.shape[3]
        exact = max(_bound((Fo // groups) * kh * kw, bits, bits), _bound(N * Ho * Wo, bits, bits)) <= _F64_EXACT
        if exact:
            with torch.backends.nnpack.flags(enabled=False):
                ft = _exact_float(_bound((Fo // groups) * kh * kw, bits, bits))
                dx = conv2d_input(tuple(xq.shape), _tof(wq.mantissa, ft), _tof(g1.mantissa, ft), stride=stride, dilation=dilation, groups=groups)
                # dw sums over images: chunks small enough for float32, summed in float64
                per_image = _bound(Ho * Wo, bits, bits)
                chunk = max(1, _F32_EXACT // per_image) if per_image <= _F32_EXACT else N
                ft = torch.float32 if per_image * min(chunk, N) <= _F32_EXACT else torch.float64
                dw = torch.zeros(tuple(wq.shape), dtype=torch.float64)
                for i in range(0, N, chunk):
                    xs_, gs_ = xq.mantissa[i : i + chunk], g2.mantissa[i : i + chunk]
                    dw += conv2d_weight(_tof(xs_, ft), tuple(wq.shape), _tof(gs_, ft), stride=stride, dilation=dilation, groups=groups).double()
            dx = dx.double()
            return (
                _scaled(dx.numpy(), int(g1.exponent) + int(wq.exponent), g),  # type: ignore[call-overload]
                _scaled(dw.numpy(), int(g2.exponent) + int(xq.exponent), g),  # type: ignore[call-overload]
                None, None, None, None,
            )
        xs, ws = _group_slices(xq, wq, groups)
        g1s, g2s = (_channel_slices(t, groups) for t in (g1, g2))
        dxs = [fixed.conv2d_backward(xs[i], ws[i], g1s[i], stride, 0, dilation, bits, rounding=rounding, seed=bwd)[0].to_float() for i in range(groups)]
        dws = [fixed.conv2d_backward(xs[i], ws[i], g2s[i], stride, 0, dilation, bits, rounding=rounding, seed=bwd)[1].to_float() for i in range(groups)]
        return _scaled(np.concatenate(dxs, axis=1), 0, g), _scaled(np.concatenate(dws, axis=0), 0, g), None, None, None, None


def _channel_slices(t: fixed.FixedTensor, groups: int) -> list[fixed.FixedTensor]:
    c = t.shape[1] // groups
    return [fixed.FixedTensor._trusted(np.ascontiguousarray(t.mantissa[:, i * c : (i + 1) * c]), t.exponent, t.bits) for i in range(groups)]


def _group_slices(xq: fixed.FixedTensor, wq: fixed.FixedTensor, groups: int) -> tuple[list[fixed.FixedTensor], list[fixed.FixedTensor]]:
    fo = wq.shape[0] // groups
    ws = [fixed.FixedTensor._trusted(np.ascontiguousarray(wq.mantissa[i * fo : (i + 1) * fo]), wq.exponent, wq.bits) for i in range(groups)]
    return _channel_slices(xq, groups), ws


class IntTorchBackend(TorchBackend):
    """:class:`TorchBackend` whose ``conv2d`` is an integer (grouped) convolution.

    Each call of ``conv2d`` is one stage: it maps its input and weight to ``bits`` bits
    (per-tensor exponents) and runs :func:`sekron.fixed.conv2d` per group, forward and
    backward. ``seed`` keys the call; stage ``s`` uses ``stage_seed(seed, s)``.
    """

    name = "torch-int"

    def __init__(self, bits: int, rounding: Any, seed: int):
        self.bits, self.rounding, self.seed, self.stage = bits, rounding, seed, 0

    def conv2d(self, x: torch.Tensor, weight: torch.Tensor, stride: Sequence[int] = (1, 1), dilation: Sequence[int] = (1, 1), groups: int = 1) -> torch.Tensor:
        s = stage_seed(self.seed, self.stage)
        self.stage += 1
        geo = (tuple(int(v) for v in stride), tuple(int(v) for v in dilation), int(groups))
        return _GroupConvFn.apply(x, weight, self.bits, self.rounding, s, geo)


class IntSeKronConv2d(_IntModule, SeKronConv2d):
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

    def __init__(self, structure: Structure, stride: Any = 1, padding: Any = 0, dilation: Any = 1, bias: bool = True, *, path: str = "auto", bits: int = 8, rounding: str = "stochastic", seed: int = 0, device: Any = None, dtype: Any = None):
        SeKronConv2d.__init__(self, structure, stride, padding, dilation, bias, path=path, device=device, dtype=dtype)
        self._init_int(bits, rounding, seed)

    @classmethod
    def from_sekron(cls, layer: SeKronConv2d, bits: int = 8, **kw: Any) -> IntSeKronConv2d:
        """An integer copy of ``layer``."""
        w = layer.factors[0]
        kw.setdefault("path", layer.path)
        out = cls(layer.structure, layer.stride, layer.padding, layer.dilation, layer.bias is not None, bits=bits, device=w.device, dtype=w.dtype, **kw)
        out.load_state_dict(layer.state_dict())
        out.fit_relative_error = layer.fit_relative_error
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom, left, right = self._pads
        xp = F.pad(x, (left, right, top, bottom)) if any(self._pads) else x
        backend = IntTorchBackend(self.bits, self.rounding, self.next_seed())
        if not self.uses_structured_path((int(x.shape[-2]), int(x.shape[-1]))):
            # one integer stage: the kernel rebuilt in float from the master factors
            y = backend.conv2d(xp, self.dense_weight(), self.stride, self.dilation, 1)
            return y if self.bias is None else y + self.bias[:, None, None]
        plan = conv2d_plan(self.structure, (int(xp.shape[-2]), int(xp.shape[-1])), self.stride, 0, self.dilation)
        y = execute_plan(plan, xp, list(self.factors), backend)
        return y if self.bias is None else y + self.bias[:, None, None]

    def extra_repr(self) -> str:
        return f"{SeKronConv2d.extra_repr(self)}, {self._int_repr()}"
