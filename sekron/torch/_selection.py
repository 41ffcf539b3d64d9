"""Choosing a layer's SeKron structure under a budget, and fitting it with the core.

Three ways to say what is wanted, exactly one at a time:

* ``structure=``: a :class:`~sekron.Structure` (or factor shapes, with ``ranks``);
* ``ratio=``: a compression ratio ``dense size / parameters >= ratio``. Every factor
  shape that :func:`sekron.structures` enumerates gets the largest uniform rank that
  fits the parameter budget; the candidates are ordered by the layer's cost model
  (multiply-adds), those no cheaper than the dense layer go last, up to
  ``max_candidates`` are fitted (always including the plain low-rank structure
  ``(w_1, 1, ..) ⊗ (1, w_2, ..)``, the truncated SVD of the output-mode unfolding, when
  it fits the budget), and the
  least certified error wins (ties: fewer MACs);
* ``tol=``: a relative Frobenius error. Up to ``max_candidates`` factor shapes, spread
  over the enumeration, are fitted with ``tol`` (the core picks their ranks); the one
  with the fewest parameters wins.

Fits run in float64: :func:`sekron.nkp` for two factors (each term scaled by
``sqrt(σ)``, so both factors have the same norm) and :func:`sekron.sekron` otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validation import as_positive_int, check_tol
from ..decompose import nkp, sekron
from ..errors import ShapeError
from ..structure import Structure, structures
from ..tensor import SeKronTensor

__all__ = ["Selection", "fit_structure", "select", "check_ratio"]

CostFn = Callable[[Structure], int]


@dataclass(frozen=True)
class Selection:
    """A chosen structure, its fit, and how many candidates were compared."""

    structure: Structure
    fit: SeKronTensor
    n_candidates: int

    @property
    def relative_error(self) -> float:
        rel = self.fit.relative_error_bound
        return 0.0 if rel is None else float(rel)


def check_ratio(ratio: Any) -> float:
    """Return ``ratio`` as a float >= 1 (a compression ratio)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.integer, np.floating)):
        raise TypeError(f"ratio: expected a number >= 1, got {type(ratio).__name__} {ratio!r}")
    r = float(ratio)
    if not math.isfinite(r) or r < 1.0:
        raise ValueError(f"ratio: expected a compression ratio >= 1, got {r}")
    return r


def fit_structure(W: np.ndarray, structure: Structure, *, tol: float | None = None, random_state: Any = 0) -> SeKronTensor:
    """Fit ``W`` (float64) with the core: NKP for two factors, SeKron otherwise."""
    if structure.n_factors == 2:
        shape_a = structure.shapes[0]
        if tol is not None:
            return nkp(W, shape_a, tol=tol, random_state=random_state)
        return nkp(W, shape_a, rank=structure.ranks[0], random_state=random_state)
    if tol is not None:
        return sekron(W, structure.shapes, tol=tol, random_state=random_state)
    return sekron(W, structure, random_state=random_state)


def _largest_uniform_rank(shapes: tuple[tuple[int, ...], ...], budget: float) -> Structure | None:
    """The structure with these shapes and the largest uniform rank within ``budget`` params."""
    base = Structure(shapes, 1)
    if base.n_params > budget:
        return None
    lo, hi = 1, max(base.max_ranks)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if Structure(shapes, mid, clip=True).n_params <= budget:
            lo = mid
        else:
            hi = mid - 1
    return Structure(shapes, lo, clip=True)


def _is_low_rank(st: Structure) -> bool:
    """``(w_1, 1, .., 1) ⊗ (1, w_2, .., w_N)``: the truncated SVD of ``W``'s mode-1 unfolding."""
    a, b = st.shapes[0], st.shapes[-1]
    return st.n_factors == 2 and b[0] == 1 and all(d == 1 for d in a[1:])


