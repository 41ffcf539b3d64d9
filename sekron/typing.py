"""Type aliases shared by sekron's public signatures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = ["ArrayLike", "RandomState", "SVDMethod", "Shape", "ShapeLike"]

Shape = tuple[int, ...]
ShapeLike = int | Sequence[int]
RandomState = None | int | np.random.Generator | np.random.RandomState
SVDMethod = Literal["auto", "full", "arpack", "randomized"]
ArrayLike = npt.ArrayLike
