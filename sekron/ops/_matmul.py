"""Products of a SeKron operator with dense matrices, level by level, never densified."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._cost import matmul_level_costs
from .._validation import as_float_array
from ..errors import ShapeError
from ..tensor import SeKronTensor

__all__ = ["matmul", "rmatmul"]


def _prod(xs: Any) -> int:
    return math.prod(int(x) for x in xs)


def _inner_first(factors: list[np.ndarray], ranks: tuple[int, ...], X: np.ndarray) -> np.ndarray:
    """``W @ X`` contracting the last factor first; ``X`` is ``(n, c)``."""
    S = len(factors)
    ms = [f.shape[-2] for f in factors]
    ns = [f.shape[-1] for f in factors]
    c = X.shape[1]
    P = _prod(ranks)
    A = factors[-1].reshape(P, 1, ms[-1], ns[-1])
    # Z: (P_{S-1}, n_1..n_{S-1}, [m_S, c]); one GEMM per (instance, leading index)
    Z = np.matmul(A, X.reshape(1, _prod(ns[:-1]), ns[-1], c))
    right = ms[-1] * c
    for k in range(S - 2, -1, -1):
        Pk, R, L = _prod(ranks[:k]), ranks[k], _prod(ns[:k])
        Z = Z.reshape(Pk, R, L, ns[k], right)
        if R > 1:  # bring r_k next to n_k: one copy, then the rank sum is inside the GEMM
            Z = Z.transpose(0, 2, 1, 3, 4)
        Z = Z.reshape(Pk, L, R * ns[k], right)
        A = factors[k].reshape(Pk, R, ms[k], ns[k]).transpose(0, 2, 1, 3)
        Z = np.matmul(A.reshape(Pk, 1, ms[k], R * ns[k]), Z)
        right *= ms[k]
    return Z.reshape(_prod(ms), c)


def _outer_first(factors: list[np.ndarray], ranks: tuple[int, ...], X: np.ndarray) -> np.ndarray:
    """``W @ X`` contracting the first factor first; ranks are summed at the last level."""
    S = len(factors)
    ms = [f.shape[-2] for f in factors]
    ns = [f.shape[-1] for f in factors]
    c = X.shape[1]
    Z = X
    for k in range(S - 1):
        Pk, R, L = _prod(ranks[:k]), ranks[k], _prod(ms[:k])
        rest = _prod(ns[k + 1 :]) * c
        A = factors[k].reshape(Pk, R, 1, ms[k], ns[k])
        # (P_k, 1, L, n_k, rest) -> (P_k, R_k, L, m_k, rest): ranks stay leading
        Z = np.matmul(A, Z.reshape(Pk, 1, L, ns[k], rest))
    P, L = _prod(ranks), _prod(ms[:-1])
    Z = Z.reshape(P, L, ns[-1], c)
    A = factors[-1].reshape(P, ms[-1], ns[-1])
    if P == 1:
        Y = np.matmul(A[0], Z[0])
    else:
        Y = np.matmul(
            A.transpose(1, 0, 2).reshape(ms[-1], P * ns[-1]),
            Z.transpose(1, 0, 2, 3).reshape(L, P * ns[-1], c),
        )
    return Y.reshape(_prod(ms), c)


def _apply(op: SeKronTensor, X: np.ndarray, *, transpose: bool) -> np.ndarray:
    """``W @ X`` (or ``W.T @ X``) for a 2-D ``X`` of shape ``(n, c)``, cheaper order."""
    st = op.structure
    dtype = np.result_type(op.dtype, X.dtype)
    factors = [f.astype(dtype, copy=False) for f in op.factors]
    if transpose:
        factors = [np.swapaxes(f, -1, -2) for f in factors]
        st = _transposed(st)
    X = X.astype(dtype, copy=False)
    costs = matmul_level_costs(st, X.shape[1])
    if sum(costs["outer"]) < sum(costs["inner"]):
        return _outer_first(factors, st.ranks, X)
    return _inner_first(factors, st.ranks, X)


def _transposed(st: Any) -> Any:
    from ..structure import Structure

    return Structure([(s[1], s[0]) for s in st.shapes], st.ranks)


def _check_op(op: Any, name: str) -> SeKronTensor | np.ndarray:
    if isinstance(op, SeKronTensor):
        if op.ndim != 2:
            raise ShapeError(f"{name}: expected a 2-D SeKronTensor operator, got shape {op.shape}")
        return op
    return as_float_array(op, name, ndim=2)


def matmul(op: Any, X: Any) -> np.ndarray:
    """``op @ X`` for a 2-D SeKron operator, level by level, without forming ``op``.

    Parameters
    ----------
    op : SeKronTensor of shape (m, n), or a dense 2-D array
        Any number of factors S >= 2 and any ranks. A dense array is multiplied plainly.
    X : array_like of shape (n,) or (n, k)
        A vector or a matrix of columns.

    Returns
    -------
    ndarray of shape (m,) or (m, k)
        dtype ``result_type(op.dtype, X.dtype)`` (float32 or float64).

    Raises
    ------
    ShapeError
        If ``op`` is not 2-D, ``X`` is not 1-D or 2-D, or ``X.shape[0] != n``.
    NonFiniteError
        If ``X`` holds NaN or infinity.
    DTypeError
        If ``X`` is not real numeric.

    Notes
    -----
    With ``W = sum_r A_1[r_1] ⊗ ... ⊗ A_S[r_1..r_{S-1}]``, factor shapes ``(m_k, n_k)``,
    ``X`` is viewed as ``(n_1, ..., n_S, k)`` and each level contracts one ``n_k`` with
    a batched GEMM over the instances of factor k (S = 2: ``W x = vec(A X B^T)``).
    Two orders are available, last factor first (summing ``r_k`` inside the GEMM of
    level k) or first factor first (ranks summed at the last level); the cheaper by
    :func:`sekron.Structure.macs_matmul`'s count is run.

    Examples
    --------
    >>> import numpy as np
    >>> import sekron as sk
    >>> rng = np.random.default_rng(0)
    >>> op = sk.SeKronTensor([rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 2))])
    >>> X = rng.normal(size=(8, 3))
    >>> np.allclose(sk.matmul(op, X), op.to_dense() @ X)
    True
    >>> (op @ X[:, 0]).shape
    (15,)
    """
    op = _check_op(op, "op")
    Xa = as_float_array(X, "X")
    m, n = op.shape
    if Xa.ndim not in (1, 2) or Xa.shape[0] != n:
        raise ShapeError(
            f"X: expected shape ({n},) or ({n}, k) to multiply op of shape {op.shape}, "
            f"got {Xa.shape}"
        )
    if not isinstance(op, SeKronTensor):
        return np.matmul(op, Xa)
    X2 = Xa.reshape(n, -1)
    Y = _apply(op, X2, transpose=False)
    return Y.reshape(m) if Xa.ndim == 1 else Y


def rmatmul(X: Any, op: Any) -> np.ndarray:
    """``X @ op`` for a 2-D SeKron operator (the form linear layers use: ``x @ W.T``).

    Parameters
    ----------
    X : array_like of shape (..., m)
        A vector, a matrix of rows, or any batch of rows.
    op : SeKronTensor of shape (m, n), or a dense 2-D array
        Use ``op.T`` (a cheap view of the factors) for ``X @ W.T``.

    Returns
    -------
    ndarray of shape (..., n)
        dtype ``result_type(op.dtype, X.dtype)``.

    Raises
    ------
    ShapeError
        If ``op`` is not 2-D, ``X`` is 0-D, or ``X.shape[-1] != m``.
    NonFiniteError
        If ``X`` holds NaN or infinity.

    Notes
    -----
    ``X @ W = (W^T X^T)^T``: the rows of ``X`` become columns of the level-by-level
    product with the transposed factors (:func:`matmul`); nothing dense is formed.

    Examples
    --------
    >>> import numpy as np
    >>> import sekron as sk
    >>> rng = np.random.default_rng(1)
    >>> W = sk.SeKronTensor([rng.normal(size=(1, 2, 3)), rng.normal(size=(1, 4, 2))])
    >>> x = rng.normal(size=(5, 7, 8))
    >>> np.allclose(x @ W, x @ W.to_dense())
    True
    >>> (x[..., :6] @ W.T).shape
    (5, 7, 8)
    """
    op = _check_op(op, "op")
    Xa = as_float_array(X, "X")
    m, n = op.shape
    if Xa.ndim < 1 or Xa.shape[-1] != m:
        raise ShapeError(
            f"X: expected shape (..., {m}) to multiply op of shape {op.shape} from the left, "
            f"got {Xa.shape}"
        )
    if not isinstance(op, SeKronTensor):
        return np.matmul(Xa, op)
    batch = Xa.shape[:-1]
    X2 = Xa.reshape(-1, m).T  # (m, B): a view, the rows become columns
    Y = _apply(op, X2, transpose=True)  # (n, B)
    return np.ascontiguousarray(Y.T).reshape(batch + (n,))
