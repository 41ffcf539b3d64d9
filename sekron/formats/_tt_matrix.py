"""TT-matrices (matrix product operators) and 2-D SeKron tensors, both ways, exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
from tensorly.tt_matrix import TTMatrix

from ..errors import ArgumentTypeError, ShapeError
from ..tensor import SeKronTensor
from ._parse import tt_matrix_cores
from ._train import sekron_from_train, train_of_sekron

__all__ = ["from_tt_matrix", "to_tt_matrix"]


def from_tt_matrix(tt_matrix: Any) -> SeKronTensor:
    r"""Exact 2-D SeKron form of a TT-matrix.

    Parameters
    ----------
    tt_matrix : tensorly.tt_matrix.TTMatrix or sequence of arrays
        N cores of shape ``(r_{k−1}, m_k, n_k, r_k)`` with ``r_0 = r_N = 1``.

    Returns
    -------
    SeKronTensor, shape ``(m_1 ... m_N, n_1 ... n_N)``
        The matrix ``tl.tt_matrix_to_matrix(tt_matrix)``, with ``S = N`` factors of
        shapes ``(m_k, n_k)`` and ranks ``R_k = r_k``:
        ``A_k[r_1..r_k] = G_k[r_{k−1}, :, :, r_k]`` (copied, dtype kept), as long as
        ``r_k <= min(m_k n_k, prod_{j>k} m_j n_j)``; otherwise an equivalent exact
        structure with other ranks, as in :func:`~sekron.formats.from_tt`. A one-core
        TT-matrix gets a trailing trivial ``(1, 1)`` factor.

    Raises
    ------
    FormatError
        If a core is not 4-d, consecutive ranks differ, or a boundary rank is not 1.
    NonFiniteError, DTypeError
        For non-finite or non-numeric cores.

    Notes
    -----
    The row index of the matrix is the mixed-radix number ``(i_1..i_N)`` and the column
    index ``(j_1..j_N)``, first core most significant, and
    :math:`M[i, j] = G_1[:, i_1, j_1, :] \cdots G_N[:, i_N, j_N, :]`: exactly the
    Kronecker-product indexing of DESIGN.md 2.1, so every term of the TT sum is a
    Kronecker product of ``(m_k, n_k)`` matrices.

    Examples
    --------
    >>> import numpy as np, tensorly as tl
    >>> import sekron as sk
    >>> ttm = tl.random.random_tt_matrix((2, 3, 4, 2), rank=(1, 3, 1), random_state=0)
    >>> t = sk.formats.from_tt_matrix(ttm)
    >>> t.shape, t.structure.shapes, t.structure.ranks
    ((6, 8), ((2, 4), (3, 2)), (3,))
    >>> np.allclose(t.to_dense(), tl.tt_matrix_to_matrix(ttm))
    True
    """
    cores = tt_matrix_cores(tt_matrix)
    shapes = [(c.shape[1], c.shape[2]) for c in cores]
    train = [c.reshape(c.shape[0], c.shape[1] * c.shape[2], c.shape[3]) for c in cores]
    return sekron_from_train(train, shapes)


def to_tt_matrix(t: SeKronTensor) -> TTMatrix:
    r"""Exact TT-matrix of a 2-D SeKron tensor.

    Parameters
    ----------
    t : SeKronTensor, 2-D
        S factors of shapes ``(m_k, n_k)``, ranks ``R_1..R_{S−1}``.

    Returns
    -------
    tensorly.tt_matrix.TTMatrix
        S cores of shape ``(P_{k−1}, m_k, n_k, P_k)`` with bond sizes
        ``P_k = R_1 ... R_k``, block-sparse: ``G_k[p, :, :, p R_k + r] = A_k[p, r]``.
        ``tl.tt_matrix_to_matrix`` of it equals ``t.to_dense()`` (up to the rounding of
        the contraction); it is the TT of :func:`~sekron.formats.to_tt` with each core's
        physical index unflattened into ``(m_k, n_k)``.

    Raises
    ------
    TypeError
        If ``t`` is not a SeKronTensor.
    ShapeError
        If ``t`` is not 2-D.

    Examples
    --------
    >>> import numpy as np, tensorly as tl
    >>> import sekron as sk
    >>> rng = np.random.default_rng(0)
    >>> t = sk.nkp(rng.normal(size=(6, 8)), (2, 4), rank=2)
    >>> ttm = sk.formats.to_tt_matrix(t)
    >>> ttm.rank
    (1, 2, 1)
    >>> np.allclose(tl.tt_matrix_to_matrix(ttm), t.to_dense())
    True
    """
    if not isinstance(t, SeKronTensor):
        raise ArgumentTypeError(f"t: expected a SeKronTensor, got {type(t).__name__}")
    if t.ndim != 2:
        raise ShapeError(f"t: expected a 2-D SeKron tensor for a TT-matrix, got shape {t.shape}")
    cores = train_of_sekron(t)
    out = [
        np.ascontiguousarray(G).reshape(G.shape[0], s[0], s[1], G.shape[2])
        for G, s in zip(cores, t.structure.shapes, strict=True)
    ]
    return TTMatrix(out)
