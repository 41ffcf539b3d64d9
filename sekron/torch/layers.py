"""Drop-in torch layers whose weight is a SeKron decomposition.

Each layer holds one ``nn.Parameter`` per SeKron factor (factor k has shape
``(R_1..R_{min(k,S-1)}, *a^(k))``, as in :class:`sekron.SeKronTensor`) and computes
without rebuilding the dense weight whenever the structured path needs fewer
multiply-adds; ``to_dense()`` returns the plain torch layer it stands for.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._validation import as_pair, check_has_data
from ..errors import ArgumentError, ArgumentTypeError, ShapeError
from ..ops import STAGED_ENGINE, PathCost, cost_table, fit_path_cost, time_paths
from ..selection import Selection, select
from ..structure import Structure
from ..tensor import SeKronTensor
from ._contract import dense_from_factors, sekron_linear
from ._conv import constant_at_trace, conv_cost, same_padding, sekron_conv2d
from ._convert import structure_from_state, structure_state, to_numpy, to_torch

__all__ = ["KroneckerEmbedding", "SeKronConv2d", "SeKronLinear"]

_PATHS = ("auto", "structured", "dense")

#: ``SeKronConv2d(path="auto")`` stages only when it saves this factor of multiply-adds
AUTO_MIN_MAC_RATIO = 2.0
#: ... and only on outputs of at least this many pixels (measured on a 2-core CPU:
#: at 8×8 and 4×4 a 4× MAC reduction ran 0.7-1.05× the dense speed, at 14×14 1.9-12×)
AUTO_MIN_PIXELS = 100


#: Bytes of input the larger calibration batch fills (timings at 1-16 images extrapolated
#: badly to thousands; this keeps timing a new geometry under about a second)
_CALIBRATION_BYTES = 1 << 24


def _linear_key(structure: Structure, dtype: Any, device: Any) -> tuple[Any, ...]:
    return ("linear", "torch", structure.shapes, structure.ranks, str(dtype), str(device))


def _conv_key(
    structure: Structure,
    chw: tuple[int, int, int],
    stride: Any,
    pads: Any,
    dilation: Any,
    dtype: Any,
    device: Any,
) -> tuple[Any, ...]:
    geom = (chw, stride, pads, dilation)  # tuples of ints (the layer's normalized settings)
    # the executor's version: costs timed on an earlier staged executor are not reused
    key = ("conv2d", "torch", structure.shapes, structure.ranks, geom, str(dtype), str(device))
    return (*key, STAGED_ENGINE)


def _mac_rule_conv(
    structure: Structure, in_hw: tuple[int, int], stride: Any, pads: Any, dilation: Any
) -> bool:
    """The multiply-add rule (no measurement): what ``uses_structured_path(in_hw)`` says."""
    c = conv_cost(structure, in_hw, stride, pads, dilation)
    top, bottom, left, right = pads
    kh, kw = structure.shape[2:]
    ho = (in_hw[0] + top + bottom - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (in_hw[1] + left + right - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return c["sekron"] * AUTO_MIN_MAC_RATIO <= c["dense"] and ho * wo >= AUTO_MIN_PIXELS


def _mac_rule_linear(structure: Structure) -> bool:
    c = structure.macs_matmul(1)
    return bool(c["sekron"] < c["dense"])


@constant_at_trace
def _traced_conv_choice(
    structure: Structure,
    chw: tuple[int, int, int],
    stride: Any,
    pads: Any,
    dilation: Any,
    n: int,
    dtype: Any,
    device: Any,
) -> bool:
    """At trace time (compile, export): the table's choice if measured, else the MAC rule."""
    key = (
        *_conv_key(structure, chw, stride, pads, dilation, dtype, device),
        torch.get_num_threads(),
    )
    cost = cost_table().get(key)
    if cost is None:
        return _mac_rule_conv(structure, chw[1:], stride, pads, dilation)
    return cost.staged_wins(n)


@constant_at_trace
def _traced_linear_choice(structure: Structure, n: int, dtype: Any, device: Any) -> bool:
    """At trace time: the table's choice if measured, else the MAC rule."""
    key = (*_linear_key(structure, dtype, device), torch.get_num_threads())
    cost = cost_table().get(key)
    return _mac_rule_linear(structure) if cost is None else cost.staged_wins(n)


def _timed(run: Any, device: Any) -> Any:
    """``run`` under ``no_grad``, waiting for the device (CUDA runs asynchronously)."""

    def timed(path: str, n: int) -> None:
        with torch.no_grad():
            run(path, n)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    return timed


