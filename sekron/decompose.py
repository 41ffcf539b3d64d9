"""Fitting sums and sequences of Kronecker products: NKP/GKPD and SeKron.

Everything happens on the rearranged tensor ``T = rearrange(W, shapes)`` (DESIGN.md
2.2), where a sum of Kronecker products becomes a sum of outer products:

* :func:`nkp` is the truncated SVD of the matrix ``T`` (Van Loan–Pitsianis), globally
  optimal in Frobenius norm by Eckart–Young;
* :func:`sekron` repeats it level by level on every branch's remainder, keeping the left
  factors orthonormal so that the squared error is the sum of every discarded σ², and can
  then lower the error with alternating least squares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.linalg

from . import _blocked, _datafit
from ._kron import _rearrange
from ._validation import (
    SVD_FULL_BELOW,
    as_float_array,
    as_generator,
    as_positive_int,
    as_rank,
    as_shape,
    as_shapes,
    check_finite,
    check_option,
    check_tol,
    svd_method,
)
from .errors import RankError, ShapeError
from .structure import Structure
from .svd import _squared_norm, truncated_svd
from .tensor import SeKronTensor
from .typing import RandomState, SVDMethod

__all__ = ["nkp", "sekron"]


def _finite_squared_norm(W: np.ndarray) -> float:
    """``||W||²`` in float64, checking finiteness on the way.

    NaN and infinity propagate into the sum, so only a non-finite sum needs the
    entry-wise check (which also tells an overflow of genuinely huge float64 entries,
    above about 1e154, from bad input).
    """
    norm_sq = _squared_norm(W)
    if not math.isfinite(norm_sq):
        check_finite(W, "W")  # raises NonFiniteError with the count of bad entries
    return norm_sq


def _scaled_norm(W: np.ndarray) -> tuple[np.ndarray, float, int]:
    """``(W / 2**e, ||W / 2**e||², e)``, with ``e != 0`` only for extreme magnitudes.

    Entries near the top (or bottom) of the dtype's range overflow (underflow) the
    squared norm and the SVD: float64 above about 1e144, float32 above about 4e9. Such a
    ``W`` is fitted as ``W / 2**e`` with ``2**e`` near ``max |W|`` and the factors and
    certificates are multiplied back by :func:`_rescaled`; a power of two keeps every
    bit, so the certificates stay finite and exact. Finiteness is checked on the way.
    """
    with np.errstate(over="ignore"):  # an overflow here is what the scaling is for
        norm_sq = _finite_squared_norm(W)
    limit = 2.0 ** (2 * (np.finfo(W.dtype).maxexp // 2 - 32))
    if 1.0 / limit <= norm_sq <= limit or not W.any():  # a zero norm may be an underflow
        return W, norm_sq, 0
    e = math.frexp(float(np.max(np.abs(W))))[1]
    W = np.ldexp(W, -e).astype(W.dtype, copy=False)
    return W, _squared_norm(W), e


def _rescaled(t: SeKronTensor, e: int) -> SeKronTensor:
    """``t`` times ``2**e``: the power spread evenly over the factors, certificates too."""
    if e == 0:
        return t
    S = len(t.factors)
    shares = [e // S + (1 if k < e % S else 0) for k in range(S)]

    def up(x: float | None) -> float | None:
        return None if x is None else float(np.ldexp(np.float64(x), e))

    return SeKronTensor(
        [
            np.ldexp(f, k).astype(f.dtype, copy=False)
            for f, k in zip(t.factors, shares, strict=True)
        ],
        error_bound=up(t.error_bound),
        reference_norm=up(t.reference_norm),
        data_error_bound=up(t.data_error_bound),
        data_reference_norm=up(t.data_reference_norm),
    )


def _complement_shape(
    shape: tuple[int, ...], shape_a: tuple[int, ...], name: str
) -> tuple[int, ...]:
    if len(shape_a) != len(shape):
        raise ShapeError(
            f"{name}: expected {len(shape)} modes to factor W of shape {shape}, got {shape_a}"
        )
    out = []
    for n, (w, a) in enumerate(zip(shape, shape_a, strict=True)):
        if w % a:
            raise ShapeError(
                f"{name}: mode {n} of W has size {w}, which {a} does not divide (got {shape_a})"
            )
        out.append(w // a)
    return tuple(out)


def _check_solver(method: Any, random_state: Any) -> None:
    """Reject a bad solver name or seed up front, also where no solver ends up using them."""
    check_option(method, "method", ("auto", "full", "arpack", "randomized"))
    if not isinstance(random_state, (np.random.Generator, np.random.RandomState)):
        as_generator(random_state)  # None or an int >= 0; raises TypeError/ValueError otherwise


def _rank_from_spectrum(s: np.ndarray, norm_sq: float, tol: float, max_rank: int) -> int:
    """Smallest rank whose discarded energy is within ``tol² ||W||²``."""
    tail = np.concatenate([np.cumsum((s.astype(np.float64) ** 2)[::-1])[::-1], [0.0]])
    budget = tol * tol * norm_sq
    ok = np.nonzero(tail <= budget)[0]
    r = int(ok[0]) if ok.size else len(s)
    return int(min(max(r, 1), max_rank))


def nkp(
    W: Any,
    shape_a: Sequence[int] | int,
    shape_b: Sequence[int] | int | None = None,
    rank: int | None = None,
    *,
    tol: float | None = None,
    method: SVDMethod = "auto",
    random_state: RandomState = None,
    gram: Any = None,
    ridge: float = _datafit.DEFAULT_RIDGE,
    sweeps: int | None = _datafit.DEFAULT_SWEEPS,
) -> SeKronTensor:
    r"""Nearest sum of Kronecker products ``W ≈ Σ_r A_r ⊗ B_r`` (Van Loan–Pitsianis, GKPD).

    Parameters
    ----------
    W : array_like or dask.array.Array, shape ``(w_1, ..., w_N)``
        A real matrix or N-d tensor (a conv kernel ``(F, C, Kh, Kw)`` for GKPD). A dask
        array is fitted out of core (see Notes); ``tol`` and ``gram`` need ``W`` in
        memory and are refused for it.
    shape_a : sequence of N ints
        Shape of the factors ``A_r``; must divide ``W.shape`` mode by mode.
    shape_b : sequence of N ints, optional
        Shape of the factors ``B_r``; defaults to ``W.shape / shape_a``.
    rank : int, optional
        Number of Kronecker terms R, ``1 <= R <= min(|a|, |b|)``. Default 1; with
        ``tol`` it is an upper limit instead.
    tol : float, optional
        Choose the smallest rank whose relative Frobenius error is at most ``tol``.
    method : {"auto", "full", "arpack", "randomized"}
        Truncated-SVD solver (see :func:`sekron.svd.truncated_svd`); ``tol`` needs the
        whole spectrum and always uses ``"full"``.
    random_state : None, int or Generator
        Seed of the randomized and ARPACK solvers.
    gram : array_like, shape ``(n, n)``, optional
        Gram matrix ``Σ x xᵀ`` of the inputs, ``n = prod(W.shape[1:])``: ``W`` is read as
        the matrix ``(w_1, n)`` acting on inputs ``x`` (for a conv kernel ``(F, C, Kh,
        Kw)``, the Gram of its im2col patches in ``(C, Kh, Kw)`` C-order). With it the fit
        minimizes the data-weighted error ``‖(W − Ŵ) L‖_F`` (``L Lᵀ = C``), i.e. the error
        of the layer's outputs on those inputs, instead of ``‖W − Ŵ‖_F``; see Notes
        and the "Data-aware fits" page of the documentation. Must be symmetric positive
        semidefinite.
    ridge : float, default 1e-6
        With ``gram``: ``λ = ridge · tr(C) / n`` is added to C's diagonal for the fit, so
        that a rank-deficient C (fewer samples than features, dead features) gives finite
        factors; 1e-6 of the mean eigenvalue does not bias a full-rank C measurably.
        Certificates are computed with the C given, without the ridge.
    sweeps : int, optional
        With ``gram``: the most sweeps of data-weighted alternating least squares (0: only
        the plain and the whitened starts are compared). Default: 8 where the factor
        updates' normal matrices are small enough to form, 2 where the updates run
        conjugate gradients through products with C (large layers; there the first two
        sweeps take nearly all of the gain). ALS also stops once a sweep lowers the
        objective by less than 0.1 %.

    Returns
    -------
    SeKronTensor
        Two factors: ``A`` of shape ``(R, *shape_a)`` and ``B`` of shape ``(R, *shape_b)``,
        each term scaled by ``sqrt(σ_r)``. ``error_bound`` is
        ``sqrt(||W||² − Σ_{r<=R} σ_r²)``, the exact error. With ``gram``, ``error_bound``
        is the weight error ``‖W − Ŵ‖_F`` and ``data_error_bound`` the data-weighted
        error, both computed from the returned factors.

    Raises
    ------
    ShapeError
        If the factor shapes do not multiply to ``W.shape``.
    RankError
        If ``rank`` is outside ``1..min(|a|, |b|)``.
    NonFiniteError, DTypeError
        For non-finite or non-numeric ``W`` or ``gram``.
    ShapeError
        If ``gram`` is not ``(n, n)``, not symmetric or not positive semidefinite (up to
        rounding tolerances from its dtype).

    Notes
    -----
    With :math:`\mathcal{R}(W) = U \Sigma V^T` the rearrangement of ``W``,
    :math:`A_r = \mathrm{unvec}_a(\sqrt{\sigma_r} u_r)` and
    :math:`B_r = \mathrm{unvec}_b(\sqrt{\sigma_r} v_r)` minimize
    :math:`\|W - \sum_{r \le R} A_r \otimes B_r\|_F` over all factors of those shapes,
    and the squared error is :math:`\sum_{r > R} \sigma_r^2`.

    With ``gram`` (the rank is chosen as without it, also with ``tol``): the low-rank
    structure ``shape_a = (w_1, 1, ..., 1)`` (or its mirror) is solved exactly,
    ``Ŵ = U_R U_Rᵀ W`` with ``U_R`` the leading left singular vectors of ``W L``. Otherwise
    three candidates are compared by their data-weighted error and the best is returned,
    so it is never worse than the plain fit: the plain fit; the NKP of ``W (L1 ⊗ L2)``
    mapped back by ``L1⁻¹, L2⁻¹`` for the nearest Kronecker product ``C1 ⊗ C2`` of C
    (the exact optimum when C is one); and ``sweeps`` of alternating least squares from
    the better of those two. Each ALS half-step solves one factor's linear
    least-squares problem exactly through the structure: for fixed ``B`` the normal
    matrix over ``(r, j1)`` is the same for every row block of ``A`` and is factorized
    once; where it is too large to form, preconditioned conjugate gradients (with the
    Kronecker approximation of C as preconditioner) run from the current factor. The
    objective never increases.

    A dask array is never gathered: a chunk whose edges fall on multiples of
    ``shape_b`` (W is rechunked so if needed) holds whole rows of the rearranged matrix,
    so the randomized range finder's products ``R Ω`` and ``Rᵀ Q`` run chunk by chunk
    on the active dask scheduler (a ``distributed.Client`` too) and only thin blocks
    come back (:mod:`sekron._blocked`). Same seed, same random test matrix, so the fit
    is the in-memory ``method="randomized"`` fit up to rounding, with the same
    certificate ``‖W‖² − Σ σ²`` (``‖W‖²`` summed in float64 over the chunks).

    References
    ----------
    C. F. Van Loan and N. Pitsianis, "Approximation with Kronecker products", 1993.
    M. G. A. Hameed et al., "Convolutional neural network compression through
    generalized Kronecker product decomposition", AAAI 2022.

    Examples
    --------
    >>> import numpy as np
    >>> import sekron as sk
    >>> rng = np.random.default_rng(0)
    >>> A, B = rng.normal(size=(3, 4)), rng.normal(size=(5, 2))
    >>> t = sk.nkp(np.kron(A, B), (3, 4))
    >>> np.allclose(t.to_dense(), np.kron(A, B)), t.error_bound < 1e-12
    (True, True)
    >>> sk.nkp(rng.normal(size=(16, 16)), (4, 4), tol=0.5).structure.ranks[0] <= 16
    True

    Fitted to the inputs a layer sees (here correlated ones), the output error drops:

    >>> X = rng.normal(size=(16, 500)) * np.linspace(3.0, 0.1, 16)[:, None]
    >>> W = rng.normal(size=(16, 16))
    >>> plain = sk.nkp(W, (4, 4), rank=2)
    >>> fitted = sk.nkp(W, (4, 4), rank=2, gram=X @ X.T)
    >>> err = lambda t: np.linalg.norm((W - t.to_dense()) @ X)
    >>> bool(err(fitted) < err(plain)), bool(np.isclose(fitted.data_error_bound, err(fitted)))
    (True, True)

    A dask array, fitted chunk by chunk (here on the synchronous scheduler; on a
    cluster with a ``distributed.Client`` active); the factors are numpy arrays:

    >>> import dask, dask.array as da
    >>> Wd = da.from_array(np.kron(A, B), chunks=(5, 4))
    >>> with dask.config.set(scheduler="synchronous"):
    ...     td = sk.nkp(Wd, (3, 4), random_state=0)
    >>> type(td.factors[0]).__name__, bool(np.allclose(td.to_dense(), np.kron(A, B)))
    ('ndarray', True)
    """
    blocked = _blocked.is_dask_array(W)  # out of core: see sekron._blocked
    if blocked:
        W = _blocked.as_float_dask(W, "W")
        _blocked.check_supported(method=method, tol=tol, gram=gram)
    else:
        # finiteness is checked through the norm below (one pass over W instead of two)
        W = as_float_array(W, "W", min_ndim=1, finite=False)
    _check_solver(method, random_state)
    data = _check_data(W, gram, ridge, sweeps)
    a = as_shape(shape_a, "shape_a")
    b = _complement_shape(W.shape, a, "shape_a")
    if shape_b is not None:
        b_given = as_shape(shape_b, "shape_b")
        if b_given != b:
            raise ShapeError(
                f"shape_b: expected {b} so that shape_a {a} times shape_b gives W's shape {W.shape}, got {b_given}"
            )
    size_a, size_b = math.prod(a), math.prod(b)
    max_rank = min(size_a, size_b)
    if rank is not None:
        detail = f"min(|a|, |b|) for shapes {a} and {b}"
        rank = as_rank(rank, maximum=max_rank, detail=detail)
    if blocked:
        return _blocked.nkp(W, a, b, 1 if rank is None else rank, random_state)
    W, norm_sq, e = _scaled_norm(W)  # e != 0 only for extreme magnitudes
    T = np.ascontiguousarray(_rearrange(W, (a, b)).reshape(size_a, size_b))
    if tol is not None:
        tol = check_tol(tol)
        U, s, Vt = truncated_svd(T, max_rank, method="full")
        r = _rank_from_spectrum(s, norm_sq, tol, max_rank if rank is None else rank)
        discarded = float(np.sum(s[r:].astype(np.float64) ** 2))
        U, s, Vt = U[:, :r], s[:r], Vt[:r]
    else:
        r = 1 if rank is None else rank
        if r == max_rank or svd_method(method, T.shape, r) == "full":
            U, s, Vt = truncated_svd(T, max_rank, method="full")
            discarded = float(np.sum(s[r:].astype(np.float64) ** 2))
            U, s, Vt = U[:, :r], s[:r], Vt[:r]
        else:
            U, s, Vt = truncated_svd(
                T, r, method=method, random_state=random_state, squared_norm=norm_sq
            )
            discarded = max(norm_sq - float(np.sum(s.astype(np.float64) ** 2)), 0.0)
    root = np.sqrt(s).astype(T.dtype)
    A = (U * root).T.reshape((r, *a))
    B = (Vt * root[:, None]).reshape((r, *b))
    plain = SeKronTensor(
        [A, B], error_bound=math.sqrt(discarded), reference_norm=math.sqrt(norm_sq)
    )
    if data is None:
        return _rescaled(plain, e)
    return _rescaled(_datafit.fit_nkp_data(W, plain, *data), e)


def _check_data(
    W: np.ndarray, gram: Any, ridge: Any, sweeps: Any
) -> tuple[np.ndarray, float, int | None] | None:
    """Validated ``(C, ridge, sweeps)`` of a data-aware fit, or None without ``gram``."""
    ridge, sweeps = _datafit.check_options(ridge, sweeps)
    if gram is None:
        return None
    return _datafit.check_gram(gram, math.prod(W.shape[1:])), ridge, sweeps


def _batched_svd(M: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD of a stack ``(P, m, n)`` with the sign convention of :mod:`sekron.svd`."""
    if M.shape[0] == 1 and min(M.shape[1:]) > 512:
        U, s, Vt = truncated_svd(M[0], min(M.shape[1:]), method="full")
        return U[None], s[None], Vt[None]
    if M.shape[1] < M.shape[2]:
        # LAPACK on a wide stack is several times slower than on its (tall) transpose
        Vt_T, s, U_T = np.linalg.svd(
            np.ascontiguousarray(M.transpose(0, 2, 1)), full_matrices=False
        )
        U, Vt = U_T.transpose(0, 2, 1), Vt_T.transpose(0, 2, 1)
    else:
        U, s, Vt = np.linalg.svd(M, full_matrices=False)
    idx = np.argmax(np.abs(U), axis=1)  # (P, k)
    signs = np.sign(np.take_along_axis(U, idx[:, None, :], axis=1))[:, 0, :]
    signs[signs == 0] = 1
    return U * signs[:, None, :], s, Vt * signs[:, :, None]


