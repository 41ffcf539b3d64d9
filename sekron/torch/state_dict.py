"""Reading torch checkpoints into numpy: the one place a torch file crosses into the core."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..errors import FormatError

__all__ = ["read_state_dict"]

# training scripts nest the weights under one of these keys
_NESTING_KEYS = ("state_dict", "model")


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read the tensors of a torch checkpoint as numpy arrays, without unpickling code.

    Parameters
    ----------
    path : path
        A file written by ``torch.save`` holding a state dict, possibly nested under
        ``"state_dict"`` or ``"model"``. It is read with ``weights_only=True`` on the CPU.

    Returns
    -------
    dict of name -> ndarray
        Every tensor entry (other entries are dropped); bfloat16 and float16 become
        float32, since numpy has no bfloat16.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    FormatError
        If the file does not hold a state dict.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> from sekron.torch import read_state_dict
    >>> path = os.path.join(tempfile.mkdtemp(), "m.pt")
    >>> torch.save({"model": torch.nn.Linear(4, 2).state_dict()}, path)
    >>> {k: v.shape for k, v in read_state_dict(path).items()}
    {'weight': (2, 4), 'bias': (2,)}
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"path: no such file {os.fspath(path)!r}")
    obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    for key in _NESTING_KEYS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise FormatError(
            f"path: expected a state dict in {os.fspath(path)!r}, got {type(obj).__name__}"
        )
    out = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu()
            if t.dtype in (torch.bfloat16, torch.float16):
                t = t.float()
            out[str(k)] = t.numpy()
    return out
