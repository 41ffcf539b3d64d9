"""CP (CANDECOMP/PARAFAC) and SeKron: exact one way, a CP-ALS fit the other."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tensorly.cp_tensor import CPTensor, cp_to_tensor

from .._validation import as_nonnegative_float, as_positive_int, as_rank, as_shape
from ..errors import ArgumentTypeError, ShapeError
from ..structure import Structure
from ..tensor import SeKronTensor
from ._parse import cp_parts
from ._train import mode_shapes, sekron_from_train

__all__ = ["cp_structure", "from_cp", "to_cp"]


def _relative_error(W: np.ndarray, approx: np.ndarray) -> float:
    norm = float(np.linalg.norm(W.ravel().astype(np.float64)))
    diff = float(np.linalg.norm((W.astype(np.float64) - approx.astype(np.float64)).ravel()))
    return 0.0 if norm == 0.0 else diff / norm


def from_cp(cp: Any) -> SeKronTensor:
    r"""Exact SeKron form of a CP tensor.

    Parameters
    ----------
    cp : tensorly.cp_tensor.CPTensor or pair ``(weights, factors)``
        ``weights`` of shape ``(R,)`` (or None for ones) and N factors ``U_k`` of shape
        ``(n_k, R)`` (a 1-d factor is read as ``(n_k, 1)``, as tensorly does).

    Returns
    -------
    SeKronTensor, shape ``(n_1, ..., n_N)``
        ``S = N`` factors, factor k non-trivial only on mode k, ranks ``(R, 1, ..., 1)``:
        ``A_1[r] = w_r U_1[:, r]`` (the weights folded in) and ``A_k[r, 1..] = U_k[:, r]``
        (copied). When ``R > min(n_1, n_2...n_N)`` (a rank the first SeKron level cannot
        hold), the CP is written as a train with diagonal cores and converted like
        :func:`~sekron.formats.from_tt` (exact, other ranks). A one-mode CP becomes a
        two-factor SeKron with a trailing trivial factor.

    Raises
    ------
    FormatError
        Factors with different numbers of columns, a factor that is not 2-d, or weights
        of the wrong length (the message names the factor and the shapes).
    NonFiniteError, DTypeError
        For non-finite or non-numeric input.

    Notes
    -----
    :math:`W = \sum_r w_r\, U_1[:, r] \circ \cdots \circ U_N[:, r]`; with factors on
    disjoint modes the Kronecker product is the outer product, and rank 1 at levels
    ``k >= 2`` makes every later factor depend on the first-level index only.

    Examples
    --------
    >>> import numpy as np, tensorly as tl
    >>> import sekron as sk
    >>> cp = tl.random.random_cp((5, 4, 3), rank=3, random_state=0)
    >>> t = sk.formats.from_cp(cp)
    >>> t.structure.ranks
    (3, 1)
    >>> np.allclose(t.to_dense(), tl.cp_to_tensor(cp))
    True
    """
    weights, factors = cp_parts(cp)
    dims = [f.shape[0] for f in factors]
    N, R = len(factors), factors[0].shape[1]
    if N == 1 or R > min(dims[0], int(np.prod(dims[1:]))):
        cores = [(factors[0] * weights)[None]]
        for U in factors[1:-1]:
            G = np.zeros((R, U.shape[0], R), dtype=U.dtype)
            G[np.arange(R), :, np.arange(R)] = U.T
            cores.append(G)
        if N > 1:
            cores.append(np.ascontiguousarray(factors[-1].T)[:, :, None])
        else:
            cores = [cores[0].sum(axis=2, keepdims=True)]
        return sekron_from_train(cores, mode_shapes(dims))
    shapes = mode_shapes(dims)
    out = [(factors[0] * weights).T.reshape(R, *shapes[0])]
    for k in range(1, N):
        lead = (R,) + (1,) * min(k, N - 2)
        out.append(np.ascontiguousarray(factors[k].T).reshape(lead + shapes[k]))
    return SeKronTensor(out)


def _is_cp_structure(st: Structure) -> bool:
    return (
        st.n_factors == st.ndim
        and list(st.shapes) == mode_shapes(st.shape)
        and all(r == 1 for r in st.ranks[1:])
    )


def to_cp(
    t: SeKronTensor,
    rank: int,
    *,
    n_iter_max: int = 200,
    tol: float = 1e-10,
) -> tuple[CPTensor, float]:
    r"""Fit a rank-R CP tensor to a SeKron tensor (CP-ALS, deterministic).

    Parameters
    ----------
    t : SeKronTensor, shape ``(n_1, ..., n_N)``
    rank : int
        CP rank R.
    n_iter_max : int, default 200
        Most ALS sweeps.
    tol : float, default 1e-10
        Stop when the relative decrease of the reconstruction error is below this.

    Returns
    -------
    cp : tensorly.cp_tensor.CPTensor
        Weights ``(R,)`` and factors ``(n_k, R)`` of ``t.dtype``.
    relative_error : float
        ``||t − cp||_F / ||t||_F``, computed on the dense tensor (0 for a zero tensor).

    Raises
    ------
    TypeError
        If ``t`` is not a SeKronTensor.
    ValueError
        If ``rank < 1``.

    Notes
    -----
    If ``t`` has the CP structure (factor k on mode k only, ranks ``(R, 1, ..., 1)``,
    what :func:`from_cp` builds) and ``rank == R``, the CP is read off the factors
    exactly. Otherwise the dense tensor is formed and tensorly's ``parafac`` runs with
    ``init="svd"`` (leading left singular vectors of each unfolding; columns beyond a
    mode's size are filled from a fixed seed), so the result does not depend on global
    random state. CP-ALS is a local method: the error is an upper bound on the best
    rank-R error, not the optimum.

    Examples
    --------
    >>> import numpy as np, tensorly as tl
    >>> import sekron as sk
    >>> cp = tl.random.random_cp((5, 4, 3), rank=2, random_state=0)
    >>> t = sk.formats.from_cp(cp)
    >>> fit, err = sk.formats.to_cp(t, 2)
    >>> err < 1e-12
    True
    >>> fit2, err2 = sk.formats.to_cp(sk.sekron(np.arange(60.0).reshape(5, 4, 3) ** 0.5,
    ...                                         [(5, 1, 1), (1, 4, 1), (1, 1, 3)]), 2)
    >>> err2 < 0.01
    True
    """
    if not isinstance(t, SeKronTensor):
        raise ArgumentTypeError(f"t: expected a SeKronTensor, got {type(t).__name__}")
    R = as_positive_int(rank, "rank")
    n_iter_max = as_positive_int(n_iter_max, "n_iter_max")
    tol = as_nonnegative_float(tol, "tol")
    st = t.structure
    W = t.to_dense()
    if _is_cp_structure(st) and st.ranks[0] == R:
        factors = [np.ascontiguousarray(f.reshape(R, -1).T) for f in t.factors]
        cp = CPTensor((np.ones(R, dtype=t.dtype), factors))
    else:
        from tensorly.decomposition import parafac

        fit = parafac(W, R, init="svd", n_iter_max=n_iter_max, tol=tol, random_state=0)
        cp = CPTensor(
            (
                np.asarray(fit.weights, dtype=t.dtype),
                [np.asarray(f, dtype=t.dtype) for f in fit.factors],
            )
        )
    return cp, _relative_error(W, cp_to_tensor(cp))


def cp_structure(shape: Sequence[int], rank: int, *, clip: bool = False) -> Structure:
    """The SeKron structure that mirrors a rank-R CP tensor of the given shape.

    Parameters
    ----------
    shape : sequence of N >= 2 ints
    rank : int
        CP rank R.
    clip : bool, default False
        Clip R to the largest useful rank ``min(n_1, n_2...n_N)`` instead of raising.

    Returns
    -------
    Structure
        Factor shapes ``(1, .., n_k, .., 1)``, ranks ``(R, 1, ..., 1)``; its parameter
        count ``R Σ n_k`` is the CP's (weights folded in).

    Raises
    ------
    ShapeError
        If ``shape`` has fewer than 2 modes.
    RankError
        If ``rank < 1`` or (without ``clip``) ``rank > min(n_1, n_2...n_N)``.

    Notes
    -----
    ``sk.sekron`` on this structure is not CP-ALS: level 1 keeps the R leading singular
    vectors of the mode-1 unfolding and every branch's remainder is then fitted by a rank-1
    Kronecker sequence, i.e. a rank-1 approximation per remainder; its error is in
    general larger than CP-ALS's. Use :func:`to_cp` for a CP fit.

    Examples
    --------
    >>> import sekron as sk
    >>> st = sk.formats.cp_structure((6, 5, 4), 3)
    >>> st.ranks, st.n_params
    ((3, 1), 45)
    """
    dims = as_shape(shape, "shape")
    if len(dims) < 2:
        raise ShapeError(f"shape: expected at least 2 modes for a SeKron structure, got {dims}")
    R = as_rank(rank, "rank")
    return Structure(mode_shapes(dims), (R,) + (1,) * (len(dims) - 2), clip=clip)
