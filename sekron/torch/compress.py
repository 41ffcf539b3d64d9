"""Compressing a trained model: every eligible layer becomes its SeKron counterpart.

:func:`compress` walks a model, fits each eligible ``nn.Linear`` / ``nn.Conv2d`` (and,
if asked, ``nn.Embedding``) with the structure the core's enumeration and cost model
choose under the budget, swaps it for :class:`SeKronLinear` / :class:`SeKronConv2d` /
:class:`KroneckerEmbedding`, and reports what it did layer by layer.
"""

from __future__ import annotations

import copy
import fnmatch
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from .._validation import check_exactly_one, check_ratio
from ..selection import Selection, WeightReport, compress_weight
from .layers import KroneckerEmbedding, SeKronConv2d, SeKronLinear

__all__ = ["LayerReport", "CompressionReport", "compress"]


LayerReport = WeightReport
"""What :func:`compress` did to one layer: :class:`sekron.selection.WeightReport`, the one
report type of sekron's compressors. ``macs_before``/``macs_after`` are multiply-adds of
one forward pass of the layer: per row (Linear), per image (Conv2d, for the input size
seen in ``example_input``, else 32×32) or per token (Embedding: the Kronecker outer
product, 0 for a dense lookup)."""


class CompressionReport(list):
    """A list of :class:`LayerReport` with totals and a printable table."""

    @property
    def params_before(self) -> int:
        return sum(r.params_before for r in self)

    @property
    def params_after(self) -> int:
        return sum(r.params_after for r in self)

    @property
    def compressed(self) -> list[LayerReport]:
        return [r for r in self if r.skipped is None]

    def __str__(self) -> str:
        head = f"{'layer':<32} {'structure':<34} {'params':>17} {'MACs':>21} {'rel.err':>8}"
        lines = [head, "-" * len(head)]
        for r in self:
            if r.skipped is not None:
                lines.append(f"{r.name:<32} skipped: {r.skipped}")
                continue
            lines.append(
                f"{r.name:<32} {r.structure or '':<34} {r.params_before:>8}->{r.params_after:<8} "
                f"{r.macs_before:>10}->{r.macs_after:<10} {r.relative_error:>8.4f}"
            )
        lines.append(
            f"total parameters of the layers seen: {self.params_before} -> {self.params_after} "
            f"({self.params_before / max(self.params_after, 1):.2f}x)"
        )
        return "\n".join(lines)


def _patterns(p: Any, name: str) -> list[str] | None:
    if p is None:
        return None
    if isinstance(p, str):
        return [p]
    if isinstance(p, Iterable) and all(isinstance(s, str) for s in p):
        return list(p)
    raise TypeError(f"{name}: expected a glob pattern or a list of them, got {p!r}")


def _kind(module: nn.Module, embeddings: bool) -> str | None:
    if isinstance(module, (SeKronLinear, SeKronConv2d, KroneckerEmbedding)):
        return None
    if type(module) is nn.Linear:
        return "Linear"
    if type(module) is nn.Conv2d:
        return "Conv2d"
    if embeddings and type(module) is nn.Embedding:
        return "Embedding"
    return None


def _ineligible(module: nn.Module, kind: str) -> str | None:
    if kind == "Conv2d":
        assert isinstance(module, nn.Conv2d)
        if module.groups != 1:
            return f"grouped convolution (groups={module.groups})"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r}"
    if kind == "Embedding":
        assert isinstance(module, nn.Embedding)
        if module.max_norm is not None or module.sparse:
            return "max_norm or sparse embedding"
    return None


