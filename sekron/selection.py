"""Choosing a weight's SeKron structure under a budget, fitting it, and reporting on it.

This is the one selector of sekron: the torch layers (``from_linear``, ``from_conv``,
``from_embedding``), :func:`sekron.torch.compress`, ``sekron compress`` and
``sekron structures`` all call it. Three ways to say what is wanted, exactly one at a
time, each a strategy of its own (:func:`select` dispatches):

* ``structure=`` (:func:`select_fixed`): a :class:`~sekron.Structure` (or factor
  shapes, with ``ranks``);
* ``ratio=`` (:func:`select_by_ratio`, :func:`select_by_ratio_deep` for S >= 3): a
  compression ratio ``dense size / parameters >= ratio``. For two factors, every factor
  shape that :func:`sekron.structures` enumerates gets the largest rank that fits the
  parameter budget and the candidates are ordered by the layer's cost model
  (multiply-adds), or by parameters used with ``order="params"`` (for storage, as
  ``sekron compress`` does). For S >= 3, each shape set gets non-uniform rank tuples
  (``R_1`` on a geometric grid, the deeper ranks the largest within budget), those using
  at least half the budget are kept, and they are ordered by a lower bound of their
  error (the tail of the first split's spectrum beyond ``R_1``) and then by parameters,
  largest first. Candidates no cheaper than the dense layer go last, up to
  ``max_candidates`` are fitted (always including the plain low-rank structure
  ``(w_1, 1, ..) ⊗ (1, w_2, ..)``, the truncated SVD of the output-mode unfolding, and
  for two factors the balanced one, factor sizes as equal as the divisors allow, as
  GKPD uses, when they fit the budget), and the least certified error wins (ties:
  fewer MACs);
* ``tol=`` (:func:`select_by_tol`): a relative Frobenius error. Up to
  ``max_candidates`` factor shapes, spread over the enumeration, and the balanced ones
  are fitted with ``tol`` (the core picks their ranks); the one with the fewest
  parameters wins.

Fits run in float64: :func:`sekron.nkp` for two factors (each term scaled by
``sqrt(σ)``, so both factors have the same norm) and :func:`sekron.sekron` otherwise,
all through :func:`fit_structure`. Data-aware fits (DESIGN.md 2.8): every strategy takes
``gram=`` (the Gram matrix ``Σ x xᵀ`` of the layer's inputs) and ``ridge=`` and passes them
to the core; candidates are then compared by their certified *data-weighted* error
``‖(W − Ŵ) L‖_F`` (``L Lᵀ = gram``) instead of the weight error.

:func:`compress_weight` is the compressor core of both compressors: one weight and a
chooser (:func:`budget`, or an adapter's) in, its fit and one :class:`WeightReport` out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._datafit import DEFAULT_RIDGE
from ._kron import rearrange
from ._validation import as_positive_int, check_exactly_one, check_ratio, check_tol
from .decompose import nkp, sekron
from .errors import ArgumentError, SekronError, ShapeError
from .structure import Structure, structures
from .tensor import SeKronTensor

__all__ = [
    "Chooser",
    "CostFn",
    "Selection",
    "WeightReport",
    "budget",
    "compress_weight",
    "fit_candidates",
    "fit_error",
    "fit_structure",
    "relative_data_error",
    "select",
    "select_by_ratio",
    "select_by_ratio_deep",
    "select_by_tol",
    "select_fixed",
]

CostFn = Callable[[Structure], int]
"""A structure's cost in the units of the layer it would replace (multiply-adds, params)."""


