"""The rearranged matrix ``R(W)`` of a chunked (dask) array, applied block by block.

For factor shapes ``a`` and ``b`` (``a_n b_n = w_n``), row ``(i_1..i_N)`` of
``R(W)`` (DESIGN.md 2.2) is the C-order vec of W's block
``W[i_1 b_1 : (i_1+1) b_1, ..., i_N b_N : (i_N+1) b_N]``. A chunk of W whose edges fall
on multiples of ``b`` therefore holds whole rows of ``R(W)``: it yields its rows of
``R Ω`` from its own entries, and its share of ``Rᵀ Q`` is a sum over chunks. That is
all a randomized range finder needs (:func:`sekron.svd.truncated_svd` takes any
operator with ``matmat`` and ``rmatmat``), so the nearest Kronecker product of a matrix
larger than any one machine's memory costs a few passes over its chunks, each holding
one chunk at a time, and ``W`` is never materialized anywhere.

dask is imported here, lazily, where first used; ``import sekron`` does not import it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._kron import _rearrange
from ._validation import working_dtype
from .errors import ArgumentError, NonFiniteError, ShapeError
from .svd import truncated_svd
from .tensor import SeKronTensor
from .typing import RandomState

__all__ = ["BlockedRearrangement", "as_float_dask", "check_supported", "is_dask_array"]

_FAN_IN = 8  # partial sums of Rᵀ Q added per task: a shallow tree, few transfers


def is_dask_array(x: Any) -> bool:
    """Whether ``x`` is a ``dask.array.Array``, told from its type without importing dask.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron._blocked import is_dask_array
    >>> is_dask_array(np.ones(3))
    False
    """
    return type(x).__module__.startswith("dask.") and hasattr(x, "chunks")


def as_float_dask(W: Any, name: str) -> Any:
    """``W`` as a float32 or float64 dask array, with :func:`as_float_array`'s dtype rules.

    Lazy: nothing is computed. Only matrices (2-d) and N-d tensors of at least one mode
    are accepted, as in memory.
    """
    target = working_dtype(W.dtype, name)
    if W.dtype != target:
        W = W.astype(target)
    if W.ndim < 1:
        raise ShapeError(
            f"{name}: expected an array with at least 1 dimensions, got shape {W.shape}"
        )
    if any(math.isnan(n) for n in W.shape):
        raise ShapeError(f"{name}: expected a dask array of known shape, got {W.shape}")
    return W


def check_supported(**options: Any) -> None:
    """Refuse the options that need all of ``W`` in one memory (named in the message)."""
    method = options.pop("method", "auto")
    if method not in ("auto", "randomized"):
        raise ArgumentError(
            "method: expected 'auto' or 'randomized' for a dask array W (the blocked "
            f"range finder), got {method!r}"
        )
    for key, value in options.items():
        if key == "refine" and not value:
            continue
        if key != "refine" and value is None:
            continue
        raise ArgumentError(
            f"{key}: expected {'0' if key == 'refine' else 'None'} for a dask array W "
            f"(it needs the whole matrix in memory; give ranks instead), got {value!r}"
        )


def _aligned_chunks(chunks: tuple[int, ...], block: int, size: int) -> tuple[int, ...] | None:
    """Chunk sizes along one mode with every edge on a multiple of ``block``, or None if so."""
    if all(c % block == 0 for c in chunks):
        return None
    typical = max(chunks)
    step = max(block, typical // block * block)
    full, last = divmod(size, step)
    return (step,) * full + ((last,) if last else ())


def _rows(chunk: np.ndarray, b: tuple[int, ...]) -> np.ndarray:
    """The rows of ``R(W)`` a chunk holds, shape ``(blocks in the chunk, |b|)``."""
    n = len(b)
    split = [x for c, bb in zip(chunk.shape, b, strict=True) for x in (c // bb, bb)]
    order = list(range(0, 2 * n, 2)) + list(range(1, 2 * n, 2))
    return chunk.reshape(split).transpose(order).reshape(-1, math.prod(b))


def _chunk_times(chunk: np.ndarray, b: tuple[int, ...], X: np.ndarray) -> np.ndarray:
    return _rows(chunk, b) @ X


def _chunk_transpose_times(chunk: np.ndarray, b: tuple[int, ...], X: np.ndarray) -> np.ndarray:
    return (_rows(chunk, b).T @ X).astype(np.float64)


def _chunk_squared_norm(chunk: np.ndarray) -> float:
    flat = chunk.reshape(-1).astype(np.float64)
    return float(np.dot(flat, flat))


def _chunk_nonfinite(chunk: np.ndarray) -> int:
    return int(chunk.size - np.count_nonzero(np.isfinite(chunk)))


def _add(*parts: Any) -> Any:
    return functools.reduce(np.add, parts)


def _tree_sum(parts: list[Any]) -> Any:
    """Sum of delayed values as a tree of ``_FAN_IN``-way additions (all on the cluster)."""
    import dask

    while len(parts) > 1:
        parts = [dask.delayed(_add)(*parts[i : i + _FAN_IN]) for i in range(0, len(parts), _FAN_IN)]
    return parts[0]


class BlockedRearrangement:
    """``R(W)`` of a chunked array for factor shapes ``(a, b)``, as a matrix operator.

    ``matmat`` and ``rmatmat`` are one pass over W's chunks each (a dask computation on
    whatever scheduler is active: a ``distributed.Client``, threads, or synchronous);
    only the thin results come back. W is rechunked first if its chunk edges do not
    fall on multiples of ``b`` (a chunk holds at least one ``b`` block).

    Parameters
    ----------
    W : dask.array.Array, shape ``(a_1 b_1, ..., a_N b_N)``, float32 or float64
    a, b : tuple of int
        Validated factor shapes.

    Examples
    --------
    >>> import numpy as np, dask, dask.array as da
    >>> import sekron as sk
    >>> from sekron._blocked import BlockedRearrangement
    >>> W = np.arange(64.0).reshape(8, 8)
    >>> R = BlockedRearrangement(da.from_array(W, chunks=4), (4, 4), (2, 2))
    >>> X = np.ones((4, 3))
    >>> with dask.config.set(scheduler="synchronous"):
    ...     bool(np.allclose(R.matmat(X), sk.rearrange(W, [(4, 4), (2, 2)]) @ X))
    True
    """

    def __init__(self, W: Any, a: tuple[int, ...], b: tuple[int, ...]):
        new = {
            n: c
            for n in range(W.ndim)
            if (c := _aligned_chunks(W.chunks[n], b[n], W.shape[n])) is not None
        }
        if new:
            W = W.rechunk(new)
        self.shape = (math.prod(a), math.prod(b))
        self.dtype = np.dtype(W.dtype)
        self._b = b
        self._squared_norm: float | None = None
        self._chunks = list(W.to_delayed().ravel())
        # global row indices of every chunk's rows (C order over a), from the chunk grid
        starts = [np.cumsum((0, *c))[:-1] for c in W.chunks]
        self._ids: list[np.ndarray] = []
        for idx in np.ndindex(*W.numblocks):
            ranges = [
                np.arange(starts[n][i] // b[n], (starts[n][i] + W.chunks[n][i]) // b[n])
                for n, i in enumerate(idx)
            ]
            grid = np.meshgrid(*ranges, indexing="ij")
            self._ids.append(np.ravel_multi_index([g.ravel() for g in grid], a))

    def matmat(self, X: np.ndarray) -> np.ndarray:
        """``R(W) @ X`` for a thin block ``X`` of shape ``(|b|, k)``; one pass over W."""
        import dask

        X = np.ascontiguousarray(X, dtype=self.dtype)
        Xd = dask.delayed(X)  # one copy per worker, not one per task
        parts = dask.compute(*[dask.delayed(_chunk_times)(c, self._b, Xd) for c in self._chunks])
        out = np.empty((self.shape[0], X.shape[1]), dtype=self.dtype)
        for ids, part in zip(self._ids, parts, strict=True):
            out[ids] = part
        return out

    def rmatmat(self, X: np.ndarray) -> np.ndarray:
        """``R(W)ᵀ @ X`` for ``X`` of shape ``(|a|, k)``: a sum over chunks, in float64."""
        import dask

        X = np.asarray(X, dtype=self.dtype)
        parts = [
            dask.delayed(_chunk_transpose_times)(c, self._b, np.ascontiguousarray(X[ids]))
            for c, ids in zip(self._chunks, self._ids, strict=True)
        ]
        (total,) = dask.compute(_tree_sum(parts))
        return np.asarray(total).astype(self.dtype, copy=False)

    def squared_norm(self) -> float:
        """``‖W‖²_F`` accumulated in float64 (one pass, then cached)."""
        if self._squared_norm is None:
            import dask

            parts = [dask.delayed(_chunk_squared_norm)(c) for c in self._chunks]
            (total,) = dask.compute(_tree_sum(parts))
            self._squared_norm = float(total)
        return self._squared_norm

    def count_nonfinite(self) -> int:
        """Entries of W that are NaN or infinite (one pass)."""
        import dask

        parts = [dask.delayed(_chunk_nonfinite)(c) for c in self._chunks]
        (total,) = dask.compute(_tree_sum(parts))
        return int(total)


def truncated_nkp(
    W: Any,
    a: tuple[int, ...],
    b: tuple[int, ...],
    rank: int,
    random_state: RandomState,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """Leading ``rank`` triplets of ``R(W)`` by the blocked randomized range finder.

    Returns ``(U, s, Vt, ‖W‖², discarded)`` with ``discarded = max(‖W‖² − Σ s², 0)``,
    the squared error certificate of the in-memory randomized :func:`sekron.nkp`.

    Raises
    ------
    NonFiniteError
        If W holds NaN or infinite entries (counted in a second pass only then).
    """
    R = BlockedRearrangement(W, a, b)
    norm_sq = R.squared_norm()
    if not math.isfinite(norm_sq):
        n_bad = R.count_nonfinite()
        if n_bad:
            raise NonFiniteError(
                f"W: expected finite values, got {n_bad} NaN or infinite entries "
                f"in an array of shape {W.shape}"
            )
    U, s, Vt = truncated_svd(
        R, rank, method="randomized", random_state=random_state, squared_norm=norm_sq
    )
    discarded = max(norm_sq - float(np.sum(s.astype(np.float64) ** 2)), 0.0)
    return U, s, Vt, norm_sq, discarded


def nkp(
    W: Any, a: tuple[int, ...], b: tuple[int, ...], rank: int, random_state: RandomState
) -> SeKronTensor:
    """:func:`sekron.nkp` of a validated dask array: factors as numpy arrays."""
    U, s, Vt, norm_sq, discarded = truncated_nkp(W, a, b, rank, random_state)
    root = np.sqrt(s).astype(U.dtype)
    A = (U * root).T.reshape((rank, *a))
    B = (Vt * root[:, None]).reshape((rank, *b))
    return SeKronTensor([A, B], error_bound=math.sqrt(discarded), reference_norm=math.sqrt(norm_sq))


def first_level(
    W: Any,
    shapes: Sequence[tuple[int, ...]],
    rank: int,
    random_state: RandomState,
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Level 1 of :func:`sekron.sekron` on a dask array, as the in-memory recursion has it.

    Returns the orthonormal left factors ``(rank, |a^(1)|)``, the remainders
    ``(rank, prod_{k>1} |a^(k)|)`` (σ pushed in, columns in the level-major order of
    ``rearrange(W, shapes)``), ``‖W‖²`` and the discarded energy of the level.
    """
    a = shapes[0]
    rest = tuple(math.prod(s[n] for s in shapes[1:]) for n in range(len(a)))
    U, s, Vt, norm_sq, discarded = truncated_nkp(W, a, rest, rank, random_state)
    # a column of the two-way R(W) is the vec of one block; the recursion reads each
    # block rearranged over the later levels
    blocks = Vt.reshape((rank, *rest))
    rem = np.stack([_rearrange(blk, tuple(shapes[1:])).reshape(-1) for blk in blocks])
    return np.ascontiguousarray(U.T), s[:, None] * rem, norm_sq, discarded
