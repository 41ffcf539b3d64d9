"""Tensor train (TT / MPS) and SeKron, both ways, plus the TT-mirroring structure."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from tensorly.tt_tensor import TTTensor

from .._validation import as_positive_int, as_rank, as_shape
from ..errors import ArgumentError, ArgumentTypeError, RankError, ShapeError
from ..structure import Structure
from ..tensor import SeKronTensor
from ._parse import tt_cores
from ._train import mode_shapes, sekron_from_train, train_of_sekron

__all__ = ["from_tt", "to_tt", "tt_structure"]

TTLayout = Literal["rearranged", "modes"]


def from_tt(tt: Any) -> SeKronTensor:
    r"""Exact SeKron form of a tensor train.

    Parameters
    ----------
    tt : tensorly.tt_tensor.TTTensor or sequence of arrays
        N cores ``G_k`` of shape ``(r_{k-1}, n_k, r_k)`` with ``r_0 = r_N = 1``.

    Returns
    -------
    SeKronTensor, shape ``(n_1, ..., n_N)``
        ``S = N`` factors, factor k non-trivial only on mode k (shape
        ``(1, .., n_k, .., 1)``), with ranks ``R_k = r_k`` and
        ``A_k[r_1..r_k] = G_k[r_{k-1}, :, r_k]`` (entries copied, dtype kept), as long as
        every ``r_k <= min(n_k, n_{k+1} ... n_N)``. Otherwise an equivalent exact
        structure with ranks ``min(r_k, n_k)`` is built (see Notes). A single-core TT gets
        a trailing trivial factor of shape ``(1,)``.

    Raises
    ------
    FormatError
        If a core is not 3-d, consecutive ranks differ, or ``r_0 != 1`` or ``r_N != 1``
        (the message names the core and its shape).
    NonFiniteError, DTypeError
        For non-finite or non-numeric cores.

    Notes
    -----
    On the factors, the SeKron sum reads
    :math:`W[i] = \sum_{r} G_1[0, i_1, r_1] G_2[r_1, i_2, r_2] \cdots G_N[r_{N-1}, i_N, 0]`,
    the TT contraction. A TT rank above ``n_k`` cannot be a SeKron rank (the largest
    useful rank at level k is ``n_k``); there the branch is split along the mode index
    instead (factor ``e_i``, the core slice ``G_k[:, i, :]`` moves to the next level), and
    a rank above the size of the later modes is first reduced by a QR sweep. Both are
    exact rewrites (the QR one up to rounding).

    Examples
    --------
    >>> import numpy as np, tensorly as tl
    >>> import sekron as sk
    >>> tt = tl.random.random_tt((3, 4, 5), rank=(1, 2, 3, 1), random_state=0)
    >>> t = sk.formats.from_tt(tt)
    >>> t.structure.shapes, t.structure.ranks
    (((3, 1, 1), (1, 4, 1), (1, 1, 5)), (2, 3))
    >>> np.allclose(t.to_dense(), tl.tt_to_tensor(tt))
    True
    """
    cores = tt_cores(tt)
    dims = [c.shape[1] for c in cores]
    return sekron_from_train(cores, mode_shapes(dims))


def _merge(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Contract two neighbouring cores into one, the left one's index most significant."""
    b0, da, _ = a.shape
    _, db, b2 = b.shape
    return (a.reshape(b0 * da, -1) @ b.reshape(b.shape[0], -1)).reshape(b0, da * db, b2)


def _mode_of_factors(shapes: Sequence[Sequence[int]]) -> list[int] | None:
    """The one mode each factor lives on, if factors visit modes in non-decreasing order."""
    modes: list[int] = []
    for s in shapes:
        nontrivial = [n for n, x in enumerate(s) if x > 1]
        if len(nontrivial) > 1:
            return None
        modes.append(nontrivial[0] if nontrivial else (modes[-1] if modes else -1))
    first = next((m for m in modes if m >= 0), 0)
    modes = [first if m < 0 else m for m in modes]
    if any(b < a for a, b in itertools.pairwise(modes)):
        return None
    return modes