def _resolve_structure(
    W_shape: tuple[int, ...], shapes_or_structure: Any, ranks: Any
) -> tuple[Structure, bool]:
    """Return the structure to fit and whether the ranks were given (vs chosen)."""
    if isinstance(shapes_or_structure, Structure):
        st = shapes_or_structure
        if ranks is not None and st.with_ranks(ranks).ranks != st.ranks:
            raise RankError(
                f"ranks: given both a Structure with ranks {st.ranks} and ranks={ranks!r}"
            )
        if st.shape != W_shape:
            raise ShapeError(
                f"shapes_or_structure: expected a structure of shape {W_shape}, got {st.shape}"
            )
        return st, True
    shapes = as_shapes(shapes_or_structure, "shapes_or_structure", target=W_shape)
    return Structure(shapes, ranks), ranks is not None


def sekron(
    W: Any,
    shapes_or_structure: Any,
    ranks: Any = None,
    *,
    tol: float | None = None,
    refine: int = 0,
    method: SVDMethod = "auto",
    random_state: RandomState = None,
    gram: Any = None,
    ridge: float = _datafit.DEFAULT_RIDGE,
    sweeps: int | None = _datafit.DEFAULT_SWEEPS,
) -> SeKronTensor:
    r"""Fit a sequence of Kronecker products (SeKron) to ``W``, level by level.

    Parameters
    ----------
    W : array_like or dask.array.Array, shape ``(w_1, ..., w_N)``
        A dask array has its first level fitted out of core (as :func:`nkp` fits one;
        ``ranks`` needed, no ``tol``, ``refine`` or ``gram``) and the ``R_1`` remainders,
        ``R_1 / |a^(1)|`` of W's size, in memory.
    shapes_or_structure : Structure or sequence of S >= 2 factor shapes
        Factor shapes ``a^(1..S)`` with ``prod_k a^(k)_n = w_n``; a :class:`Structure`
        also fixes the ranks.
    ranks : int or sequence of S−1 ints, optional
        Ranks ``R_1..R_{S−1}``. With neither ``ranks`` nor ``tol``: the largest useful
        ranks, which reproduce ``W`` exactly. With ``tol``: upper limits.
    tol : float, optional
        Target relative Frobenius error. Each of the S−1 levels gets an equal share
        ``tol² ||W||² / (S−1)`` of the squared-error budget, and its rank is the smallest
        whose discarded energy (summed over branches) fits that share; the certificate
        is then at most ``tol · ||W||``.
    refine : int, default 0
        Sweeps of alternating least squares (with extrapolation) over the factors after
        the recursive fit. For S >= 3 a second start is refined too, in which every
        branch's basis is changed so that its remainders keep the next level's rank
        (a generalized-eigenvalue "unmixing", see Notes); the better result is returned.
        Each sweep never increases the error, so the result is never worse than the
        plain recursion.
    method : {"auto", "full", "arpack", "randomized"}
        SVD solver for the first level (the only large one); later levels use batched
        LAPACK on the small remainders.
    random_state : None, int or Generator
        Seed of the randomized solvers.
    gram : array_like, shape ``(n, n)``, optional
        Gram matrix ``Σ x xᵀ`` of the inputs, ``n = prod(W.shape[1:])`` (see
        :func:`sekron.nkp`): fit the data-weighted error ``‖(W − Ŵ) L‖_F``, ``L Lᵀ = C``.
        The structure (and ranks, also those chosen by ``tol``) are those of the plain fit.
    ridge : float, default 1e-6
        With ``gram``: ``λ = ridge · tr(C) / n`` added to C's diagonal for the fit.
    sweeps : int, optional
        With ``gram``: the most sweeps of data-weighted alternating least squares (default
        as in :func:`sekron.nkp` for S = 2, 8 for S >= 3).

    Returns
    -------
    SeKronTensor
        With ``error_bound`` the Frobenius error: the root of the discarded σ² summed
        over levels and branches (no refinement), or the directly computed error (after
        refinement, or with ``gram``). With ``gram``, ``data_error_bound`` is the
        data-weighted error of the returned factors, computed exactly.

    Raises
    ------
    ShapeError, RankError, NonFiniteError, DTypeError
        Also for a ``gram`` of the wrong size, not symmetric or not positive semidefinite.

    Notes
    -----
    Level 1 is the NKP of ``W`` with shapes ``(a^(1), rest)``; its left factors are
    orthonormal and the σ go into the remainders. Every remainder (one per prefix
    ``r_1..r_{k−1}``) is then split the same way with ``R_k`` terms, and the last
    remainders are the last factor. Orthogonality makes the discarded parts of all levels
    mutually orthogonal, so their energies add up to the squared error exactly. Each
    step is optimal but for S >= 3 the whole is not (like TT-SVD).

    With ``gram`` and S = 2 the fit is that of :func:`sekron.nkp` with ``gram`` (plain,
    Kronecker-whitened and ALS candidates; exact for the low-rank structure and for a
    Kronecker-product C). For S >= 3 the plain fit (with ``refine``) is the start, and
    ``sweeps`` of data-weighted least squares alternate between the first factor (the
    dense tails ``A_2 ⊗ ... ⊗ A_S`` of every ``r_1`` fixed) and the last factor (the
    dense prefixes fixed); the middle factors keep their plain fit, and there is no
    whitened start. Each update is a minimization, so the data-weighted error never
    exceeds the plain fit's.

    The recursion recovers exactly a tensor whose later factors are shared across
    earlier branches (TT-like), at its ranks, but not a general "tree" tensor whose
    branches have their own later factors: the orthonormal basis of a level mixes the
    branches, and mixed remainders have a higher Kronecker rank. With ``refine``, the
    unmixing start separates the branches again: the remainders of a branch are
    mixtures of R_k matrices of rank R_{k+1}, and a generalized eigenvalue problem on
    two random combinations of them (projected on their joint column and row spaces)
    gives the mixing matrix. It applies when ``R_k R_{k+1} <= min(|a^(k+1)|,
    prod_{j>k+1} |a^(j)|)``, and then generic tree tensors are recovered at their
    nominal ranks to working precision. Beyond that bound only ALS, a local method,
    is left, and it can stop in a local minimum.

    References
    ----------
    M. G. A. Hameed et al., "SeKron: a decomposition method supporting many
    factorization structures", 2022.

    Examples
    --------
    >>> import numpy as np
    >>> import sekron as sk
    >>> rng = np.random.default_rng(0)
    >>> W = sk.kron(rng.normal(size=(2, 3)), rng.normal(size=(4, 2)), rng.normal(size=(2, 2)))
    >>> t = sk.sekron(W, [(2, 3), (4, 2), (2, 2)], ranks=(1, 1))
    >>> t.structure.n_params, t.relative_error_bound < 1e-12
    (18, True)
    >>> exact = sk.sekron(rng.normal(size=(8, 8)), [(2, 2), (2, 2), (2, 2)])
    >>> exact.relative_error_bound < 1e-12
    True
    """
    blocked = _blocked.is_dask_array(W)
    if blocked:
        W = _blocked.as_float_dask(W, "W")
        _blocked.check_supported(method=method, tol=tol, gram=gram, refine=refine)
    else:
        W = as_float_array(W, "W", min_ndim=1, finite=False)
    _check_solver(method, random_state)
    data = _check_data(W, gram, ridge, sweeps)
    base, ranks_given = _resolve_structure(W.shape, shapes_or_structure, ranks)
    refine = as_positive_int(refine, "refine", minimum=0)
    if tol is not None:
        tol = check_tol(tol)
    S, sizes = base.n_factors, base.sizes
    cap = base.ranks if ranks_given else base.max_ranks
    if blocked:
        return _sekron_blocked(W, base, ranks_given, method, random_state)
    W, norm_sq, e = _scaled_norm(W)  # e != 0 only for extreme magnitudes
    T = _rearrange(W, base.shapes).reshape(sizes)
    level_budget = None if tol is None else tol * tol * norm_sq / (S - 1)

    factors, chosen, discarded = _recursive_fit(
        T, base, cap, level_budget, method, random_state, unmix=False
    )
    norm = math.sqrt(norm_sq)
    out = SeKronTensor(factors, error_bound=math.sqrt(discarded), reference_norm=norm)
    if refine:
        starts = [out]
        if S >= 3:
            # A second start whose level bases are chosen so that every remainder keeps
            # the next level's rank ("unmixed" branches); it recovers tree tensors that
            # the orthonormal recursion cannot, and ALS polishes whichever is better.
            alt, _, _ = _recursive_fit(
                T,
                base.with_ranks(tuple(chosen)),
                tuple(chosen),
                None,
                method,
                random_state,
                unmix=True,
            )
            starts.append(SeKronTensor(alt, reference_norm=norm))
        refined = [_refine(T, s0, refine) for s0 in starts]
        out = min(refined, key=lambda t: t.error_bound if t.error_bound is not None else np.inf)
    if data is not None:
        return _rescaled(_datafit.fit_sekron_data(W, out, *data), e)
    return _rescaled(out, e)