@dataclass(frozen=True)
class Selection:
    """A chosen structure, its fit, and how many candidates were compared.

    Attributes
    ----------
    structure : Structure
        The chosen structure (with the ranks the fit ended up with).
    fit : SeKronTensor
        Its fit, with the certified ``error_bound``.
    n_candidates : int
        How many structures were fitted to choose it.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.selection import select
    >>> W = np.kron(np.arange(1.0, 9.0).reshape(4, 2), np.ones((8, 8)))  # one Kronecker product
    >>> sel = select(W, ratio=8, cost=lambda st: st.n_params, dense_cost=W.size)
    >>> sel.structure.shapes, sel.structure.ranks, sel.n_candidates
    (((8, 4), (4, 4)), (1,), 6)
    >>> sel.fit.shape, sel.relative_error < 1e-12
    ((32, 16), True)
    """

    structure: Structure
    fit: SeKronTensor
    n_candidates: int

    @property
    def relative_error(self) -> float:
        """The certified relative Frobenius error of the fit (0.0 when exact)."""
        rel = self.fit.relative_error_bound
        return 0.0 if rel is None else float(rel)


def fit_structure(
    W: np.ndarray,
    structure: Structure,
    *,
    tol: float | None = None,
    gram: Any = None,
    ridge: float = DEFAULT_RIDGE,
    random_state: Any = 0,
) -> SeKronTensor:
    """Fit ``W`` with the core: :func:`sekron.nkp` for two factors, :func:`sekron.sekron` else.

    Parameters
    ----------
    W : ndarray of shape ``structure.shape``
    structure : Structure
        With ``tol`` only its factor shapes count: the core picks the ranks.
    tol : float in [0, 1), optional
        A relative error target instead of the structure's ranks.
    gram : ndarray of shape (n, n), optional
        Gram matrix of the layer's inputs (``n = prod(W.shape[1:])``): fit the
        data-weighted error (:func:`sekron.nkp`'s ``gram``).
    ridge : float, default 1e-6
        The core's ridge of ``gram`` (relative to its mean diagonal).
    random_state : int, Generator or None, default 0
        Seed of the randomized SVDs.

    Returns
    -------
    SeKronTensor

    Examples
    --------
    >>> import numpy as np
    >>> from sekron import Structure
    >>> from sekron.selection import fit_structure
    >>> W = np.kron(np.eye(2), np.ones((3, 3)))
    >>> fit = fit_structure(W, Structure([(2, 2), (3, 3)], 1))
    >>> fit.n_params, fit.relative_error_bound < 1e-12
    (13, True)
    """
    data = {"gram": gram, "ridge": ridge} if gram is not None else {}
    if structure.n_factors == 2:
        shape_a = structure.shapes[0]
        if tol is not None:
            return nkp(W, shape_a, tol=tol, random_state=random_state, **data)
        return nkp(W, shape_a, rank=structure.ranks[0], random_state=random_state, **data)
    if tol is not None:
        return sekron(W, structure.shapes, tol=tol, random_state=random_state, **data)
    return sekron(W, structure, random_state=random_state, **data)


def fit_error(fit: SeKronTensor) -> float:
    """The error candidates are compared by: the data-weighted one when the fit has it.

    Examples
    --------
    >>> import numpy as np
    >>> import sekron as sk
    >>> from sekron.selection import fit_error
    >>> W = np.random.default_rng(0).normal(size=(8, 8))
    >>> fit_error(sk.nkp(W, (2, 2))) == sk.nkp(W, (2, 2)).error_bound
    True
    """
    if fit.data_error_bound is not None:
        return float(fit.data_error_bound)
    return float(fit.error_bound or 0.0)


def fit_candidates(
    W: np.ndarray,
    candidates: Iterable[Structure],
    *,
    gram: Any = None,
    ridge: float = DEFAULT_RIDGE,
    random_state: Any = 0,
) -> list[tuple[Structure, SeKronTensor]]:
    """Fit every candidate structure to ``W``, in order (data-aware with ``gram``).

    Examples
    --------
    >>> import numpy as np
    >>> from sekron import Structure
    >>> from sekron.selection import fit_candidates
    >>> W = np.random.default_rng(0).normal(size=(4, 4))
    >>> cands = [Structure([(2, 2), (2, 2)], r) for r in (1, 4)]
    >>> [round(float(fit.relative_error_bound), 12) == 0 for _, fit in fit_candidates(W, cands)]
    [False, True]
    """
    W = np.asarray(W, dtype=np.float64)
    return [
        (st, fit_structure(W, st, gram=gram, ridge=ridge, random_state=random_state))
        for st in candidates
    ]


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