def _tt_svd_exact(W: np.ndarray) -> list[np.ndarray]:
    """TT-SVD keeping every singular value above rounding level (numerically exact)."""
    dims = W.shape
    eps = np.finfo(W.dtype).eps
    cores, M, b = [], W, 1
    for k in range(len(dims) - 1):
        M = M.reshape(b * dims[k], -1)
        U, s, Vt = np.linalg.svd(M, full_matrices=False)
        cut = s[0] * eps * max(M.shape) if s.size else 0.0
        r = max(1, int(np.count_nonzero(s > cut)))
        cores.append(np.ascontiguousarray(U[:, :r]).reshape(b, dims[k], r))
        M, b = s[:r, None] * Vt[:r], r
    cores.append(np.ascontiguousarray(M).reshape(b, dims[-1], 1))
    return cores


def to_tt(t: SeKronTensor, layout: TTLayout = "rearranged") -> TTTensor:
    r"""Tensor train of a SeKron tensor.

    Parameters
    ----------
    t : SeKronTensor
        S factors of shapes ``a^(1..S)``, ranks ``R_1..R_{S−1}``.
    layout : {"rearranged", "modes"}, default "rearranged"
        * ``"rearranged"``: exact, from the factors. A TT with S cores of the rearranged
          tensor ``T = t.rearranged()`` of shape ``(|a^(1)|, ..., |a^(S)|)`` (DESIGN.md
          2.2): core k has shape ``(P_{k−1}, |a^(k)|, P_k)`` with bond sizes
          ``P_k = R_1 ... R_k`` and block-sparse entries ``G_k[p, :, p R_k + r] = A_k[p, r]``.
          ``T`` is the dense tensor with every mode split into its factor digits and the
          digits ordered level by level (a "quantized" layout); for a SeKron whose factor
          k lives on mode k only (what :func:`from_tt` builds) it is the dense tensor
          itself. ``sk.unrearrange(tl.tt_to_tensor(tt), t.structure.shapes)`` gives
          ``t.to_dense()``.
        * ``"modes"``: a TT of ``t.to_dense()`` itself, one core per mode. When every
          factor is non-trivial on at most one mode and the factors visit the modes in
          non-decreasing order, it is built exactly from the factors by merging the
          cores of each mode (bonds ``P_k`` at mode boundaries). Otherwise it is the
          TT-SVD of the dense tensor keeping every singular value above
          ``eps · max(unfolding shape) · σ_1`` — exact up to rounding, with minimal ranks,
          but it forms the dense tensor.

    Returns
    -------
    tensorly.tt_tensor.TTTensor
        Cores of ``t.dtype``.

    Raises
    ------
    TypeError
        If ``t`` is not a SeKronTensor.
    ValueError
        For an unknown ``layout``.

    Notes
    -----
    The TT of the rearranged tensor is the "tree" SeKron written as a chain: the bond
    after level k enumerates the branches ``(r_1..r_k)``, so ``P_k`` can exceed the
    minimal TT rank; the cores are block-sparse and hold exactly ``t.n_params`` non-zero
    entries.

    Examples
    --------
    >>> import numpy as np, tensorly as tl
    >>> import sekron as sk
    >>> rng = np.random.default_rng(0)
    >>> t = sk.sekron(rng.normal(size=(8, 8)), [(2, 2), (2, 2), (2, 2)], ranks=(2, 3))
    >>> tt = sk.formats.to_tt(t)
    >>> tt.rank, tt.shape
    ((1, 2, 6, 1), (4, 4, 4))
    >>> np.allclose(sk.unrearrange(tl.tt_to_tensor(tt), t.structure.shapes), t.to_dense())
    True
    >>> tl.tt_to_tensor(sk.formats.to_tt(t, layout="modes")).shape
    (8, 8)
    """
    if not isinstance(t, SeKronTensor):
        raise ArgumentTypeError(f"t: expected a SeKronTensor, got {type(t).__name__}")
    if layout not in ("rearranged", "modes"):
        raise ArgumentError(f"layout: expected 'rearranged' or 'modes', got {layout!r}")
    cores = train_of_sekron(t)
    if layout == "rearranged":
        return TTTensor(cores)
    st = t.structure
    modes = _mode_of_factors(st.shapes)
    if modes is None:
        return TTTensor(_tt_svd_exact(t.to_dense()))
    out: list[np.ndarray] = []
    for n in range(st.ndim):
        group = [cores[k] for k in range(st.n_factors) if modes[k] == n]
        if not group:  # a mode of size 1 that no factor touches
            b = out[-1].shape[2] if out else 1
            out.append(np.eye(b, dtype=t.dtype)[:, None, :])
            continue
        core = group[0]
        for nxt in group[1:]:
            core = _merge(core, nxt)
        out.append(core)
    return TTTensor(out)