def _sekron_blocked(
    W: Any, base: Structure, ranks_given: bool, method: SVDMethod, random_state: RandomState
) -> SeKronTensor:
    """:func:`sekron` of a dask array: level 1 out of core, the remainders in memory."""
    if not ranks_given:
        raise RankError(
            "ranks: expected ranks for a dask array W (the exact default would hold "
            "all of W in memory), got None"
        )
    left, rem, norm_sq, discarded = _blocked.first_level(
        W, base.shapes, base.ranks[0], random_state
    )
    r = base.ranks[0]
    start = ([left.reshape((r, *base.shapes[0]))], [r], discarded, rem)
    factors, _, discarded = _recursive_fit(
        None, base, base.ranks, None, method, random_state, unmix=False, start=start
    )
    return SeKronTensor(
        factors, error_bound=math.sqrt(discarded), reference_norm=math.sqrt(norm_sq)
    )


def _recursive_fit(
    T: np.ndarray | None,
    base: Structure,
    cap: tuple[int, ...],
    level_budget: float | None,
    method: SVDMethod,
    random_state: RandomState,
    *,
    unmix: bool,
    start: tuple[list[np.ndarray], list[int], float, np.ndarray] | None = None,
) -> tuple[list[np.ndarray], list[int], float]:
    """Branch-wise truncated SVDs, level by level; returns factors, ranks and discarded energy.

    With ``unmix`` each branch's level basis is changed (see :func:`_unmix`) so that its
    remainders have the next level's rank; the discarded energy is then not a certificate.
    ``start`` (factors, ranks, discarded energy and remainders of the levels already
    fitted, e.g. out of core) continues from there instead of from ``T``.
    """
    S, sizes = base.n_factors, base.sizes
    factors: list[np.ndarray] = [] if start is None else list(start[0])
    chosen: list[int] = [] if start is None else list(start[1])
    discarded = 0.0 if start is None else start[2]
    # Remainders of every branch, stacked: (P_{k-1}, |a^(k)| * prod_{j>k} |a^(j)|)
    rem = T.reshape(1, -1) if start is None else start[3]  # type: ignore[union-attr]
    for k in range(len(chosen), S - 1):
        P = rem.shape[0]
        tail = math.prod(sizes[k + 1 :])
        M = rem.reshape(P, sizes[k], tail)
        if (
            P == 1
            and level_budget is None
            and min(M.shape[1:]) > SVD_FULL_BELOW
            and svd_method(method, M.shape[1:], cap[k]) != "full"
            and cap[k] < min(M.shape[1:])
        ):
            U1, s1, Vt1 = truncated_svd(M[0], cap[k], method=method, random_state=random_state)
            U, s, Vt = U1[None], s1[None], Vt1[None]
            full_s = None
        else:
            U, s, Vt = _batched_svd(M)
            full_s = s
        if level_budget is not None and full_s is not None:
            energy = (full_s.astype(np.float64) ** 2).sum(axis=0)  # per rank, summed over branches
            r = _rank_from_spectrum(np.sqrt(energy), level_budget, 1.0, cap[k])
        else:
            r = cap[k]
        chosen.append(r)
        if full_s is not None:
            discarded += float(np.sum(full_s[:, r:].astype(np.float64) ** 2))
        else:
            discarded += max(_squared_norm(M[0]) - float(np.sum(s[0].astype(np.float64) ** 2)), 0.0)
        left = np.ascontiguousarray(U[:, :, :r].transpose(0, 2, 1))  # (P, r, |a_k|)
        right = s[:, :r, None] * Vt[:, :r, :]  # (P, r, tail)
        if unmix and k + 2 < S and r > 1:
            for p in range(P):
                G = _unmix(right[p].reshape(r, sizes[k + 1], -1), cap[k + 1])
                if G is not None:
                    left[p] = G.T @ left[p]
                    right[p] = np.linalg.solve(G, right[p])
        prefix = tuple(chosen[:k])
        factors.append(left.reshape(prefix + (r,) + base.shapes[k]))
        rem = right.reshape(P * r, tail)
    factors.append(rem.reshape(tuple(chosen) + base.shapes[-1]))
    return factors, chosen, discarded