def _low_rank(cands: list[Structure]) -> Structure | None:
    return next((c for c in cands if _is_low_rank(c)), None)


def _balanced(cands: list[Structure]) -> list[Structure]:
    """The two-factor candidates of most equal factors (GKPD's shapes), at most two.

    Equal mode by mode first (``a_k`` close to ``b_k``: 8×8 ⊗ 8×8 before 4×16 ⊗ 16×4),
    then in size; of the shapes that tie (``a ⊗ b`` and ``b ⊗ a``) the two using most
    parameters.
    """
    two = [c for c in cands if c.n_factors == 2 and not _is_low_rank(c)]

    def imbalance(c: Structure) -> tuple[float, float]:
        a, b = c.shapes
        per_mode = sum(abs(math.log(x / y)) for x, y in zip(a, b, strict=True))
        return (round(per_mode, 9), round(abs(math.log(c.sizes[0] / c.sizes[1])), 9))

    if not two:
        return []
    best = min(imbalance(c) for c in two)
    ties = [c for c in two if imbalance(c) == best]
    return sorted(ties, key=lambda c: (-c.n_params, c.shapes))[:2]


def _spread(items: list[Any], k: int) -> list[Any]:
    if len(items) <= k:
        return items
    idx = np.unique(np.linspace(0, len(items) - 1, k).round().astype(int))
    return [items[i] for i in idx]


def _as_weight(W: Any) -> np.ndarray:
    return np.asarray(W, dtype=np.float64)


def _shape_sets(
    shape: tuple[int, ...], S: int, accept: Callable[[Structure], bool] | None
) -> list[tuple[tuple[int, ...], ...]]:
    """The factor shapes of every ``S``-factor structure of ``shape`` that ``accept`` takes."""
    sets = [st.shapes for st in structures(shape, S, ranks=1, max_candidates=None)]
    if accept is not None:
        sets = [s for s in sets if accept(Structure(s, 1))]
    if not sets:
        raise ShapeError(f"no {S}-factor structure of shape {shape} has factors of size >= 2")
    return sets


def _memo(cost: CostFn) -> CostFn:
    costs: dict[Structure, int] = {}

    def cost_of(st: Structure) -> int:
        if st not in costs:
            costs[st] = cost(st)
        return costs[st]

    return cost_of


def _over_budget(
    S: int, shape: tuple[int, ...], sets: list[Any], r: float, size: int
) -> ShapeError:
    smallest = min(Structure(s, 1).n_params for s in sets)
    return ShapeError(
        f"ratio: no {S}-factor structure of shape {shape} reaches compression {r:g} "
        f"(the smallest has {smallest} parameters, the budget is {size / r:.0f}; "
        f"the best ratio is {size / smallest:.3g})"
    )


def _least_error(
    W: np.ndarray,
    cands: list[Structure],
    cost: CostFn,
    max_candidates: int,
    random_state: Any,
    data: dict[str, Any],
) -> Selection:
    """Fit the first ``max_candidates`` (plus the low-rank and balanced splits); least error wins.

    The cost order alone puts the cheapest, most lopsided Kronecker shapes first, which
    are rarely the accurate ones; the two reference structures of the field, the
    truncated SVD and the balanced Kronecker product of GKPD, are always fitted.
    """
    low = _low_rank(cands)
    refs = ([low] if low is not None else []) + _balanced(cands)
    refs = refs[:max_candidates]  # one seat: the low-rank split
    others = [c for c in cands[:max_candidates] if c not in refs]
    tried = others[: max_candidates - len(refs)] + refs
    best: tuple[Any, ...] | None = None
    for st, fit in fit_candidates(W, tried, random_state=random_state, **data):
        key = (fit_error(fit), cost(st))
        if best is None or key < best[0]:
            best = (key, st, fit)
    assert best is not None  # tried is never empty: the caller checked cands
    return Selection(best[1], best[2], len(tried))


