"""sekron: Kronecker decompositions, structured compute and exact integer arithmetic.

The top-level namespace holds the core (numpy/scipy only). Sub-packages that pull in
heavier dependencies load on first use: ``sekron.formats`` (tensorly), ``sekron.fixed``
(numba), ``sekron.torch`` (torch) and ``sekron.testing`` (hypothesis).
"""

from __future__ import annotations

import importlib
from typing import Any

from . import errors
from ._kron import kron, rearrange, unrearrange
from .decompose import nkp, sekron
from .structure import Structure, structures
from .tensor import SeKronTensor, load

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "errors",
    "kron",
    "rearrange",
    "unrearrange",
    "Structure",
    "structures",
    "nkp",
    "sekron",
    "SeKronTensor",
    "load",
    "matmul",
    "conv2d",
    "formats",
    "fixed",
]

# name -> (module, attribute or None for the module itself); imported on first access
_LAZY = {
    "matmul": ("sekron.ops", "matmul"),
    "conv2d": ("sekron.ops", "conv2d"),
    "formats": ("sekron.formats", None),
    "fixed": ("sekron.fixed", None),
    "ops": ("sekron.ops", None),
    "testing": ("sekron.testing", None),
    "torch": ("sekron.torch", None),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        value = module if attr is None else getattr(module, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sekron' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
