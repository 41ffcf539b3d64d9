"""Core strategies: shapes that factor, structures, Kronecker factors, SeKron tensors.

Hypothesis draws only the small discrete choices (shapes, ranks, a seed); the bulk
arrays come from a ``numpy.random.Generator`` seeded by the drawn seed, so examples
shrink quickly and values stay well scaled (standard normal entries).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import strategies as st

from ..errors import ArgumentError, ArgumentTypeError
from ..structure import Structure
from ..tensor import SeKronTensor

__all__ = [
    "factorable_shapes",
    "float_dtypes",
    "kronecker_factors",
    "random_sekron_factors",
    "sekron_tensors",
    "shapes",
    "structures",
]

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _range_or_value(value: int | None, lo: int, hi: int) -> st.SearchStrategy[int]:
    return st.just(int(value)) if value is not None else st.integers(lo, hi)


def float_dtypes() -> st.SearchStrategy[np.dtype]:
    """Strategy for the float dtypes sekron computes with: float32 and float64.

    Returns
    -------
    SearchStrategy of numpy.dtype

    Examples
    --------
    >>> from hypothesis import given
    >>> from sekron.testing.strategies import float_dtypes
    >>> @given(float_dtypes())
    ... def check(dt):
    ...     assert dt.kind == "f"
    >>> check()
    """
    return st.sampled_from(_FLOAT_DTYPES)


def _dtype_strategy(dtype: Any) -> st.SearchStrategy[np.dtype]:
    if dtype is None:
        return float_dtypes()
    dt = np.dtype(dtype)
    if dt not in _FLOAT_DTYPES:
        raise ArgumentError(f"dtype: expected float32, float64 or None, got {dt}")
    return st.just(dt)


@st.composite
def factorable_shapes(
    draw: st.DrawFn,
    ndim: int | None = None,
    n_factors: int | None = None,
    *,
    max_size: int = 256,
    max_dim: int = 4,
    min_dim: int = 1,
) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    """Strategy for a tensor shape together with S factor shapes that factor it.

    Parameters
    ----------
    ndim : int, optional
        Number of modes N (drawn from 1..3 if omitted).
    n_factors : int, optional
        Number of factors S (drawn from 2..4 if omitted).
    max_size : int, default 256
        Upper bound on the tensor's number of entries ``prod(shape)``.
    max_dim : int, default 4
        Upper bound on every factor's extent along every mode.
    min_dim : int, default 1
        Lower bound on every factor's extent (raise it to 2 to avoid trivial modes;
        ``min_dim ** (N * S)`` must not exceed ``max_size``).

    Returns
    -------
    SearchStrategy of (shape, factor_shapes)
        ``shape`` is a tuple of N ints and ``factor_shapes`` a tuple of S tuples of N
        ints with ``prod_k factor_shapes[k][n] == shape[n]`` for every mode n.

    Examples
    --------
    >>> import math
    >>> from hypothesis import given
    >>> from sekron.testing.strategies import shapes
    >>> @given(shapes(ndim=2, n_factors=3))
    ... def check(pair):
    ...     shape, factor_shapes = pair
    ...     assert all(math.prod(s[n] for s in factor_shapes) == shape[n] for n in range(2))
    >>> check()
    """
    N = draw(_range_or_value(ndim, 1, 3))
    S = draw(_range_or_value(n_factors, 2, 4))
    if N < 1 or S < 2:
        raise ArgumentError(f"expected ndim >= 1 and n_factors >= 2, got ndim={N}, n_factors={S}")
    if min_dim ** (N * S) > max_size:
        raise ArgumentError(
            f"min_dim={min_dim} cannot fit {S} factors of {N} modes in max_size={max_size}"
        )
    size = 1
    dims = [[0] * N for _ in range(S)]
    slots_left = N * S
    for k in range(S):
        for n in range(N):
            slots_left -= 1
            # keep room for the remaining slots at their minimum extent
            room = max_size // (size * min_dim**slots_left)
            d = draw(st.integers(min_dim, max(min_dim, min(max_dim, room))))
            dims[k][n] = d
            size *= d
    factor_shapes = tuple(tuple(row) for row in dims)
    shape = tuple(math.prod(s[n] for s in factor_shapes) for n in range(N))
    return shape, factor_shapes


shapes = factorable_shapes


@st.composite
def structures(
    draw: st.DrawFn,
    n_factors: int | None = None,
    ndim: int | None = None,
    max_size: int = 256,
    *,
    max_rank: int | None = None,
    full_rank: bool = False,
) -> Structure:
    """Strategy for a :class:`sekron.Structure` with random ranks within its largest useful ranks.

    Parameters
    ----------
    n_factors : int, optional
        S (drawn from 2..4 if omitted).
    ndim : int, optional
        N (drawn from 1..3 if omitted).
    max_size : int, default 256
        Upper bound on the dense tensor's number of entries.
    max_rank : int, optional
        Upper bound on every rank (on top of ``Structure.max_ranks``).
    full_rank : bool, default False
        Use the largest useful ranks (an exact structure).

    Returns
    -------
    SearchStrategy of Structure

    Examples
    --------
    >>> from hypothesis import given
    >>> from sekron.testing.strategies import structures
    >>> @given(structures(n_factors=3))
    ... def check(s):
    ...     assert all(1 <= r <= m for r, m in zip(s.ranks, s.max_ranks))
    >>> check()
    """
    _, factor_shapes = draw(factorable_shapes(ndim, n_factors, max_size=max_size))
    base = Structure(factor_shapes)
    if full_rank:
        return base
    caps = [m if max_rank is None else max(1, min(m, max_rank)) for m in base.max_ranks]
    ranks = tuple(draw(st.integers(1, c)) for c in caps)
    return base.with_ranks(ranks)


@st.composite
def kronecker_factors(
    draw: st.DrawFn,
    n_factors: int | None = None,
    ndim: int | None = None,
    *,
    dtype: Any = np.float64,
    integer: bool = False,
    max_size: int = 256,
) -> list[np.ndarray]:
    """Strategy for lists of S arrays of equal ndim (the factors of one Kronecker product).

    Parameters
    ----------
    n_factors, ndim : int, optional
        S (2..4) and N (1..3), drawn if omitted.
    dtype : dtype, default float64
        dtype of the arrays (any real numeric dtype numpy can hold the values in).
    integer : bool, default False
        Draw small integers in ``-3..3`` instead of standard normal values; products of
        such factors are exact in float64, so ``kron`` results can be compared bit for bit.
    max_size : int, default 256
        Upper bound on the size of the Kronecker product.

    Returns
    -------
    SearchStrategy of list of ndarray
        ``factors[k].shape`` are the factor shapes of a :func:`factorable_shapes` draw, so
        ``sekron.kron(*factors)`` has at most ``max_size`` entries.

    Examples
    --------
    >>> import numpy as np
    >>> from hypothesis import given
    >>> import sekron as sk
    >>> from sekron.testing.strategies import kronecker_factors
    >>> @given(kronecker_factors(n_factors=2, integer=True))
    ... def check(fs):
    ...     assert np.array_equal(sk.kron(*fs), np.kron(*fs))
    >>> check()
    """
    _, factor_shapes = draw(factorable_shapes(ndim, n_factors, max_size=max_size))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if integer:
        return [rng.integers(-3, 4, size=s).astype(dtype) for s in factor_shapes]
    return [rng.standard_normal(s).astype(dtype) for s in factor_shapes]


def random_sekron_factors(
    structure: Structure,
    rng: np.random.Generator,
    *,
    dtype: Any = np.float64,
    tt_like: bool = False,
    scale: float = 1.0,
) -> list[np.ndarray]:
    """Random factors of a SeKron structure (plain function, usable without hypothesis).

    Parameters
    ----------
    structure : Structure
        Shapes and ranks; factor k gets shape ``structure.factor_shapes[k]``.
    rng : numpy.random.Generator
    dtype : float32 or float64, default float64
    tt_like : bool, default False
        If True, factor k (k >= 2) depends only on ``(r_{k−1}, r_k)`` and is broadcast
        over the earlier ranks ``r_1..r_{k−2}``: later factors are shared across earlier
        branches, the tensor is a tensor train on its rearrangement, and
        :func:`sekron.sekron` recovers it exactly at ``structure.ranks``. If False, every
        branch has its own later factors (a general "tree" tensor); for S = 2 the two
        options coincide.
    scale : float, default 1.0
        Multiplies the first factor (so the dense tensor scales by it).

    Returns
    -------
    list of ndarray
        Standard normal entries (before ``scale``), shapes ``structure.factor_shapes``.

    Examples
    --------
    >>> import numpy as np
    >>> import sekron as sk
    >>> from sekron.testing.strategies import random_sekron_factors
    >>> s = sk.Structure([(2, 2), (2, 2), (2, 2)], ranks=(2, 2))
    >>> fs = random_sekron_factors(s, np.random.default_rng(0), tt_like=True)
    >>> [f.shape for f in fs]
    [(2, 2, 2), (2, 2, 2, 2), (2, 2, 2, 2)]
    >>> np.array_equal(fs[2][0], fs[2][1])   # shared across level-1 branches
    True
    """
    S, ranks = structure.n_factors, structure.ranks
    out = []
    for k, fshape in enumerate(structure.factor_shapes):
        own: tuple[int, ...] | None = None  # the rank axes factor k really depends on
        if tt_like and S >= 3 and k == S - 1:
            own = ranks[-1:]
        elif tt_like and 2 <= k < S - 1:
            own = ranks[k - 1 : k + 1]
        if own is None:
            f = rng.standard_normal(fshape)
        else:
            # broadcast over the leading (earlier) rank axes: shared across branches
            f = np.broadcast_to(rng.standard_normal(own + structure.shapes[k]), fshape)
        if k == 0:
            f = f * scale
        out.append(np.ascontiguousarray(f, dtype=dtype))
    return out


@st.composite
def sekron_tensors(
    draw: st.DrawFn,
    structure: Structure | None = None,
    dtype: Any = None,
    *,
    n_factors: int | None = None,
    ndim: int | None = None,
    max_size: int = 256,
    max_rank: int | None = 3,
    tt_like: bool = False,
    scale: float = 1.0,
) -> SeKronTensor:
    """Strategy for :class:`sekron.SeKronTensor` built from random factors.

    Parameters
    ----------
    structure : Structure, optional
        Fixed structure; drawn with :func:`structures` if omitted.
    dtype : float32, float64 or None
        None draws one of the two.
    n_factors, ndim, max_size, max_rank
        Passed to :func:`structures` when ``structure`` is omitted.
    tt_like : bool, default False
        Share later factors across earlier branches (see :func:`random_sekron_factors`).
    scale : float, default 1.0
        Multiplies the tensor.

    Returns
    -------
    SearchStrategy of SeKronTensor

    Notes
    -----
    Which tensors :func:`sekron.sekron` recovers exactly at ``t.structure.ranks``:

    * S = 2: every one (the fit is the truncated SVD of the rearranged matrix, whose
      rank is at most ``R_1``);
    * S >= 3 with ``tt_like=True``: every one (every remainder of the recursion is a
      combination of branches that share the same later factors, so its Kronecker rank
      stays at most ``R_k``);
    * S >= 3 with ``tt_like=False``: in general not; the recursion mixes the branches
      and needs larger later ranks (``refine`` can close the gap).

    Examples
    --------
    >>> import numpy as np
    >>> from hypothesis import given
    >>> import sekron as sk
    >>> from sekron.testing.strategies import sekron_tensors
    >>> @given(sekron_tensors(n_factors=3, dtype=np.float64, tt_like=True))
    ... def check(t):
    ...     fit = sk.sekron(t.to_dense(), t.structure)
    ...     assert fit.relative_error_bound < 1e-10
    >>> check()
    """
    if structure is None:
        structure = draw(structures(n_factors, ndim, max_size, max_rank=max_rank))
    elif not isinstance(structure, Structure):
        raise ArgumentTypeError(
            f"structure: expected a Structure or None, got {type(structure).__name__}"
        )
    dt = draw(_dtype_strategy(dtype))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    factors = random_sekron_factors(structure, rng, dtype=dt, tt_like=tt_like, scale=scale)
    return SeKronTensor(factors)