def _as_structure(structure: Any, ndim: int, name: str = "structure") -> Structure:
    if not isinstance(structure, Structure):
        raise ArgumentTypeError(
            f"{name}: expected a sekron.Structure, got {type(structure).__name__}"
        )
    if structure.ndim != ndim:
        raise ShapeError(f"{name}: expected {ndim}-d factor shapes, got {structure}")
    return structure


class _SeKronModule(nn.Module):
    """Shared machinery: factor parameters, structure bookkeeping, state round trips."""

    structure: Structure
    fit_relative_error: float | None

    def _init_factors(self, structure: Structure, device: Any, dtype: Any) -> None:
        self.structure = structure
        self.fit_relative_error = None
        self.factors = nn.ParameterList(
            [
                nn.Parameter(torch.empty(s, device=device, dtype=dtype))
                for s in structure.factor_shapes
            ]
        )

    def _reset_factors(self, fan_in: int) -> None:
        # Var(W) = P_{S-1} · Π_k σ_k² matches kaiming-uniform(a=√5): 1 / (3 fan_in)
        target = 1.0 / (3.0 * fan_in)
        S = self.structure.n_factors
        std = (target / math.prod(self.structure.ranks)) ** (1.0 / (2 * S))
        with torch.no_grad():
            for f in self.factors:
                f.normal_(0.0, std)

    def _load_fit(self, fit: SeKronTensor, selection: Selection | None = None) -> None:
        with torch.no_grad():
            for p, a in zip(self.factors, fit.factors, strict=True):
                p.copy_(to_torch(a, like=p))
        rel = fit.relative_error_bound
        self.fit_relative_error = None if rel is None else float(rel)
        self.selection = selection

    def _params(self) -> tuple[nn.Parameter, ...]:
        """The factor parameters in order, read past ``ParameterList``'s per-item cost.

        Iterating an ``nn.ParameterList`` of two costs 6.7 us (its ``__getitem__`` per
        item); its registry dict 0.4 us. The hot paths of a small inference call (the
        path choice and the weight cache) read it a few times per call.
        """
        factors = self._modules["factors"]  # as ``self.factors``, without Module.__getattr__
        return tuple(factors._parameters.values())  # type: ignore[union-attr, arg-type]

    def _training_step(self) -> bool:
        """Whether gradients are recorded for the factors (eager, not traced).

        The cost table times inference, so such calls keep the multiply-add rule.
        """
        return (
            not torch.compiler.is_compiling()
            and torch.is_grad_enabled()
            and any(p.requires_grad for p in self._params())
        )

    def dense_weight(self) -> torch.Tensor:
        """The dense weight built from the factors (differentiable)."""
        return dense_from_factors(list(self.factors), self.structure)

    def _forward_weight(self) -> torch.Tensor:
        """:meth:`dense_weight` for the dense path; cached while no gradient is recorded.

        Under ``torch.no_grad()`` (inference) the weight is rebuilt only when a factor
        changed (keyed by each parameter's version counter and storage), which saved
        0.3-0.6 ms per call of a small convolution.
        """
        params = self._params()
        if torch.compiler.is_compiling() or (
            torch.is_grad_enabled() and any(p.requires_grad for p in params)
        ):
            return self.dense_weight()  # traced: the graph builds W (no Python-side cache)
        return self._cached_weight(params)

    def _cached_weight(self, params: tuple[nn.Parameter, ...]) -> torch.Tensor:
        """The dense weight, rebuilt only when a factor changed (eager inference only)."""
        # a new dtype or device is a new storage: version and address identify the values
        key = [(p._version, p.data_ptr()) for p in params]
        cached = self.__dict__.get("_weight_cache")
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, self.dense_weight())
            self.__dict__["_weight_cache"] = cached
        return cached[1]

    def sekron_tensor(self) -> SeKronTensor:
        """The factors as a (numpy) :class:`sekron.SeKronTensor`."""
        return SeKronTensor([to_numpy(f) for f in self.factors])

    @property
    def n_params(self) -> int:
        """Parameters of the layer (factors and bias)."""
        return sum(p.numel() for p in self.parameters())

    def get_extra_state(self) -> dict[str, Any]:
        return {"structure": structure_state(self.structure)}

    def set_extra_state(self, state: Any) -> None:
        got = structure_from_state(state["structure"])
        if got != self.structure:
            raise ShapeError(
                f"state_dict: expected a layer of structure {self.structure}, got one of structure {got}"
            )


def _check_path(path: Any) -> str:
    if path not in _PATHS:
        raise ArgumentError(f"path: expected one of {_PATHS}, got {path!r}")
    return str(path)


