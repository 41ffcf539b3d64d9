"""Choosing a layer's SeKron structure under a budget, and fitting it with the core.

Three ways to say what is wanted, exactly one at a time:

* ``structure=``: a :class:`~sekron.Structure` (or factor shapes, with ``ranks``);
* ``ratio=``: a compression ratio ``dense size / parameters >= ratio``. For two
  factors, every factor shape that :func:`sekron.structures` enumerates gets the
  largest rank that fits the parameter budget and the candidates are ordered by the
  layer's cost model (multiply-adds), or by parameters used with ``order="params"``
  (for storage, as ``sekron compress`` does). For S >= 3, each shape set gets non-uniform rank
  tuples (``R_1`` on a geometric grid, the deeper ranks the largest within budget),
  those using at least half the budget are kept, and they are ordered by a lower bound
  of their error (the tail of the first split's spectrum beyond ``R_1``) and then by
  parameters, largest first. Candidates no cheaper than the dense layer go last, up to
  ``max_candidates`` are fitted (always including the plain low-rank structure
  ``(w_1, 1, ..) ⊗ (1, w_2, ..)``, the truncated SVD of the output-mode unfolding, when
  it fits the budget), and the least certified error wins (ties: fewer MACs);
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

from ._kron import rearrange
from ._validation import as_positive_int, check_tol
from .decompose import nkp, sekron
from .errors import ShapeError
from .structure import Structure, structures
from .tensor import SeKronTensor

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


def fit_structure(
    W: np.ndarray, structure: Structure, *, tol: float | None = None, random_state: Any = 0
) -> SeKronTensor:
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


def _rank_tuples(
    shapes: tuple[tuple[int, ...], ...], budget: float, grid: int = 6
) -> list[Structure]:
    """Structures with these shapes within ``budget``: for S >= 3, non-uniform ranks.

    For each ``R_1`` on a geometric grid (1, 2, 4, ... up to its maximum, at most
    ``grid`` values) the remaining ranks get the largest uniform value within the
    budget. Uniform ranks waste the budget for S >= 3: the last factors are stored
    ``P_k = R_1⋯R_k`` times, so a large ``R_1`` forbids the deeper ranks any size.
    """
    base = Structure(shapes, 1)
    if base.n_params > budget:
        return []
    max_r = base.max_ranks
    sizes = base.sizes
    S = len(sizes)

    def n_params(ranks: tuple[int, ...]) -> int:
        r = [min(a, b) for a, b in zip(ranks, max_r, strict=True)]
        return sum(math.prod(r[: min(k + 1, S - 1)]) * sizes[k] for k in range(S))

    out: dict[tuple[int, ...], Structure] = {}
    r1 = 1
    while r1 <= max_r[0] and len(out) < grid:
        lo, hi = 0, max(max_r[1:])
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if n_params((r1,) + (mid,) * (S - 2)) <= budget:
                lo = mid
            else:
                hi = mid - 1
        if lo >= 1:
            st = Structure(shapes, (r1,) + (lo,) * (S - 2), clip=True)
            out.setdefault(st.ranks, st)
        r1 *= 2
    return list(out.values())


def _first_split_bound(W: np.ndarray) -> Callable[[Structure], float]:
    """A cheap lower bound of a structure's error: the tail of the first split's spectrum.

    Any SeKron fit with first factor shape ``a^(1)`` and rank ``R_1`` is an NKP of rank
    ``R_1`` of ``W`` with shapes ``(a^(1), a^(2)⊗..⊗a^(S))``, so its error is at least the
    energy of the singular values of that rearrangement beyond ``R_1`` (Eckart-Young).
    One SVD per distinct first factor shape, cached.
    """
    cache: dict[tuple[int, ...], np.ndarray] = {}

    def bound(st: Structure) -> float:
        a1 = st.shapes[0]
        if a1 not in cache:
            rest = tuple(w // a for w, a in zip(W.shape, a1, strict=True))
            T = rearrange(W, [a1, rest])
            T = T.reshape(T.shape[0], -1)
            G = T @ T.T if T.shape[0] <= T.shape[1] else T.T @ T
            ev = np.clip(np.linalg.eigvalsh(G)[::-1], 0.0, None)  # σ², descending
            cache[a1] = np.concatenate([np.cumsum(ev[::-1])[::-1], [0.0]])
        tail = cache[a1]
        return float(tail[min(st.ranks[0], len(tail) - 1)])

    return bound


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
    order: str = "cost",
) -> Selection:
    """Choose and fit a structure for the weight ``W`` (see the module docstring).

    ``order="params"`` ranks the two-factor candidates of ``ratio=`` by the parameters
    they use (most first) instead of by ``cost``: for storage, where every parameter of
    the budget may lower the error, rather than for speed.

    Raises
    ------
    ValueError
        If not exactly one of ``structure``, ``ratio`` and ``tol`` is given, or
        ``ratio < 1``.
    ShapeError
        If no structure of ``W``'s shape meets the budget (the message says why).
    """
    if order not in ("cost", "params"):
        raise ValueError(f"order: expected 'cost' or 'params', got {order!r}")
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
        if S == 2:
            cands = [
                c for c in (_largest_uniform_rank(s, budget) for s in shape_sets) if c is not None
            ]
        else:
            cands = [c for s in shape_sets for c in _rank_tuples(s, budget)]
        if not cands:
            smallest = min(Structure(s, 1).n_params for s in shape_sets)
            raise ShapeError(
                f"ratio: no {S}-factor structure of shape {W.shape} reaches compression {r:g} "
                f"(the smallest has {smallest} parameters, the budget is {budget:.0f}; "
                f"the best ratio is {W.size / smallest:.3g})"
            )
        costs: dict[Structure, int] = {}

        def cost_of(st: Structure) -> int:
            if st not in costs:
                costs[st] = cost(st)
            return costs[st]

        if S == 2 and order == "params":
            cands.sort(key=lambda st: (-st.n_params, cost_of(st), st.shapes))
        elif S == 2:
            cands.sort(
                key=lambda st: (cost_of(st) >= dense_cost, cost_of(st), -st.n_params, st.shapes)
            )
        else:
            # use the budget: a structure far below it wastes parameters (and error)
            full = [c for c in cands if 2 * c.n_params >= budget]
            cands = full or cands
            bound = _first_split_bound(W)
            cands.sort(key=lambda st: (bound(st), -st.n_params, st.shapes))
            cheap = [c for c in cands[: 8 * max_candidates] if cost_of(c) < dense_cost]
            cands = cheap + [c for c in cands if c not in cheap]
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
