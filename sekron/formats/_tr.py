"""Tensor ring (TR) and SeKron, both ways, plus the TR-mirroring structure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from tensorly.tr_tensor import TRTensor

from .._validation import as_positive_int, as_rank, as_shape
from ..errors import RankError, ShapeError
from ..structure import Structure
from ..tensor import SeKronTensor
from ._parse import tr_cores
from ._train import mode_shapes, sekron_from_train
from ._tt import TTLayout, to_tt

__all__ = ["from_tr", "to_tr", "tr_structure"]


def _mirror_ok(cores: list[np.ndarray]) -> bool:
    dims = [c.shape[1] for c in cores]
    loop = cores[0].shape[0]
    N = len(cores)
    for k in range(N - 1):
        r = cores[k].shape[2] * (loop if k == 0 else 1)
        if r > min(dims[k], math.prod(dims[k + 1 :])):
            return False
    return True


def _mirror(cores: list[np.ndarray]) -> SeKronTensor:
    """DESIGN.md 2.5: ``R_1 = r_0 r_1``; the branch remembers the loop index for the last factor."""
    dims = [c.shape[1] for c in cores]
    shapes = mode_shapes(dims)
    L, r1 = cores[0].shape[0], cores[0].shape[2]
    ranks = [L * r1]
    factors = [cores[0].transpose(0, 2, 1).reshape(L * r1, *shapes[0])]
    loop = np.repeat(np.arange(L), r1)
    bond = np.tile(np.arange(r1), L)
    for k in range(1, len(cores) - 1):
        G = cores[k]
        r = G.shape[2]
        A = G[bond].transpose(0, 2, 1)  # (P, r, n_k)
        P = bond.size
        ranks.append(r)
        factors.append(np.ascontiguousarray(A).reshape((*ranks, *shapes[k])))
        loop, bond = np.repeat(loop, r), np.tile(np.arange(r), P)
    last = cores[-1][bond, :, loop]  # (P, n_N)
    factors.append(np.ascontiguousarray(last).reshape((*ranks, *shapes[-1])))
    return SeKronTensor(factors)


def _as_train(cores: list[np.ndarray]) -> list[np.ndarray]:
    """The ring as a train with bonds ``(loop, r_k)``: block-diagonal middle cores."""
    L = cores[0].shape[0]
    first = cores[0].transpose(1, 0, 2).reshape(1, cores[0].shape[1], -1)  # (1, n, (a, r))
    eye = np.eye(L, dtype=cores[0].dtype)
    middle = []
    for G in cores[1:-1]:
        r, n, r2 = G.shape
        block = np.einsum("ab,rnq->arnbq", eye, G).reshape(L * r, n, L * r2)
        middle.append(block)
    last = cores[-1].transpose(2, 0, 1).reshape(L * cores[-1].shape[0], cores[-1].shape[1], 1)
    return [first, *middle, last]


def from_tr(tr: Any) -> SeKronTensor:
    r"""Exact SeKron form of a tensor ring.

    Parameters
    ----------
    tr : tensorly.tr_tensor.TRTensor or sequence of arrays
        N >= 2 cores ``G_k`` of shape ``(r_{k-1}, n_k, r_k)`` with ``r_0 = r_N``.

    Returns
    -------
    SeKronTensor, shape ``(n_1, ..., n_N)``
        ``S = N`` factors, factor k non-trivial only on mode k. The loop rank is folded
        into the first level: ``R_1 = r_0 r_1``, ``R_k = r_k`` for ``k >= 2``;
        ``A_1[(a, r_1)] = G_1[a, :, r_1]``, ``A_k[.., r_k] = G_k[r_{k−1}, :, r_k]`` and the
        last factor reads the loop index a of its branch: ``A_N[..] = G_N[r_{N−1}, :, a]``
        (entries copied, dtype kept). If one of these ranks exceeds the largest useful
        SeKron rank ``min(n_k, n_{k+1}...n_N)``, the ring is written as a train with
        bonds ``(a, r_k)`` and converted like :func:`from_tt` (exact, other ranks).

    Raises
    ------
    FormatError
        Fewer than 2 cores, a core that is not 3-d, consecutive ranks that differ, or
        ``r_0 != r_N``.
    NonFiniteError, DTypeError
        For non-finite or non-numeric cores.

    Notes
    -----
    :math:`W[i] = \operatorname{tr}(G_1[:, i_1, :] \cdots G_N[:, i_N, :])
    = \sum_a \sum_r G_1[a, i_1, r_1] G_2[r_1, i_2, r_2] \cdots G_N[r_{N−1}, i_N, a]`:
    a sum over the loop index a of r_0 trains, each of which SeKron holds in its own
    level-1 branches.

    Examples
    --------
    >>> import numpy as np, tensorly as tl
    >>> import sekron as sk
    >>> tr = tl.random.random_tr((4, 3, 5), rank=(2, 2, 3, 2), random_state=0)
    >>> t = sk.formats.from_tr(tr)
    >>> t.structure.ranks
    (4, 3)
    >>> np.allclose(t.to_dense(), tl.tr_to_tensor(tr))
    True
    """
    cores = tr_cores(tr)
    if cores[0].shape[0] == 1 or not _mirror_ok(cores):
        dims = [c.shape[1] for c in cores]
        return sekron_from_train(_as_train(cores), mode_shapes(dims))
    return _mirror(cores)


def to_tr(t: SeKronTensor, layout: TTLayout = "rearranged") -> TRTensor:
    """Tensor ring of a SeKron tensor: the exact TT of :func:`to_tt` with ``r_0 = r_N = 1``.

    Parameters
    ----------
    t : SeKronTensor
    layout : {"rearranged", "modes"}, default "rearranged"
        As in :func:`to_tt`.

    Returns
    -------
    tensorly.tr_tensor.TRTensor
        Same cores as ``to_tt(t, layout)``; a TT is a ring with loop rank 1. A TR
        needs at least two cores, so a one-core result gets a trailing ``(1, 1, 1)`` core
        of ones (a mode of size 1).

    Raises
    ------
    TypeError, ValueError
        As :func:`to_tt`.

    Examples
    --------
    >>> import numpy as np, tensorly as tl
    >>> import sekron as sk
    >>> t = sk.SeKronTensor([np.ones((2, 3, 1)), np.ones((2, 1, 4))])
    >>> tr = sk.formats.to_tr(t)
    >>> tr.rank
    (1, 2, 1)
    >>> np.allclose(tl.tr_to_tensor(tr), t.to_dense())
    True
    """
    cores = list(to_tt(t, layout).factors)
    if len(cores) == 1:
        cores.append(np.ones((1, 1, 1), dtype=cores[0].dtype))
    return TRTensor(cores)


def tr_structure(shape: Sequence[int], ranks: Any, *, clip: bool = False) -> Structure:
    """The SeKron structure that mirrors a tensor ring of the given shape and TR ranks.

    Parameters
    ----------
    shape : sequence of N >= 2 ints
    ranks : int, sequence of N ints, or sequence of N+1 ints
        TR ranks: one int for every bond (including the loop), ``(r_0, ..., r_{N−1})``,
        or tensorly's ``(r_0, ..., r_{N−1}, r_0)``.
    clip : bool, default False
        Clip ranks above the largest useful SeKron rank instead of raising.

    Returns
    -------
    Structure
        Factor shapes ``(1, .., n_k, .., 1)``, ranks ``(r_0 r_1, r_2, ..., r_{N−1})``.

    Raises
    ------
    ShapeError
        If ``shape`` has fewer than 2 modes.
    RankError
        For malformed ranks, ``r_N != r_0``, or (without ``clip``) a rank above the
        largest useful one (``r_0 r_1 <= n_1`` is needed at level 1).

    Examples
    --------
    >>> import sekron as sk
    >>> sk.formats.tr_structure((8, 4, 4), (2, 3, 2, 2)).ranks
    (6, 2)
    """
    dims = as_shape(shape, "shape")
    N = len(dims)
    if N < 2:
        raise ShapeError(f"shape: expected at least 2 modes for a SeKron structure, got {dims}")
    if isinstance(ranks, (int, np.integer)) and not isinstance(ranks, bool):
        r = as_positive_int(ranks, "ranks")
        vals = [r] * (N + 1)
    elif isinstance(ranks, Sequence) and not isinstance(ranks, str):
        vals = [as_rank(r, f"ranks[{k}]") for k, r in enumerate(ranks)]
        if len(vals) == N:
            vals.append(vals[0])
        if len(vals) != N + 1:
            raise RankError(
                f"ranks: expected {N} or {N + 1} TR ranks for a {N}-way tensor, got {tuple(vals)}"
            )
        if vals[0] != vals[-1]:
            raise RankError(f"ranks: a tensor ring needs r_0 = r_N, got {tuple(vals)}")
    else:
        raise RankError(f"ranks: expected an int or a sequence of ints, got {ranks!r}")
    inner = (vals[0] * vals[1], *vals[2:N])
    return Structure(mode_shapes(dims), inner, clip=clip)
