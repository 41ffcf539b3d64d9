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

__all__ = ["to_numpy", "to_torch", "structure_state", "structure_from_state"]


def to_numpy(t: torch.Tensor, dtype: Any = None) -> np.ndarray:
    """A detached CPU numpy copy of ``t`` (cast to ``dtype`` when given)."""
    arr = t.detach().to("cpu").numpy()
    return np.array(arr, dtype=dtype if dtype is not None else arr.dtype, copy=True)


def to_torch(a: np.ndarray, like: torch.Tensor | None = None, dtype: Any = None) -> torch.Tensor:
    """A torch tensor holding ``a``, on ``like``'s device and in ``like``'s dtype."""
    t = torch.from_numpy(np.array(a, order="C", copy=True))
    if like is not None:
        return t.to(device=like.device, dtype=dtype or like.dtype)
    return t.to(dtype) if dtype is not None else t


def structure_state(structure: Structure) -> dict[str, Any]:
    """A plain-data description of a structure (for ``get_extra_state``)."""
    return {"shapes": [list(s) for s in structure.shapes], "ranks": list(structure.ranks)}


def structure_from_state(state: Any) -> Structure:
    """Inverse of :func:`structure_state`."""
    return Structure([tuple(s) for s in state["shapes"]], tuple(state["ranks"]))
