"""Data-aware fits: Kronecker structures fitted to what a layer sees (DESIGN.md 2.8).

With ``C = Σ x xᵀ`` the Gram matrix of a layer's inputs and ``L Lᵀ = C``, the fits here
minimize ``‖(W − Ŵ) L‖_F² = tr((W − Ŵ) C (W − Ŵ)ᵀ)`` instead of ``‖W − Ŵ‖_F²``. ``W`` is
read as the matrix ``(w_1, prod(w_2..w_N))``; a mode-wise Kronecker product
``A ⊗ B`` of that tensor is, after one fixed permutation of the input columns, the
matrix Kronecker product ``kron(A_mat, B_mat)`` with ``A_mat`` of shape
``(a_1, prod(a_2..))`` and ``B_mat`` of shape ``(b_1, prod(b_2..))``. Everything below
works on that "reduced" two-split problem, 4-index arrays ``W4[i1, i2, j1, j2]``.

Entry points (called by :mod:`sekron.decompose`): :func:`check_gram`,
:func:`fit_nkp_data`, :func:`fit_sekron_data`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import scipy.linalg

from ._validation import as_float_array, as_positive_int, check_finite
from .errors import ArgumentError, ArgumentTypeError, ShapeError
from .svd import truncated_svd
from .tensor import SeKronTensor
from .typing import SVDMethod

__all__ = [
    "DEFAULT_RIDGE",
    "DEFAULT_SWEEPS",
    "check_gram",
    "check_options",
    "fit_nkp_data",
    "fit_sekron_data",
]

#: default ``ridge``: λ = ridge · tr(C)/n. 1e-6 of the mean eigenvalue changes the fit of a
#: well-conditioned C by a relative 1e-6 at most, and makes the normal matrices of a
#: rank-deficient C (short calibration sets, dead features) invertible in float64.
DEFAULT_RIDGE = 1e-6
#: default alternating least-squares sweeps of a data-aware Kronecker fit (``sweeps=None``):
#: 8 where the normal matrices are formed (cheap), 2 where the updates need CG through
#: products with C (a 384×1536 layer at 2×: two sweeps take nearly all of the gain)
DEFAULT_SWEEPS: int | None = None
_SWEEPS_DIRECT, _SWEEPS_CG = 8, 2
# The normal matrix G over (r, j1) is formed and factorized when this is cheap; otherwise
# the factor update is solved by preconditioned conjugate gradients through the structure.
_DIRECT_FLOPS = 3e9
_CG_ITERS = 3
#: ALS stops once a sweep lowers the objective by less than this fraction: the first
#: sweeps from a good start take nearly all of the gain, and each costs a few products
#: with C.
_SWEEP_RTOL = 1e-3


# -- the Gram matrix ---------------------------------------------------------------------
def check_gram(gram: Any, n: int) -> np.ndarray:
    """Validate ``gram`` as an ``n×n`` symmetric PSD matrix; return a float64 copy.

    Symmetry and definiteness are judged with tolerances from the input's dtype: an
    asymmetry up to ``n·eps·max|C|`` is rounding (and is symmetrized away), as is a
    negative eigenvalue down to ``−n·eps·max diag(C)``; the PSD test is one Cholesky
    factorization of ``C`` shifted by that tolerance.
    """
    C = as_float_array(gram, "gram", ndim=2, finite=False)
    if C.shape != (n, n):
        raise ShapeError(
            f"gram: expected a square ({n}, {n}) matrix (n = prod(W.shape[1:])), got shape {C.shape}"
        )
    check_finite(C, "gram")
    eps = float(np.finfo(C.dtype).eps)
    C64 = np.array(C, dtype=np.float64, copy=True)
    scale = float(np.max(np.abs(C64))) if C64.size else 0.0
    asym = float(np.max(np.abs(C64 - C64.T))) if C64.size else 0.0
    if asym > 4 * n * eps * scale:
        raise ShapeError(
            f"gram: expected a symmetric matrix (|C − Cᵀ| <= {4 * n * eps:.1e}·max|C|), "
            f"got max |C − Cᵀ| = {asym:.3g} with max |C| = {scale:.3g}"
        )
    C64 = 0.5 * (C64 + C64.T)
    diag = np.diag(C64)
    top = float(diag.max()) if n else 0.0
    tol = 4 * n * eps * max(top, 0.0)
    if n and float(diag.min()) < -tol:
        raise ShapeError(
            f"gram: expected a positive semidefinite matrix, got a diagonal entry {diag.min():.3g} < 0"
        )
    if top > 0.0:
        shifted = C64.copy()
        shifted.flat[:: n + 1] += tol + 1e-12 * top
        try:
            scipy.linalg.cholesky(shifted, lower=True, overwrite_a=True, check_finite=False)
        except np.linalg.LinAlgError:
            raise ShapeError(
                "gram: expected a positive semidefinite matrix (eigenvalues >= "
                f"−{4 * n * eps:.1e}·max diag), got one with a clearly negative eigenvalue"
            ) from None
    return C64


def check_options(ridge: Any, sweeps: Any) -> tuple[float, int | None]:
    """Validate ``ridge`` (a finite float >= 0) and ``sweeps`` (None or an int >= 0)."""
    if isinstance(ridge, (bool, np.bool_)) or not isinstance(ridge, (int, float, np.number)):
        raise ArgumentTypeError(
            f"ridge: expected a float >= 0, got {type(ridge).__name__} {ridge!r}"
        )
    if not math.isfinite(float(ridge)) or float(ridge) < 0:
        raise ArgumentError(f"ridge: expected a finite float >= 0, got {ridge!r}")
    return float(ridge), None if sweeps is None else as_positive_int(sweeps, "sweeps", minimum=0)


def data_error_sq(E: np.ndarray, C: np.ndarray) -> float:
    """``tr(E C Eᵀ)`` for ``E`` of shape ``(m, n)``, in float64, clipped at 0."""
    E = E.astype(np.float64, copy=False)
    return max(float(np.sum((E @ C) * E)), 0.0)


# -- the reduced two-split problem ---------------------------------------------------------
def _input_perm(a: tuple[int, ...], b: tuple[int, ...]) -> np.ndarray:
    """Column order that turns mode-wise ``A ⊗ B`` into ``kron(A_mat, B_mat)``."""
    pairs = [d for ak, bk in zip(a[1:], b[1:], strict=True) for d in (ak, bk)]
    N1 = len(a) - 1
    idx = np.arange(math.prod(pairs)).reshape(pairs) if pairs else np.arange(1)
    if N1:
        idx = idx.transpose(list(range(0, 2 * N1, 2)) + list(range(1, 2 * N1, 2)))
    return idx.ravel()


class _Problem:
    """``min tr((W2 − Ŵ) Cr (W2 − Ŵ)ᵀ)`` over ``Ŵ = Σ_r kron(A_r, B_r)``, in float64.

    ``Cr`` is the Gram with the ridge added; ``Ct`` the user's, for certificates.
    """

    def __init__(
        self, W: np.ndarray, a: tuple[int, ...], b: tuple[int, ...], C: np.ndarray, lam: float
    ):
        self.a, self.b = a, b
        self.m1, self.m2 = a[0], b[0]
        self.n1, self.n2 = math.prod(a[1:]), math.prod(b[1:])
        n = self.n1 * self.n2
        perm = _input_perm(a, b)
        self.W2 = W.reshape(W.shape[0], n).astype(np.float64)[:, perm]
        self.Ct = C[np.ix_(perm, perm)]
        self.Cr = self.Ct.copy()
        self.Cr.flat[:: n + 1] += lam
        self.lam = lam
        self.WC = self.W2 @ self.Cr
        self.wcw = float(np.sum(self.WC * self.W2))
        # ‖W L‖² for the user's C, without a second product: W Ct = W Cr − λ W
        self.ref_sq = max(self.wcw - lam * float(np.sum(self.W2 * self.W2)), 0.0)
        self._swapped: _Problem | None = None

    def shape4(self) -> tuple[int, int, int, int]:
        return (self.m1, self.m2, self.n1, self.n2)

    def dense(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        """``Σ_r kron(A_r, B_r)`` of reduced factors A (R, m1, n1), B (R, m2, n2)."""
        m1, m2, n1, n2 = self.shape4()
        D = np.einsum("rac,rbd->abcd", A, B, optimize=True)
        return D.reshape(m1 * m2, n1 * n2)

    def objective(self, A: np.ndarray, B: np.ndarray) -> float:
        return data_error_sq(self.W2 - self.dense(A, B), self.Cr)

    def swapped(self) -> _Problem:
        """The same problem with the roles of A and B exchanged (for the B update)."""
        if self._swapped is None:
            m1, m2, n1, n2 = self.shape4()
            n = n1 * n2
            sw = object.__new__(_Problem)
            sw.a, sw.b = self.b, self.a
            sw.m1, sw.m2, sw.n1, sw.n2 = m2, m1, n2, n1

            def flip(M: np.ndarray, rows: tuple[int, int]) -> np.ndarray:
                return np.ascontiguousarray(
                    M.reshape((*rows, n1, n2)).transpose(1, 0, 3, 2).reshape(M.shape)
                )

            sw.W2 = flip(self.W2, (m1, m2))
            sw.WC = flip(self.WC, (m1, m2))
            sw.Cr = np.ascontiguousarray(
                self.Cr.reshape(n1, n2, n1, n2).transpose(1, 0, 3, 2).reshape(n, n)
            )
            sw.Ct = None  # type: ignore[assignment]
            sw.wcw = self.wcw
            sw._swapped = self
            self._swapped = sw
        return self._swapped


# -- one factor update -------------------------------------------------------------------
def _psd_inverse(M: np.ndarray) -> np.ndarray:
    """Pseudo-inverse of a symmetric PSD matrix, eigenvalues below rounding dropped."""
    w, V = np.linalg.eigh(0.5 * (M + M.T))
    cutoff = max(float(w.max()), 0.0) * M.shape[0] * np.finfo(np.float64).eps * 10
    inv = np.where(w > cutoff, 1.0 / np.where(w > cutoff, w, 1.0), 0.0)
    return (V * inv) @ V.T


def _rhs(P: _Problem, B: np.ndarray) -> np.ndarray:
    """``h[i1, r, j1] = Σ_{i2, k2} (W C)[i1, i2, j1, k2] B[r, i2, k2]``."""
    return np.einsum("abcd,rbd->arc", P.WC.reshape(P.shape4()), B, optimize=True)


def _apply_gram(P: _Problem, B: np.ndarray, X: np.ndarray) -> np.ndarray:
    """``G X`` for every row group i1 at once, through the structure (G never formed)."""
    m1, m2, n1, n2 = P.shape4()
    D = np.einsum("asc,sbd->abcd", X, B, optimize=True).reshape(m1 * m2, n1 * n2)
    DC = (D @ P.Cr).reshape(m1, m2, n1, n2)
    return np.einsum("abcd,rbd->arc", DC, B, optimize=True)


def _normal_matrix(P: _Problem, B: np.ndarray) -> np.ndarray:
    """``G[(r,j1),(s,k1)] = Σ_{i2} B_r[i2,:] C_{j1 k1} B_s[i2,:]ᵀ``, shared by all rows i1."""
    R = B.shape[0]
    _m1, _m2, n1, n2 = P.shape4()
    BB = np.einsum("rbj,sbk->rsjk", B, B, optimize=True).reshape(R * R, n2 * n2)
    C4 = P.Cr.reshape(n1, n2, n1, n2).transpose(0, 2, 1, 3).reshape(n1 * n1, n2 * n2)
    G = (BB @ C4.T).reshape(R, R, n1, n1).transpose(0, 2, 1, 3)
    return G.reshape(R * n1, R * n1)


def _direct(R: int, n1: int, n2: int) -> bool:
    """Whether the normal matrix of the update over (r, j1) is cheap to form and factorize."""
    return R * R * (n1 * n2) ** 2 + (R * n1) ** 3 <= _DIRECT_FLOPS


def _default_sweeps(R: int, n1: int, n2: int) -> int:
    direct = _direct(R, n1, n2) and _direct(R, n2, n1)
    return _SWEEPS_DIRECT if direct else _SWEEPS_CG


def _update_left(
    P: _Problem, X0: np.ndarray, B: np.ndarray, pre: tuple[np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray, float]:
    """Minimize over the left factor X (R, m1, n1) with B fixed; returns X and the objective.

    The objective is ``wcw − 2⟨X, h⟩ + ⟨X, G X⟩``; it is convex in X, so the exact solve
    and every conjugate-gradient iterate started at X0 are no worse than X0.
    """
    R = B.shape[0]
    m1, n1 = P.m1, P.n1
    h = _rhs(P, B)  # (m1, R, n1)
    X = np.ascontiguousarray(X0.transpose(1, 0, 2))
    if _direct(R, n1, P.n2) or pre is None:
        G = _normal_matrix(P, B)
        rhs = h.reshape(m1, R * n1).T
        try:
            c, low = scipy.linalg.cho_factor(G, check_finite=False)
            sol = scipy.linalg.cho_solve((c, low), rhs, check_finite=False)
        except np.linalg.LinAlgError:
            sol = _psd_inverse(G) @ rhs  # a minimizer also where B leaves G singular
        X = sol.T.reshape(m1, R, n1)
        GX = (G @ sol).T.reshape(m1, R, n1)
    else:
        X, GX = _pcg(P, B, X, h, pre)
    f = P.wcw - 2.0 * float(np.sum(X * h)) + float(np.sum(X * GX))
    return np.ascontiguousarray(X.transpose(1, 0, 2)), max(f, 0.0)


def _pcg(
    P: _Problem,
    B: np.ndarray,
    X: np.ndarray,
    h: np.ndarray,
    pre: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """Preconditioned CG on ``G X = h`` (all row groups together), from X.

    The preconditioner is ``G`` for the nearest Kronecker ``C ≈ C1 ⊗ C2``:
    ``M_B ⊗ C1`` with ``M_B[r, s] = Σ_{i2} tr(B_r[i2] C2 B_s[i2]ᵀ)``, inverted factor by
    factor; for a Kronecker-product C it is exact.
    """
    C1_inv, C2 = pre
    MB = np.einsum("rbj,jk,sbk->rs", B, C2, B, optimize=True)
    MB_inv = _psd_inverse(MB)

    def precond(Rm: np.ndarray) -> np.ndarray:
        return np.einsum("rs,asc,cd->ard", MB_inv, Rm, C1_inv, optimize=True)

    GX = _apply_gram(P, B, X)
    res = h - GX
    z = precond(res)
    d = z
    rz = float(np.sum(res * z))
    h_norm = float(np.linalg.norm(h))
    for _ in range(_CG_ITERS):
        if rz <= 0.0 or float(np.linalg.norm(res)) <= 1e-12 * h_norm:
            break
        Gd = _apply_gram(P, B, d)
        dGd = float(np.sum(d * Gd))
        if dGd <= 0.0:
            break
        alpha = rz / dGd
        X = X + alpha * d
        GX = GX + alpha * Gd
        res = res - alpha * Gd
        z = precond(res)
        rz_new = float(np.sum(res * z))
        d = z + (rz_new / rz) * d
        rz = rz_new
    return X, GX


# -- starts --------------------------------------------------------------------------------
def _nearest_kron_gram(Cr: np.ndarray, n1: int, n2: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``Cr ≈ C1 ⊗ C2`` (rank-1 NKP of the Gram); returns C1, C2 and the relative residual."""
    if n1 == 1 or n2 == 1:
        one = np.ones((1, 1))
        return (one, Cr.copy(), 0.0) if n1 == 1 else (Cr.copy(), one, 0.0)
    K = Cr.reshape(n1, n2, n1, n2).transpose(0, 2, 1, 3).reshape(n1 * n1, n2 * n2)
    method: SVDMethod = "full" if min(K.shape) <= 64 else "arpack"
    U, s, Vt = truncated_svd(K, 1, method=method, random_state=0)
    total = float(np.sum(K * K))
    root = math.sqrt(float(s[0]))
    C1, C2 = (U[:, 0] * root).reshape(n1, n1), (Vt[0] * root).reshape(n2, n2)
    if np.trace(C1) < 0:  # the pair is defined up to a common sign; a Gram's is positive
        C1, C2 = -C1, -C2
    resid = math.sqrt(max(total - float(s[0]) ** 2, 0.0) / total) if total > 0 else 0.0
    return 0.5 * (C1 + C1.T), 0.5 * (C2 + C2.T), resid