def _unmix(X: np.ndarray, L: int) -> np.ndarray | None:
    """Basis change ``G`` with ``X_r = Σ_s G[r, s] M_s`` and every ``M_s`` of rank ``L``.

    ``X`` holds R matrices (R, m, n): the remainders of one branch, which the orthonormal
    basis of the level above mixes. If they are mixtures of R matrices of rank L whose
    column (row) spaces are independent, projecting on the joint R·L-dimensional column
    and row spaces gives square matrices ``Y_r``; for two generic combinations
    ``Z_1, Z_2`` of them, the eigenvectors of ``Z_2^{-1} Z_1`` split into R groups of L
    (one per ``M_s``) and the coefficients ``G[:, s]`` follow from the group's columns
    of every ``Y_r V`` (a generalized-eigenvalue method for block-term decompositions).
    Returns None where it does not apply (nothing to unmix, or too little room).
    """
    R, m, n = X.shape
    K = R * L
    if R < 2 or K > min(m, n):
        return None
    Uc, sc, _ = np.linalg.svd(X.transpose(1, 0, 2).reshape(m, R * n), full_matrices=False)
    _, sr, Vr = np.linalg.svd(X.reshape(R * m, n), full_matrices=False)
    if sc[0] == 0 or sc[K - 1] < 1e-6 * sc[0] or sr[K - 1] < 1e-6 * sr[0]:
        return None  # the remainders already share their spaces: nothing is mixed
    Y = np.einsum("mk,rmn,ln->rkl", Uc[:, :K], X, Vr[:K])
    rng = np.random.default_rng(0)
    alpha, beta = rng.standard_normal(R), rng.standard_normal(R)
    Z1, Z2 = np.tensordot(alpha, Y, 1), np.tensordot(beta, Y, 1)
    try:
        lam, V = scipy.linalg.eig(Z1, Z2)
    except (np.linalg.LinAlgError, ValueError):
        return None
    if not np.all(np.isfinite(lam)) or np.max(np.abs(lam.imag)) > 1e-6 * np.max(np.abs(lam)):
        return None
    order = np.argsort(lam.real)
    V = V[:, order].real
    G = np.empty((R, R))
    for s_ in range(R):
        cols = [np.asarray(Y[r] @ V[:, s_ * L : (s_ + 1) * L]) for r in range(R)]
        ref = max(cols, key=lambda c: float(np.linalg.norm(c)))
        denom = float(np.sum(ref * ref))
        if denom == 0.0:
            return None
        G[:, s_] = [float(np.sum(c * ref)) / denom for c in cols]
    if np.linalg.cond(G) > 1e8:
        return None
    return G


