"""Sharing one parameter budget across many layers: whitened error curves and a greedy split.

A model compressed "at 4x" should hold a quarter of its compressed layers' parameters in
all, not a quarter of each: some layers move the model's output far more than others.
This module holds the numerical half of that choice (the torch half, which measures how
much each layer moves the output, is in :func:`sekron.torch.compress`):

* :class:`WhitenedSpectrum`: for a weight ``W`` (``m × n``) and the Gram matrix ``C`` of
  its inputs, the data-weighted error ``‖(W − Ŵ_r) L‖_F²`` (``L Lᵀ = C``) left by the best
  rank-``r`` fit for *every* ``r`` at once, from one SVD of ``W L`` (DESIGN.md 2.8).
* :func:`allocate`: given each layer's parameters per step and the value of each step
  (decreasing: a convex error curve), spend a total budget by the largest value per
  parameter first. For separable convex curves this greedy split is optimal up to the
  last step that no longer fits.

Measured on all-MiniLM-L6-v2 (36 linears, ``examples/budget_study.py``): splitting by each
layer's own whitened spectrum is *worse* than a uniform split (mean embedding cosine
0.82 → 0.67 at 2x), because a layer's error does not say how far it moves the output;
weighting each layer's curve by its measured output sensitivity beats uniform (0.82 →
0.86 at 2x, 0.66 → 0.71 at 4x). So the values passed to :func:`allocate` should be
``sensitivity × drop of relative tail energy``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._validation import as_float_array
from .errors import ShapeError

__all__ = ["WhitenedSpectrum", "allocate", "rank_values"]


class WhitenedSpectrum:
    """The data-weighted error of the best rank-r fit of ``W``, for every r.

    Parameters
    ----------
    W : array_like, shape ``(m, ...)``
        A weight, read as the matrix ``(m, n)`` with ``n = prod(W.shape[1:])``.
    gram : array_like of shape (n, n), optional
        Gram matrix of the layer's inputs; None for the plain weight spectrum.
    ridge : float, default 1e-3
        ``ridge · tr(C) / n`` is added to C's diagonal (a short calibration set leaves C
        singular).

    Attributes
    ----------
    tail : ndarray of shape (min(m, n) + 1,)
        ``tail[r] = ‖(W − Ŵ_r) L‖_F²``, non-increasing, ``tail[min(m, n)] = 0``.
    step_params : int
        Parameters each rank adds in factored form: ``m + n``.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.allocation import WhitenedSpectrum
    >>> W = np.diag([3.0, 2.0, 1.0])
    >>> sp = WhitenedSpectrum(W)
    >>> np.allclose(sp.tail, [14.0, 5.0, 1.0, 0.0]), sp.step_params
    (True, 6)
    >>> round(sp.relative_tail(1), 4)
    0.3571
    """

    def __init__(self, W: Any, gram: Any = None, ridge: float = 1e-3) -> None:
        W = as_float_array(W, "W", min_ndim=2).astype(np.float64, copy=False)
        M = W.reshape(W.shape[0], -1)
        m, n = M.shape
        if gram is not None:
            C = as_float_array(gram, "gram", ndim=2).astype(np.float64, copy=False)
            if C.shape != (n, n):
                raise ShapeError(
                    f"gram: expected shape {(n, n)} for W of shape {W.shape}, got {C.shape}"
                )
            lam = float(ridge) * max(float(np.trace(C)), 0.0) / n
            L = np.linalg.cholesky(C + (lam or np.finfo(np.float64).tiny) * np.eye(n))
            M = M @ L
        s = np.linalg.svd(M, compute_uv=False)
        energy = s**2
        self.tail = np.concatenate([np.cumsum(energy[::-1])[::-1], [0.0]])
        self.step_params = m + n
        self.max_rank = min(m, n)

    def relative_tail(self, r: int) -> float:
        """``tail[r] / tail[0]``: the relative squared data error left at rank ``r``."""
        total = float(self.tail[0])
        return 0.0 if total == 0.0 else float(self.tail[min(r, self.max_rank)] / total)


def allocate(
    step_params: Mapping[str, int],
    values: Mapping[str, Sequence[float]],
    budget: float,
    *,
    start: Mapping[str, int] | None = None,
    limit: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Split ``budget`` parameters across layers by the largest value per parameter first.

    Parameters
    ----------
    step_params : mapping of name to int
        Parameters one more step (rank) of that layer costs.
    values : mapping of name to sequence of float
        ``values[k][r]``: what step ``r + 1`` of layer ``k`` is worth (for example the
        drop of its sensitivity-weighted error). Should not increase in ``r``.
    budget : float
        Total parameters the steps may use, ``start`` steps included.
    start : mapping of name to int, optional
        Steps every layer gets first (default 1).
    limit : mapping of name to int, optional
        The most steps a layer may take (default ``len(values[k])``).

    Returns
    -------
    dict of name to int
        Steps per layer; ``Σ steps · step_params <= budget`` whenever the ``start``
        steps fit.

    Raises
    ------
    ShapeError
        If the two mappings name different layers, or the ``start`` steps alone exceed
        the budget.

    Examples
    --------
    >>> from sekron.allocation import allocate
    >>> allocate({"a": 10, "b": 10}, {"a": [9, 8, 1], "b": [5, 0.5, 0.1]}, 50)
    {'a': 3, 'b': 2}
    """
    if set(step_params) != set(values):
        raise ShapeError(
            f"values: expected the layers of step_params {sorted(step_params)}, "
            f"got {sorted(values)}"
        )
    steps = {k: int((start or {}).get(k, 1)) for k in step_params}
    caps = {k: int((limit or {}).get(k, len(values[k]))) for k in step_params}
    spent = sum(steps[k] * step_params[k] for k in steps)
    if spent > budget:
        raise ShapeError(
            f"budget: expected at least the {spent} parameters of the starting steps, got {budget:g}"
        )
    heap = [(-float(values[k][steps[k]]) / step_params[k], k) for k in steps if steps[k] < caps[k]]
    heapq.heapify(heap)
    while heap:
        _, k = heapq.heappop(heap)
        if spent + step_params[k] > budget:
            continue  # this layer's step does not fit; a cheaper layer's still might
        steps[k] += 1
        spent += step_params[k]
        if steps[k] < caps[k]:
            heapq.heappush(heap, (-float(values[k][steps[k]]) / step_params[k], k))
    return steps


def rank_values(spectrum: WhitenedSpectrum, sensitivity: float) -> list[float]:
    """``sensitivity ×`` the drop of relative tail energy of each rank step (for :func:`allocate`).

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.allocation import WhitenedSpectrum, rank_values
    >>> [round(v, 3) for v in rank_values(WhitenedSpectrum(np.diag([3.0, 2.0, 1.0])), 2.0)]
    [1.286, 0.571, 0.143]
    """
    rel = spectrum.tail / spectrum.tail[0] if spectrum.tail[0] > 0 else spectrum.tail * 0
    drops = rel[:-1] - rel[1:]
    if not math.isfinite(sensitivity) or sensitivity < 0:
        raise ShapeError(f"sensitivity: expected a finite number >= 0, got {sensitivity}")
    return [float(sensitivity * d) for d in drops]