def _roots(M: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric square root, its inverse and the inverse of a PSD matrix.

    Eigenvalues are floored at 1e-12 of the largest, so a singular factor of a Kronecker
    approximation still gives finite (if large) inverses.
    """
    w, V = np.linalg.eigh(M)
    top = max(float(w.max()), 1e-300)
    w = np.maximum(w, 1e-12 * top)
    r = np.sqrt(w)
    return (V * r) @ V.T, (V / r) @ V.T, (V / w) @ V.T


def _whitened_start(
    P: _Problem, R: int, C1: np.ndarray, C2: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """NKP of ``W (L1 ⊗ L2)`` mapped back by ``L1⁻¹, L2⁻¹``: exact for ``C = C1 ⊗ C2``."""
    m1, m2, n1, n2 = P.shape4()
    L1, L1i, _ = _roots(C1)
    L2, L2i, _ = _roots(C2)
    W4 = P.W2.reshape(m1, m2, n1, n2)
    Wl = np.einsum("abcd,ce,df->aebf", W4, L1, L2, optimize=True).reshape(m1 * n1, m2 * n2)
    U, s, Vt = truncated_svd(Wl, R, method="auto", random_state=0)
    root = np.sqrt(s)
    A = np.einsum("rac,ce->rae", (U * root).T.reshape(R, m1, n1), L1i)
    B = np.einsum("rbd,df->rbf", (Vt * root[:, None]).reshape(R, m2, n2), L2i)
    return A, B


def _balance(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Equal norms for A_r and B_r (Ŵ unchanged), which keeps the normal matrices scaled."""
    na = np.linalg.norm(A.reshape(A.shape[0], -1), axis=1)
    nb = np.linalg.norm(B.reshape(B.shape[0], -1), axis=1)
    ok = (na > 0) & (nb > 0)
    c = np.where(ok, np.sqrt(np.where(ok, nb, 1.0) / np.where(ok, na, 1.0)), 1.0)
    return A * c[:, None, None], B / c[:, None, None]


def _preconditioners(
    P: _Problem,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], float]:
    C1, C2, resid = _nearest_kron_gram(P.Cr, P.n1, P.n2)
    C1 = C1 + 1e-12 * max(float(np.trace(C1)), 0.0) / P.n1 * np.eye(P.n1)
    C2 = C2 + 1e-12 * max(float(np.trace(C2)), 0.0) / P.n2 * np.eye(P.n2)
    return (_roots(C1)[2], C2), (_roots(C2)[2], C1), resid