def select_fixed(
    W: np.ndarray,
    structure: Any,
    *,
    ranks: Any = None,
    accept: Callable[[Structure], bool] | None = None,
    gram: Any = None,
    ridge: float = DEFAULT_RIDGE,
    random_state: Any = 0,
) -> Selection:
    """Fit the given structure (a :class:`~sekron.Structure`, or factor shapes and ``ranks``).

    Raises
    ------
    ShapeError
        If the structure's shape is not ``W``'s, or ``accept`` rejects it.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.selection import select_fixed
    >>> sel = select_fixed(np.ones((4, 6)), [(2, 2), (2, 3)], ranks=1)
    >>> sel.structure.ranks, sel.n_candidates
    ((1,), 1)
    """
    W = _as_weight(W)
    st = structure if isinstance(structure, Structure) else Structure(structure, ranks)
    if st.shape != W.shape:
        raise ShapeError(f"structure: expected a structure of shape {W.shape}, got {st.shape}")
    if accept is not None and not accept(st):
        raise ShapeError(f"structure: {st} does not have the form this layer needs")
    fit = fit_structure(W, st, gram=gram, ridge=ridge, random_state=random_state)
    return Selection(st, fit, 1)


def select_by_ratio(
    W: np.ndarray,
    ratio: Any,
    *,
    cost: CostFn,
    dense_cost: int,
    accept: Callable[[Structure], bool] | None = None,
    max_candidates: int = 6,
    order: str = "cost",
    gram: Any = None,
    ridge: float = DEFAULT_RIDGE,
    random_state: Any = 0,
) -> Selection:
    """Two factors within ``W.size / ratio`` parameters: the least error of the cheapest.

    Every factor shape pair gets its largest rank within the budget. ``order="cost"``
    fits the ``max_candidates`` cheapest by ``cost`` (those no cheaper than
    ``dense_cost`` last); ``order="params"`` the ones using most of the budget, for
    storage. The plain low-rank split is always among them when it fits.

    Raises
    ------
    ShapeError
        If no two-factor structure of ``W``'s shape meets the budget.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.selection import select_by_ratio
    >>> W = np.kron(np.random.default_rng(0).normal(size=(8, 8)), np.ones((4, 4)))
    >>> params = lambda st: st.n_params
    >>> sel = select_by_ratio(W, 8, cost=params, dense_cost=W.size, order="params")
    >>> sel.structure.n_params <= W.size / 8, sel.relative_error < 1e-12
    (True, True)
    """
    if order not in ("cost", "params"):
        raise ArgumentError(f"order: expected 'cost' or 'params', got {order!r}")
    W = _as_weight(W)
    max_candidates = as_positive_int(max_candidates, "max_candidates")
    sets = _shape_sets(W.shape, 2, accept)
    r = check_ratio(ratio)
    fits = (_largest_uniform_rank(s, W.size / r) for s in sets)
    cands = [c for c in fits if c is not None]
    if not cands:
        raise _over_budget(2, W.shape, sets, r, W.size)
    cost_of = _memo(cost)
    if order == "params":
        cands.sort(key=lambda st: (-st.n_params, cost_of(st), st.shapes))
    else:
        cands.sort(key=lambda st: (cost_of(st) >= dense_cost, cost_of(st), -st.n_params, st.shapes))
    data = {"gram": gram, "ridge": ridge}
    return _least_error(W, cands, cost_of, max_candidates, random_state, data)