def _spread(items: list[Any], k: int) -> list[Any]:
    if len(items) <= k:
        return items
    idx = np.unique(np.linspace(0, len(items) - 1, k).round().astype(int))
    return [items[i] for i in idx]


def select(
    W: np.ndarray,
    *,
    structure: Any = None,
    ranks: Any = None,
    ratio: Any = None,
    tol: Any = None,
    n_factors: int = 2,
    cost: CostFn,
    dense_cost: int,
    accept: Callable[[Structure], bool] | None = None,
    max_candidates: int = 6,
    random_state: Any = 0,
) -> Selection:
    """Choose and fit a structure for the weight ``W`` (see the module docstring).

    Raises
    ------
    ValueError
        If not exactly one of ``structure``, ``ratio`` and ``tol`` is given, or
        ``ratio < 1``.
    ShapeError
        If no structure of ``W``'s shape meets the budget (the message says why).
    """
    given = [structure is not None, ratio is not None, tol is not None]
    if sum(given) != 1:
        raise ValueError("expected exactly one of structure=, ratio= and tol=")
    W = np.asarray(W, dtype=np.float64)
    if structure is not None:
        st = structure if isinstance(structure, Structure) else Structure(structure, ranks)
        if st.shape != W.shape:
            raise ShapeError(f"structure: expected a structure of shape {W.shape}, got {st.shape}")
        if accept is not None and not accept(st):
            raise ShapeError(f"structure: {st} does not have the form this layer needs")
        return Selection(st, fit_structure(W, st, random_state=random_state), 1)
    S = as_positive_int(n_factors, "n_factors", minimum=2)
    max_candidates = as_positive_int(max_candidates, "max_candidates")
    shape_sets = [st.shapes for st in structures(W.shape, S, ranks=1)]
    if accept is not None:
        shape_sets = [s for s in shape_sets if accept(Structure(s, 1))]
    if not shape_sets:
        raise ShapeError(f"no {S}-factor structure of shape {W.shape} has factors of size >= 2")
    if ratio is not None:
        r = check_ratio(ratio)
        budget = W.size / r
        cands = [c for c in (_largest_uniform_rank(s, budget) for s in shape_sets) if c is not None]
        if not cands:
            smallest = min(Structure(s, 1).n_params for s in shape_sets)
            raise ShapeError(
                f"ratio: no {S}-factor structure of shape {W.shape} reaches compression {r:g} "
                f"(the smallest has {smallest} parameters, the budget is {budget:.0f}; "
                f"the best ratio is {W.size / smallest:.3g})"
            )
        cands.sort(key=lambda st: (cost(st) >= dense_cost, cost(st), -st.n_params, st.shapes))
        tried = cands[:max_candidates]
        low_rank = [c for c in cands if _is_low_rank(c)]
        if low_rank and not any(_is_low_rank(c) for c in tried):
            tried = tried[: max_candidates - 1] + low_rank[:1]
        best: tuple[Any, ...] | None = None
        for st in tried:
            fit = fit_structure(W, st, random_state=random_state)
            key = (fit.error_bound or 0.0, cost(st))
            if best is None or key < best[0]:
                best = (key, st, fit)
        assert best is not None
        return Selection(best[1], best[2], len(tried))
    t = check_tol(tol)
    ordered = sorted(shape_sets, key=lambda s: (Structure(s, 1).n_params, s))
    tried_sets = _spread(ordered, max_candidates)
    best = None
    for shapes in tried_sets:
        fit = fit_structure(W, Structure(shapes, 1), tol=t, random_state=random_state)
        st = fit.structure
        key = (st.n_params, cost(st))
        if best is None or key < best[0]:
            best = (key, st, fit)
    assert best is not None
    if best[1].n_params >= W.size:
        raise ShapeError(
            f"tol: reaching relative error {t:g} on a tensor of shape {W.shape} needs "
            f"{best[1].n_params} parameters, no fewer than the dense {W.size}"
        )
    return Selection(best[1], best[2], len(tried_sets))
