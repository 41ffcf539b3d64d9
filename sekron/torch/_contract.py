"""Contractions of SeKron factors in torch: the dense tensor and the structured matmul.

Everything here is differentiable torch code over the factor parameters; nothing
rebuilds the dense weight unless asked to (:func:`dense_from_factors`).

A linear weight ``W`` of shape ``(m, n) = (prod m_k, prod n_k)`` with factor k of shape
``(R_1..R_k, m_k, n_k)`` maps ``x`` (a row of ``n`` values, C-order index
``(j_1..j_S)``) to ``y = W x`` level by level. Two orders are possible:

* right to left (innermost factor first): level k costs
  ``P_k (prod_{j<k} n_j) m_k n_k (prod_{j>k} m_j)`` multiply-adds per row;
* left to right (outermost factor first): level k costs
  ``P_k (prod_{j<k} m_j) m_k n_k (prod_{j>k} n_j)`` per row.

Both are the core's plans (:mod:`sekron.contraction`, layout "rows"), executed here by
:class:`~sekron.torch.TorchBackend`; :func:`linear_macs` reads their counts and
:func:`sekron_linear` runs the cheaper one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .._validation import check_instance
from ..contraction import LinearPlan, execute_linear, linear_plan
from ..errors import ArgumentError
from ..structure import Structure
from ._conv import TorchBackend, constant_at_trace

__all__ = ["dense_from_factors", "linear_macs", "sekron_linear"]


def dense_from_factors(factors: Sequence[torch.Tensor], structure: Structure) -> torch.Tensor:
    """The dense tensor of a SeKron decomposition, contracted from the last factor back.

    Level k sums its rank index: ``Y[r_<k, (i_k, i_>k)] = Σ_{r_k} A_k[r_<k, r_k, i_k] Y[r_<k, r_k, i_>k]``
    mode by mode (DESIGN.md 2.4), which is exactly the nested sum of Kronecker products.
    Each level is one batched GEMM over the prefix ranks (``P_k`` instances, which can be
    large for layers converted from TT/Tucker) and one permutation that interleaves the
    modes; torch's einsum took tens of ms for the same work on 4-way kernels.
    """
    S, N = structure.n_factors, structure.ndim
    ranks, shapes = structure.ranks, structure.shapes
    tail = tuple(shapes[-1])
    Y = factors[-1].reshape(math.prod(ranks), math.prod(tail))
    for k in range(S - 2, -1, -1):
        P, R = math.prod(ranks[:k]), ranks[k]
        a = tuple(shapes[k])
        A = factors[k].reshape(P, R, math.prod(a)).transpose(1, 2)
        Z = torch.bmm(A, Y.reshape(P, R, math.prod(tail)))  # (P, prod a, prod tail)
        Z = Z.reshape((P, *a, *tail))
        perm = [0] + [v for n in range(N) for v in (1 + n, 1 + N + n)]
        tail = tuple(x * t for x, t in zip(a, tail, strict=True))
        Y = Z.permute(perm).reshape(P, math.prod(tail))
    return Y.reshape(tail)


def linear_macs(structure: Structure) -> dict[str, int]:
    """Multiply-adds per input row of ``x @ W.T`` for a 2-D structure, per order and dense.

    The counts are those of the plans :func:`sekron_linear` runs
    (:func:`sekron.contraction.linear_plan`), the same as ``Structure.macs_matmul``.
    Returns a dict with keys ``"right"`` (innermost factor first), ``"left"``,
    ``"sekron"`` (the plan chosen by ``order="auto"``) and ``"dense"`` (``m n``).

    Examples
    --------
    >>> import sekron as sk
    >>> from sekron.torch import linear_macs
    >>> linear_macs(sk.Structure([(16, 16), (16, 16)], ranks=1))
    {'right': 8192, 'left': 8192, 'sekron': 8192, 'dense': 65536}
    """
    check_instance(structure, "structure", Structure, "a sekron.Structure")
    right, left = (_plan(structure, o).macs for o in ("right", "left"))
    m, n = structure.shape
    return {"right": right, "left": left, "sekron": _plan(structure, "auto").macs, "dense": m * n}


_ORDERS = {"auto": "auto", "right": "inner", "left": "outer"}


@constant_at_trace  # compile/export: the plan is worked out at trace time, not traced
def _plan(structure: Structure, order: str) -> LinearPlan:
    if order not in _ORDERS:
        raise ArgumentError(f"order: expected one of {tuple(_ORDERS)}, got {order!r}")
    return linear_plan(structure.shapes, structure.ranks, layout="rows", order=_ORDERS[order])


def sekron_linear(
    x: torch.Tensor, factors: Sequence[torch.Tensor], structure: Structure, order: str = "auto"
) -> torch.Tensor:
    """``x @ W.T`` for ``x`` of shape ``(B, n)`` without building ``W`` (``(B, m)`` out).

    Runs the core's rows plan (:func:`sekron.contraction.linear_plan`) with
    :class:`~sekron.torch.TorchBackend`, so it is differentiable in ``x`` and the factors.
    ``order`` is ``"right"`` (innermost factor first), ``"left"`` or ``"auto"`` (the plan
    with fewer multiply-adds).
    """
    return execute_linear(_plan(structure, order), x, factors, _BACKEND)


_BACKEND = TorchBackend()