def _error(T: np.ndarray, t: SeKronTensor) -> float:
    return float(np.linalg.norm((T - t.rearranged()).ravel().astype(np.float64)))


def _tails(
    factors: Sequence[np.ndarray], ranks: tuple[int, ...], sizes: tuple[int, ...], k: int
) -> np.ndarray:
    """``Tail[r_1..r_k, i_{k+1}..i_S] = Σ_{r_{k+1}..} Π_{j>k} A_j``, shape ``(P_k, prod_{j>k}|a_j|)``."""
    S = len(factors)
    Y = factors[-1].reshape((*ranks, sizes[-1]))
    for j in range(S - 2, k, -1):
        P = math.prod(ranks[:j])
        A = factors[j].reshape(P, ranks[j], sizes[j])
        Y = np.matmul(A.transpose(0, 2, 1), Y.reshape(P, ranks[j], -1)).reshape((*ranks[:j], -1))
    return Y.reshape(math.prod(ranks[: min(k + 1, S - 1)]), -1)


def _refine(T: np.ndarray, start: SeKronTensor, sweeps: int) -> SeKronTensor:
    """Alternating least squares over the factors, with extrapolation; the best iterate wins.

    After each sweep the step from the previous sweep is extrapolated (a line search
    along ``new − old``, as in Bro's ALS acceleration for CP) and kept only if it lowers
    the error, so the error never increases.
    """
    st = start.structure
    S, sizes, ranks = st.n_factors, st.sizes, st.ranks
    dtype = start.dtype
    work = T.astype(np.float64)
    factors = [f.astype(np.float64) for f in start.factors]
    best_factors, best_err = factors, _error64(work, factors)
    norm = float(np.linalg.norm(work.ravel()))
    eps = float(np.finfo(dtype).eps)
    for sweep in range(sweeps):
        old = factors
        factors = list(old)
        for k in range(S):
            factors[k] = _solve_factor(work, factors, ranks, sizes, k, eps)
        err = _error64(work, factors)
        if sweep > 0:
            step = max(1.0, (sweep + 1) ** (1.0 / 3.0))
            for _ in range(3):
                trial = [f + step * (f - o) for f, o in zip(factors, old, strict=True)]
                trial_err = _error64(work, trial)
                if trial_err < err:
                    factors, err = trial, trial_err
                    break
                step /= 2.0
        if err >= best_err * (1.0 - 1e-12):
            if err >= best_err:  # a sweep that does not help: converged up to rounding
                break
        if err < best_err:
            best_factors, best_err = factors, err
        if best_err <= 10 * eps * norm:  # exact to working precision
            break
    out = [f.astype(dtype) for f in best_factors]
    # report the error of the factors actually returned (after the cast)
    final = SeKronTensor(out, reference_norm=start.reference_norm)
    return SeKronTensor(out, error_bound=_error(T, final), reference_norm=start.reference_norm)


