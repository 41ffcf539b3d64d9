"""Trains of 3-d cores and SeKron tensors, both ways, exactly.

A train is a list of cores ``G_k`` of shape ``(b_k, d_k, b_{k+1})`` with
``b_0 = b_N = 1``; it stands for ``T[i_1..i_N] = G_1[:, i_1, :] ... G_N[:, i_N, :]``.
A SeKron tensor is the same object read as a tree (DESIGN.md 2.4–2.5): every branch
(prefix of rank indices) carries its own copy of the later factors. Both directions are
built here; the format modules (TT, TR, CP, Tucker, TT-matrix) only translate their
conventions into trains or into the direct "mirror" of DESIGN.md 2.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..tensor import SeKronTensor

__all__ = ["cap_right_ranks", "mode_shapes", "sekron_from_train", "train_of_sekron"]


def mode_shapes(dims: Sequence[int]) -> list[tuple[int, ...]]:
    """Factor shapes ``(1, .., n_k, .., 1)``: factor k non-trivial only on mode k."""
    N = len(dims)
    return [tuple(int(dims[k]) if n == k else 1 for n in range(N)) for k in range(N)]


def cap_right_ranks(cores: list[np.ndarray]) -> list[np.ndarray]:
    """Make every bond ``b_k <= prod_{j >= k} d_j`` by right-to-left QR (exact in exact arithmetic).

    Cores already within the bound are returned untouched (the same arrays), so the
    common case copies entries bit for bit.
    """
    cores = list(cores)
    for k in range(len(cores) - 1, 0, -1):
        b, d, b_next = cores[k].shape
        if b <= d * b_next:
            continue
        # core_k as a (b, d b') matrix M = R^T Q^T with orthonormal Q: keep Q^T as the
        # core (d b' rows) and push R^T into the core on the left.
        Q, R = np.linalg.qr(cores[k].reshape(b, d * b_next).T)
        cores[k] = np.ascontiguousarray(Q.T).reshape(Q.shape[1], d, b_next)
        left = cores[k - 1]
        cores[k - 1] = (left.reshape(-1, b) @ R.T).reshape(left.shape[0], left.shape[1], R.shape[0])
    return cores


def sekron_from_train(cores: list[np.ndarray], shapes: Sequence[Sequence[int]]) -> SeKronTensor:
    """An exact SeKron tensor for a train whose core k has ``d_k = |shapes[k]|``.

    Branch by branch, the part of the train left of level k is a vector ``v`` over the
    bond ``b_k`` (one-hot when the branch was created by mirroring). At level k:

    * if ``b_{k+1} <= d_k`` (mirror): one child per bond index r with factor
      ``Σ_a v[a] G_k[a, :, r]``; the child's vector is ``e_r``. ``R_k = b_{k+1}``.
    * otherwise (unit split): one child per index i of the factor with factor ``e_i`` and
      vector ``Σ_a v[a] G_k[a, i, :]``. ``R_k = d_k``.

    Both rewrite the branch's remainder exactly, so the result equals the train. With
    one-hot vectors the mirror copies core entries unchanged (DESIGN.md 2.5). Bonds are
    first capped by :func:`cap_right_ranks`, so every rank is within the structure's
    largest useful rank ``min(d_k, prod_{j>k} d_j)``.
    """
    cores = list(cores)
    shapes = [tuple(int(x) for x in s) for s in shapes]
    if len(cores) == 1:  # a SeKron has at least two factors: append a trivial one
        cores.append(np.ones((1, 1, 1), dtype=cores[0].dtype))
        shapes.append((1,) * len(shapes[0]))
    cores = cap_right_ranks(cores)
    dtype = cores[0].dtype
    S = len(cores)
    ranks: list[int] = []
    factors: list[np.ndarray] = []
    # Each branch's left vector: a bond index (one-hot) or a dense row of `state`.
    onehot = True
    state: np.ndarray = np.zeros(1, dtype=np.intp)
    for k in range(S - 1):
        G = cores[k]
        _b, d, b_next = G.shape
        P = math.prod(ranks)
        left = G[state] if onehot else np.einsum("pa,aib->pib", state, G)  # (P, d, b')
        if b_next <= d:  # mirror: one child per bond index
            A = left.transpose(0, 2, 1)
            onehot, state = True, np.tile(np.arange(b_next, dtype=np.intp), P)
            R = b_next
        else:  # unit split: one child per entry of the factor
            A = np.broadcast_to(np.eye(d, dtype=dtype), (P, d, d))
            onehot, state = False, left.reshape(P * d, b_next)
            R = d
        ranks.append(R)
        factors.append(np.ascontiguousarray(A).reshape((*ranks, *shapes[k])))
    last = cores[-1][:, :, 0]
    A_last = last[state] if onehot else state @ last
    factors.append(np.ascontiguousarray(A_last).reshape((*ranks, *shapes[-1])))
    return SeKronTensor(factors)


def train_of_sekron(t: SeKronTensor) -> list[np.ndarray]:
    """The block-sparse train of ``t.rearranged()``: core k is ``(P_{k-1}, |a^(k)|, P_k)``.

    Core k holds ``G_k[p, :, p R_k + r] = A_k[p, r]`` for every prefix p and zeros
    elsewhere; the last core is ``G_S[p, :, 0] = A_S[p]``. Entries are copied, so the
    train's product has exactly the rounding of a plain contraction of the factors.
    """
    st = t.structure
    S, sizes, ranks = st.n_factors, st.sizes, st.ranks
    cores = []
    for k in range(S - 1):
        P = math.prod(ranks[:k])
        R, d = ranks[k], sizes[k]
        A = t.factors[k].reshape(P, R, d)
        G = np.zeros((P, d, P, R), dtype=t.dtype)
        p = np.arange(P)
        G[p, :, p, :] = A.transpose(0, 2, 1)
        cores.append(G.reshape(P, d, P * R))
    cores.append(np.ascontiguousarray(t.factors[-1].reshape(math.prod(ranks), sizes[-1], 1)))
    return cores