def als(
    P: _Problem,
    A: np.ndarray,
    B: np.ndarray,
    sweeps: int,
    *,
    rtol: float = _SWEEP_RTOL,
    f0: float | None = None,
    callback: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Alternating least squares on the data-weighted objective; it never increases.

    Each half-step minimizes over one factor exactly (normal matrix shared by all row
    groups) or, where that matrix is too large, by preconditioned CG from the current
    factor; a half-step that would raise the objective (rounding) is rejected.
    """
    pre_a, pre_b, _ = _preconditioners(P)
    f = P.objective(A, B) if f0 is None else f0  # f0: the caller's value of the start
    for _ in range(sweeps):
        f_start = f
        A_new, fa = _update_left(P, A, B, pre_a)
        if fa <= f:
            A, f = A_new, fa
        if callback is not None:
            callback(A, B)
        B_new, fb = _update_left(P.swapped(), B, A, pre_b)
        if fb <= f:
            B, f = B_new, fb
        A, B = _balance(A, B)
        if callback is not None:
            callback(A, B)
        if f_start - f <= rtol * f_start:
            break
    return A, B, f


def _low_rank(P: _Problem, R: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Exact optimum for ``(m×1) ⊗ (1×n)`` (or ``(1×n) ⊗ (m×1)``): Ŵ = U_r U_rᵀ W.

    ``U_r`` are the leading left singular vectors of ``W L``, i.e. the leading
    eigenvectors of ``W C Wᵀ``.
    """
    m1, m2, n1, n2 = P.shape4()
    case1, case2 = n1 == 1 and m2 == 1, m1 == 1 and n2 == 1
    if not (case1 or case2):
        return None
    K = P.WC @ P.W2.T
    m = K.shape[0]
    _, V = scipy.linalg.eigh(0.5 * (K + K.T), subset_by_index=[m - R, m - 1], check_finite=False)
    U = V[:, ::-1]
    Z = U.T @ P.W2  # (R, n)
    A, B = (U.T[:, :, None], Z[:, None, :]) if case1 else (Z[:, None, :], U.T[:, :, None])
    return _balance(A, B)


# -- the fits --------------------------------------------------------------------------------
def _finish(W: np.ndarray, factors: Sequence[np.ndarray], C: np.ndarray) -> SeKronTensor:
    """SeKronTensor with both certificates computed from the returned (cast) factors."""
    t = SeKronTensor([np.asarray(f, dtype=W.dtype) for f in factors])
    W64 = W.astype(np.float64).reshape(W.shape[0], -1)
    E = W64 - t.to_dense().astype(np.float64).reshape(W64.shape)
    return SeKronTensor(
        t.factors,
        error_bound=float(np.linalg.norm(E)),
        reference_norm=float(np.linalg.norm(W64)),
        data_error_bound=math.sqrt(data_error_sq(E, C)),
        data_reference_norm=math.sqrt(data_error_sq(W64, C)),
    )


def fit_nkp_data(
    W: np.ndarray, plain: SeKronTensor, C: np.ndarray, ridge: float, sweeps: int | None
) -> SeKronTensor:
    """Data-aware ``Σ_r A_r ⊗ B_r`` with the shapes and rank of the plain fit ``plain``.

    Candidates: the plain fit, the fit whitened by the nearest Kronecker ``C1 ⊗ C2`` of C
    (the exact optimum when C is a Kronecker product), and ALS from the better of the two;
    the one with the smallest data-weighted error (for the user's C) is returned, so it is
    never worse than the plain fit. The low-rank structure is solved exactly instead.
    """
    Fa, Fb = plain.factors
    R = Fa.shape[0]
    a, b = tuple(Fa.shape[1:]), tuple(Fb.shape[1:])
    n = C.shape[0]
    trace = float(np.trace(C))
    P = _Problem(W, a, b, C, ridge * trace / n)
    if trace <= 0.0:  # C = 0: every fit has data error 0; keep the plain one
        return _certified(W, P, plain.factors)
    m1, m2, n1, n2 = P.shape4()
    start = (Fa.astype(np.float64).reshape(R, m1, n1), Fb.astype(np.float64).reshape(R, m2, n2))
    shaped = [start]
    exact = _low_rank(P, R)
    if exact is not None:
        shaped.append(exact)
    else:
        C1, C2, _ = _nearest_kron_gram(P.Cr, n1, n2)
        shaped.append(_whitened_start(P, R, C1, C2))
    cands = [_certified(W, P, [A.reshape((R, *a)), B.reshape((R, *b))]) for A, B in shaped]
    if sweeps is None:
        sweeps = _default_sweeps(R, n1, n2)
    if exact is None and sweeps:
        # the ridged objective of a certified candidate, without another product with C
        f_r = [t.data_error_bound**2 + P.lam * t.error_bound**2 for t in cands]  # type: ignore[operator]
        i = int(np.argmin(f_r))
        A, B, _ = als(P, shaped[i][0], shaped[i][1], sweeps, f0=f_r[i])
        cands.append(_certified(W, P, [A.reshape((R, *a)), B.reshape((R, *b))]))
    out = cands[0]
    for t in cands[1:]:
        # the plain fit stays where another candidate only ties it up to rounding (C ∝ I)
        if t.data_error_bound < out.data_error_bound * (1.0 - 1e-9):  # type: ignore[operator]
            out = t
    return out


def _certified(W: np.ndarray, P: _Problem, factors: Sequence[np.ndarray]) -> SeKronTensor:
    """Both certificates of the factors as returned (cast to W's dtype), in one product.

    The reduced layout only permutes W's input columns and C alike, which leaves both
    errors unchanged.
    """
    t = SeKronTensor([np.asarray(f, dtype=W.dtype) for f in factors])
    R = t.factors[0].shape[0]
    A = t.factors[0].astype(np.float64).reshape(R, P.m1, P.n1)
    B = t.factors[1].astype(np.float64).reshape(R, P.m2, P.n2)
    E = P.W2 - P.dense(A, B)
    return SeKronTensor(
        t.factors,
        error_bound=float(np.linalg.norm(E)),
        reference_norm=float(np.linalg.norm(P.W2)),
        data_error_bound=math.sqrt(data_error_sq(E, P.Ct)),
        data_reference_norm=math.sqrt(P.ref_sq),
    )


def _modewise_kron(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    N = X.ndim
    out = np.multiply.outer(X, Y)
    order = [ax for k in range(N) for ax in (k, N + k)]
    return out.transpose(order).reshape([X.shape[k] * Y.shape[k] for k in range(N)])


def _prefix_terms(factors: Sequence[np.ndarray], S: int) -> np.ndarray:
    """Dense ``A_1[r_1] ⊗ ... ⊗ A_{S−1}[r_1..r_{S−1}]`` for every rank prefix, stacked."""
    terms = [factors[0][r] for r in range(factors[0].shape[0])]
    for k in range(1, S - 1):
        f = factors[k]  # (R_1..R_{k+1}, *a^(k+1))
        flat = f.reshape((-1, f.shape[k], *f.shape[k + 1 :]))
        terms = [
            _modewise_kron(t, flat[p, r]) for p, t in enumerate(terms) for r in range(f.shape[k])
        ]
    return np.stack(terms)


def fit_sekron_data(
    W: np.ndarray, plain: SeKronTensor, C: np.ndarray, ridge: float, sweeps: int | None
) -> SeKronTensor:
    """Data-aware SeKron with the structure of the plain fit ``plain``.

    S = 2 is :func:`fit_nkp_data`. For S >= 3, alternating data-weighted least squares
    over the outer factors, starting from the plain fit: the first factor with the dense
    tails ``A_2 ⊗ ... ⊗ A_S`` of each ``r_1`` fixed, then the last factor with the dense
    prefixes ``A_1 ⊗ ... ⊗ A_{S−1}`` fixed (each a two-split least-squares problem solved
    through the Kronecker structure); the middle factors keep their plain fit. Every
    update is a minimization, so the result is never worse than the plain fit.
    """
    S = plain.structure.n_factors
    if S == 2:
        return fit_nkp_data(W, plain, C, ridge, sweeps)
    trace = float(np.trace(C))
    factors = [f.astype(np.float64) for f in plain.factors]
    if sweeps is None:
        sweeps = _SWEEPS_DIRECT
    if trace <= 0.0 or sweeps == 0 or _is_scaled_identity(C):
        # for C = c·I the data-weighted objective is c‖W − Ŵ‖²: the plain fit is the fit
        return _finish(W, plain.factors, C)
    lam = ridge * trace / C.shape[0]
    shapes = plain.structure.shapes
    a_first = tuple(shapes[0])
    rest = tuple(math.prod(s[n] for s in shapes[1:]) for n in range(len(a_first)))
    pre_shape = tuple(math.prod(s[n] for s in shapes[:-1]) for n in range(len(a_first)))
    first = _Problem(W, a_first, rest, C, lam)
    last = _Problem(W, pre_shape, tuple(shapes[-1]), C, lam)
    pre_first, _, _ = _preconditioners(first)
    _, pre_last, _ = _preconditioners(last)
    f = first.objective(*_first_split(first, factors, S))
    for _ in range(sweeps):
        f_start = f
        A, tails = _first_split(first, factors, S)
        A_new, fa = _update_left(first, A, tails, pre_first)
        if fa <= f:
            factors[0], f = A_new.reshape(factors[0].shape), fa
        prefixes = _prefix_terms(factors, S)
        Pn = prefixes.shape[0]
        pre_red = prefixes.reshape(Pn, last.m1, last.n1)
        B = factors[-1].reshape(Pn, last.m2, last.n2)
        B_new, fb = _update_left(last.swapped(), B, pre_red, pre_last)
        if fb <= f:
            factors[-1], f = B_new.reshape(factors[-1].shape), fb
        if f_start - f <= _SWEEP_RTOL * f_start:
            break
    cands = [[g.astype(np.float64) for g in plain.factors], factors]
    true = [_true_error(W, c, C) for c in cands]
    return _finish(W, cands[int(np.argmin(true))], C)


def _is_scaled_identity(C: np.ndarray) -> bool:
    d = np.diag(C)
    off = C.copy()
    off.flat[:: C.shape[0] + 1] = 0.0
    return not off.any() and bool(np.all(d == d[0]))


def _first_split(P: _Problem, factors: list[np.ndarray], S: int) -> tuple[np.ndarray, np.ndarray]:
    R1 = factors[0].shape[0]
    tails = np.stack(
        [SeKronTensor([f[r] for f in factors[1:]]).to_dense() for r in range(R1)]
    ).reshape(R1, P.m2, P.n2)
    return factors[0].reshape(R1, P.m1, P.n1), tails


def _true_error(W: np.ndarray, factors: Sequence[np.ndarray], C: np.ndarray) -> float:
    W64 = W.astype(np.float64).reshape(W.shape[0], -1)
    return data_error_sq(W64 - SeKronTensor(list(factors)).to_dense().reshape(W64.shape), C)