def _inner_ranks(ranks: Any, N: int, name: str, kind: str) -> tuple[int, ...]:
    """TT-style ranks: an int, N−1 inner ranks, or N+1 ranks with boundary ones."""
    if isinstance(ranks, (int, np.integer)) and not isinstance(ranks, bool):
        return (as_positive_int(ranks, name),) * (N - 1)
    if isinstance(ranks, str) or not isinstance(ranks, Sequence):
        raise RankError(f"{name}: expected an int or a sequence of ints, got {ranks!r}")
    vals = []
    for k, r in enumerate(ranks):
        vals.append(as_rank(r, f"{name}[{k}]"))
    if len(vals) == N + 1:
        if vals[0] != 1 or vals[-1] != 1:
            raise RankError(f"{name}: {kind} boundary ranks must be 1, got {tuple(vals)}")
        return tuple(vals[1:-1])
    if len(vals) == N - 1:
        return tuple(vals)
    raise RankError(
        f"{name}: expected {N - 1} inner ranks or {N + 1} ranks with boundary ones for a "
        f"{N}-way tensor, got {len(vals)} ({tuple(vals)})"
    )


def tt_structure(shape: Sequence[int], ranks: Any, *, clip: bool = False) -> Structure:
    r"""The SeKron structure that mirrors a tensor train of the given shape and TT ranks.

    Parameters
    ----------
    shape : sequence of N >= 2 ints
        ``(n_1, ..., n_N)``.
    ranks : int, sequence of N−1 ints, or sequence of N+1 ints
        TT ranks: one int for every bond, the inner ranks ``r_1..r_{N−1}``, or
        tensorly's ``(1, r_1, ..., r_{N−1}, 1)``.
    clip : bool, default False
        Clip ranks above the largest useful SeKron rank ``min(n_k, n_{k+1}...n_N)``
        instead of raising.

    Returns
    -------
    Structure
        Factor shapes ``(1, .., n_k, .., 1)`` and ranks ``R_k = r_k``.

    Raises
    ------
    ShapeError
        If ``shape`` has fewer than 2 modes.
    RankError
        For malformed ranks, boundary ranks other than 1, or (without ``clip``) a rank
        above ``min(n_k, n_{k+1}...n_N)``.

    Notes
    -----
    ``sk.sekron(W, tt_structure(W.shape, r))`` runs the TT-SVD recursion branch by
    branch: level 1 is the same truncated SVD as TT-SVD, but at level k every branch
    ``(r_1..r_{k−1})`` gets its own rank-``r_k`` SVD instead of one shared SVD of all
    branches stacked. Per level, the branch-wise error is therefore never larger than
    TT-SVD's, and since the discarded parts of different levels are orthogonal in both,
    the total error is at most TT-SVD's at the same ranks (equal for N = 2, and both zero
    on a tensor that is a TT of those ranks). The price: factor k is stored
    ``P_k = r_1 ... r_k`` times, ``Σ_k P_k n_k`` parameters instead of TT's
    ``Σ_k r_{k−1} n_k r_k``.

    Examples
    --------
    >>> import sekron as sk
    >>> st = sk.formats.tt_structure((4, 4, 4), (1, 2, 3, 1))
    >>> st.shapes, st.ranks, st.n_params
    (((4, 1, 1), (1, 4, 1), (1, 1, 4)), (2, 3), 56)
    """
    dims = as_shape(shape, "shape")
    if len(dims) < 2:
        raise ShapeError(f"shape: expected at least 2 modes for a SeKron structure, got {dims}")
    inner = _inner_ranks(ranks, len(dims), "ranks", "TT")
    return Structure(mode_shapes(dims), inner, clip=clip)