def select_by_ratio_deep(
    W: np.ndarray,
    ratio: Any,
    *,
    n_factors: int = 3,
    cost: CostFn,
    dense_cost: int,
    accept: Callable[[Structure], bool] | None = None,
    max_candidates: int = 6,
    gram: Any = None,
    ridge: float = DEFAULT_RIDGE,
    random_state: Any = 0,
) -> Selection:
    """``n_factors >= 3`` within ``W.size / ratio`` parameters, by a bound on the error.

    Non-uniform rank tuples per shape set; those using at least half the budget are
    ordered by the tail of the first split's spectrum (a lower bound of their error),
    the cheaper than ``dense_cost`` first; the least certified error of the first
    ``max_candidates`` wins.

    Raises
    ------
    ShapeError
        If no structure of ``W``'s shape meets the budget.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.selection import select_by_ratio_deep
    >>> W = np.random.default_rng(0).normal(size=(16, 16))
    >>> sel = select_by_ratio_deep(W, 4, cost=lambda st: st.n_params, dense_cost=W.size)
    >>> sel.structure.n_factors, sel.structure.n_params <= W.size / 4
    (3, True)
    """
    W = _as_weight(W)
    S = as_positive_int(n_factors, "n_factors", minimum=3)
    max_candidates = as_positive_int(max_candidates, "max_candidates")
    sets = _shape_sets(W.shape, S, accept)
    r = check_ratio(ratio)
    budget = W.size / r
    cands = [c for s in sets for c in _rank_tuples(s, budget)]
    if not cands:
        raise _over_budget(S, W.shape, sets, r, W.size)
    # use the budget: a structure far below it wastes parameters (and error)
    cands = [c for c in cands if 2 * c.n_params >= budget] or cands
    bound = _first_split_bound(W)
    cands.sort(key=lambda st: (bound(st), -st.n_params, st.shapes))
    cost_of = _memo(cost)
    cheap = [c for c in cands[: 8 * max_candidates] if cost_of(c) < dense_cost]
    cands = cheap + [c for c in cands if c not in cheap]
    data = {"gram": gram, "ridge": ridge}
    return _least_error(W, cands, cost_of, max_candidates, random_state, data)


