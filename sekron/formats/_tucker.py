"""Tucker and SeKron: exact one way, an HOSVD fit the other."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from tensorly.tucker_tensor import TuckerTensor, tucker_to_tensor

from .._validation import as_rank, as_shape, rank_error
from ..errors import ArgumentTypeError, RankError, ShapeError
from ..structure import Structure
from ..tensor import SeKronTensor
from ._cp import _relative_error
from ._parse import tucker_parts
from ._train import mode_shapes, sekron_from_train

__all__ = ["from_tucker", "to_tucker", "tucker_structure"]


def _as_train(core: np.ndarray, factors: list[np.ndarray]) -> list[np.ndarray]:
    """Tucker as a train whose bond after mode k carries the prefix ``(r_1..r_k)``."""
    N = len(factors)
    if N == 1:
        return [(factors[0] @ core)[None, :, None]]
    cores = [factors[0][None]]
    P = factors[0].shape[1]
    for U in factors[1:-1]:
        n, r = U.shape
        eye = np.eye(P, dtype=U.dtype)
        cores.append(np.einsum("pq,ir->piqr", eye, U).reshape(P, n, P * r))
        P *= r
    last = core.reshape(P, core.shape[-1]) @ factors[-1].T  # (P, n_N)
    cores.append(last[:, :, None])
    return cores


def from_tucker(tucker: Any) -> SeKronTensor:
    r"""Exact SeKron form of a Tucker tensor.

    Parameters
    ----------
    tucker : tensorly.tucker_tensor.TuckerTensor or pair ``(core, factors)``
        Core of shape ``(r_1, ..., r_N)`` and N factors ``U_k`` of shape ``(n_k, r_k)``.

    Returns
    -------
    SeKronTensor, shape ``(n_1, ..., n_N)``
        ``S = N`` factors, factor k non-trivial only on mode k, ranks
        ``(r_1, ..., r_{N−1})``: ``A_k[r_1..r_k] = U_k[:, r_k]`` for ``k < N`` (copied)
        and the last factor absorbs the core,
        ``A_N[r_1..r_{N−1}] = U_N G[r_1..r_{N−1}, :]``. When some ``r_k`` exceeds the
        largest useful SeKron rank ``min(n_k, n_{k+1}...n_N)``, the Tucker tensor is
        written as a train (bond = prefix of core indices) and converted like
        :func:`~sekron.formats.from_tt` (exact, other ranks). A one-mode Tucker tensor
        gets a trailing trivial factor.

    Raises
    ------
    FormatError
        If the number of factors differs from the core's ndim, a factor is not 2-d, or
        factor k's column count differs from ``core.shape[k]``.
    NonFiniteError, DTypeError
        For non-finite or non-numeric input.

    Notes
    -----
    :math:`W = G \times_1 U_1 \cdots \times_N U_N
    = \sum_{r_1..r_{N−1}} U_1[:, r_1] \circ \cdots \circ U_{N−1}[:, r_{N−1}] \circ
    (U_N G[r_1..r_{N−1}, :])`; every branch of the SeKron tree is one core fibre.

    Examples
    --------
    >>> import numpy as np, tensorly as tl
    >>> import sekron as sk
    >>> tk = tl.random.random_tucker((5, 4, 3), rank=(2, 3, 2), random_state=0)
    >>> t = sk.formats.from_tucker(tk)
    >>> t.structure.ranks
    (2, 3)
    >>> np.allclose(t.to_dense(), tl.tucker_to_tensor(tk))
    True
    """
    core, factors = tucker_parts(tucker)
    dims = [U.shape[0] for U in factors]
    ranks = [U.shape[1] for U in factors]
    N = len(factors)
    shapes = mode_shapes(dims)
    ok = N >= 2 and all(ranks[k] <= min(dims[k], math.prod(dims[k + 1 :])) for k in range(N - 1))
    if not ok:
        return sekron_from_train(_as_train(core, factors), shapes)
    out = []
    for k in range(N - 1):
        lead = tuple(ranks[:k])
        A = np.broadcast_to(factors[k].T, (*lead, ranks[k], dims[k]))
        out.append(np.ascontiguousarray(A).reshape(lead + (ranks[k],) + shapes[k]))
    P = math.prod(ranks[:-1])
    last = core.reshape(P, ranks[-1]) @ factors[-1].T
    out.append(last.reshape(tuple(ranks[:-1]) + shapes[-1]))
    return SeKronTensor(out)


def _tucker_ranks(ranks: Any, dims: tuple[int, ...]) -> tuple[int, ...]:
    N = len(dims)
    full = tuple(min(dims[k], math.prod(dims) // dims[k]) for k in range(N))
    if ranks is None:
        return full
    if isinstance(ranks, (int, np.integer)) and not isinstance(ranks, bool):
        vals = [ranks] * N
    elif isinstance(ranks, Sequence) and not isinstance(ranks, str) and len(ranks) == N:
        vals = list(ranks)
    else:
        raise RankError(f"ranks: expected None, an int or {N} ints, got {ranks!r}")
    out = []
    for k, r in enumerate(vals):
        r = as_rank(r, f"ranks[{k}]")
        if r > full[k]:
            raise rank_error(
                f"ranks[{k}]", r, full[k], f"min(n_{k + 1}, product of the other modes)"
            )
        out.append(r)
    return tuple(out)


def to_tucker(t: SeKronTensor, ranks: Any = None) -> tuple[TuckerTensor, float]:
    r"""Tucker approximation of a SeKron tensor by truncated HOSVD.

    Parameters
    ----------
    t : SeKronTensor, shape ``(n_1, ..., n_N)``
    ranks : None, int, or sequence of N ints
        Multilinear ranks; ``None`` means full, ``min(n_k, prod_{j≠k} n_j)``, which makes
        the result exact up to rounding.

    Returns
    -------
    tucker : tensorly.tucker_tensor.TuckerTensor
        Orthonormal factors ``(n_k, r_k)`` and core ``(r_1..r_N)`` of ``t.dtype``.
    relative_error : float
        ``||t − tucker||_F / ||t||_F``, computed on the dense tensor (0 for a zero tensor).

    Raises
    ------
    TypeError
        If ``t`` is not a SeKronTensor.
    RankError
        For a rank below 1 or above ``min(n_k, prod_{j≠k} n_j)``.

    Notes
    -----
    ``U_k`` holds the ``r_k`` leading left singular vectors of the mode-k unfolding of
    the dense tensor and the core is :math:`W \times_1 U_1^T \cdots \times_N U_N^T`.
    The error is at most :math:`\sqrt{N}` times the best rank-``(r_1..r_N)`` error
    (De Lathauwer et al., 2000); it is not refined by HOOI.

    Examples
    --------
    >>> import numpy as np
    >>> import sekron as sk
    >>> rng = np.random.default_rng(0)
    >>> t = sk.sekron(rng.normal(size=(6, 5, 4)), [(6, 1, 1), (1, 5, 1), (1, 1, 4)], ranks=(2, 2))
    >>> tk, err = sk.formats.to_tucker(t)
    >>> tk.rank, err < 1e-12
    ((6, 5, 4), True)
    >>> tk2, err2 = sk.formats.to_tucker(t, (2, 4, 4))
    >>> err2 < 1e-12
    True
    """
    if not isinstance(t, SeKronTensor):
        raise ArgumentTypeError(f"t: expected a SeKronTensor, got {type(t).__name__}")
    W = t.to_dense()
    dims = tuple(W.shape)
    rks = _tucker_ranks(ranks, dims)
    factors = []
    for k, r in enumerate(rks):
        unfolding = np.moveaxis(W, k, 0).reshape(dims[k], -1)
        U = np.linalg.svd(unfolding, full_matrices=False)[0]
        factors.append(np.ascontiguousarray(U[:, :r]))
    core = W
    for k, U in enumerate(factors):
        core = np.moveaxis(np.tensordot(U.T, core, axes=(1, k)), 0, k)
    tk = TuckerTensor((np.ascontiguousarray(core), factors))
    return tk, _relative_error(W, tucker_to_tensor(tk))


def tucker_structure(shape: Sequence[int], ranks: Any, *, clip: bool = False) -> Structure:
    """The SeKron structure that mirrors a Tucker tensor of the given shape and ranks.

    Parameters
    ----------
    shape : sequence of N >= 2 ints
    ranks : int, sequence of N−1 ints, or sequence of N ints
        Tucker ranks ``r_1..r_{N−1}``; a last rank ``r_N`` is accepted and ignored: the
        last SeKron factor absorbs the core and is stored in full, ``(n_N)`` per branch.
    clip : bool, default False
        Clip ranks above the largest useful SeKron rank ``min(n_k, n_{k+1}...n_N)``
        instead of raising.

    Returns
    -------
    Structure
        Factor shapes ``(1, .., n_k, .., 1)`` and ranks ``(r_1, ..., r_{N−1})``;
        parameters ``Σ_{k<N} r_1..r_k n_k + r_1..r_{N−1} n_N``.

    Raises
    ------
    ShapeError
        If ``shape`` has fewer than 2 modes.
    RankError
        For malformed ranks or (without ``clip``) a rank above the largest useful one.

    Notes
    -----
    A Tucker tensor of ranks ``(r_1..r_N)`` has this structure, but the structure is
    richer: level-k factors may differ between branches, while Tucker shares ``U_k``.
    ``sk.sekron`` on it fits branch-wise SVDs (error never above sequentially truncated
    HOSVD's with ``r_N = n_N``) at a parameter count that grows like ``r_1 ... r_k``.

    Examples
    --------
    >>> import sekron as sk
    >>> sk.formats.tucker_structure((6, 5, 4), (2, 3)).ranks
    (2, 3)
    """
    dims = as_shape(shape, "shape")
    N = len(dims)
    if N < 2:
        raise ShapeError(f"shape: expected at least 2 modes for a SeKron structure, got {dims}")
    if isinstance(ranks, (int, np.integer)) and not isinstance(ranks, bool):
        vals: list[Any] = [ranks] * (N - 1)
    elif isinstance(ranks, Sequence) and not isinstance(ranks, str) and len(ranks) in (N - 1, N):
        vals = list(ranks)[: N - 1]
    else:
        raise RankError(f"ranks: expected an int, {N - 1} or {N} ints, got {ranks!r}")
    return Structure(mode_shapes(dims), tuple(vals), clip=clip)
