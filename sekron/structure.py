"""SeKron structures: factor shapes and ranks, their cost, and their enumeration.

A :class:`Structure` is everything about a SeKron decomposition except the numbers:
S factor shapes ``a^(1..S)`` whose per-mode products give the tensor's shape, and S−1
ranks. It knows its parameter count, its compression ratio and its largest useful ranks.
"""

from __future__ import annotations

import functools
import itertools
import math
import numbers
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ._cost import macs_conv2d
from ._validation import (
    as_nonnegative_float,
    as_positive_int,
    as_rank,
    as_shape,
    as_shapes,
    rank_error,
)
from .contraction import linear_plan
from .errors import ArgumentError, RankError, ShapeError

__all__ = ["Structure", "structures"]


def _prod(xs: Sequence[int]) -> int:
    return math.prod(int(x) for x in xs)


class Structure:
    """A validated, immutable SeKron structure: S factor shapes and S−1 ranks.

    Parameters
    ----------
    shapes : sequence of S >= 2 shapes of equal ndim N
        Factor shapes ``a^(1), ..., a^(S)``; the tensor has shape
        ``(prod_k a^(k)_1, ..., prod_k a^(k)_N)``.
    ranks : int, sequence of S−1 ints, or None
        Ranks ``R_1..R_{S−1}``. ``None`` means the largest useful ranks (an exact
        decomposition); an int is used at every level.
    clip : bool, default False
        Clip ranks above the largest useful rank instead of raising :class:`RankError`.

    Attributes
    ----------
    shapes : tuple of tuples
    ranks : tuple of ints
    shape : tuple of ints
        Shape of the dense tensor.
    n_factors : int
        S.
    max_ranks : tuple of ints
        ``min(|a^(k)|, prod_{j>k} |a^(j)|)`` for each level k < S.
    instances : tuple of ints
        ``P_k = prod_{j <= min(k, S−1)} R_j``: how many copies of factor k are stored.
    factor_shapes : tuple of tuples
        Stored array shape of factor k: ``(R_1, ..., R_{min(k, S−1)}, *a^(k))``.
    n_params, dense_size : int
    compression_ratio : float
        ``dense_size / n_params``.

    Raises
    ------
    ShapeError
        If shapes are malformed or of unequal ndim.
    RankError
        If a rank is < 1, or above the largest useful rank and ``clip`` is False.

    Examples
    --------
    >>> import sekron as sk
    >>> s = sk.Structure([(4, 4), (4, 4), (4, 4)], ranks=(2, 3))
    >>> s.shape, s.max_ranks, s.instances
    ((64, 64), (16, 16), (2, 6, 6))
    >>> s.n_params, round(s.compression_ratio, 2)
    (224, 18.29)
    """

    __slots__ = ("_ranks", "_shape", "_shapes")
    _shapes: tuple[tuple[int, ...], ...]
    _ranks: tuple[int, ...]
    _shape: tuple[int, ...]

    def __init__(self, shapes: Sequence[Sequence[int]], ranks: Any = None, *, clip: bool = False):
        shapes_t = as_shapes(shapes, "shapes")
        object.__setattr__(self, "_shapes", shapes_t)
        # the dense shape, once: every call of a layer or op reads it
        shape = tuple(_prod([s[n] for s in shapes_t]) for n in range(len(shapes_t[0])))
        object.__setattr__(self, "_shape", shape)
        object.__setattr__(self, "_ranks", self._normalize_ranks(ranks, clip))

    def _normalize_ranks(self, ranks: Any, clip: bool) -> tuple[int, ...]:
        max_ranks = self.max_ranks
        n = len(max_ranks)
        if ranks is None:
            return max_ranks
        if isinstance(ranks, np.ndarray):
            ranks = ranks.tolist()
        if isinstance(ranks, numbers.Integral) and not isinstance(ranks, (bool, np.bool_)):
            ranks = (int(ranks),) * n
        if isinstance(ranks, str) or not isinstance(ranks, Sequence):
            raise RankError(
                f"ranks: expected None, an int or a sequence of {n} ints, got {ranks!r}"
            )
        if len(ranks) != n:
            raise RankError(
                f"ranks: expected {n} ranks for {n + 1} factors, got {len(ranks)} ({tuple(ranks)!r})"
            )
        out = []
        for k, (r, m) in enumerate(zip(ranks, max_ranks, strict=True)):
            r = as_rank(r, f"ranks[{k}]")
            if r > m:
                if not clip:
                    raise rank_error(
                        f"ranks[{k}]",
                        r,
                        m,
                        f"the largest useful rank at level {k + 1} is min(|a^({k + 1})|, "
                        "size of the later factors)",
                    )
                r = m
            out.append(r)
        return tuple(out)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Structure is immutable")

    # -- basic facts ---------------------------------------------------------------
    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """The factor shapes ``a^(1..S)``."""
        return self._shapes

    @property
    def ranks(self) -> tuple[int, ...]:
        """The ranks ``r_1..r_(S-1)``."""
        return self._ranks

    @property
    def n_factors(self) -> int:
        """The number of factors ``S``."""
        return len(self._shapes)

    @property
    def ndim(self) -> int:
        """The number of modes of the tensor (and of each factor shape)."""
        return len(self._shapes[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """The dense tensor shape: per mode, the product of the factor extents in that mode."""
        return self._shape

    @property
    def sizes(self) -> tuple[int, ...]:
        """``|a^(k)|`` for each factor."""
        return tuple(_prod(s) for s in self._shapes)

    @property
    def dense_size(self) -> int:
        """The number of entries of the dense tensor."""
        return _prod(self.shape)

    @property
    def max_ranks(self) -> tuple[int, ...]:
        """The largest useful rank at each level: ``min(|a^(k)|, size of the later factors)``."""
        sizes = self.sizes
        return tuple(min(sizes[k], _prod(sizes[k + 1 :])) for k in range(len(sizes) - 1))

    @property
    def instances(self) -> tuple[int, ...]:
        """How many copies of each factor are stored (product of the ranks above it)."""
        S = self.n_factors
        return tuple(_prod(self._ranks[: min(k + 1, S - 1)]) for k in range(S))

    @property
    def factor_shapes(self) -> tuple[tuple[int, ...], ...]:
        """The stored array shape of each factor: its rank axes, then ``a^(k)``."""
        S = self.n_factors
        return tuple(
            tuple(self._ranks[: min(k + 1, S - 1)]) + tuple(self._shapes[k]) for k in range(S)
        )

    @property
    def n_params(self) -> int:
        """The total number of stored parameters over all factors."""
        return sum(p * s for p, s in zip(self.instances, self.sizes, strict=True))

    @property
    def compression_ratio(self) -> float:
        """``dense_size / n_params``."""
        return self.dense_size / self.n_params

    @property
    def is_exact(self) -> bool:
        """True when every rank is the largest useful one (the fit is exact)."""
        return self._ranks == self.max_ranks

    def with_ranks(self, ranks: Any, *, clip: bool = False) -> Structure:
        """Return the same factor shapes with other ranks."""
        return Structure(self._shapes, ranks, clip=clip)

    # -- cost model ------------------------------------------------------------------
    def macs_matmul(self, n_cols: int = 1) -> dict[str, int]:
        """Multiply-adds of ``op @ X`` for ``X`` with ``n_cols`` columns, structured and dense.

        Returns a dict with keys ``"sekron"`` and ``"dense"``; only for 2-D structures.
        "sekron" is what the plan that ``sk.matmul`` runs issues
        (:func:`sekron.contraction.linear_plan`, the cheaper of its two orders); "dense"
        is ``m n n_cols``.

        Raises
        ------
        ShapeError
            If the structure is not 2-D.
        ValueError, TypeError
            If ``n_cols`` is not a positive int.

        Examples
        --------
        >>> import sekron as sk
        >>> c = sk.Structure([(64, 64), (64, 64)], ranks=1).macs_matmul(256)
        >>> c["dense"] // c["sekron"]
        32
        """
        if self.ndim != 2:
            raise ShapeError(
                f"structure: expected a 2-D (matrix) structure, got shape {self.shape}"
            )
        c = as_positive_int(n_cols, "n_cols")
        m, n = self.shape
        return {"sekron": linear_plan(self._shapes, self._ranks).macs * c, "dense": m * n * c}

    def macs_conv2d(
        self, h: int, w: int, stride: Any = 1, padding: Any = 0, dilation: Any = 1
    ) -> dict[str, int]:
        """Multiply-adds of a 2-D convolution of one ``h × w`` image, structured and dense.

        The structure must be 4-D ``(F, C, Kh, Kw)``. Returns a dict with keys
        ``"sekron"`` and ``"dense"``, counted for the staged projection of ``sekron.ops``.

        Examples
        --------
        >>> import sekron as sk
        >>> s = sk.Structure([(8, 8, 3, 1), (8, 8, 1, 3)], ranks=1)
        >>> c = s.macs_conv2d(32, 32, padding=1)
        >>> c["dense"] > c["sekron"]
        True
        """
        return macs_conv2d(
            self._shapes, self._ranks, h, w, stride=stride, padding=padding, dilation=dilation
        )

    # -- protocol ----------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Structure):
            return NotImplemented
        return self._shapes == other._shapes and self._ranks == other._ranks

    def __hash__(self) -> int:
        return hash((self._shapes, self._ranks))

    def __repr__(self) -> str:
        return f"Structure(shapes={list(self._shapes)!r}, ranks={self._ranks!r})"

    def __str__(self) -> str:
        body = " ⊗ ".join("×".join(map(str, s)) for s in self._shapes)
        return f"{body} @ ranks {self._ranks}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Structure, (self._shapes, self._ranks))


def _ordered_factorizations(n: int, parts: int) -> Iterator[tuple[int, ...]]:
    """All ordered tuples of ``parts`` positive ints whose product is ``n``."""
    if parts == 1:
        yield (n,)
        return
    for d in _divisors(n):
        for rest in _ordered_factorizations(n // d, parts - 1):
            yield (d, *rest)


_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)  # exact below 3.3e24


def _is_prime(n: int) -> bool:
    """Deterministic Miller–Rabin for ``n < 3.3e24`` (every numpy dimension)."""
    if n < 2:
        return False
    for p in _MR_BASES:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d, r = d // 2, r + 1
    for a in _MR_BASES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _pollard_rho(n: int) -> int:
    """A non-trivial factor of the odd composite ``n`` (Brent's variant, deterministic seeds)."""
    for c in itertools.count(1):
        x = y = 2
        d = 1
        while d == 1:
            x = (x * x + c) % n
            y = (y * y + c) % n
            y = (y * y + c) % n
            d = math.gcd(abs(x - y), n)
        if d != n:
            return d
    raise AssertionError("unreachable")  # pragma: no cover


def _prime_factors(n: int) -> dict[int, int]:
    """``{p: e}`` with ``n = prod p**e``: trial division by small primes, then Pollard rho.

    Milliseconds for any ``n < 2**63``, where trial division up to ``sqrt(n)`` would take
    minutes for a prime near ``2**62``.
    """
    out: dict[int, int] = {}
    for p in (2, 3, 5, 7, 11, 13):
        while n % p == 0:
            out[p] = out.get(p, 0) + 1
            n //= p
    stack = [n] if n > 1 else []
    while stack:
        m = stack.pop()
        if _is_prime(m):
            out[m] = out.get(m, 0) + 1
        else:
            d = _pollard_rho(m)
            stack += [d, m // d]
    return dict(sorted(out.items()))


@functools.lru_cache(maxsize=1024)
def _divisors(n: int) -> tuple[int, ...]:
    """The divisors of ``n`` in increasing order, from its prime factorization.

    Trying every number up to ``n`` took minutes for a prime mode of ``2**31 - 1``; this
    takes milliseconds for any mode below ``2**63``.
    """
    divs = [1]
    for p, e in _prime_factors(n).items():
        divs = [d * p**k for d in divs for k in range(e + 1)]
    return tuple(sorted(divs))


def _n_ordered_factorizations(n: int, parts: int) -> int:
    """How many ordered ``parts``-tuples of positive ints multiply to ``n`` (no enumeration)."""
    return math.prod(math.comb(e + parts - 1, parts - 1) for e in _prime_factors(n).values())


MAX_CANDIDATES = 100_000
"""Default of :func:`structures`' ``max_candidates``: above it the enumeration is refused.

Each candidate builds a :class:`Structure` (about 0.1 ms); ``(4096, 4096)`` with 4
factors has 207,025 and took 24 s."""

_MAX_MODE = 2**63 - 1  # a numpy dimension is at most this


def _fits(shape: tuple[int, ...], S: int, min_size: int, n_choices: int, limit: Any) -> bool:
    """False if no structure can exist; raise if there are more candidates than ``limit``."""
    if limit is not None:
        limit = as_positive_int(limit, "max_candidates")
    if max(shape) > _MAX_MODE:
        raise ShapeError(f"shape: expected modes <= 2**63 - 1, got {shape}")
    if min_size > 1 and S > math.log2(math.prod(shape)) / math.log2(min_size):
        return False  # S factors of >= min_size entries cannot fit
    n_cand = math.prod(_n_ordered_factorizations(w, S) for w in shape) * max(n_choices, 1)
    if limit is not None and n_cand > limit:
        raise ArgumentError(
            f"max_candidates: shape {shape} with {S} factors has {n_cand:,} candidate "
            f"structures, above max_candidates={limit:,}; pass fewer factors, a larger "
            "min_factor_size, or max_candidates=None to enumerate them all"
        )
    return True


def structures(
    shape: Sequence[int],
    n_factors: int = 2,
    *,
    ranks: Any = 1,
    max_params: int | None = None,
    min_compression: float | None = None,
    min_factor_size: int = 2,
    max_results: int | None = None,
    max_candidates: int | None = MAX_CANDIDATES,
) -> list[Structure]:
    """Enumerate the valid SeKron structures of a tensor shape.

    Every ordered factorization of every mode into ``n_factors`` parts is combined;
    factors with fewer than ``min_factor_size`` entries are skipped (a factor of size 1
    is a scalar). Results are sorted by parameter count, then by shapes.

    The number of candidates (combinations times rank choices) is counted from the
    modes' prime factorizations before anything is enumerated; above ``max_candidates``
    the call is refused with :class:`~sekron.errors.ArgumentError` in milliseconds rather
    than running for minutes (nothing is silently truncated). Any shape finishes in
    bounded time: modes are factored by Pollard's rho, and more factors than
    ``log2(size) / log2(min_factor_size)`` return ``[]`` at once.

    Parameters
    ----------
    shape : sequence of ints
        Shape of the tensor to decompose.
    n_factors : int, default 2
        S, the number of Kronecker factors.
    ranks : int, "full", tuple of S−1 ints, or list of these, default 1
        Rank choices; each is clipped to the structure's largest useful ranks. A list
        gives one structure per distinct choice.
    max_params : int, optional
        Keep structures with at most this many parameters.
    min_compression : float, optional
        Keep structures whose compression ratio is at least this.
    min_factor_size : int, default 2
        Smallest allowed ``|a^(k)|``.
    max_results : int, optional
        Keep only the first (smallest) results.
    max_candidates : int or None, default 100_000 (:data:`MAX_CANDIDATES`)
        Refuse to enumerate more candidates than this; ``None`` lifts the limit.

    Returns
    -------
    list of Structure

    Raises
    ------
    ShapeError
        If ``shape`` is not a shape, or a mode exceeds ``2**63 - 1``.
    ArgumentError
        If ``n_factors < 2``, a filter is invalid, or there are more than
        ``max_candidates`` candidates.

    Examples
    --------
    >>> import sekron as sk
    >>> found = sk.structures((16, 16), 2, ranks=1)
    >>> len(found), str(found[0])
    (23, '1×16 ⊗ 16×1 @ ranks (1,)')
    >>> min(s.n_params for s in sk.structures((8, 8), 3, ranks=1))
    12
    >>> len(sk.structures((8, 8), 3, ranks=[1, "full"], min_compression=4.0)) > 0
    True
    """
    shape_t = as_shape(shape, "shape")
    S = as_positive_int(n_factors, "n_factors", minimum=2)
    min_size = as_positive_int(min_factor_size, "min_factor_size")
    if max_params is not None:
        max_params = as_positive_int(max_params, "max_params")
    if min_compression is not None:
        min_compression = as_nonnegative_float(min_compression, "min_compression", positive=True)
    choices = ranks if isinstance(ranks, list) else [ranks]
    if not _fits(shape_t, S, min_size, len(choices), max_candidates):
        return []
    per_mode = [list(_ordered_factorizations(w, S)) for w in shape_t]
    found: dict[Structure, None] = {}
    for combo in itertools.product(*per_mode):
        shapes = tuple(tuple(combo[n][k] for n in range(len(shape_t))) for k in range(S))
        if any(_prod(s) < min_size for s in shapes):
            continue
        base = Structure(shapes)
        for choice in choices:
            if isinstance(choice, str):
                if choice != "full":
                    raise ArgumentError(
                        f"ranks: expected 'full', an int or a tuple, got {choice!r}"
                    )
                st = base
            else:
                st = base.with_ranks(choice, clip=True)
            if max_params is not None and st.n_params > max_params:
                continue
            if min_compression is not None and st.compression_ratio < float(min_compression):
                continue
            found[st] = None
    out = sorted(found, key=lambda s: (s.n_params, s.shapes, s.ranks))
    if max_results is not None:
        out = out[: as_positive_int(max_results, "max_results")]
    if not out and not shape_t:
        raise ShapeError("shape: no structure found")  # pragma: no cover
    return out