def select_by_tol(
    W: np.ndarray,
    tol: Any,
    *,
    n_factors: int = 2,
    cost: CostFn,
    accept: Callable[[Structure], bool] | None = None,
    max_candidates: int = 6,
    gram: Any = None,
    ridge: float = DEFAULT_RIDGE,
    random_state: Any = 0,
) -> Selection:
    """The fewest parameters with relative error ``<= tol`` (the core picks the ranks).

    Up to ``max_candidates`` factor shape sets, spread over the enumeration, are fitted,
    and for two factors the (at most two) most balanced ones.

    Raises
    ------
    ShapeError
        If meeting ``tol`` needs no fewer parameters than ``W`` has.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.selection import select_by_tol
    >>> W = np.random.default_rng(0).normal(size=(16, 16))
    >>> sel = select_by_tol(W, 0.5, cost=lambda st: st.n_params)
    >>> sel.relative_error <= 0.5
    True
    """
    W = _as_weight(W)
    S = as_positive_int(n_factors, "n_factors", minimum=2)
    max_candidates = as_positive_int(max_candidates, "max_candidates")
    sets = _shape_sets(W.shape, S, accept)
    t = check_tol(tol)
    tried = _spread(sorted(sets, key=lambda s: (Structure(s, 1).n_params, s)), max_candidates)
    # the balanced shapes (GKPD's) too, which a spread over sizes can step over
    tried += [c.shapes for c in _balanced([Structure(s, 1) for s in sets]) if c.shapes not in tried]
    best: tuple[Any, ...] | None = None
    for shapes in tried:
        fit = fit_structure(
            W, Structure(shapes, 1), tol=t, gram=gram, ridge=ridge, random_state=random_state
        )
        key = (fit.structure.n_params, cost(fit.structure))
        if best is None or key < best[0]:
            best = (key, fit.structure, fit)
    assert best is not None  # _shape_sets is never empty
    if best[1].n_params >= W.size:
        raise ShapeError(
            f"tol: reaching relative error {t:g} on a tensor of shape {W.shape} needs "
            f"{best[1].n_params} parameters, no fewer than the dense {W.size}"
        )
    return Selection(best[1], best[2], len(tried))


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
    gram: Any = None,
    ridge: float = DEFAULT_RIDGE,
) -> Selection:
    """Choose and fit a structure for the weight ``W`` with one of the strategies.

    Parameters
    ----------
    W : ndarray
        The weight, fitted in float64.
    structure, ranks : optional
        A structure to fit as it is (:func:`select_fixed`); ``ranks`` only goes with
        factor shapes given as ``structure``.
    ratio : float >= 1, optional
        A compression budget (:func:`select_by_ratio`, or :func:`select_by_ratio_deep`
        for ``n_factors >= 3``).
    tol : float in [0, 1), optional
        A relative error target (:func:`select_by_tol`).
    n_factors : int, default 2
        S, for ``ratio`` and ``tol``.
    cost : callable
        A structure's cost in the layer's units (multiply-adds, or parameters).
    dense_cost : int
        The dense layer's cost in the same units.
    accept : callable, optional
        Which structures this layer can run (e.g. an embedding's).
    max_candidates : int, default 6
        How many structures to fit when choosing.
    random_state : int, Generator or None, default 0
        Seed of the randomized SVDs.
    order : {"cost", "params"}, default "cost"
        How two-factor candidates of ``ratio`` are ranked: by ``cost`` (for speed) or
        by the parameters they use, most first (for storage).
    gram : ndarray of shape (n, n), optional
        Gram matrix ``Σ x xᵀ`` of the layer's inputs (``n = prod(W.shape[1:])``; for a
        conv kernel, of its im2col patches): fit and compare the candidates by the
        data-weighted error (DESIGN.md 2.8) instead of the weight error.
    ridge : float, default 1e-6
        With ``gram``: the core's ridge, relative to ``tr(gram) / n``.

    Returns
    -------
    Selection

    Raises
    ------
    ValueError
        If not exactly one of ``structure``, ``ratio`` and ``tol`` is given, ``ranks``
        comes without ``structure``, or ``ratio < 1``.
    ShapeError
        If no structure of ``W``'s shape meets the budget (the message says why).

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.selection import select
    >>> W = np.random.default_rng(0).normal(size=(32, 16))
    >>> sel = select(W, ratio=4, cost=lambda st: st.n_params, dense_cost=W.size)
    >>> sel.structure.n_params <= W.size / 4
    True
    >>> select(W, ratio=4, ranks=7, cost=lambda st: st.n_params, dense_cost=W.size)
    Traceback (most recent call last):
    ...
    sekron.errors.ArgumentError: ranks: expected None unless structure= is given (ratio= and tol= choose ...), got 7
    """
    if order not in ("cost", "params"):
        raise ArgumentError(f"order: expected 'cost' or 'params', got {order!r}")
    chosen = check_exactly_one(structure=structure, ratio=ratio, tol=tol)
    if ranks is not None and chosen != "structure":
        raise ArgumentError(
            "ranks: expected None unless structure= is given "
            f"(ratio= and tol= choose the ranks), got {ranks!r}"
        )
    data = {"gram": gram, "ridge": ridge}
    if chosen == "structure":
        return select_fixed(
            W, structure, ranks=ranks, accept=accept, random_state=random_state, **data
        )
    if chosen == "tol":
        return select_by_tol(
            W,
            tol,
            n_factors=n_factors,
            cost=cost,
            accept=accept,
            max_candidates=max_candidates,
            random_state=random_state,
            **data,
        )
    S = as_positive_int(n_factors, "n_factors", minimum=2)
    if S == 2:
        return select_by_ratio(
            W,
            ratio,
            cost=cost,
            dense_cost=dense_cost,
            accept=accept,
            max_candidates=max_candidates,
            order=order,
            random_state=random_state,
            **data,
        )
    return select_by_ratio_deep(
        W,
        ratio,
        n_factors=S,
        cost=cost,
        dense_cost=dense_cost,
        accept=accept,
        max_candidates=max_candidates,
        random_state=random_state,
        **data,
    )