def _error64(T: np.ndarray, factors: Sequence[np.ndarray]) -> float:
    return _error(T, SeKronTensor(list(factors)))


def _solve_factor(
    T: np.ndarray,
    factors: list[np.ndarray],
    ranks: tuple[int, ...],
    sizes: tuple[int, ...],
    k: int,
    eps: float,
) -> np.ndarray:
    """Least-squares update of factor k with the others fixed.

    The model is ``T_(k) = A_k^T H`` with ``H[p] = Prefix[p] ⊗ Tail[p]`` for each rank
    prefix p of factor k, so ``H H^T`` is the Hadamard product of the two Gram matrices
    and ``T_(k) H^T`` is a chain of small contractions; ``H`` is never formed.
    """
    S = len(factors)
    n_rank = min(k + 1, S - 1)
    P = math.prod(ranks[:n_rank])
    # X[r_<k, i_k.., ] = T contracted with factors 0..k-1 over their modes
    X = T.reshape(1, -1)
    gram_prefix = np.ones((1, 1))
    for j in range(k):
        Pj_prev = X.shape[0]
        A = factors[j].reshape(Pj_prev, ranks[j], sizes[j])
        X = np.matmul(A, X.reshape(Pj_prev, sizes[j], -1)).reshape(Pj_prev * ranks[j], -1)
        gram_prefix = _grow_gram(gram_prefix, A)
    rest = X.shape[1] // sizes[k]
    Xk = X.reshape(-1, sizes[k], rest)  # (P_{k-1} or P_k-prefix, |a_k|, rest)
    if k < S - 1:
        Tail = _tails(factors, ranks, sizes, k)  # (P_k, rest)
        Pk_prev = Xk.shape[0]
        Tail3 = Tail.reshape(Pk_prev, ranks[k], rest)
        rhs = np.matmul(Tail3, Xk.transpose(0, 2, 1)).reshape(P, sizes[k])  # (P_k, |a_k|)
        gram_tail = Tail @ Tail.T
        gram = _expand_prefix(gram_prefix, ranks[k]) * gram_tail
    else:
        rhs = Xk.reshape(P, sizes[k])
        gram = gram_prefix
    # Solve gram @ A = rhs; pinv handles rank-deficient Grams (still a minimizer).
    cutoff = eps * P * max(float(np.abs(gram).max()), 1e-300)
    w, V = np.linalg.eigh(gram)
    inv = np.where(w > cutoff, 1.0 / np.where(w > cutoff, w, 1.0), 0.0)
    A = (V * inv) @ (V.T @ rhs)
    return A.reshape(ranks[:n_rank] + tuple(factors[k].shape[n_rank:]))


def _grow_gram(gram: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Gram of prefix products after one more level: ``G[(p,r),(p',r')] = G[p,p'] <A[p,r],A[p',r']>``."""
    Pp, R, _n = A.shape
    inner = np.einsum("pri,qsi->prqs", A, A)
    return (gram[:, None, :, None] * inner).reshape(Pp * R, Pp * R)


def _expand_prefix(gram: np.ndarray, r: int) -> np.ndarray:
    """Broadcast a Gram over prefixes ``r_<k`` to prefixes ``(r_<k, r_k)``."""
    P = gram.shape[0]
    return np.broadcast_to(gram[:, None, :, None], (P, r, P, r)).reshape(P * r, P * r)
