"""Products of a SeKron operator with dense matrices, level by level, never densified.

The contraction itself (its plan, cost and numpy executor) is :mod:`sekron.contraction`,
in the core so that ``SeKronTensor @`` uses it too; this module adds dense operators.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._validation import as_float_array
from ..contraction import as_operand, matmul_factors, rmatmul_factors
from ..errors import ShapeError
from ..tensor import SeKronTensor

__all__ = ["matmul", "rmatmul"]


def _check_op(op: Any, name: str) -> Any:
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
    :func:`sekron.Structure.macs_matmul`'s count is run (:func:`sekron.contraction.linear_plan`).

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
    if isinstance(op, SeKronTensor):
        return matmul_factors(op.factors, X)
    return np.matmul(op, as_operand(X, op.shape))


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
    if isinstance(op, SeKronTensor):
        return rmatmul_factors(X, op.factors)
    return np.matmul(as_operand(X, op.shape, left=True), op)