@dataclass(frozen=True)
class WeightReport:
    """What a compressor did to one weight: the one report type of sekron's compressors.

    Attributes
    ----------
    name : str
        The weight's (or layer's) name.
    kind : str
        ``"Linear"``, ``"Conv2d"``, ``"Embedding"`` (torch layers) or ``"tensor"``.
    structure : str or None
        The chosen structure (None when skipped).
    params_before, params_after : int
        Parameters before and after (for a torch layer, weight and bias).
    macs_before, macs_after : int or None
        Multiply-adds of one forward pass, where known (None for a bare tensor).
    relative_error : float or None
        Certified relative Frobenius error of the fitted weight.
    skipped : str or None
        Why the weight was left as it was.
    shape : tuple of int or None
        The weight's shape.
    data_error : float or None
        Relative data-weighted error ``‖(W − Ŵ) L‖ / ‖W L‖`` on the layer's inputs
        (``L Lᵀ`` their Gram matrix), when calibrated.
    plain_data_error : float or None
        The same error for the plain (weight-error) choice under the same budget: what
        calibration gained on this layer.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.selection import budget, compress_weight
    >>> _, rep = compress_weight(np.ones((64, 64)), budget(ratio=4), name="fc")
    >>> rep.name, rep.kind, rep.shape, rep.params_before, rep.params_after, rep.ratio
    ('fc', 'tensor', (64, 64), 4096, 1024, 4.0)
    >>> rep.structure, rep.relative_error < 1e-12, rep.skipped
    ('1×64 ⊗ 64×1 @ ranks (8,)', True, None)
    """

    name: str
    kind: str
    structure: str | None
    params_before: int
    params_after: int
    macs_before: int | None = None
    macs_after: int | None = None
    relative_error: float | None = None
    skipped: str | None = None
    shape: tuple[int, ...] | None = None
    data_error: float | None = None
    plain_data_error: float | None = None

    @property
    def ratio(self) -> float:
        """``params_before / params_after``."""
        return self.params_before / self.params_after


Chooser = Callable[..., Selection]
"""``choose(W, gram=None) -> Selection``: :func:`budget`, or an adapter's own chooser."""


def budget(
    *,
    ratio: float | None = None,
    tol: float | None = None,
    n_factors: int = 2,
    cost: CostFn | None = None,
    dense_cost: int | None = None,
    accept: Callable[[Structure], bool] | None = None,
    order: str = "params",
    max_candidates: int = 6,
    ridge: float = DEFAULT_RIDGE,
    random_state: Any = 0,
) -> Chooser:
    """A chooser for :func:`compress_weight`: :func:`select` under ``ratio`` or ``tol``.

    Parameters are as in :func:`select`; ``cost`` defaults to the parameter count and
    ``dense_cost`` to the weight's size, and ``order`` to ``"params"``: compression for
    storage. ``ratio`` and ``tol`` are checked here, once for every weight.

    Raises
    ------
    ValueError
        Unless exactly one of ``ratio`` and ``tol`` is given, or for ``ratio < 1``.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.selection import budget
    >>> budget(ratio=4)(np.ones((16, 16))).structure.n_params <= 16 * 16 / 4
    True
    """
    check_exactly_one(ratio=ratio, tol=tol)
    if ratio is not None:
        ratio = check_ratio(ratio)
    if tol is not None:
        tol = check_tol(tol)

    def choose(W: np.ndarray, gram: Any = None) -> Selection:
        return select(
            W,
            gram=gram,
            ridge=ridge,
            ratio=ratio,
            tol=tol,
            n_factors=n_factors,
            cost=cost or (lambda st: st.n_params),
            dense_cost=np.size(W) if dense_cost is None else dense_cost,
            accept=accept,
            order=order,
            max_candidates=max_candidates,
            random_state=random_state,
        )

    return choose


