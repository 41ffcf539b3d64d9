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

:func:`linear_macs` counts both; :func:`sekron_linear` runs the cheaper one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..structure import Structure

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
        Z = Z.reshape((P,) + a + tail)
        perm = [0] + [v for n in range(N) for v in (1 + n, 1 + N + n)]
        tail = tuple(x * t for x, t in zip(a, tail, strict=True))
        Y = Z.permute(perm).reshape(P, math.prod(tail))
    return Y.reshape(tail)


def linear_macs(structure: Structure) -> dict[str, int]:
    """Multiply-adds per input row of ``W @ x`` for a 2-D structure, per order and dense.

    Returns a dict with keys ``"right"`` (innermost factor first), ``"left"``,
    ``"sekron"`` (the smaller of the two) and ``"dense"`` (``m n``).
    """
    S = structure.n_factors
    m = [s[0] for s in structure.shapes]
    n = [s[1] for s in structure.shapes]
    P = structure.instances
    right = sum(
        P[k] * math.prod(n[:k]) * m[k] * n[k] * math.prod(m[k + 1 :]) for k in range(S)
    )
    left = sum(P[k] * math.prod(m[:k]) * m[k] * n[k] * math.prod(n[k + 1 :]) for k in range(S))
    return {"right": right, "left": left, "sekron": min(right, left), "dense": math.prod(m) * math.prod(n)}


def _right_to_left(x: torch.Tensor, factors: Sequence[torch.Tensor], structure: Structure) -> torch.Tensor:
    # Z is laid out [G, n_k, P, R_k, T] with G = B·N_<k, P = P_{k-1} and T = M_>k, so a
    # level with P = 1 is one (batched) GEMM on views: no copy of the intermediate.
    S, ranks = structure.n_factors, structure.ranks
    m = [s[0] for s in structure.shapes]
    n = [s[1] for s in structure.shapes]
    B = x.shape[0]
    P_last = math.prod(ranks)
    F_last = factors[-1].reshape(P_last * m[-1], n[-1])
    Z = x.reshape(B * math.prod(n[:-1]), n[-1]).mm(F_last.t())
    for k in range(S - 2, -1, -1):
        P, R, mk, nk = math.prod(ranks[:k]), ranks[k], m[k], n[k]
        G, T = B * math.prod(n[:k]), math.prod(m[k + 1 :])
        if P == 1:
            A = factors[k].reshape(R, mk, nk).permute(1, 2, 0).reshape(mk, nk * R)
            if T == 1:
                Z = Z.reshape(G, nk * R).mm(A.t())
            else:
                Z = torch.matmul(A, Z.reshape(G, nk * R, T))
        else:
            A = factors[k].reshape(P, R, mk, nk).permute(0, 2, 3, 1).reshape(P, mk, nk * R)
            Zp = Z.reshape(G, nk, P, R, T).permute(2, 1, 3, 0, 4).reshape(P, nk * R, G * T)
            Z = torch.bmm(A, Zp).reshape(P, mk, G, T).permute(2, 0, 1, 3)
    return Z.reshape(B, math.prod(m))


def _left_to_right(x: torch.Tensor, factors: Sequence[torch.Tensor], structure: Structure) -> torch.Tensor:
    # Z is laid out [P_{k-1}, n_k, N_>k, B, M_<k]: level k is one batched GEMM over the
    # prefix ranks, then m_k moves to the end (one transpose of the intermediate).
    S, ranks = structure.n_factors, structure.ranks
    m = [s[0] for s in structure.shapes]
    n = [s[1] for s in structure.shapes]
    B = x.shape[0]
    Z = x.reshape(B, math.prod(n)).t()
    for k in range(S - 1):
        P, R, mk, nk = math.prod(ranks[:k]), ranks[k], m[k], n[k]
        A = factors[k].reshape(P, R * mk, nk)
        Y = torch.bmm(A, Z.reshape(P, nk, -1))
        Z = Y.reshape(P * R, mk, -1).transpose(1, 2)
    P = math.prod(ranks)
    A = factors[-1].reshape(P, m[-1], n[-1]).permute(1, 0, 2).reshape(m[-1], P * n[-1])
    Y = A.mm(Z.reshape(P * n[-1], -1))
    return Y.reshape(m[-1], B, math.prod(m[:-1])).permute(1, 2, 0).reshape(B, math.prod(m))


def sekron_linear(
    x: torch.Tensor, factors: Sequence[torch.Tensor], structure: Structure, order: str = "auto"
) -> torch.Tensor:
    """``x @ W.T`` for ``x`` of shape ``(B, n)`` without building ``W`` (``(B, m)`` out).

    ``order`` is ``"right"``, ``"left"`` or ``"auto"`` (the cheaper by :func:`linear_macs`).
    """
    if order == "auto":
        c = linear_macs(structure)
        order = "right" if c["right"] <= c["left"] else "left"
    if order == "right":
        return _right_to_left(x, factors, structure)
    if structure.n_factors == 2:
        # Σ_r A_r ⊗ B_r = Π (Σ_r B_r ⊗ A_r) Π': the left order is the right order of the
        # swapped pair on mode-swapped rows (two copies of rows instead of intermediates)
        (m1, n1), (m2, n2) = structure.shapes
        swapped = Structure([(m2, n2), (m1, n1)], structure.ranks)
        B = x.shape[0]
        xs = x.reshape(B, n1, n2).transpose(1, 2).reshape(B, n2 * n1)
        y = _right_to_left(xs, [factors[1], factors[0]], swapped)
        return y.reshape(B, m2, m1).transpose(1, 2).reshape(B, m1 * m2)
    return _left_to_right(x, factors, structure)
