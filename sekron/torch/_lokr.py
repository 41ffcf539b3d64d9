"""The mathematics of Kronecker (LoKr) and low-rank (LoRA) weight updates, in numpy.

A LoKr update of a weight of shape ``(a·b, c·d, *k)`` is ``ΔW = s · w1 ⊗ w2`` with ``w1``
of shape ``(a, c)`` and ``w2`` of shape ``(b, d, *k)``, the latter optionally low rank as
the matrix ``w2_a @ w2_b`` of shape ``(b, d·|k|)``. Flattening the kernel into the input
axis, ``ΔW.reshape(a·b, c·d·|k|) = s · kron(w1, w2.reshape(b, d·|k|))``: every result here
works on that matrix view. A LoRA update is ``ΔW = s · up @ down``.

Everything here is numpy in float64; :mod:`sekron.torch.adapters` converts at its boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse.linalg

from .. import rearrange
from ..decompose import nkp
from ..errors import ArgumentError, NonFiniteError, RankError, ShapeError
from ..svd import truncated_svd

__all__ = [
    "LoKr",
    "LoRA",
    "LowRankRearranged",
    "factorization",
    "fit_lokr",
    "kron_lowrank_svd",
    "lokr_shapes",
]


def _matrix(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ShapeError(f"{name}: expected a 2-d array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise NonFiniteError(f"{name}: expected finite values, got NaN or infinity")
    return arr


@dataclass(frozen=True, eq=False)
class LoKr:
    """A Kronecker weight update ``ΔW = scale · w1 ⊗ w2`` (PEFT's and LyCORIS's LoKr).

    Parameters
    ----------
    w1 : ndarray, shape ``(a, c)``
        The small factor.
    w2 : ndarray, shape ``(b, d, *kernel)``, optional
        The large factor in full; give either it or ``w2_a`` and ``w2_b``.
    w2_a, w2_b : ndarray, shapes ``(b, q)`` and ``(q, d·|kernel|)``, optional
        The large factor as a rank-``q`` product (LyCORIS's conv layout flattens the
        kernel into ``w2_b``'s columns).
    scale : float
        The update's scale (``alpha / r`` in the files).
    kernel : tuple of int
        Spatial shape of a conv weight (``()`` for a linear layer).

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.torch.adapters import LoKr
    >>> u = LoKr(np.eye(2), w2_a=np.ones((3, 1)), w2_b=np.ones((1, 2)))
    >>> u.shape, u.rank, u.delta().shape
    ((6, 4), 1, (6, 4))
    """

    w1: np.ndarray
    w2: np.ndarray | None = None
    w2_a: np.ndarray | None = None
    w2_b: np.ndarray | None = None
    scale: float = 1.0
    kernel: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "w1", _matrix(self.w1, "w1"))
        set_(self, "kernel", tuple(int(k) for k in self.kernel))
        if not math.isfinite(float(self.scale)):
            raise ArgumentError(f"scale: expected a finite float, got {self.scale!r}")
        set_(self, "scale", float(self.scale))
        if (self.w2 is None) == (self.w2_a is None or self.w2_b is None):
            raise ShapeError(
                "w2: expected either w2 or both w2_a and w2_b, got "
                f"w2={'set' if self.w2 is not None else None}, "
                f"w2_a={'set' if self.w2_a is not None else None}, "
                f"w2_b={'set' if self.w2_b is not None else None}"
            )
        ksize = math.prod(self.kernel)
        if self.w2 is not None:
            w2 = np.asarray(self.w2, dtype=np.float64)
            if w2.ndim != 2 + len(self.kernel) or tuple(w2.shape[2:]) != self.kernel:
                raise ShapeError(f"w2: expected shape (b, d, *{self.kernel}), got {w2.shape}")
            set_(self, "w2", _matrix(w2.reshape(w2.shape[0], -1), "w2").reshape(w2.shape))
        else:
            a, b = _matrix(self.w2_a, "w2_a"), _matrix(self.w2_b, "w2_b")
            if a.shape[1] != b.shape[0] or b.shape[1] % ksize:
                raise ShapeError(
                    f"w2_b: expected shape ({a.shape[1]}, d·{ksize}) to follow w2_a of shape "
                    f"{a.shape}, got {b.shape}"
                )
            set_(self, "w2_a", a)
            set_(self, "w2_b", b)

    @property
    def shape_w2(self) -> tuple[int, ...]:
        """Shape ``(b, d, *kernel)`` of the large factor."""
        if self.w2 is not None:
            return tuple(self.w2.shape)
        assert self.w2_a is not None and self.w2_b is not None
        return (self.w2_a.shape[0], self.w2_b.shape[1] // math.prod(self.kernel), *self.kernel)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the weight the update applies to."""
        b, d = self.shape_w2[:2]
        return (self.w1.shape[0] * b, self.w1.shape[1] * d, *self.kernel)

    @property
    def rank(self) -> int | None:
        """Rank ``q`` of a low-rank ``w2``; None when ``w2`` is stored in full."""
        return None if self.w2_a is None else int(self.w2_a.shape[1])

    @property
    def n_params(self) -> int:
        """Number of stored values."""
        rest = [self.w2] if self.w2 is not None else [self.w2_a, self.w2_b]
        return int(self.w1.size + sum(x.size for x in rest if x is not None))

    def w2_matrix(self) -> np.ndarray:
        """The large factor as a ``(b, d·|kernel|)`` matrix."""
        if self.w2 is not None:
            return self.w2.reshape(self.w2.shape[0], -1)
        assert self.w2_a is not None and self.w2_b is not None
        return self.w2_a @ self.w2_b

    def delta(self) -> np.ndarray:
        """The dense update ``scale · w1 ⊗ w2`` (float64), shaped like the weight."""
        return (self.scale * np.kron(self.w1, self.w2_matrix())).reshape(self.shape)


@dataclass(frozen=True, eq=False)
class LoRA:
    """A low-rank weight update ``ΔW = scale · up @ down`` (LoRA's ``B A``).

    Parameters
    ----------
    up : ndarray, shape ``(out, r)``
    down : ndarray, shape ``(r, in·|kernel|)``
    scale : float
    kernel : tuple of int
        Spatial shape of a conv weight (``()`` for a linear layer).

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.torch.adapters import LoRA
    >>> LoRA(np.ones((4, 1)), np.ones((1, 6)), scale=0.5).delta()[0, :3]
    array([0.5, 0.5, 0.5])
    """

    up: np.ndarray
    down: np.ndarray
    scale: float = 1.0
    kernel: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        up, down = _matrix(self.up, "up"), _matrix(self.down, "down")
        set_(self, "kernel", tuple(int(k) for k in self.kernel))
        if up.shape[1] != down.shape[0] or down.shape[1] % math.prod(self.kernel):
            raise ShapeError(
                f"down: expected shape ({up.shape[1]}, in·{math.prod(self.kernel)}) to follow up "
                f"of shape {up.shape}, got {down.shape}"
            )
        if not math.isfinite(float(self.scale)):
            raise ArgumentError(f"scale: expected a finite float, got {self.scale!r}")
        set_(self, "up", up)
        set_(self, "down", down)
        set_(self, "scale", float(self.scale))

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the weight the update applies to."""
        ksize = math.prod(self.kernel)
        return (self.up.shape[0], self.down.shape[1] // ksize, *self.kernel)

    @property
    def rank(self) -> int:
        """The rank ``r``."""
        return int(self.up.shape[1])

    @property
    def n_params(self) -> int:
        """Number of stored values."""
        return int(self.up.size + self.down.size)

    def delta(self) -> np.ndarray:
        """The dense update ``scale · up @ down`` (float64), shaped like the weight."""
        return (self.scale * self.up @ self.down).reshape(self.shape)


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """LyCORIS's split of ``dimension`` into ``m <= n`` with ``m · n = dimension``.

    A positive ``factor`` that divides ``dimension`` gives ``(factor, dimension // factor)``
    in ascending order; otherwise ``m`` grows through the divisors while ``m + n`` shrinks
    and ``m`` stays at most ``factor`` (``-1``: no limit, so the most balanced split).

    Examples
    --------
    >>> from sekron.torch.adapters import factorization
    >>> factorization(768), factorization(768, 8), factorization(768, 5)
    ((24, 32), (8, 96), (4, 192))
    """
    if factor > 0 and dimension % factor == 0:
        m, n = factor, dimension // factor
        return (m, n) if m <= n else (n, m)
    limit = dimension if factor < 0 else factor
    m, n = 1, dimension
    while m < n:
        cand = m + 1
        while dimension % cand:
            cand += 1
        if cand > limit:
            break
        # the last accepted step may pass the square root; the sort below undoes it
        m, n = cand, dimension // cand
    return (m, n) if m <= n else (n, m)


def lokr_shapes(
    shape: tuple[int, ...], factor: int = -1
) -> tuple[tuple[int, int], tuple[int, ...]]:
    """Factor shapes ``(a, c)`` and ``(b, d, *k)`` LyCORIS picks for a weight ``shape``.

    Examples
    --------
    >>> from sekron.torch.adapters import lokr_shapes
    >>> lokr_shapes((768, 768), 8)
    ((8, 8), (96, 96))
    >>> lokr_shapes((64, 32, 3, 3))
    ((8, 4), (8, 8, 3, 3))
    """
    out_l, out_k = factorization(shape[0], factor)
    in_m, in_n = factorization(shape[1], factor)
    return (out_l, in_m), (out_k, in_n, *shape[2:])


def kron_lowrank_svd(
    w1: np.ndarray, w2_parts: tuple[np.ndarray, ...]
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Thin SVDs of ``w1`` and of ``w2`` (given whole, or as ``(w2_a, w2_b)``).

    The low-rank case goes through QR of both factors and the SVD of the small core,
    never forming ``w2``.
    """
    U1, s1, V1t = np.linalg.svd(w1, full_matrices=False)
    svd2: tuple[np.ndarray, np.ndarray, np.ndarray]
    if len(w2_parts) == 1:
        U2, s2, V2t = np.linalg.svd(w2_parts[0], full_matrices=False)
        svd2 = (U2, s2, V2t)
    else:
        a, b = w2_parts
        qa, ra = np.linalg.qr(a)
        qb, rb = np.linalg.qr(b.T)
        u, s, vt = np.linalg.svd(ra @ rb.T, full_matrices=False)
        svd2 = (qa @ u, s, vt @ qb.T)
    return (U1, s1, V1t), svd2


class LowRankRearranged:
    """The rearranged matrix ``R(up @ down)`` of a LoRA update as an implicit operator.

    ``R`` maps the weight matrix ``(a·b, c·d')`` to ``(a·c, b·d')`` (Van Loan–Pitsianis,
    ``d' = d·|k|``). A rank-one ``u vᵀ`` rearranges to ``kron(unvec_{a,b} u, unvec_{c,d'} v)``,
    so ``R(up @ down) = Σ_j kron(U_j, V_j)`` and ``R x = Σ_j vec(U_j X V_jᵀ)``: products
    cost ``r·a·d'·(b + c)`` per column instead of ``a·b·c·d'``.
    """

    def __init__(
        self, up: np.ndarray, down: np.ndarray, shape_a: tuple[int, int], shape_b: tuple[int, int]
    ):
        (a, c), (b, dk) = shape_a, shape_b
        r = up.shape[1]
        self.U = np.ascontiguousarray(up.T.reshape(r, a, b))
        self.V = np.ascontiguousarray(down.reshape(r, c, dk))
        self.shape = (a * c, b * dk)
        self.dtype = np.dtype(np.float64)
        self._gram = float(np.sum((up.T @ up) * (down @ down.T)))

    def matmat(self, X: np.ndarray) -> np.ndarray:
        p = X.shape[1]
        b, dk = self.U.shape[2], self.V.shape[2]
        Xs = X.T.reshape(p, 1, b, dk)
        Y = (self.U[None] @ Xs) @ self.V.transpose(0, 2, 1)[None]  # (p, r, a, c)
        return Y.sum(axis=1).reshape(p, -1).T

    def rmatmat(self, Y: np.ndarray) -> np.ndarray:
        p = Y.shape[1]
        a, c = self.U.shape[1], self.V.shape[1]
        Ys = Y.T.reshape(p, 1, a, c)
        X = (self.U.transpose(0, 2, 1)[None] @ Ys) @ self.V[None]  # (p, r, b, dk)
        return X.sum(axis=1).reshape(p, -1).T

    def squared_norm(self) -> float:
        return max(self._gram, 0.0)


def _apply(R: Any, x: np.ndarray) -> np.ndarray:
    return R @ x if isinstance(R, np.ndarray) else R.matmat(x[:, None])[:, 0]


def _apply_t(R: Any, y: np.ndarray) -> np.ndarray:
    return R.T @ y if isinstance(R, np.ndarray) else R.rmatmat(y[:, None])[:, 0]


def _residual_sq(R: Any, norm_sq: float, u: np.ndarray, x: np.ndarray) -> float:
    """``||R - u xᵀ||²``: from the formed residual when ``R`` is an array.

    For an operator it goes through one product with it (the expansion loses digits
    below ``√eps · ||R||``).
    """
    if isinstance(R, np.ndarray):
        return float(np.sum((R - np.outer(u, x)) ** 2))
    return max(norm_sq - 2.0 * float(u @ _apply(R, x)) + float(u @ u) * float(x @ x), 0.0)


def _truncate(X: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    U, s, Vt = np.linalg.svd(X, full_matrices=False)
    return U[:, :rank], s[:rank], Vt[:rank]


@dataclass(frozen=True)
class KronFit:
    """Result of :func:`fit_lokr` on one rearranged update."""

    w1: np.ndarray
    w2_a: np.ndarray | None
    w2_b: np.ndarray | None
    w2: np.ndarray | None
    error: float
    kron_error: float
    norm: float
    rank: int | None
    sweeps: int


def _pick_rank(s: np.ndarray, base_sq: float, u_sq: float, budget: float, full: int) -> int:
    tail = np.concatenate([np.cumsum((s**2)[::-1])[::-1], [0.0]])
    ok = np.nonzero(base_sq + u_sq * tail[: full + 1] <= budget)[0]
    return int(max(ok[0], 1)) if ok.size else full


def fit_lokr(
    R: Any,
    norm_sq: float,
    u: np.ndarray,
    x: np.ndarray,
    shape_w2: tuple[int, int],
    *,
    rank: int | None,
    tol: float | None,
    refine: int,
) -> KronFit:
    """Best ``w1 ⊗ w2`` with ``w2`` of rank ``rank`` (or picked by ``tol``), from a start.

    ``u, x`` is the leading singular pair of ``R`` scaled by ``σ`` (the NKP, the global
    optimum when ``w2`` is unconstrained). For a fixed ``u`` the best ``x`` is the rank
    truncation of ``x* = Rᵀu / |u|²`` (the residual splits into ``|R - u x*ᵀ|²`` plus
    ``|u|² |x - x*|²``); for a fixed ``x``, ``u = R x / |x|²``. Alternating the two never
    raises the error; the best iterate is kept.
    """
    b, dk = shape_w2
    full = min(b, dk)
    kron_sq = _residual_sq(R, norm_sq, u, x)
    unconstrained = KronFit(
        u, None, None, x.reshape(b, dk), math.sqrt(kron_sq), math.sqrt(kron_sq),
        math.sqrt(norm_sq), None, 0,
    )  # fmt: skip
    if rank is None and tol is None:
        return unconstrained
    U2, s2, V2t = np.linalg.svd(x.reshape(b, dk), full_matrices=False)
    if rank is None:
        assert tol is not None
        rank = _pick_rank(s2, kron_sq, float(u @ u), tol * tol * norm_sq, full)
    if rank >= full:
        return unconstrained
    best_u, best_x = u, ((U2[:, :rank] * s2[:rank]) @ V2t[:rank]).reshape(-1)
    best = _residual_sq(R, norm_sq, best_u, best_x)
    cur_u, sweeps = best_u, 0
    for _ in range(refine):
        xs = _apply_t(R, cur_u) / float(cur_u @ cur_u)
        Ut, st, Vtt = _truncate(xs.reshape(b, dk), rank)
        xq = ((Ut * st) @ Vtt).reshape(-1)
        if not float(xq @ xq) > 0.0:
            break
        cur_u = _apply(R, xq) / float(xq @ xq)
        err = _residual_sq(R, norm_sq, cur_u, xq)
        if not err < best * (1.0 - 1e-12):
            break  # converged: a sweep that does not lower the error is not kept
        best, best_u, best_x, sweeps = err, cur_u, xq, sweeps + 1
    Uq, sq, Vq = _truncate(best_x.reshape(b, dk), rank)
    root = np.sqrt(sq)
    return KronFit(
        best_u,
        Uq * root,
        root[:, None] * Vq,
        None,
        math.sqrt(best),
        math.sqrt(kron_sq),
        math.sqrt(norm_sq),
        rank,
        sweeps,
    )


def nkp_start(
    D: np.ndarray, shape_w1: tuple[int, int], shape_w2: tuple[int, ...]
) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Rearranged dense update and its NKP (``sk.nkp``): ``(R, |R|², u, x)``."""
    nd = D.ndim
    sa = (*shape_w1, *([1] * (nd - 2)))
    t = nkp(D, sa, shape_w2, rank=1)
    R = rearrange(D, [sa, shape_w2]).reshape(math.prod(sa), math.prod(shape_w2))
    u = t.factors[0][0].reshape(-1)
    x = t.factors[1][0].reshape(-1)
    return np.ascontiguousarray(R), float(np.sum(D * D)), u, x


def lowrank_start(op: LowRankRearranged, random_state: Any) -> tuple[float, np.ndarray, np.ndarray]:
    """Leading singular pair of an implicit rearranged operator.

    The randomized range finder of :func:`sekron.svd.truncated_svd` gives a start that
    ARPACK's Lanczos iteration (through the same products) polishes to working precision:
    the range finder alone stops at about 0.25 % of the error, not at the optimum.
    """
    U, s, Vt = truncated_svd(
        op, 1, method="randomized", random_state=random_state, squared_norm=op.squared_norm()
    )
    if min(op.shape) > 1 and s[0] > 0:
        lin = scipy.sparse.linalg.LinearOperator(
            op.shape,
            matvec=lambda v: op.matmat(v.reshape(-1, 1))[:, 0],
            rmatvec=lambda v: op.rmatmat(v.reshape(-1, 1))[:, 0],
            matmat=op.matmat,
            rmatmat=op.rmatmat,
            dtype=np.float64,
        )
        v0 = Vt[0] if op.shape[0] >= op.shape[1] else U[:, 0]  # svds iterates on the short side
        U, s, Vt = scipy.sparse.linalg.svds(lin, k=1, v0=v0, tol=0, solver="arpack")
    root = math.sqrt(float(s[0]))
    return op.squared_norm(), U[:, 0] * root, Vt[0] * root


def check_rank(rank: Any, name: str, maximum: int) -> int:
    """A rank in ``1..maximum`` (RankError otherwise)."""
    from .._validation import as_positive_int, rank_error

    try:
        r = as_positive_int(rank, name)
    except (TypeError, ValueError) as exc:
        raise RankError(str(exc)) from None
    if r > maximum:
        raise rank_error(name, r, maximum)
    return r
