"""Reading tensorly objects (or the plain tuples tensorly accepts) into validated arrays.

Every ``from_*`` converter starts here. Cores and factors are converted with
:func:`sekron._validation.as_float_array` (float32 stays float32, integers become
float64, non-finite values and non-numeric dtypes are rejected) and brought to one common
dtype; structural mistakes raise :class:`~sekron.errors.FormatError` naming the core or
factor index and the shapes found.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._validation import as_float_array
from ..errors import FormatError

__all__ = ["cp_parts", "tr_cores", "tt_cores", "tt_matrix_cores", "tucker_parts"]


def _sequence(x: Any, name: str, what: str) -> list[Any]:
    factors = getattr(x, "factors", x)
    if (
        isinstance(factors, np.ndarray)
        or not isinstance(factors, Sequence)
        or isinstance(factors, str)
    ):
        raise FormatError(f"{name}: expected {what}, got {type(x).__name__}")
    if len(factors) == 0:
        raise FormatError(f"{name}: expected {what}, got an empty sequence")
    return list(factors)


def _common_dtype(arrays: list[np.ndarray]) -> list[np.ndarray]:
    dtype = np.result_type(*arrays)
    return [a if a.dtype == dtype else a.astype(dtype) for a in arrays]


def _chain(x: Any, name: str, core_ndim: int, layout: str, *, loop: bool) -> list[np.ndarray]:
    """Cores of a train (TT, TT-matrix) or ring (TR): ndim and consecutive ranks checked."""
    what = f"a sequence of {core_ndim}-d cores of shape {layout}"
    cores = [as_float_array(c, f"{name}[{k}]") for k, c in enumerate(_sequence(x, name, what))]
    for k, c in enumerate(cores):
        if c.ndim != core_ndim:
            raise FormatError(
                f"{name}: core {k} must be {core_ndim}-d with shape {layout}, got shape {c.shape}"
            )
    n = len(cores)
    for k in range(1, n):
        if cores[k - 1].shape[-1] != cores[k].shape[0]:
            raise FormatError(
                f"{name}: the right rank of core {k - 1} (shape {cores[k - 1].shape}) must equal "
                f"the left rank of core {k} (shape {cores[k].shape})"
            )
    first, last = cores[0].shape[0], cores[-1].shape[-1]
    if loop:
        if n < 2:
            raise FormatError(
                f"{name}: a tensor ring needs at least 2 cores, got 1 of shape {cores[0].shape}"
            )
        if first != last:
            raise FormatError(
                f"{name}: a tensor ring closes its loop (r_0 = r_N), so core 0's left rank must equal core "
                f"{n - 1}'s right rank; got core 0 of shape {cores[0].shape} and core {n - 1} of shape {cores[-1].shape}"
            )
    elif first != 1 or last != 1:
        bad, shape = (0, cores[0].shape) if first != 1 else (n - 1, cores[-1].shape)
        raise FormatError(
            f"{name}: boundary ranks must be 1 (r_0 = r_N = 1), got core {bad} of shape {shape}"
        )
    for k, c in enumerate(cores):
        if 0 in c.shape:
            raise FormatError(f"{name}: core {k} has an empty axis, shape {c.shape}")
    return _common_dtype(cores)


def tt_cores(tt: Any, name: str = "tt") -> list[np.ndarray]:
    """Validated cores ``(r_{k-1}, n_k, r_k)`` of a TT (``TTTensor`` or list of 3-d arrays)."""
    return _chain(tt, name, 3, "(r_k, n_k, r_{k+1})", loop=False)


def tr_cores(tr: Any, name: str = "tr") -> list[np.ndarray]:
    """Validated cores of a tensor ring (``TRTensor`` or list of 3-d arrays), ``r_0 = r_N``."""
    return _chain(tr, name, 3, "(r_k, n_k, r_{k+1})", loop=True)


def tt_matrix_cores(ttm: Any, name: str = "tt_matrix") -> list[np.ndarray]:
    """Validated cores ``(r_{k-1}, m_k, n_k, r_k)`` of a TT-matrix."""
    return _chain(ttm, name, 4, "(r_k, m_k, n_k, r_{k+1})", loop=False)


def _pair(x: Any, name: str, what: str) -> tuple[Any, Any]:
    if isinstance(x, (np.ndarray, str)):
        raise FormatError(f"{name}: expected {what}, got {type(x).__name__}")
    try:
        first, second = x
    except (TypeError, ValueError, IndexError):
        raise FormatError(f"{name}: expected {what}, got {type(x).__name__}") from None
    return first, second


def cp_parts(cp: Any, name: str = "cp") -> tuple[np.ndarray, list[np.ndarray]]:
    """Validated ``(weights (R,), factors [(I_k, R)])`` of a CP tensor.

    ``weights=None`` means all ones; a 1-d factor is a rank-1 factor, as in tensorly.
    """
    what = "a CPTensor or a pair (weights, factors) with factors of shape (I_k, R)"
    weights, factors_in = _pair(cp, name, what)
    factors_raw = _sequence(factors_in, f"{name} factors", "a sequence of (I_k, R) factor matrices")
    factors = []
    for k, f in enumerate(factors_raw):
        a = as_float_array(f, f"{name} factors[{k}]")
        if a.ndim == 1:
            a = a[:, None]
        if a.ndim != 2:
            raise FormatError(
                f"{name}: factor {k} must be 2-d of shape (I_k, R), got shape {a.shape}"
            )
        factors.append(a)
    rank = factors[0].shape[1]
    for k, f in enumerate(factors):
        if f.shape[1] != rank:
            raise FormatError(
                f"{name}: every factor must have R = {rank} columns (factor 0 has shape "
                f"{factors[0].shape}), got factor {k} of shape {f.shape}"
            )
        if 0 in f.shape:
            raise FormatError(f"{name}: factor {k} has an empty axis, shape {f.shape}")
    if weights is None:
        w = np.ones(rank, dtype=factors[0].dtype)
    else:
        w = as_float_array(weights, f"{name} weights")
        if w.shape != (rank,):
            raise FormatError(
                f"{name}: weights must have shape ({rank},) for factors with R = {rank} columns, "
                f"got weights of shape {w.shape}"
            )
    out = _common_dtype([w, *factors])
    return out[0], out[1:]


def tucker_parts(tucker: Any, name: str = "tucker") -> tuple[np.ndarray, list[np.ndarray]]:
    """Validated ``(core (r_1..r_N), factors [(I_k, r_k)])`` of a Tucker tensor."""
    what = "a TuckerTensor or a pair (core, factors) with factors of shape (I_k, r_k)"
    core_in, factors_in = _pair(tucker, name, what)
    core = as_float_array(core_in, f"{name} core")
    factors_raw = _sequence(
        factors_in, f"{name} factors", "a sequence of (I_k, r_k) factor matrices"
    )
    if len(factors_raw) != core.ndim:
        raise FormatError(
            f"{name}: expected one factor per mode of the core, got a core of shape {core.shape} "
            f"and {len(factors_raw)} factors"
        )
    factors = []
    for k, f in enumerate(factors_raw):
        a = as_float_array(f, f"{name} factors[{k}]")
        if a.ndim != 2:
            raise FormatError(
                f"{name}: factor {k} must be 2-d of shape (I_k, r_k), got shape {a.shape}"
            )
        if a.shape[1] != core.shape[k]:
            raise FormatError(
                f"{name}: factor {k} of shape {a.shape} must have core.shape[{k}] = {core.shape[k]} "
                f"columns (core shape {core.shape})"
            )
        if 0 in a.shape:
            raise FormatError(f"{name}: factor {k} has an empty axis, shape {a.shape}")
        factors.append(a)
    out = _common_dtype([core, *factors])
    return out[0], out[1:]
