"""Mode-wise Kronecker products and the multi-level Van Loan–Pitsianis rearrangement.

These three functions are pure index permutations (plus products for :func:`kron`):
they never round, so their properties are checked exactly in the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._validation import as_shapes, check_finite
from .errors import DTypeError, NonFiniteError, OverflowRiskError, ShapeError

__all__ = ["kron", "rearrange", "unrearrange"]


def _as_numeric(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise DTypeError(f"{name}: expected a real numeric array, got dtype {arr.dtype}")
    check_finite(arr, name)
    return arr


def _check_product_range(arrays: list[np.ndarray], dtype: np.dtype) -> None:
    """Refuse a product that would wrap (integers) or overflow to infinity (floats).

    Every entry of the Kronecker product is a product of one entry per factor, so its
    magnitude is at most the product of the factors' largest magnitudes; that bound is
    reached, so it decides exactly whether the result fits ``dtype``.
    """
    if dtype.kind not in "iuf" or any(a.size == 0 for a in arrays):
        return
    peaks = [_peak(a) for a in arrays]
    bound: float | int = 1
    for p in peaks:
        bound = bound * p
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if bound > info.max:
            raise OverflowRiskError(
                f"factors: the Kronecker product reaches magnitude {bound}, beyond {dtype}'s "
                f"maximum {info.max}; cast the factors to a wider dtype (e.g. np.int64 or "
                f"np.float64) first"
            )
    elif not np.isfinite(np.float64(bound)) or bound > float(np.finfo(dtype).max):
        raise NonFiniteError(
            f"factors: the Kronecker product reaches magnitude {bound:.3g}, beyond {dtype}'s "
            f"largest finite value {float(np.finfo(dtype).max):.3g}; rescale the factors first"
        )


def _peak(a: np.ndarray) -> int | float:
    """Largest magnitude of ``a``: a Python int for integer arrays (exact, no wrap)."""
    if a.dtype.kind in "biu":
        return max(abs(int(a.max())), abs(int(a.min())))
    return float(np.abs(a).max())


def _interleave_axes(n_levels: int, n_modes: int) -> list[int]:
    """Axes that turn a level-major layout (level, mode) into a mode-major one."""
    return [k * n_modes + n for n in range(n_modes) for k in range(n_levels)]


def _level_major_axes(n_levels: int, n_modes: int) -> list[int]:
    """Axes that turn a mode-major layout (mode, level) into a level-major one."""
    return [n * n_levels + k for k in range(n_levels) for n in range(n_modes)]


def kron(*factors: Any) -> np.ndarray:
    r"""Mode-wise Kronecker product of any number of N-d tensors.

    Parameters
    ----------
    *factors : array_like, shapes ``a^(1), ..., a^(S)``
        Two or more real arrays. Arrays with fewer dimensions are treated as having
        leading axes of length 1, as :func:`numpy.kron` does.

    Returns
    -------
    ndarray, shape ``(prod_k a^(k)_1, ..., prod_k a^(k)_N)``
        ``out[i] = prod_k A_k[i^(k)]`` where each index ``i_n`` is read as a mixed-radix
        number whose most significant digit belongs to the first factor. The dtype is
        the numpy result type of the factors.

    Raises
    ------
    ShapeError
        If fewer than one factor is given.
    DTypeError, NonFiniteError
        For non-numeric or non-finite factors, or a float product that would overflow
        to infinity.
    OverflowRiskError
        If an integer product would not fit the result dtype (it would wrap); cast the
        factors to a wider dtype first.

    Notes
    -----
    For two factors, :math:`(A \otimes B)[i] = A[i // b] \, B[i \bmod b]` mode by mode;
    it equals ``numpy.kron(A, B)``. The product is associative but not commutative.

    Examples
    --------
    >>> import numpy as np
    >>> import sekron as sk
    >>> A = np.array([[1, 2], [3, 4]])
    >>> B = np.array([[0, 1], [1, 0]])
    >>> np.array_equal(sk.kron(A, B), np.kron(A, B))
    True
    >>> sk.kron(np.ones((2, 1, 3)), np.ones((1, 4, 1)), np.ones((2, 2, 2))).shape
    (4, 8, 6)
    """
    if len(factors) == 0:
        raise ShapeError("factors: expected at least one array, got none")
    arrays = [_as_numeric(f, f"factors[{k}]") for k, f in enumerate(factors)]
    if len(arrays) == 1:
        return arrays[0].copy()
    _check_product_range(arrays, np.result_type(*arrays))
    ndim = max(a.ndim for a in arrays)
    arrays = [a.reshape((1,) * (ndim - a.ndim) + a.shape) for a in arrays]
    if ndim == 0:
        return np.asarray(np.prod([a for a in arrays], axis=0))
    n_levels = len(arrays)
    # Outer product laid out level-major, then interleave so that each mode's
    # digits are adjacent with the first factor most significant.
    out = arrays[0]
    for a in arrays[1:]:
        out = np.multiply.outer(out, a)
    out = out.transpose(_interleave_axes(n_levels, ndim))
    shape = tuple(int(np.prod([a.shape[n] for a in arrays])) for n in range(ndim))
    return out.reshape(shape)


def rearrange(W: Any, shapes: Sequence[Sequence[int]]) -> np.ndarray:
    r"""Multi-level Van Loan–Pitsianis rearrangement of ``W`` into an S-way tensor.

    Parameters
    ----------
    W : array_like, shape ``(w_1, ..., w_N)``
        A real tensor.
    shapes : sequence of S >= 2 shapes ``a^(1), ..., a^(S)``
        Factor shapes of ``W``'s modes: ``prod_k a^(k)_n == w_n`` for every mode n.

    Returns
    -------
    T : ndarray, shape ``(|a^(1)|, ..., |a^(S)|)``
        A permutation of ``W``'s entries (same dtype) such that
        ``rearrange(kron(A_1, ..., A_S)) == outer(vec A_1, ..., vec A_S)``. Always a
        new array: writing into it never changes ``W``.

    Raises
    ------
    ShapeError
        If the factor shapes do not multiply to ``W.shape`` mode by mode.

    Notes
    -----
    ``T = W.reshape(a^(1)_1, ..., a^(S)_1, a^(1)_2, ...).transpose(levels first)
    .reshape(|a^(1)|, ..., |a^(S)|)``. For ``S = 2`` and a matrix this is the matrix
    :math:`\mathcal{R}(W)` of Van Loan and Pitsianis (1993), whose truncated SVD gives
    the nearest sums of Kronecker products.

    Examples
    --------
    >>> import numpy as np
    >>> import sekron as sk
    >>> A, B = np.arange(6.0).reshape(2, 3), np.arange(4.0).reshape(2, 2)
    >>> T = sk.rearrange(sk.kron(A, B), [A.shape, B.shape])
    >>> np.array_equal(T, np.outer(A.ravel(), B.ravel()))
    True
    """
    W = _as_numeric(W, "W")
    shapes_t = as_shapes(shapes, "shapes", target=W.shape)
    return _owned(_rearrange(W, shapes_t), W)


def _owned(out: np.ndarray, source: np.ndarray) -> np.ndarray:
    """``out``, copied if it is a view into ``source`` (some shapes need no data movement)."""
    return out.copy() if np.may_share_memory(out, source) else out


def _rearrange(W: np.ndarray, shapes_t: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """:func:`rearrange` without validation, for callers that validated ``W`` and shapes."""
    n_levels, n_modes = len(shapes_t), W.ndim
    split = [shapes_t[k][n] for n in range(n_modes) for k in range(n_levels)]
    T = W.reshape(split).transpose(_level_major_axes(n_levels, n_modes))
    return T.reshape([int(np.prod(s)) for s in shapes_t])


def unrearrange(T: Any, shapes: Sequence[Sequence[int]]) -> np.ndarray:
    """Inverse of :func:`rearrange`: rebuild ``W`` from its S-way rearrangement.

    Parameters
    ----------
    T : array_like, shape ``(|a^(1)|, ..., |a^(S)|)`` (or any shape of that size)
        The rearranged tensor.
    shapes : sequence of S >= 2 factor shapes of equal ndim

    Returns
    -------
    W : ndarray, shape ``(prod_k a^(k)_1, ..., prod_k a^(k)_N)``
        Always a new array: writing into it never changes ``T``.

    Raises
    ------
    ShapeError
        If ``T``'s shape is not ``(|a^(1)|, ..., |a^(S)|)``.

    Examples
    --------
    >>> import numpy as np
    >>> import sekron as sk
    >>> W = np.arange(24.0).reshape(4, 6)
    >>> np.array_equal(sk.unrearrange(sk.rearrange(W, [(2, 3), (2, 2)]), [(2, 3), (2, 2)]), W)
    True
    """
    T = _as_numeric(T, "T")
    shapes_t = as_shapes(shapes, "shapes")
    sizes = tuple(int(np.prod(s)) for s in shapes_t)
    if T.shape != sizes:
        raise ShapeError(
            f"T: expected shape {sizes} (the sizes of the factor shapes {shapes_t!r}), got {T.shape}"
        )
    n_levels, n_modes = len(shapes_t), len(shapes_t[0])
    level_major = [s[n] for s in shapes_t for n in range(n_modes)]
    W = T.reshape(level_major).transpose(_interleave_axes(n_levels, n_modes))
    out_shape = tuple(int(np.prod([s[n] for s in shapes_t])) for n in range(n_modes))
    return _owned(W.reshape(out_shape), T)
