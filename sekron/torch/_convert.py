"""The one place where torch tensors cross into sekron's numpy core and back.

The core (``sekron.decompose``, ``sekron.fixed``) speaks numpy; the adapters speak torch.
Every conversion goes through these functions so that dtype and device handling is
decided once: fits run in float64 on the CPU and come back in the layer's dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..structure import Structure

__all__ = ["structure_from_state", "structure_state", "to_numpy", "to_torch"]


_NUMPY_DTYPES: dict[torch.dtype, np.dtype] = {
    torch.float64: np.dtype(np.float64),
    torch.float32: np.dtype(np.float32),
    torch.float16: np.dtype(np.float16),
}


def to_numpy(t: torch.Tensor, dtype: Any = None) -> np.ndarray:
    """A detached CPU numpy copy of ``t`` (cast to ``dtype`` when given).

    One copy at most: the cast, or a plain copy when no cast is needed (the result never
    shares memory with ``t``, so the core may not see later in-place updates).
    """
    t = t.detach().to("cpu")
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
        t = t.float()
    arr = t.numpy()
    return np.array(arr, dtype=dtype if dtype is not None else arr.dtype, copy=True, order="C")


def to_torch(
    a: np.ndarray, like: torch.Tensor | None = None, dtype: Any = None, *, copy: bool = True
) -> torch.Tensor:
    """A torch tensor holding ``a``, on ``like``'s device and in ``like``'s dtype.

    ``a`` is copied at most once: by the dtype cast when one is needed, else (``copy``)
    by a private copy. ``copy=False`` lets the result share ``a``'s memory when no cast
    is needed (for arrays the caller owns, e.g. a fresh engine result).
    """
    target = dtype if dtype is not None else (like.dtype if like is not None else None)
    np_target = _NUMPY_DTYPES.get(target) if target is not None else None
    if np_target is not None and a.dtype != np_target:
        # cast in numpy: torch's intra-op threads spin against numba's on a busy machine
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np_target))
    else:
        c = np.ascontiguousarray(a)
        # torch wants writable memory (sekron's factors are read-only): copy those, once
        t = torch.from_numpy(c if c.flags.writeable else c.copy())
        if target is not None and t.dtype != target:
            t = t.to(target)
        elif copy:
            t = t.clone()
    if like is not None and t.device != like.device:
        t = t.to(like.device)
    return t


def structure_state(structure: Structure) -> dict[str, Any]:
    """A plain-data description of a structure (for ``get_extra_state``)."""
    return {"shapes": [list(s) for s in structure.shapes], "ranks": list(structure.ranks)}


def structure_from_state(state: Any) -> Structure:
    """Inverse of :func:`structure_state`."""
    return Structure([tuple(s) for s in state["shapes"]], tuple(state["ranks"]))