def relative_data_error(W: Any, fit: SeKronTensor, gram: Any) -> float:
    """``‖(W − Ŵ) L‖_F / ‖W L‖_F`` with ``L Lᵀ = gram``, computed from the dense residual.

    Examples
    --------
    >>> import numpy as np
    >>> import sekron as sk
    >>> from sekron.selection import relative_data_error
    >>> W = np.random.default_rng(0).normal(size=(6, 4))
    >>> relative_data_error(W, sk.nkp(W, (6, 1), rank=4), np.eye(4)) < 1e-12
    True
    """
    W = np.asarray(W, dtype=np.float64)
    C = np.asarray(gram, dtype=np.float64)
    E = (W - fit.to_dense().astype(np.float64)).reshape(W.shape[0], -1)
    Wm = W.reshape(W.shape[0], -1)
    den = float(np.einsum("ij,ij->", Wm @ C, Wm))
    num = max(float(np.einsum("ij,ij->", E @ C, E)), 0.0)
    return 0.0 if den <= 0.0 else math.sqrt(num / den)


def compress_weight(
    W: Any,
    choose: Chooser,
    *,
    name: str = "",
    kind: str = "tensor",
    gram: Any = None,
    compare_plain: bool = True,
) -> tuple[Selection | None, WeightReport]:
    """The compressor core: choose and fit a structure for one weight, and report on it.

    Both compressors run every weight through here: ``sekron compress`` with
    :func:`budget`, :func:`sekron.torch.compress` with a chooser that builds the layer
    (whose ``from_*`` calls :func:`select`), then fills in the layer's own parameter
    and multiply-add counts. A weight that ``choose`` cannot compress (no structure
    meets the budget, a layer it cannot run) is not an error: it comes back skipped,
    with the reason.

    Parameters
    ----------
    W : array-like
        The weight (anything with a ``shape``; ``choose`` is what reads it).
    choose : callable
        ``choose(W, gram=None) -> Selection``, e.g. ``budget(ratio=4)``.
    name, kind : str
        What the report calls the weight.
    gram : ndarray of shape (n, n), optional
        Gram matrix of the weight's inputs: the choice and fit are data-aware, and the
        report carries the data-weighted error.
    compare_plain : bool, default True
        With ``gram``: also choose without it, to report the plain fit's data error.

    Returns
    -------
    selection : Selection or None
        None when skipped.
    report : WeightReport
        Parameters counted as the weight's entries before and the fit's after.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.selection import budget, compress_weight
    >>> sel, rep = compress_weight(np.ones((64, 64)), budget(ratio=4), name="fc")
    >>> rep.params_before, rep.params_after <= 64 * 64 / 4, rep.skipped
    (4096, True, None)
    >>> compress_weight(np.ones((4, 4)), budget(ratio=100), name="tiny")[1].skipped[:6]
    'ratio:'
    """
    shape = tuple(np.shape(W))
    size = int(np.prod(shape))
    try:
        sel = choose(W) if gram is None else choose(W, gram=gram)
    except (SekronError, ValueError) as exc:
        return None, WeightReport(name, kind, None, size, size, skipped=str(exc), shape=shape)
    plain = None
    if gram is not None and compare_plain:
        plain = relative_data_error(W, choose(W).fit, gram)
    report = WeightReport(
        name,
        kind,
        str(sel.structure),
        size,
        sel.fit.n_params,
        relative_error=sel.fit.relative_error_bound,
        shape=shape,
        data_error=None if gram is None else sel.fit.data_relative_error,
        plain_data_error=plain,
    )
    return sel, report