class SeKronLinear(_SeKronModule):
    r"""A linear layer ``y = x W^T + b`` with ``W`` a SeKron decomposition.

    Parameters
    ----------
    structure : Structure
        2-D factor shapes ``(m_k, n_k)``: ``W`` has shape ``(out_features, in_features)
        = (prod m_k, prod n_k)``, as ``nn.Linear.weight``.
    bias : bool, default True
    path : {"auto", "structured", "dense"}, default "auto"
        ``"auto"`` contracts level by level when this machine's cost table predicts that
        faster for the batch than the dense product (:meth:`uses_structured_path`), and
        otherwise builds ``W``.
    device, dtype : optional
        As for ``nn.Linear``.

    Attributes
    ----------
    factors : nn.ParameterList
        One parameter per factor, shapes ``structure.factor_shapes``.
    bias : nn.Parameter or None, shape (out_features,)
    fit_relative_error : float or None
        The certified relative error of the fit (set by :meth:`from_linear`).

    Notes
    -----
    Right to left, level k maps ``Z[b, j_<k, j_k, r_<k, r_k, i_>k]`` to
    ``Σ_{r_k, j_k} A_k[r_<k, r_k, i_k, j_k] Z[...]`` (an einsum that torch runs as a
    batched GEMM over the prefix ranks); left to right is the mirror image. The cheaper
    order is used. Random initialization gives ``Var(W) = 1/(3 in_features)``, as the
    default ``nn.Linear`` initialization.

    Examples
    --------
    >>> import torch, sekron as sk
    >>> from sekron.torch import SeKronLinear
    >>> _ = torch.manual_seed(0)
    >>> layer = SeKronLinear(sk.Structure([(4, 8), (4, 8)], ranks=2))
    >>> layer(torch.randn(3, 64)).shape
    torch.Size([3, 16])
    >>> dense = layer.to_dense()
    >>> x = torch.randn(5, 64)
    >>> bool(torch.allclose(layer(x), dense(x), atol=1e-5))
    True
    """

    def __init__(
        self,
        structure: Structure,
        bias: bool = True,
        *,
        path: str = "auto",
        device: Any = None,
        dtype: Any = None,
    ):
        super().__init__()
        st = _as_structure(structure, 2)
        self.out_features, self.in_features = st.shape
        self.path = _check_path(path)
        self._init_factors(st, device, dtype)
        self.bias = (
            nn.Parameter(torch.empty(self.out_features, device=device, dtype=dtype))
            if bias
            else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random factors with the variance of ``nn.Linear``'s default weight."""
        self._reset_factors(self.in_features)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            with torch.no_grad():
                self.bias.uniform_(-bound, bound)

    def macs(self, n_rows: int = 1) -> dict[str, int]:
        """Multiply-adds of a forward pass over ``n_rows`` rows: ``"sekron"`` and ``"dense"``."""
        c = self.structure.macs_matmul(1)
        return {"sekron": c["sekron"] * n_rows, "dense": c["dense"] * n_rows}

    def uses_structured_path(self, n_rows: int | None = None) -> bool:
        """Whether :meth:`forward` contracts the factors instead of building ``W``.

        With ``path="auto"``: for a batch of ``n_rows`` rows, the choice of this
        machine's cost table (:class:`sekron.ops.CostTable`; both paths are timed once
        per structure, dtype, device and thread count, and the structured path runs only
        when predicted clearly faster). Without ``n_rows``, while gradients are recorded
        for the factors, or while tracing a geometry not yet measured: whether it needs
        fewer multiply-adds (``Structure.macs_matmul``).
        """
        if self.path != "auto":
            return self.path == "structured"
        w = self._params()[0]
        if n_rows is None or self._training_step():
            return _mac_rule_linear(self.structure)
        if torch.compiler.is_compiling():
            return bool(_traced_linear_choice(self.structure, int(n_rows), w.dtype, w.device))
        table, threads = cost_table(), torch.get_num_threads()
        memo = self.__dict__.setdefault("_path_memo", {})
        small = (int(n_rows), w.dtype, w.device, threads, id(table), table.generation)
        hit = memo.get(small)
        if hit is None:
            key = (*_linear_key(self.structure, w.dtype, w.device), threads)
            run = self._runner()
            hit = table.staged_wins(
                key, int(n_rows), lambda: self._measure(run), lambda n: time_paths(run, n)
            )
            if len(memo) > 1024:
                memo.clear()
            memo[small] = hit
        return hit

    def _runner(self) -> Any:
        """``run(path, n)``: one structured or dense product of ``n`` zero rows.

        The inputs are made on first use, in the untimed warm-up.
        """
        w = self._params()[0]
        xs: dict[int, torch.Tensor] = {}
        factors = list(self._params())

        def run(path: str, n: int) -> None:
            x = xs.get(n)
            if x is None:
                x = xs[n] = torch.zeros(n, self.in_features, dtype=w.dtype, device=w.device)
            if path == "staged":
                sekron_linear(x, factors, self.structure)
            else:
                F.linear(x, self._forward_weight())

        return _timed(run, w.device)

    def _measure(self, run: Any = None) -> PathCost:
        """Time the structured and the dense product on this machine (two batch sizes)."""
        w = self._params()[0]
        big = int(min(1024, max(8, _CALIBRATION_BYTES // (self.in_features * w.element_size()))))
        return fit_path_cost(self._runner() if run is None else run, (1, big))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``x`` (last axis ``in_features``)."""
        if x.shape[-1] != self.in_features:
            raise ShapeError(
                f"x: expected a last axis of size {self.in_features}, got shape {tuple(x.shape)}"
            )
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.uses_structured_path(int(x2.shape[0])):
            y = sekron_linear(x2, list(self._params()), self.structure)
            if self.bias is not None:
                y = y + self.bias
        else:
            y = F.linear(x2, self._forward_weight(), self.bias)
        return y.reshape(*lead, self.out_features)

    @classmethod
    def from_linear(
        cls,
        layer: nn.Linear,
        structure: Any = None,
        *,
        ranks: Any = None,
        ratio: float | None = None,
        tol: float | None = None,
        n_factors: int = 2,
        max_candidates: int = 6,
        gram: Any = None,
        ridge: float = 1e-6,
        accept: Any = None,
        random_state: Any = 0,
    ) -> SeKronLinear:
        """Fit a pretrained ``nn.Linear`` with the core's NKP/SeKron fit.

        Parameters
        ----------
        layer : nn.Linear
        structure : Structure or sequence of 2-D factor shapes, optional
            The structure to fit (``ranks`` completes a list of shapes; None = exact).
        ratio : float >= 1, optional
            Choose the structure: the least certified error among the cheapest
            candidates with ``n_params <= weight size / ratio``.
        tol : float in [0, 1), optional
            Choose the structure: the fewest parameters with relative error ``<= tol``.
        n_factors : int, default 2
            S, for ``ratio`` and ``tol``.
        max_candidates : int, default 6
            How many structures to fit when choosing.
        gram : ndarray of shape (in_features, in_features), optional
            Gram matrix ``Σ x xᵀ`` of the layer's inputs (:func:`sekron.torch.calibrate`):
            fit and choose by the error on those inputs, ``‖(W − Ŵ) L‖_F`` with
            ``L Lᵀ = gram`` (DESIGN.md 2.8), instead of the weight error.
        ridge : float, default 1e-6
            With ``gram``: the core's ridge, relative to ``tr(gram) / n``.
        accept : callable, optional
            ``accept(structure) -> bool``: which candidate structures may be chosen
            (e.g. Kronecker-only or low-rank-only).
        random_state : int, Generator or None, default 0
            Seed of the randomized SVD.

        Returns
        -------
        SeKronLinear
            Same device and dtype as ``layer``; the bias is copied.

        Raises
        ------
        TypeError
            If ``layer`` is not an ``nn.Linear``.
        ValueError, ShapeError, RankError
            As :func:`sekron.sekron`; ``ratio < 1``; no structure meets the budget.

        Examples
        --------
        >>> import torch
        >>> from sekron.torch import SeKronLinear
        >>> _ = torch.manual_seed(0)
        >>> dense = torch.nn.Linear(32, 16)
        >>> layer = SeKronLinear.from_linear(dense, ratio=4)
        >>> layer.structure.n_params * 4 <= 32 * 16, 0 < layer.fit_relative_error < 1
        (True, True)
        """
        if not isinstance(layer, nn.Linear):
            raise ArgumentTypeError(f"layer: expected an nn.Linear, got {type(layer).__name__}")
        check_has_data(layer.weight, "layer.weight")
        W = to_numpy(layer.weight, np.float64)
        sel = select(
            W,
            structure=structure,
            ranks=ranks,
            ratio=ratio,
            tol=tol,
            n_factors=n_factors,
            cost=lambda st: st.macs_matmul(1)["sekron"],
            dense_cost=W.size,
            max_candidates=max_candidates,
            accept=accept,
            gram=gram,
            ridge=ridge,
            random_state=random_state,
        )
        w = layer.weight
        out = cls(sel.structure, bias=layer.bias is not None, device=w.device, dtype=w.dtype)
        out._load_fit(sel.fit, sel)
        if layer.bias is not None:
            with torch.no_grad():
                out.bias.copy_(layer.bias)  # type: ignore[union-attr]
        return out

    def to_dense(self) -> nn.Linear:
        """The equivalent ``nn.Linear`` (weight built from the factors, bias copied)."""
        w = self.factors[0]
        out = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=w.device,
            dtype=w.dtype,
        )
        with torch.no_grad():
            out.weight.copy_(self.dense_weight())
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out

    def extra_repr(self) -> str:
        """The module's settings for its printed form."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"structure={self.structure}, bias={self.bias is not None}, "
            f"compression={self.structure.compression_ratio:.2f}"
        )


class SeKronConv2d(_SeKronModule):
    r"""A 2-D convolution whose kernel ``(F, C, Kh, Kw)`` is a SeKron decomposition.

    Parameters
    ----------
    structure : Structure
        4-D factor shapes ``(F_k, C_k, Kh_k, Kw_k)``; the kernel is
        ``(out_channels, in_channels, Kh, Kw) = (prod F_k, prod C_k, prod Kh_k, prod Kw_k)``.
    stride, padding, dilation : int or pair, default 1, 0, 1
        As ``nn.Conv2d``; ``padding`` may also be ``"same"`` or ``"valid"``. Zero padding.
    bias : bool, default True
    path : {"auto", "structured", "dense"}, default "auto"
        ``"auto"`` runs the staged convolution when this machine's cost table predicts it
        faster than the dense one for the call's shape (:meth:`uses_structured_path`).
    device, dtype : optional

    Notes
    -----
    The staged convolution is the core's plan (:func:`sekron.ops.conv2d_plan`) run by
    :class:`sekron.torch.TorchBackend`: pad once, apply the innermost factor first, then
    every outer factor k on its channel axis with dilation ``d · prod_{j>k} K_j`` as a
    grouped convolution over the prefix ranks (DESIGN.md 2.6). Per output pixel it costs
    ``Σ_k P_k (prod_{j>k} F_j)(prod_{j<k} C_j) F_k C_k Kh_k Kw_k`` multiply-adds against
    ``F C Kh Kw``.

    Examples
    --------
    >>> import torch, sekron as sk
    >>> from sekron.torch import SeKronConv2d
    >>> _ = torch.manual_seed(0)
    >>> conv = SeKronConv2d(sk.Structure([(4, 4, 3, 1), (4, 4, 1, 3)], ranks=2), padding=1, stride=2)
    >>> x = torch.randn(2, 16, 9, 9)
    >>> conv(x).shape
    torch.Size([2, 16, 5, 5])
    >>> bool(torch.allclose(conv(x), conv.to_dense()(x), atol=1e-5))
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
        device: Any = None,
        dtype: Any = None,
    ):
        super().__init__()
        st = _as_structure(structure, 4)
        self.out_channels, self.in_channels, kh, kw = st.shape
        self.kernel_size = (kh, kw)
        self.stride = _pair(stride, "stride")
        self.dilation = _pair(dilation, "dilation")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ArgumentError(
                    f"padding: expected an int, a pair, 'same' or 'valid', got {padding!r}"
                )
            if padding == "same" and self.stride != (1, 1):
                raise ArgumentError("padding: 'same' needs stride 1, as in nn.Conv2d")
            self.padding: Any = padding
        else:
            self.padding = _pair(padding, "padding", minimum=0)
        self.path = _check_path(path)
        if self.padding == "same":
            self._pads = same_padding((kh, kw), self.dilation)
        elif self.padding == "valid":
            self._pads = (0, 0, 0, 0)
        else:
            self._pads = (self.padding[0], self.padding[0], self.padding[1], self.padding[1])
        self._init_factors(st, device, dtype)
        self.bias = (
            nn.Parameter(torch.empty(self.out_channels, device=device, dtype=dtype))
            if bias
            else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random factors with the variance of ``nn.Conv2d``'s default kernel."""
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        self._reset_factors(fan_in)
        if self.bias is not None:
            bound = 1.0 / math.sqrt(fan_in)
            with torch.no_grad():
                self.bias.uniform_(-bound, bound)

    def macs(self, in_hw: tuple[int, int]) -> dict[str, int]:
        """Multiply-adds per image of size ``in_hw``: ``"sekron"`` (staged) and ``"dense"``."""
        return conv_cost(self.structure, in_hw, self.stride, self._pads, self.dilation)

    def uses_structured_path(self, in_hw: tuple[int, int], batch: int | None = None) -> bool:
        """Whether :meth:`forward` runs the staged convolution for images of size ``in_hw``.

        With ``path="auto"`` and a ``batch`` size: the choice of this machine's cost
        table (:class:`sekron.ops.CostTable`): both paths are timed once per geometry
        (structure, image size, stride, padding, dilation, dtype, device, thread count)
        at two batch sizes, and the staged one runs only when predicted at least 10 %
        faster for ``batch``. While ``torch.compile`` or ``torch.export`` traces, the
        choice is made at trace time from the static shapes (the table if it holds the
        geometry, else the rule below) and is not part of the graph.

        Without ``batch``, or while gradients are recorded for the factors (the table
        times inference, where the staged plan runs on the numpy executor): the
        multiply-add rule. Stage only when that saves at least
        half the multiply-adds (:data:`AUTO_MIN_MAC_RATIO`) on outputs of at least
        :data:`AUTO_MIN_PIXELS` pixels: on the CPU each stage is a small convolution (few
        channels, many groups) that torch runs far below its dense throughput, and on tiny
        images (8×8, 4×4) the dense convolution was faster even at a 4× MAC reduction
        (docs/torch.md).
        """
        if self.path != "auto":
            return self.path == "structured"
        hw = (int(in_hw[0]), int(in_hw[1]))
        if batch is None or self._training_step():
            return _mac_rule_conv(self.structure, hw, self.stride, self._pads, self.dilation)
        return self._table_choice(hw, int(batch), self._params()[0])

    def _table_choice(self, hw: tuple[int, int], batch: int, w: torch.Tensor) -> bool:
        """The cost table's choice for an inference call (memoised per call shape)."""
        if torch.compiler.is_compiling():
            chw = (self.in_channels, *hw)
            return bool(
                _traced_conv_choice(
                    self.structure,
                    chw,
                    self.stride,
                    self._pads,
                    self.dilation,
                    batch,
                    w.dtype,
                    w.device,
                )
            )
        table, threads = cost_table(), torch.get_num_threads()
        memo = self.__dict__.get("_path_memo")
        if memo is None:
            memo = self.__dict__["_path_memo"] = {}
        small = (hw, batch, w.dtype, w.device, threads, id(table), table.generation)
        hit = memo.get(small)
        if hit is None:
            chw = (self.in_channels, *hw)
            key = (
                *_conv_key(
                    self.structure, chw, self.stride, self._pads, self.dilation, w.dtype, w.device
                ),
                threads,
            )
            run = self._runner(hw)
            hit = table.staged_wins(
                key, batch, lambda: self._measure(hw, run), lambda n: time_paths(run, n)
            )
            if len(memo) > 1024:
                memo.clear()
            memo[small] = hit
        return hit

    def _runner(self, hw: tuple[int, int]) -> Any:
        """``run(path, n)``: one staged or dense convolution of ``n`` zero images of ``hw``.

        The inputs are made on first use, in the untimed warm-up.
        """
        w = self._params()[0]
        shape = (self.in_channels, *hw)
        xs: dict[int, torch.Tensor] = {}
        factors = list(self._params())

        def run(path: str, n: int) -> None:
            x = xs.get(n)
            if x is None:
                x = xs[n] = torch.zeros(n, *shape, dtype=w.dtype, device=w.device)
            if path == "staged":
                sekron_conv2d(x, factors, self.structure, self.stride, self._pads, self.dilation)
            else:
                F.conv2d(x, self._forward_weight(), None, self.stride, self.padding, self.dilation)

        return _timed(run, w.device)

    def _measure(self, hw: tuple[int, int], run: Any = None) -> PathCost:
        """Time the staged and the dense convolution on this machine (two batch sizes)."""
        w = self._params()[0]
        per_image = self.in_channels * (hw[0] + 2) * (hw[1] + 2) * w.element_size()
        big = int(min(256, max(4, _CALIBRATION_BYTES // per_image)))
        return fit_path_cost(self._runner(hw) if run is None else run, (1, big))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the layer to ``x`` of shape ``(n, in_channels, H, W)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(
                f"x: expected shape (n, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        params = self._params()
        # inference (no gradient for the factors, eager): the cost table decides, and the
        # dense path reuses its cached weight; the checks are made once here, since at
        # batch 1 a small convolution takes 30-100 us and each check costs 0.1-0.3 us
        inference = not torch.compiler.is_compiling() and not (
            torch.is_grad_enabled() and any(p.requires_grad for p in params)
        )
        if self.path == "auto" and inference:
            # the last call's shape and choice, checked first (one tuple comparison)
            table = cost_table()
            now = (x.shape, x.dtype, x.device, torch.get_num_threads(), id(table), table.generation)
            last = self.__dict__.get("_last_choice")
            if last is not None and last[0] == now:
                staged = last[1]
            else:
                staged = self._table_choice((x.shape[-2], x.shape[-1]), x.shape[0], params[0])
                # the table's state after the choice (timing a new geometry adds an entry)
                self.__dict__["_last_choice"] = ((*now[:-1], table.generation), staged)
        else:
            staged = self.uses_structured_path(
                (int(x.shape[-2]), int(x.shape[-1])), int(x.shape[0])
            )
        if staged:
            y = sekron_conv2d(
                x, list(params), self.structure, self.stride, self._pads, self.dilation
            )
            if self.bias is not None:
                y = y + self.bias[:, None, None]
            return y
        w = self._cached_weight(params) if inference else self._forward_weight()
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation)

    @classmethod
    def from_conv(
        cls,
        layer: nn.Conv2d,
        structure: Any = None,
        *,
        ranks: Any = None,
        ratio: float | None = None,
        tol: float | None = None,
        n_factors: int = 2,
        max_candidates: int = 6,
        in_hw: tuple[int, int] | None = None,
        gram: Any = None,
        ridge: float = 1e-6,
        accept: Any = None,
        random_state: Any = 0,
    ) -> SeKronConv2d:
        """Fit a pretrained ``nn.Conv2d`` (GKPD for two factors, SeKron otherwise).

        Parameters
        ----------
        layer : nn.Conv2d
            ``groups=1`` and ``padding_mode="zeros"``.
        structure, ranks, ratio, tol, n_factors, max_candidates, gram, ridge, accept, random_state
            As :meth:`SeKronLinear.from_linear`, with 4-D factor shapes; ``gram`` is the
            Gram matrix of the layer's im2col patches, ``(C·Kh·Kw)²`` in ``(C, Kh, Kw)``
            order (:func:`sekron.torch.calibrate` computes it).
        in_hw : pair of ints, optional
            Input size used to rank candidates by multiply-adds (default 32×32).

        Returns
        -------
        SeKronConv2d
            Stride, padding, dilation and bias kept.

        Raises
        ------
        TypeError
            If ``layer`` is not an ``nn.Conv2d``.
        ValueError
            For grouped convolutions or a padding mode other than zeros.

        Examples
        --------
        >>> import torch
        >>> from sekron.torch import SeKronConv2d
        >>> _ = torch.manual_seed(0)
        >>> dense = torch.nn.Conv2d(8, 8, 3, padding=1)
        >>> conv = SeKronConv2d.from_conv(dense, ratio=3)
        >>> conv.padding, conv.structure.n_params * 3 <= 8 * 8 * 9
        ((1, 1), True)
        """
        if not isinstance(layer, nn.Conv2d):
            raise ArgumentTypeError(f"layer: expected an nn.Conv2d, got {type(layer).__name__}")
        if layer.groups != 1:
            raise ArgumentError(f"layer: expected groups=1, got groups={layer.groups}")
        if layer.padding_mode != "zeros":
            raise ArgumentError(f"layer: expected padding_mode='zeros', got {layer.padding_mode!r}")
        check_has_data(layer.weight, "layer.weight")
        W = to_numpy(layer.weight, np.float64)
        hw = (32, 32) if in_hw is None else as_pair(in_hw, "in_hw")
        args = (layer.stride, layer.padding, layer.dilation)
        probe = cls(Structure([W.shape, (1, 1, 1, 1)], 1), *args, bias=False)
        sel = select(
            W,
            structure=structure,
            ranks=ranks,
            ratio=ratio,
            tol=tol,
            n_factors=n_factors,
            cost=lambda st: conv_cost(st, hw, probe.stride, probe._pads, probe.dilation)["sekron"],
            dense_cost=probe.macs(hw)["dense"],
            max_candidates=max_candidates,
            accept=accept,
            gram=gram,
            ridge=ridge,
            random_state=random_state,
        )
        w = layer.weight
        out = cls(sel.structure, *args, bias=layer.bias is not None, device=w.device, dtype=w.dtype)
        out._load_fit(sel.fit, sel)
        if layer.bias is not None:
            with torch.no_grad():
                out.bias.copy_(layer.bias)  # type: ignore[union-attr]
        return out

    def to_dense(self) -> nn.Conv2d:
        """The equivalent ``nn.Conv2d``."""
        w = self.factors[0]
        out = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=self.bias is not None,
            device=w.device,
            dtype=w.dtype,
        )
        with torch.no_grad():
            out.weight.copy_(self.dense_weight())
            if self.bias is not None:
                out.bias.copy_(self.bias)  # type: ignore[union-attr]
        return out

    def extra_repr(self) -> str:
        """The module's settings for its printed form."""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"structure={self.structure}, bias={self.bias is not None}, "
            f"compression={self.structure.compression_ratio:.2f}"
        )


def _pair(v: Any, name: str, minimum: int = 1) -> tuple[int, int]:
    return as_pair(v, name, minimum=minimum)  # the one parser: same mistake, same error


def _is_embedding_structure(st: Structure) -> bool:
    return st.n_factors == 2 and st.ndim == 2 and st.shapes[1][0] == 1


class KroneckerEmbedding(_SeKronModule):
    r"""An embedding table ``E = Σ_r A_r ⊗ B_r`` with ``A_r`` a lookup table and ``B_r`` a row.

    As in KroneckerBERT: ``A^E`` of shape ``(v, d/n)`` is indexed by the token, ``B^E`` of
    shape ``(1, n)`` is shared, and a token's embedding is ``Σ_r A_r[i] ⊗ B_r[0]`` (an
    outer product flattened in C order), O(R·d) per token.

    Parameters
    ----------
    structure : Structure
        Two 2-D factor shapes ``[(v, d/n), (1, n)]`` and a rank R.
    padding_idx : int, optional
        Kept for :meth:`to_dense`; the factors are shared, so the padding row is not
        frozen during training.
    device, dtype : optional

    Examples
    --------
    >>> import torch, sekron as sk
    >>> from sekron.torch import KroneckerEmbedding
    >>> _ = torch.manual_seed(0)
    >>> emb = KroneckerEmbedding(sk.Structure([(100, 8), (1, 4)], ranks=1))
    >>> ids = torch.tensor([[1, 2, 3]])
    >>> emb(ids).shape
    torch.Size([1, 3, 32])
    >>> bool(torch.equal(emb(ids), emb.to_dense()(ids)))
    True
    """

    def __init__(
        self,
        structure: Structure,
        padding_idx: int | None = None,
        *,
        device: Any = None,
        dtype: Any = None,
    ):
        super().__init__()
        st = _as_structure(structure, 2)
        if not _is_embedding_structure(st):
            raise ShapeError(f"structure: expected two factor shapes [(v, d/n), (1, n)], got {st}")
        self.num_embeddings, self.embedding_dim = st.shape
        self.padding_idx = padding_idx
        self._init_factors(st, device, dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random factors whose product has unit variance, as ``nn.Embedding``'s N(0, 1)."""
        R = self.structure.ranks[0]
        std = (1.0 / R) ** 0.25
        with torch.no_grad():
            for f in self.factors:
                f.normal_(0.0, std)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Look up the embeddings of ``ids`` from the Kronecker factors."""
        R = self.structure.ranks[0]
        (v, a2), (_, n) = self.structure.shapes
        table = self.factors[0].permute(1, 0, 2).reshape(v, R * a2)
        rows = F.embedding(ids, table).reshape(*ids.shape, R, a2)
        out = torch.einsum("...ri,rj->...ij", rows, self.factors[1].reshape(R, n))
        return out.reshape(*ids.shape, self.embedding_dim)

    @classmethod
    def from_embedding(
        cls,
        layer: nn.Embedding,
        structure: Any = None,
        *,
        ranks: Any = None,
        ratio: float | None = None,
        tol: float | None = None,
        max_candidates: int = 6,
        random_state: Any = 0,
    ) -> KroneckerEmbedding:
        """Fit a pretrained ``nn.Embedding`` with the NKP (shapes ``[(v, d/n), (1, n)]``).

        Parameters are as in :meth:`SeKronLinear.from_linear`; the candidates are the
        divisors ``n`` of ``d``.

        Examples
        --------
        >>> import torch
        >>> from sekron.torch import KroneckerEmbedding
        >>> _ = torch.manual_seed(0)
        >>> emb = KroneckerEmbedding.from_embedding(torch.nn.Embedding(50, 16), ratio=4)
        >>> emb.structure.n_params * 4 <= 50 * 16
        True
        """
        if not isinstance(layer, nn.Embedding):
            raise ArgumentTypeError(f"layer: expected an nn.Embedding, got {type(layer).__name__}")
        check_has_data(layer.weight, "layer.weight")
        W = to_numpy(layer.weight, np.float64)
        sel = select(
            W,
            structure=structure,
            ranks=ranks,
            ratio=ratio,
            tol=tol,
            n_factors=2,
            cost=lambda st: st.ranks[0] * W.shape[1],
            dense_cost=W.shape[1] + 1,
            accept=_is_embedding_structure,
            max_candidates=max_candidates,
            random_state=random_state,
        )
        w = layer.weight
        out = cls(sel.structure, padding_idx=layer.padding_idx, device=w.device, dtype=w.dtype)
        out._load_fit(sel.fit, sel)
        return out

    def to_dense(self) -> nn.Embedding:
        """The equivalent ``nn.Embedding``."""
        w = self.factors[0]
        out = nn.Embedding(
            self.num_embeddings,
            self.embedding_dim,
            padding_idx=self.padding_idx,
            device=w.device,
            dtype=w.dtype,
        )
        with torch.no_grad():
            out.weight.copy_(self.dense_weight())
        return out

    def extra_repr(self) -> str:
        """The module's settings for its printed form."""
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, structure={self.structure}, "
            f"compression={self.structure.compression_ratio:.2f}"
        )
