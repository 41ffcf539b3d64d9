"""The linear SeKron contraction as a plan: array steps worked out once, run by any backend.

``W = sum_r A_1[r_1] ⊗ ... ⊗ A_S[r_1..r_{S-1}]`` with factor shapes ``(m_k, n_k)`` is
applied to a block of vectors level by level, one batched GEMM per factor, never forming
``W``. :func:`linear_plan` turns ``(shapes, ranks, layout, transpose, order)`` into a
frozen :class:`LinearPlan`: a tuple of small steps valid for any number of columns
(every batch-dependent reshape has one -1), and the multiply-adds it issues per column.
:func:`execute_linear` walks the steps with a backend; numpy runs it here (behind
``sk.matmul``, ``sk.rmatmul`` and ``SeKronTensor @``) and torch runs the same plans in
``sekron.torch`` (``SeKronLinear``), differentiably.

Why this lives in the core and not in ``sekron.ops``: DESIGN.md section 3 puts the
compute layer above the core, and DESIGN.md section 4 requires ``SeKronTensor.__matmul__``
(core). So the plan and its numpy executor sit here, importing only the foundation and
numpy (shapes and ranks are plain tuples, never a ``Structure``), which lets
``structure.py`` take its matmul cost from the plan and ``tensor.py`` multiply without an
import circle or an upward import. ``sekron.ops`` keeps the public ``matmul`` /
``rmatmul`` (dense operands, validation of the operator) on top of this module.

Layouts
-------
``"columns"``
    ``Y = W @ X`` for ``X`` of shape ``(n, c)``; the result is ``(m, c)``.
``"rows"``
    ``y = x @ W.T`` for ``x`` of shape ``(B, n)`` (a linear layer); the result is ``(B, m)``.

``transpose=True`` plans ``W.T`` instead: the executor swaps the last two axes of every
factor (a view) before the steps run. ``order`` is ``"inner"`` (last factor first; rank
sums inside each GEMM), ``"outer"`` (first factor first; ranks summed at the last level)
or ``"auto"`` (the one issuing fewer multiply-adds; ties go to ``"inner"``).

Steps and backends
------------------
``ReshapeStep(shape)`` (C order), ``TransposeStep(axes)`` and ``MatmulStep``: a batched,
broadcasting matrix product with a weight built from one factor as
``transpose(reshape(transpose(reshape(factors[factor], weight_pre_shape), weight_perm),
weight_shape), weight_post_perm)`` (the transposes skipped when ``None``), multiplied as
``weight @ x`` when ``weight_first`` else ``x @ weight``. A backend is any object with

.. code-block:: python

    reshape(x, shape: tuple[int, ...]) -> x       # C order, one -1 allowed
    transpose(x, axes: tuple[int, ...]) -> x      # out.shape[i] == x.shape[axes[i]]
    matmul(a, b) -> a @ b                         # numpy broadcasting of the batch axes

An integer backend implements the same three on mantissa arrays (``matmul`` being the
batched integer GEMM with an exact accumulator); nothing else is needed.

Examples
--------
>>> import numpy as np
>>> import sekron as sk
>>> from sekron.contraction import execute_linear, linear_plan
>>> rng = np.random.default_rng(0)
>>> op = sk.SeKronTensor([rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 2))])
>>> plan = linear_plan(op.structure.shapes, op.structure.ranks, layout="rows")
>>> x = rng.normal(size=(7, 8))
>>> np.allclose(execute_linear(plan, x, op.factors), x @ op.to_dense().T)
True
>>> plan.macs == op.structure.macs_matmul(1)["sekron"]
True
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Union

import numpy as np

from ._validation import as_float_array, as_positive_int, as_shapes
from .errors import ArgumentError, RankError, ShapeError

__all__ = [
    "LinearBackend",
    "LinearPlan",
    "LinearStep",
    "MatmulStep",
    "NumpyLinearBackend",
    "ReshapeStep",
    "TransposeStep",
    "as_operand",
    "execute_linear",
    "linear_plan",
    "linear_weight",
    "matmul_factors",
    "rmatmul_factors",
]

LAYOUTS = ("columns", "rows")
ORDERS = ("auto", "inner", "outer")


def _prod(xs: Any) -> int:
    return math.prod(int(x) for x in xs)


@dataclass(frozen=True)
class ReshapeStep:
    """Reshape (C order) to ``shape``; an entry of -1 stands for the batch-dependent axis.

    Examples
    --------
    >>> from sekron.contraction import linear_plan
    >>> plan = linear_plan([(2, 3), (4, 5)], [2], order="inner")
    >>> plan.steps[0], plan.steps[-1]
    (ReshapeStep(shape=(1, 3, 5, -1)), ReshapeStep(shape=(8, -1)))
    """

    shape: tuple[int, ...]


@dataclass(frozen=True)
class TransposeStep:
    """Permute the axes: ``out.shape[i] == x.shape[axes[i]]``.

    Examples
    --------
    >>> from sekron.contraction import TransposeStep, linear_plan
    >>> plan = linear_plan([(2, 3), (4, 5)], [2], order="inner")
    >>> [s for s in plan.steps if isinstance(s, TransposeStep)]
    [TransposeStep(axes=(0, 2, 1, 3, 4))]
    """

    axes: tuple[int, ...]


@dataclass(frozen=True)
class MatmulStep:
    """A batched matrix product of the state with a weight built from one factor.

    The weight is ``reshape(factors[factor], weight_pre_shape)``, then permuted by
    ``weight_perm``, reshaped to ``weight_shape`` and permuted by ``weight_post_perm``
    (``None``: no permutation). ``weight_first``: ``weight @ x``, else ``x @ weight``.
    ``macs`` is the multiply-adds this step issues per column (per row).

    Examples
    --------
    >>> from sekron.contraction import MatmulStep, linear_plan
    >>> plan = linear_plan([(2, 3), (4, 5)], [2], layout="rows", order="inner")
    >>> mm = [s for s in plan.steps if isinstance(s, MatmulStep)]
    >>> [(s.factor, s.weight_shape, s.weight_first, s.macs) for s in mm]
    [(1, (8, 5), False, 120), (0, (2, 6), True, 48)]
    >>> sum(s.macs for s in mm) == plan.macs
    True
    """

    factor: int
    weight_pre_shape: tuple[int, ...]
    weight_perm: tuple[int, ...] | None
    weight_shape: tuple[int, ...]
    weight_post_perm: tuple[int, ...] | None
    weight_first: bool
    macs: int


LinearStep = Union[ReshapeStep, TransposeStep, MatmulStep]  # noqa: UP007 (py3.10 alias)


@dataclass(frozen=True)
class LinearPlan:
    """The level-by-level product of a 2-D SeKron operator, for any number of columns.

    Attributes
    ----------
    shapes : tuple of (m_k, n_k) pairs
        The operator's factor shapes (not transposed).
    ranks : tuple of ints
    layout : {"columns", "rows"}
    transpose : bool
        Whether the plan applies ``W.T``.
    order : {"inner", "outer"}
    in_size, out_size : int
        Length of the vectors the plan reads and writes.
    steps : tuple of steps
    macs : int
        Multiply-adds per column (per row), the sum over the matmul steps.

    Examples
    --------
    >>> from sekron.contraction import linear_plan
    >>> plan = linear_plan([(2, 3), (4, 5)], [2], layout="rows")
    >>> plan.order, plan.in_size, plan.out_size, plan.macs, len(plan.steps)
    ('outer', 15, 8, 140, 9)
    >>> str(plan).splitlines()[0]
    'LinearPlan rows outer 15 -> 8, 140 MACs/column'
    """

    shapes: tuple[tuple[int, int], ...]
    ranks: tuple[int, ...]
    layout: str
    transpose: bool
    order: str
    in_size: int
    out_size: int
    steps: tuple[LinearStep, ...]
    macs: int

    def __str__(self) -> str:
        head = (
            f"LinearPlan {self.layout} {self.order}{' transposed' if self.transpose else ''}"
            f" {self.in_size} -> {self.out_size}, {self.macs} MACs/column"
        )
        return "\n".join([head] + [f"  {s}" for s in self.steps])


class _Builder:
    """Collects steps while tracking the state's shape for one column (to count MACs)."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape
        self.steps: list[LinearStep] = []

    def reshape(self, shape: tuple[int, ...]) -> None:
        known = _prod(s for s in shape if s != -1)
        self.shape = tuple(_prod(self.shape) // known if s == -1 else s for s in shape)
        if self.steps and isinstance(self.steps[-1], ReshapeStep):
            self.steps.pop()  # a reshape of a reshape: only the last one matters
        self.steps.append(ReshapeStep(shape))

    def transpose(self, axes: tuple[int, ...]) -> None:
        self.shape = tuple(self.shape[a] for a in axes)
        self.steps.append(TransposeStep(axes))

    def matmul(
        self,
        factor: int,
        pre: tuple[int, ...],
        perm: Any,
        final: tuple[int, ...],
        post: Any = None,
        first: bool = True,
    ) -> None:
        w = final if post is None else tuple(final[a] for a in post)
        a, b = (w, self.shape) if first else (self.shape, w)
        batch = np.broadcast_shapes(a[:-2], b[:-2])
        self.shape = (*tuple(batch), a[-2], b[-1])
        if perm is not None and tuple(perm) == tuple(range(len(perm))):
            perm = None
        self.steps.append(
            MatmulStep(factor, pre, perm, final, post, first, _prod(self.shape) * a[-1])
        )


def _columns_inner(b: _Builder, m: list[int], n: list[int], ranks: tuple[int, ...]) -> None:
    S = len(m)
    b.reshape((1, _prod(n[:-1]), n[-1], -1))
    pre = (_prod(ranks), m[-1], n[-1])
    b.matmul(S - 1, pre, None, (pre[0], 1, m[-1], n[-1]))
    for k in range(S - 2, -1, -1):
        Pk, R, L = _prod(ranks[:k]), ranks[k], _prod(n[:k])
        b.reshape((Pk, R, L, n[k], -1))
        if R > 1:  # bring r_k next to n_k: one copy, then the rank sum is inside the GEMM
            b.transpose((0, 2, 1, 3, 4))
        b.reshape((Pk, L, R * n[k], -1))
        b.matmul(k, (Pk, R, m[k], n[k]), (0, 2, 1, 3), (Pk, 1, m[k], R * n[k]))
    b.reshape((_prod(m), -1))


def _columns_outer(b: _Builder, m: list[int], n: list[int], ranks: tuple[int, ...]) -> None:
    S = len(m)
    for k in range(S - 1):
        Pk, R, L = _prod(ranks[:k]), ranks[k], _prod(m[:k])
        b.reshape((Pk, 1, L, n[k], -1))  # ranks stay leading: (P_k, R_k, L, m_k, rest)
        b.matmul(k, (Pk, R, 1, m[k], n[k]), None, (Pk, R, 1, m[k], n[k]))
    P, L = _prod(ranks), _prod(m[:-1])
    if P == 1:
        b.reshape((L, n[-1], -1))
        b.matmul(S - 1, (m[-1], n[-1]), None, (m[-1], n[-1]))
    else:
        b.reshape((P, L, n[-1], -1))
        b.transpose((1, 0, 2, 3))
        b.reshape((L, P * n[-1], -1))
        b.matmul(S - 1, (P, m[-1], n[-1]), (1, 0, 2), (m[-1], P * n[-1]))
    b.reshape((_prod(m), -1))


def _rows_inner(
    b: _Builder, m: list[int], n: list[int], ranks: tuple[int, ...], index: Sequence[int]
) -> None:
    # Z is laid out [G, n_k, P, R_k, T] with G = B·N_<k, P = P_{k-1} and T = M_>k, so a
    # level with P = 1 is one (batched) GEMM on views: no copy of the intermediate.
    S = len(m)
    b.reshape((-1, n[-1]))
    b.matmul(
        index[-1],
        (_prod(ranks) * m[-1], n[-1]),
        None,
        (_prod(ranks) * m[-1], n[-1]),
        (1, 0),
        first=False,
    )
    for k in range(S - 2, -1, -1):
        P, R, mk, nk = _prod(ranks[:k]), ranks[k], m[k], n[k]
        T = _prod(m[k + 1 :])
        if P == 1:
            if T == 1:
                b.reshape((-1, nk * R))
                b.matmul(index[k], (R, mk, nk), (1, 2, 0), (mk, nk * R), (1, 0), first=False)
            else:
                b.reshape((-1, nk * R, T))
                b.matmul(index[k], (R, mk, nk), (1, 2, 0), (mk, nk * R))
        else:
            b.reshape((-1, nk, P, R, T))
            b.transpose((2, 1, 3, 0, 4))
            b.reshape((P, nk * R, -1))
            b.matmul(index[k], (P, R, mk, nk), (0, 2, 3, 1), (P, mk, nk * R))
            b.reshape((P, mk, -1, T))
            b.transpose((2, 0, 1, 3))
    b.reshape((-1, _prod(m)))


def _rows_outer(b: _Builder, m: list[int], n: list[int], ranks: tuple[int, ...]) -> None:
    S = len(m)
    if S == 2:
        # Σ_r A_r ⊗ B_r = Π (Σ_r B_r ⊗ A_r) Π': the outer order is the inner order of the
        # swapped pair on mode-swapped rows (two copies of rows instead of intermediates)
        b.reshape((-1, n[0], n[1]))
        b.transpose((0, 2, 1))
        _rows_inner(b, m[::-1], n[::-1], ranks, (1, 0))
        b.reshape((-1, m[1], m[0]))
        b.transpose((0, 2, 1))
        b.reshape((-1, m[0] * m[1]))
        return
    # Z is laid out [P_{k-1}, n_k, N_>k, B, M_<k]: level k is one batched GEMM over the
    # prefix ranks, then m_k moves to the end (one transpose of the intermediate).
    b.transpose((1, 0))
    for k in range(S - 1):
        P, R, mk, nk = _prod(ranks[:k]), ranks[k], m[k], n[k]
        b.reshape((P, nk, -1))
        b.matmul(k, (P, R * mk, nk), None, (P, R * mk, nk))
        b.reshape((P * R, mk, -1))
        b.transpose((0, 2, 1))
    P = _prod(ranks)
    b.reshape((P * n[-1], -1))
    b.matmul(S - 1, (P, m[-1], n[-1]), (1, 0, 2), (m[-1], P * n[-1]))
    b.reshape((m[-1], -1, _prod(m[:-1])))
    b.transpose((1, 2, 0))
    b.reshape((-1, _prod(m)))


def _build(
    shapes: tuple[tuple[int, int], ...],
    ranks: tuple[int, ...],
    layout: str,
    transpose: bool,
    order: str,
) -> LinearPlan:
    eff = [(s[1], s[0]) for s in shapes] if transpose else list(shapes)
    m, n = [s[0] for s in eff], [s[1] for s in eff]
    N = _prod(n)
    if layout == "columns":
        b = _Builder((N, 1))
        (_columns_inner if order == "inner" else _columns_outer)(b, m, n, ranks)
    else:
        b = _Builder((1, N))
        if order == "inner":
            _rows_inner(b, m, n, ranks, range(len(m)))
        else:
            _rows_outer(b, m, n, ranks)
    macs = sum(s.macs for s in b.steps if isinstance(s, MatmulStep))
    return LinearPlan(shapes, ranks, layout, transpose, order, N, _prod(m), tuple(b.steps), macs)


@functools.lru_cache(maxsize=512)
def _cached_plan(
    shapes: tuple[tuple[int, int], ...],
    ranks: tuple[int, ...],
    layout: str,
    transpose: bool,
    order: str,
) -> LinearPlan:
    if order != "auto":
        return _build(shapes, ranks, layout, transpose, order)
    inner = _build(shapes, ranks, layout, transpose, "inner")
    outer = _build(shapes, ranks, layout, transpose, "outer")
    return outer if outer.macs < inner.macs else inner


def _check_ranks(ranks: Any, n_levels: int) -> tuple[int, ...]:
    if isinstance(ranks, str) or not isinstance(ranks, Sequence) or len(ranks) != n_levels:
        raise RankError(f"ranks: expected a sequence of {n_levels} positive ints, got {ranks!r}")
    try:
        return tuple(as_positive_int(r, f"ranks[{k}]") for k, r in enumerate(ranks))
    except (TypeError, ValueError) as exc:
        raise RankError(str(exc)) from None


def linear_plan(
    shapes: Sequence[Sequence[int]],
    ranks: Sequence[int],
    *,
    layout: str = "columns",
    transpose: bool = False,
    order: str = "auto",
) -> LinearPlan:
    """Plan the level-by-level product of a 2-D SeKron operator.

    Parameters
    ----------
    shapes : sequence of S >= 2 pairs (m_k, n_k)
        Factor shapes of ``W`` (``Structure.shapes``).
    ranks : sequence of S-1 positive ints
    layout : {"columns", "rows"}, default "columns"
        ``W @ X`` on ``X`` of shape ``(n, c)``, or ``x @ W.T`` on ``x`` of shape ``(B, n)``.
    transpose : bool, default False
        Plan ``W.T`` instead of ``W``.
    order : {"auto", "inner", "outer"}, default "auto"
        Last factor first, first factor first, or the one with fewer multiply-adds.

    Returns
    -------
    LinearPlan
        Frozen and cached; valid for any number of columns (rows).

    Raises
    ------
    ShapeError
        If ``shapes`` are not S >= 2 pairs.
    RankError
        If ``ranks`` are not S-1 positive ints.
    ValueError
        For an unknown ``layout`` or ``order``.

    Examples
    --------
    >>> from sekron.contraction import linear_plan
    >>> plan = linear_plan([(64, 64), (64, 64)], [1])
    >>> plan.order, plan.macs, [type(s).__name__ for s in plan.steps]
    ('inner', 524288, ['ReshapeStep', 'MatmulStep', 'ReshapeStep', 'MatmulStep', 'ReshapeStep'])
    """
    # a layer asks for its plan on every call: plain int tuples (a Structure's) that were
    # validated once are looked up directly (ints only, since True == 1 as a dict key)
    plain = _plain_ints(ranks) and type(shapes) is tuple and all(map(_plain_ints, shapes))
    key = (shapes, ranks, layout, transpose, order)
    if plain and key in _VALIDATED:
        return _VALIDATED[key]
    plan = _validated_plan(shapes, ranks, layout, transpose, order)
    if plain and type(layout) is str and type(order) is str and type(transpose) is bool:
        if len(_VALIDATED) >= 1024:
            _VALIDATED.clear()
        _VALIDATED[key] = plan
    return plan


def _plain_ints(x: Any) -> bool:
    return type(x) is tuple and all(type(v) is int for v in x)


_VALIDATED: dict[Any, LinearPlan] = {}


def _validated_plan(shapes: Any, ranks: Any, layout: Any, transpose: Any, order: Any) -> LinearPlan:
    shapes_t = as_shapes(shapes, "shapes")
    if len(shapes_t) < 2 or any(len(s) != 2 for s in shapes_t):
        raise ShapeError(f"shapes: expected S >= 2 pairs (m_k, n_k), got {shapes!r}")
    if layout not in LAYOUTS:
        raise ArgumentError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    if order not in ORDERS:
        raise ArgumentError(f"order: expected one of {ORDERS}, got {order!r}")
    ranks_t = _check_ranks(ranks, len(shapes_t) - 1)
    pairs = tuple((int(s[0]), int(s[1])) for s in shapes_t)
    return _cached_plan(pairs, ranks_t, layout, bool(transpose), order)


class LinearBackend(Protocol):
    """What :func:`execute_linear` needs from an array library (see the module docstring).

    Examples
    --------
    Any object with the three methods will do, here numpy's with a traced ``matmul``:

    >>> import numpy as np
    >>> from sekron.contraction import NumpyLinearBackend, execute_linear, linear_plan
    >>> class Traced(NumpyLinearBackend):
    ...     def matmul(self, a, b):
    ...         print("matmul", a.shape, b.shape)
    ...         return super().matmul(a, b)
    >>> plan = linear_plan([(2, 3), (4, 5)], [1])
    >>> y = execute_linear(plan, np.ones((15, 7)), [np.ones((1, 2, 3)), np.ones((1, 4, 5))], Traced())
    matmul (1, 1, 1, 2, 3) (1, 1, 1, 3, 35)
    matmul (4, 5) (2, 5, 7)
    """

    def reshape(self, x: Any, shape: tuple[int, ...]) -> Any:
        """Return ``x`` regrouped (C order) to ``shape``."""
        ...

    def transpose(self, x: Any, axes: tuple[int, ...]) -> Any:
        """Return ``x`` with its axes permuted by ``axes``."""
        ...

    def matmul(self, a: Any, b: Any) -> Any:
        """Return the (batched) matrix product ``a @ b``."""
        ...


class NumpyLinearBackend:
    """numpy arrays: ``reshape``, ``transpose`` (views where possible) and ``np.matmul``.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.contraction import NumpyLinearBackend, execute_linear, linear_plan
    >>> A, B = np.arange(6.0).reshape(1, 2, 3), np.ones((1, 4, 5))
    >>> plan = linear_plan([(2, 3), (4, 5)], [1], layout="rows")
    >>> x = np.ones((3, 15))
    >>> y = execute_linear(plan, x, [A, B], NumpyLinearBackend())
    >>> np.array_equal(y, x @ np.kron(A[0], B[0]).T)
    True
    """

    def reshape(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """``x.reshape(shape)`` (a view where possible)."""
        return x.reshape(shape)

    def transpose(self, x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        """``x.transpose(axes)`` (a view)."""
        return x.transpose(axes)

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``np.matmul(a, b)``."""
        return np.matmul(a, b)


_NUMPY = NumpyLinearBackend()


def linear_weight(step: MatmulStep, factor: Any, backend: Any) -> Any:
    """The weight of a matmul step, built from its factor by reshapes and permutations.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.contraction import NumpyLinearBackend, linear_plan, linear_weight
    >>> plan = linear_plan([(2, 3), (4, 5)], [2], layout="rows", order="inner")
    >>> step = plan.steps[1]
    >>> step.factor, step.weight_shape, step.weight_post_perm
    (1, (8, 5), (1, 0))
    >>> linear_weight(step, np.zeros((2, 4, 5)), NumpyLinearBackend()).shape
    (5, 8)
    """
    w = backend.reshape(factor, step.weight_pre_shape)
    if step.weight_perm is not None:
        w = backend.transpose(w, step.weight_perm)
    w = backend.reshape(w, step.weight_shape)
    if step.weight_post_perm is not None:
        w = backend.transpose(w, step.weight_post_perm)
    return w


def execute_linear(plan: LinearPlan, x: Any, factors: Sequence[Any], backend: Any = None) -> Any:
    """Run a :class:`LinearPlan` on ``x`` with the operator's ``factors``.

    Parameters
    ----------
    plan : LinearPlan
    x : array
        ``(in_size, c)`` for the columns layout, ``(B, in_size)`` for rows; in the
        backend's array type, not validated here (public entry points validate).
    factors : sequence of S arrays
        ``SeKronTensor.factors`` (or the backend's tensors of the same shapes), of ``W``
        even when ``plan.transpose``.
    backend : object, optional
        With ``reshape``, ``transpose`` and ``matmul``; numpy by default.

    Returns
    -------
    array
        ``(out_size, c)`` or ``(B, out_size)``.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.contraction import execute_linear, linear_plan
    >>> A, B = np.arange(6.0).reshape(1, 2, 3), np.ones((1, 2, 2))
    >>> plan = linear_plan([(2, 3), (2, 2)], [1], transpose=True)
    >>> X = np.ones((4, 1))
    >>> np.array_equal(execute_linear(plan, X, [A, B]), np.kron(A[0], B[0]).T @ X)
    True
    """
    be = _NUMPY if backend is None else backend
    if plan.transpose:
        factors = [
            be.transpose(f, (*tuple(range(f.ndim - 2)), f.ndim - 1, f.ndim - 2)) for f in factors
        ]
    for step in plan.steps:
        if isinstance(step, ReshapeStep):
            x = be.reshape(x, step.shape)
        elif isinstance(step, TransposeStep):
            x = be.transpose(x, step.axes)
        elif isinstance(step, MatmulStep):
            w = linear_weight(step, factors[step.factor], be)
            x = be.matmul(w, x) if step.weight_first else be.matmul(x, w)
        else:  # pragma: no cover - plans only hold the step types above
            raise TypeError(f"plan: unknown step {step!r}")
    return x


def _operator(
    factors: Sequence[np.ndarray],
) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...], tuple[int, ...]]:
    """Factor shapes, ranks and dense shape of a SeKron operator from its factors."""
    S = len(factors)
    if factors[0].ndim != 3:  # factor 1 holds one rank axis before its modes
        ndim = factors[0].ndim - 1
        shape = tuple(_prod(f.shape[f.ndim - ndim + i] for f in factors) for i in range(ndim))
        raise ShapeError(f"op: expected a 2-D SeKronTensor operator, got shape {shape}")
    shapes = tuple((int(f.shape[-2]), int(f.shape[-1])) for f in factors)
    shape = (math.prod(s[0] for s in shapes), math.prod(s[1] for s in shapes))
    return shapes, tuple(int(r) for r in factors[-1].shape[: S - 1]), shape


WORKSPACE_MAX_BYTES = 1 << 25
"""Largest intermediate (bytes) that :func:`matmul_factors` keeps in a reused buffer.

Each thread keeps two such buffers (ping-pong between consecutive levels), so at most
``2 * WORKSPACE_MAX_BYTES`` per thread stay allocated; larger intermediates are fresh
arrays. Why reuse at all: a fresh multi-megabyte intermediate per level makes glibc grow
and trim its heap on every call, and the page faults of re-touching that memory took
3-3.5 ms per call for a 4096x4096 operator on 256 columns (about 1,000 faults), as much
as the GEMMs themselves.
"""


class _Workspace(threading.local):
    def __init__(self) -> None:
        self.buffers = [np.empty(0, np.uint8), np.empty(0, np.uint8)]


_WORKSPACE = _Workspace()


def _buffer(slot: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray | None:
    """A C-contiguous ``shape`` array over this thread's buffer ``slot``, or None if too big."""
    nbytes = _prod(shape) * dtype.itemsize
    if nbytes > WORKSPACE_MAX_BYTES:
        return None
    buf = _WORKSPACE.buffers[slot]
    if buf.nbytes < nbytes:
        buf = _WORKSPACE.buffers[slot] = np.empty(nbytes, np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


class _WorkspaceBackend(NumpyLinearBackend):
    """numpy for one run of ``plan``: every matmul but the last writes into the workspace.

    The result never shares memory with the workspace: the last matmul writes a fresh
    array, and every later step is a view or a copy of it.
    """

    def __init__(self, plan: LinearPlan):
        self._left = sum(isinstance(s, MatmulStep) for s in plan.steps)
        self._slot = 0

    def matmul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``np.matmul(a, b)``, into this thread's next buffer unless it is the last."""
        self._left -= 1
        if self._left > 0:
            batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
            out = _buffer(self._slot, (*batch, a.shape[-2], b.shape[-1]), np.result_type(a, b))
            self._slot ^= 1
            if out is not None:
                return np.matmul(a, b, out=out)
        return np.matmul(a, b)


def _execute_numpy(plan: LinearPlan, x: np.ndarray, factors: Sequence[np.ndarray]) -> np.ndarray:
    """:func:`execute_linear` on numpy with the intermediates in the workspace."""
    return execute_linear(plan, x, factors, _WorkspaceBackend(plan))  # type: ignore[no-any-return]


def _run_numpy(factors: Sequence[np.ndarray], X: np.ndarray, plan: LinearPlan) -> np.ndarray:
    dtype = np.result_type(*(f.dtype for f in factors), X.dtype)
    fs = [f.astype(dtype, copy=False) for f in factors]
    return _execute_numpy(plan, X.astype(dtype, copy=False), fs)


def as_operand(X: Any, shape: tuple[int, int], *, left: bool = False) -> np.ndarray:
    """Validate the dense operand of ``op @ X`` (or ``X @ op`` when ``left``).

    Parameters
    ----------
    X : array_like
        ``(n,)`` or ``(n, k)`` for ``op @ X``; ``(..., m)`` for ``X @ op``.
    shape : pair of ints
        ``(m, n)``, the operator's shape.
    left : bool, default False

    Returns
    -------
    ndarray
        ``X`` as float32 or float64 (see ``sekron._validation.as_float_array``).

    Raises
    ------
    ShapeError
        If ``X`` does not fit; the message names ``X`` and both shapes.
    NonFiniteError, DTypeError
        If ``X`` holds NaN or infinity, or is not real numeric.

    Examples
    --------
    >>> from sekron.contraction import as_operand
    >>> as_operand([1, 2, 3], (2, 3)).dtype
    dtype('float64')
    """
    Xa = as_float_array(X, "X")
    m, n = shape
    if left and (Xa.ndim < 1 or Xa.shape[-1] != m):
        raise ShapeError(
            f"X: expected shape (..., {m}) to multiply op of shape {(m, n)} from the left, "
            f"got {Xa.shape}"
        )
    if not left and (Xa.ndim not in (1, 2) or Xa.shape[0] != n):
        raise ShapeError(
            f"X: expected shape ({n},) or ({n}, k) to multiply op of shape {(m, n)}, got {Xa.shape}"
        )
    return Xa


def matmul_factors(factors: Sequence[np.ndarray], X: Any) -> np.ndarray:
    """``W @ X`` for the 2-D SeKron operator with these factors (``SeKronTensor @ X``).

    Parameters
    ----------
    factors : sequence of S ndarrays
        ``SeKronTensor.factors`` of an operator of shape ``(m, n)``.
    X : array_like of shape (n,) or (n, k)

    Returns
    -------
    ndarray of shape (m,) or (m, k)
        dtype ``result_type(factors, X)`` (float32 or float64).

    Raises
    ------
    ShapeError
        If the operator is not 2-D, ``X`` is not 1-D or 2-D, or ``X.shape[0] != n``.
    NonFiniteError, DTypeError
        If ``X`` holds NaN or infinity, or is not real numeric.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.contraction import matmul_factors
    >>> A, B = np.eye(2)[None], np.arange(4.0).reshape(1, 2, 2)
    >>> matmul_factors([A, B], np.ones(4)).tolist()
    [1.0, 5.0, 1.0, 5.0]
    """
    shapes, ranks, (m, n) = _operator(factors)
    Xa = as_operand(X, (m, n))
    Y = _run_numpy(factors, Xa.reshape(n, -1), linear_plan(shapes, ranks))
    return Y.reshape(m) if Xa.ndim == 1 else Y


def rmatmul_factors(X: Any, factors: Sequence[np.ndarray]) -> np.ndarray:
    """``X @ W`` for the 2-D SeKron operator with these factors (``X @ SeKronTensor``).

    Parameters
    ----------
    X : array_like of shape (..., m)
    factors : sequence of S ndarrays
        ``SeKronTensor.factors`` of an operator of shape ``(m, n)``.

    Returns
    -------
    ndarray of shape (..., n)

    Raises
    ------
    ShapeError
        If the operator is not 2-D, ``X`` is 0-D, or ``X.shape[-1] != m``.
    NonFiniteError, DTypeError
        If ``X`` holds NaN or infinity, or is not real numeric.

    Notes
    -----
    ``X @ W = X @ (W^T)^T`` is the rows layout of the transposed plan: for rows laid out
    contiguously, every level is one GEMM (or batched GEMM) over all rows, straight into
    the ``(B, n)`` result. Rows that are the columns of a C-ordered array (``X`` given as a
    transposed view) run the columns layout on that array instead, with no copy either.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.contraction import rmatmul_factors
    >>> A, B = np.eye(2)[None], np.arange(4.0).reshape(1, 2, 2)
    >>> rmatmul_factors(np.ones(4), [A, B]).tolist()
    [2.0, 4.0, 2.0, 4.0]
    """
    shapes, ranks, (m, n) = _operator(factors)
    Xa = as_operand(X, (m, n), left=True)
    batch = Xa.shape[:-1]
    X2 = Xa.reshape(-1, m)
    if X2.ndim == 2 and X2.shape[0] > 1 and X2.T.flags.c_contiguous:
        # (B, m) is the transpose of a C-ordered (m, B): its columns are the rows of X
        Y = _run_numpy(factors, X2.T, linear_plan(shapes, ranks, transpose=True))  # (n, B)
        return np.ascontiguousarray(Y.T).reshape((*batch, n))
    # 3x faster than the columns layout on (m, B) for 64x64 factors (benchmarks/bench_matmul.py)
    Y = _run_numpy(factors, X2, linear_plan(shapes, ranks, layout="rows", transpose=True))
    return np.ascontiguousarray(Y).reshape((*batch, n))
