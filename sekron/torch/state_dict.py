"""Reading torch checkpoints into numpy: the one place a torch file crosses into the core."""

from __future__ import annotations

import os
import pickle
import re
from typing import Any

import numpy as np
import torch

from .._validation import as_path
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
        If the file does not hold a state dict, is corrupt, or holds pickled objects other
        than tensors (refused in one line: they are never unpickled).

    Examples
    --------
    >>> import os, tempfile, torch
    >>> from sekron.torch import read_state_dict
    >>> path = os.path.join(tempfile.mkdtemp(), "m.pt")
    >>> torch.save({"model": torch.nn.Linear(4, 2).state_dict()}, path)
    >>> {k: v.shape for k, v in read_state_dict(path).items()}
    {'weight': (2, 4), 'bias': (2,)}
    """
    path = as_path(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"path: no such file {os.fspath(path)!r}")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message is six lines inviting weights_only=False, i.e. running the file
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found is None:
            # the cause sits between "WeightsUnpickler error:" and torch's closing advice
            tail = str(exc).split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
            first = tail[0].strip() if tail and "weights_only" not in tail[0] else "not a pickle"
            raise FormatError(
                f"path: expected a torch checkpoint, could not read {os.fspath(path)!r}: {first}"
            ) from None
        raise FormatError(
            f"path: {os.fspath(path)!r} holds a pickled {found.group(1)} besides tensors; "
            "refused, since unpickling it could run code (save a plain state dict instead)"
        ) from None
    except (OSError, MemoryError):
        raise
    except Exception as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise FormatError(
            f"path: expected a torch checkpoint, could not read {os.fspath(path)!r}: {first}"
        ) from None
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
