"""A model-wide parameter budget: how much each layer moves the output, and the split.

:func:`compress` with ``calibration=`` and ``budget="model"`` shares ``Σ size / ratio``
parameters across the layers it compresses. Each layer's data-weighted error curve comes
from its whitened spectrum (:class:`sekron.allocation.WhitenedSpectrum`), but a layer's
own error does not say how far it moves the model's output (a split by the spectra alone
measured *worse* than uniform on all-MiniLM-L6-v2). So each layer is also perturbed
alone, to its whitened rank-``r`` fit at the uniform budget, on a few calibration
batches, and the relative change of the model's output per unit of relative tail energy
is its sensitivity; the curves, weighted by it, are split greedily
(:func:`sekron.allocation.allocate`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..allocation import WhitenedSpectrum, allocate, rank_values
from .distillation import _call, _first_tensor

OutputFn = Callable[[Any], torch.Tensor]


def _outputs(model: nn.Module, batches: Sequence[Any], output: OutputFn) -> list[torch.Tensor]:
    with torch.no_grad():
        return [output(_call(model, b)).detach().to(torch.float64) for b in batches]


def _relative_change(new: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    num = sum(float(((a - b) ** 2).sum()) for a, b in zip(new, ref, strict=True))
    den = sum(float((b**2).sum()) for b in ref)
    return 0.0 if den == 0.0 else num / den


def _low_rank_weight(W: np.ndarray, gram: np.ndarray, rank: int, ridge: float) -> np.ndarray:
    """The whitened (data-aware) rank-``rank`` fit ``U_r U_rᵀ W`` (DESIGN.md 2.8)."""
    M = W.reshape(W.shape[0], -1)
    n = M.shape[1]
    lam = ridge * max(float(np.trace(gram)), 0.0) / n
    L = np.linalg.cholesky(gram + (lam or np.finfo(np.float64).tiny) * np.eye(n))
    U = np.linalg.svd(M @ L, full_matrices=False)[0][:, :rank]
    return (U @ (U.T @ M)).reshape(W.shape)


def sensitivities(
    model: nn.Module,
    layers: dict[str, nn.Module],
    grams: dict[str, np.ndarray],
    spectra: dict[str, WhitenedSpectrum],
    ranks: dict[str, int],
    batches: Sequence[Any],
    *,
    ridge: float,
    output: OutputFn | None = None,
    progress: Any = None,
) -> dict[str, float]:
    """Relative output change per unit of relative tail energy, one layer at a time.

    Each layer's weight is swapped for its whitened fit at ``ranks[name]`` in place and
    restored afterwards (also on error), so ``model`` ends as it started.
    """
    output = output or _first_tensor
    ref = _outputs(model, batches, output)
    out: dict[str, float] = {}
    for name, mod in layers.items():
        weight = mod.weight
        assert isinstance(weight, torch.Tensor)
        W = weight.detach().to(torch.float64).cpu().numpy()
        W_hat = _low_rank_weight(W, grams[name], ranks[name], ridge)
        saved = weight.detach().clone()
        try:
            with torch.no_grad():
                weight.copy_(torch.as_tensor(W_hat, dtype=weight.dtype, device=weight.device))
            change = _relative_change(_outputs(model, batches, output), ref)
        finally:
            with torch.no_grad():
                weight.copy_(saved)
        tail = spectra[name].relative_tail(ranks[name])
        out[name] = change / tail if tail > 0 else 0.0
        if progress is not None:
            progress.update(1)
    return out


def split_budget(
    sizes: dict[str, tuple[int, int]],
    spectra: dict[str, WhitenedSpectrum],
    sensitivity: dict[str, float],
    ratio: float,
) -> dict[str, float]:
    """Per-layer compression ratios that share ``Σ m·n / ratio`` parameters.

    Ranks of the whitened low-rank fit are split by :func:`sekron.allocation.allocate`;
    a layer's share is its ranks' parameters, ``rank · (m + n)``, and its ratio
    ``m·n`` over that share (never below 1).
    """
    step = {k: m + n for k, (m, n) in sizes.items()}
    limit = {k: max(1, (m * n) // (m + n)) for k, (m, n) in sizes.items()}
    values = {k: rank_values(spectra[k], sensitivity[k]) for k in sizes}
    total = sum(m * n for m, n in sizes.values()) / ratio
    steps = allocate(step, values, total, limit=limit)
    # a hair under the exact ratio, so that rounding never costs a layer its last rank
    return {
        k: max(1.0, (m * n) / (steps[k] * step[k]) * (1 - 1e-12)) for k, (m, n) in sizes.items()
    }


def uniform_ranks(sizes: dict[str, tuple[int, int]], ratio: float) -> dict[str, int]:
    """The low-rank rank each layer gets under a uniform ``ratio`` (at least 1)."""
    return {k: max(1, math.floor(m * n / ratio / (m + n))) for k, (m, n) in sizes.items()}
