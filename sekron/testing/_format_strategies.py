"""Hypothesis strategies for tensors in the classic formats, as tensorly objects.

Each strategy draws an order, mode sizes, ranks and a dtype, then fills the cores or
factors with standard normal numbers from a drawn seed (so examples are cheap and
reproducible; shrinking acts on the sizes, the ranks and the seed). Ranks are drawn
freely in ``1..max_rank`` and may exceed a mode size or the size of the other modes:
such tensors are valid in their format and exercise the exact fall-backs of
:mod:`sekron.formats`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from hypothesis import strategies as st
from tensorly.cp_tensor import CPTensor
from tensorly.tr_tensor import TRTensor
from tensorly.tt_matrix import TTMatrix
from tensorly.tt_tensor import TTTensor
from tensorly.tucker_tensor import TuckerTensor

__all__ = ["cp_tensors", "tr_tensors", "tt_matrices", "tt_tensors", "tucker_tensors"]

_DTYPES: tuple[Any, ...] = (np.float32, np.float64)


def _setup(
    draw: Any, min_order: int, max_order: int, max_dim: int, dtypes: Sequence[Any]
) -> tuple[list[int], Any, np.random.Generator]:
    order = draw(st.integers(min_order, max_order))
    dims = draw(st.lists(st.integers(1, max_dim), min_size=order, max_size=order))
    dtype = np.dtype(draw(st.sampled_from(list(dtypes))))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return dims, dtype, rng


def _normal(rng: np.random.Generator, shape: Sequence[int], dtype: Any) -> np.ndarray:
    return rng.standard_normal(tuple(shape)).astype(dtype)


@st.composite
def tt_tensors(
    draw: Any,
    *,
    min_order: int = 1,
    max_order: int = 4,
    max_dim: int = 4,
    max_rank: int = 3,
    dtypes: Sequence[Any] = _DTYPES,
) -> TTTensor:
    """Tensor trains: cores ``(r_{k−1}, n_k, r_k)`` with ``r_0 = r_N = 1``.

    Parameters
    ----------
    min_order, max_order : int
        Range of the order N (number of cores).
    max_dim : int
        Largest mode size ``n_k`` (sizes start at 1).
    max_rank : int
        Largest inner rank ``r_k``.
    dtypes : sequence of dtypes
        Drawn from; float32 and float64 by default.

    Returns
    -------
    SearchStrategy of tensorly.tt_tensor.TTTensor

    Examples
    --------
    >>> from sekron.testing import strategies as sks
    >>> from hypothesis import find
    >>> tt = find(sks.tt_tensors(max_order=3), lambda tt: len(tt) == 3)
    >>> tt.rank, tt.shape
    ((1, 1, 1, 1), (1, 1, 1))
    """
    dims, dtype, rng = _setup(draw, min_order, max_order, max_dim, dtypes)
    inner = draw(st.lists(st.integers(1, max_rank), min_size=len(dims) - 1, max_size=len(dims) - 1))
    ranks = [1, *inner, 1]
    return TTTensor([_normal(rng, (ranks[k], n, ranks[k + 1]), dtype) for k, n in enumerate(dims)])


@st.composite
def tr_tensors(
    draw: Any,
    *,
    min_order: int = 2,
    max_order: int = 4,
    max_dim: int = 4,
    max_rank: int = 3,
    dtypes: Sequence[Any] = _DTYPES,
) -> TRTensor:
    """Tensor rings: cores ``(r_{k−1}, n_k, r_k)`` with ``r_0 = r_N`` (order at least 2).

    Parameters
    ----------
    min_order, max_order, max_dim, max_rank, dtypes
        As in :func:`tt_tensors`; the loop rank ``r_0`` is drawn in ``1..max_rank`` too.

    Returns
    -------
    SearchStrategy of tensorly.tr_tensor.TRTensor

    Examples
    --------
    >>> from sekron.testing import strategies as sks
    >>> from hypothesis import find
    >>> tr = find(sks.tr_tensors(), lambda tr: tr.rank[0] > 1)
    >>> tr.rank
    (2, 1, 2)
    """
    dims, dtype, rng = _setup(draw, max(min_order, 2), max(max_order, 2), max_dim, dtypes)
    ranks = draw(st.lists(st.integers(1, max_rank), min_size=len(dims), max_size=len(dims)))
    ranks = [*ranks, ranks[0]]
    return TRTensor([_normal(rng, (ranks[k], n, ranks[k + 1]), dtype) for k, n in enumerate(dims)])


@st.composite
def cp_tensors(
    draw: Any,
    *,
    min_order: int = 1,
    max_order: int = 4,
    max_dim: int = 4,
    max_rank: int = 4,
    dtypes: Sequence[Any] = _DTYPES,
) -> CPTensor:
    """CP tensors: weights ``(R,)`` and factors ``(n_k, R)``.

    Parameters
    ----------
    min_order, max_order, max_dim, dtypes
        As in :func:`tt_tensors`.
    max_rank : int
        Largest CP rank R.

    Returns
    -------
    SearchStrategy of tensorly.cp_tensor.CPTensor

    Examples
    --------
    >>> from sekron.testing import strategies as sks
    >>> from hypothesis import find
    >>> cp = find(sks.cp_tensors(), lambda cp: cp.rank == 3)
    >>> cp.weights.shape, cp.shape
    ((3,), (1,))
    """
    dims, dtype, rng = _setup(draw, min_order, max_order, max_dim, dtypes)
    R = draw(st.integers(1, max_rank))
    weights = _normal(rng, (R,), dtype)
    return CPTensor((weights, [_normal(rng, (n, R), dtype) for n in dims]))


@st.composite
def tucker_tensors(
    draw: Any,
    *,
    min_order: int = 2,
    max_order: int = 4,
    max_dim: int = 4,
    max_rank: int = 3,
    dtypes: Sequence[Any] = _DTYPES,
) -> TuckerTensor:
    """Tucker tensors: core ``(r_1..r_N)`` and factors ``(n_k, r_k)`` (order at least 2).

    Parameters
    ----------
    min_order, max_order, max_dim, dtypes
        As in :func:`tt_tensors`.
    max_rank : int
        Largest multilinear rank ``r_k`` (it may exceed ``n_k``).

    Returns
    -------
    SearchStrategy of tensorly.tucker_tensor.TuckerTensor

    Examples
    --------
    >>> from sekron.testing import strategies as sks
    >>> from hypothesis import find
    >>> tk = find(sks.tucker_tensors(), lambda tk: len(tk.factors) == 3)
    >>> tk.core.shape, tk.shape
    ((1, 1, 1), (1, 1, 1))
    """
    dims, dtype, rng = _setup(draw, max(min_order, 2), max(max_order, 2), max_dim, dtypes)
    ranks = draw(st.lists(st.integers(1, max_rank), min_size=len(dims), max_size=len(dims)))
    core = _normal(rng, ranks, dtype)
    return TuckerTensor(
        (core, [_normal(rng, (n, r), dtype) for n, r in zip(dims, ranks, strict=True)])
    )


@st.composite
def tt_matrices(
    draw: Any,
    *,
    min_order: int = 1,
    max_order: int = 3,
    max_dim: int = 3,
    max_rank: int = 3,
    dtypes: Sequence[Any] = _DTYPES,
) -> TTMatrix:
    """TT-matrices: cores ``(r_{k−1}, m_k, n_k, r_k)`` with ``r_0 = r_N = 1``.

    Parameters
    ----------
    min_order, max_order : int
        Range of the number of cores.
    max_dim : int
        Largest ``m_k`` and ``n_k``.
    max_rank, dtypes
        As in :func:`tt_tensors`.

    Returns
    -------
    SearchStrategy of tensorly.tt_matrix.TTMatrix

    Examples
    --------
    >>> from sekron.testing import strategies as sks
    >>> from hypothesis import find
    >>> ttm = find(sks.tt_matrices(), lambda m: len(m) == 2)
    >>> ttm.rank, [c.shape for c in ttm.factors]
    ((1, 1, 1), [(1, 1, 1, 1), (1, 1, 1, 1)])
    """
    rows, dtype, rng = _setup(draw, min_order, max_order, max_dim, dtypes)
    cols = draw(st.lists(st.integers(1, max_dim), min_size=len(rows), max_size=len(rows)))
    inner = draw(st.lists(st.integers(1, max_rank), min_size=len(rows) - 1, max_size=len(rows) - 1))
    ranks = [1, *inner, 1]
    return TTMatrix(
        [
            _normal(rng, (ranks[k], m, n, ranks[k + 1]), dtype)
            for k, (m, n) in enumerate(zip(rows, cols, strict=True))
        ]
    )