def _input_sizes(
    model: nn.Module, names: Sequence[str], example_input: Any
) -> dict[str, tuple[int, ...]]:
    """Input shapes of the named modules on one forward pass of ``example_input``."""
    seen: dict[str, tuple[int, ...]] = {}
    handles = []
    modules = dict(model.named_modules())
    for name in names:

        def hook(mod: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
            if args and isinstance(args[0], torch.Tensor):
                seen.setdefault(name, tuple(args[0].shape))

        handles.append(modules[name].register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            if isinstance(example_input, (tuple, list)):
                model(*example_input)
            elif isinstance(example_input, dict):
                model(**example_input)
            else:
                model(example_input)
    finally:
        for h in handles:
            h.remove()
    return seen


def _dense_macs(module: nn.Module, kind: str, in_shape: tuple[int, ...] | None) -> int:
    if kind == "Linear":
        assert isinstance(module, nn.Linear)
        return module.in_features * module.out_features
    if kind == "Embedding":
        return 0
    assert isinstance(module, nn.Conv2d)
    hw = in_shape[-2:] if in_shape else (32, 32)
    F_, C, kh, kw = module.weight.shape
    pads = module.padding if not isinstance(module.padding, str) else (0, 0)
    if module.padding == "same":
        return F_ * C * kh * kw * hw[0] * hw[1]
    ho = (hw[0] + 2 * pads[0] - module.dilation[0] * (kh - 1) - 1) // module.stride[0] + 1
    wo = (hw[1] + 2 * pads[1] - module.dilation[1] * (kw - 1) - 1) // module.stride[1] + 1
    return F_ * C * kh * kw * ho * wo


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


def compress(
    model: nn.Module,
    *,
    ratio: float | None = None,
    tol: float | None = None,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    n_factors: int = 2,
    embeddings: bool = False,
    inplace: bool = False,
    example_input: Any = None,
    max_candidates: int = 4,
    progress: bool = True,
    random_state: Any = 0,
) -> tuple[nn.Module, CompressionReport]:
    """Replace the eligible layers of a model by SeKron layers fitted to their weights.

    Parameters
    ----------
    model : nn.Module
        A trained model. Eligible: ``nn.Linear``, ``nn.Conv2d`` with ``groups=1`` and zero
        padding, and with ``embeddings=True`` ``nn.Embedding`` (exact types, not subclasses).
    ratio : float >= 1, optional
        Per-layer compression target: each layer gets at most ``1/ratio`` of its weight's
        parameters, in the structure with the least certified error among the cheapest
        candidates (see :meth:`SeKronLinear.from_linear`).
    tol : float in [0, 1), optional
        Per-layer relative error target instead: the structure with the fewest
        parameters whose certified error is at most ``tol``.
    include, exclude : glob pattern or list of them, optional
        Module names to consider (``fnmatch``, e.g. ``"encoder.*.attention.*"``);
        ``exclude`` wins.
    n_factors : int, default 2
        S, the number of Kronecker factors of every layer.
    embeddings : bool, default False
        Also compress ``nn.Embedding`` tables as :class:`KroneckerEmbedding`.
    inplace : bool, default False
        Modify ``model`` itself; by default a ``copy.deepcopy`` is compressed and
        ``model`` is left untouched.
    example_input : tensor, tuple or dict, optional
        One batch to run through the model first, to learn each convolution's input
        size for its cost model and the MACs report (32×32 otherwise).
    max_candidates : int, default 4
        Structures fitted per layer when choosing.
    progress : bool, default True
        Write a one-line progress indicator to stderr.
    random_state : int, Generator or None, default 0
        Seed of the randomized SVDs.

    Returns
    -------
    model : nn.Module
        The compressed model (``model`` itself when ``inplace``).
    report : CompressionReport
        One :class:`LayerReport` per eligible layer, in module order, including the
        skipped ones with the reason; ``str(report)`` is a table.

    Raises
    ------
    ValueError
        If not exactly one of ``ratio`` and ``tol`` is given, ``ratio < 1``, or the model
        has no eligible layer.

    Examples
    --------
    >>> import torch
    >>> from sekron.torch import compress
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    >>> small, report = compress(net, ratio=16, progress=False)
    >>> [type(m).__name__ for m in small]
    ['SeKronLinear', 'ReLU', 'Linear']
    >>> report[0].params_before, report[0].params_after
    (2080, 128)
    >>> report[1].skipped
    'ratio: no 2-factor structure of shape (3, 32) reaches compression 16 ...'
    >>> sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in net.parameters())
    True
    """
    try:
        check_exactly_one(ratio=ratio, tol=tol)
    except ValueError as err:
        raise ValueError(f"compress: {err}") from None
    if ratio is not None:
        ratio = check_ratio(ratio)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    inc, exc = _patterns(include, "include"), _patterns(exclude, "exclude")
    target = model if inplace else copy.deepcopy(model)
    names = []
    for name, mod in target.named_modules():
        kind = _kind(mod, embeddings)
        if kind is None or not name:
            continue
        if inc is not None and not any(fnmatch.fnmatchcase(name, p) for p in inc):
            continue
        if exc is not None and any(fnmatch.fnmatchcase(name, p) for p in exc):
            continue
        names.append(name)
    if not names:
        kinds = "nn.Linear, nn.Conv2d" + (", nn.Embedding" if embeddings else "")
        raise ValueError(
            f"model: no eligible layer ({kinds}) matched include={include!r}, exclude={exclude!r}"
        )
    in_shapes = _input_sizes(target, names, example_input) if example_input is not None else {}
    report = CompressionReport()
    start = time.perf_counter()
    for i, name in enumerate(names):
        if progress:
            sys.stderr.write(f"\rcompress [{i + 1}/{len(names)}] {name[:60]:<60}")
            sys.stderr.flush()
        mod = target.get_submodule(name)
        kind = _kind(mod, embeddings)
        assert kind is not None
        report.append(
            _compress_one(
                target,
                name,
                mod,
                kind,
                in_shapes.get(name),
                ratio,
                tol,
                n_factors,
                max_candidates,
                random_state,
            )
        )
    if progress:
        sys.stderr.write(
            f"\rcompress: {len(report.compressed)}/{len(names)} layers in "
            f"{time.perf_counter() - start:.1f}s{'':<40}\n"
        )
        sys.stderr.flush()
    return target, report


def _build(
    mod: nn.Module, in_shape: tuple[int, ...] | None, n_factors: int, opts: dict[str, Any]
) -> SeKronLinear | SeKronConv2d | KroneckerEmbedding:
    """The SeKron counterpart of ``mod``; its ``from_*`` chooses with ``sekron.selection``."""
    if isinstance(mod, nn.Linear):
        return SeKronLinear.from_linear(mod, n_factors=n_factors, **opts)
    if isinstance(mod, nn.Conv2d):
        hw = (int(in_shape[-2]), int(in_shape[-1])) if in_shape else None
        return SeKronConv2d.from_conv(mod, n_factors=n_factors, in_hw=hw, **opts)
    assert isinstance(mod, nn.Embedding)  # _kind admits these three types only
    return KroneckerEmbedding.from_embedding(mod, **opts)


def _macs_after(new: nn.Module, in_shape: tuple[int, ...] | None) -> int:
    """Multiply-adds of the path the new layer runs (its cost model decides)."""
    if isinstance(new, SeKronLinear):
        return new.macs(1)["sekron" if new.uses_structured_path() else "dense"]
    if isinstance(new, SeKronConv2d):
        hw = (int(in_shape[-2]), int(in_shape[-1])) if in_shape else (32, 32)
        return new.macs(hw)["sekron" if new.uses_structured_path(hw) else "dense"]
    assert isinstance(new, KroneckerEmbedding)
    return new.structure.ranks[0] * new.embedding_dim


def _compress_one(
    model: nn.Module,
    name: str,
    mod: nn.Module,
    kind: str,
    in_shape: tuple[int, ...] | None,
    ratio: float | None,
    tol: float | None,
    n_factors: int,
    max_candidates: int,
    random_state: Any,
) -> LayerReport:
    before = sum(p.numel() for p in mod.parameters())
    macs_before = _dense_macs(mod, kind, in_shape)
    weight = mod.weight
    assert isinstance(weight, torch.Tensor)
    reason = _ineligible(mod, kind)
    if reason is not None:
        shape = tuple(weight.shape)
        return LayerReport(
            name, kind, None, before, before, macs_before, macs_before, None, reason, shape
        )
    opts = dict(ratio=ratio, tol=tol, max_candidates=max_candidates, random_state=random_state)
    built: list[SeKronLinear | SeKronConv2d | KroneckerEmbedding] = []

    def choose(W: Any) -> Selection:
        built.append(_build(mod, in_shape, n_factors, opts))
        assert built[-1].selection is not None
        return built[-1].selection

    sel, rec = compress_weight(weight, choose, name=name, kind=kind)
    if sel is None:
        return replace(
            rec,
            params_before=before,
            params_after=before,
            macs_before=macs_before,
            macs_after=macs_before,
        )
    new = built[-1]
    new.train(mod.training)
    _set_module(model, name, new)
    return replace(
        rec,
        params_after=sum(p.numel() for p in new.parameters()),
        macs_after=_macs_after(new, in_shape),
        relative_error=new.fit_relative_error,
        params_before=before,
        macs_before=macs_before,
    )
