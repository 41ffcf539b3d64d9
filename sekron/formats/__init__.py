"""Exact conversions between SeKron tensors and the classic tensor formats (tensorly).

Every format below is a SeKron structure with ``S = N`` factors, factor k living on mode
k only (DESIGN.md 2.5), so the ``from_*`` directions are exact and copy the format's
numbers into the factors. Going back, a SeKron tensor is exactly a tensor train of its
rearranged tensor (:func:`to_tt`, :func:`to_tr`) or, for matrices, a TT-matrix
(:func:`to_tt_matrix`); CP and Tucker need a fit (:func:`to_cp`, :func:`to_tucker`),
which reports its relative error.

tensorly's objects are the interchange types: ``TTTensor``, ``TRTensor``, ``CPTensor``,
``TuckerTensor`` and ``TTMatrix`` (or the plain lists and pairs tensorly accepts) come in,
and tensorly objects go out. This sub-package imports tensorly; ``import sekron`` does not.

The ``*_structure`` helpers give the SeKron :class:`~sekron.Structure` that mirrors a
format at given ranks, to fit with :func:`sekron.sekron` and compare.
"""

from ._cp import cp_structure, from_cp, to_cp
from ._tr import from_tr, to_tr, tr_structure
from ._tt import from_tt, to_tt, tt_structure
from ._tt_matrix import from_tt_matrix, to_tt_matrix
from ._tucker import from_tucker, to_tucker, tucker_structure

__all__ = [
    "cp_structure",
    "from_cp",
    "from_tr",
    "from_tt",
    "from_tt_matrix",
    "from_tucker",
    "to_cp",
    "to_tr",
    "to_tt",
    "to_tt_matrix",
    "to_tucker",
    "tr_structure",
    "tt_structure",
    "tucker_structure",
]
