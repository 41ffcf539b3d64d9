"""Structured compute: products and convolutions with SeKron tensors, never densified.

* :func:`matmul` / :func:`rmatmul`: ``W @ X`` and ``X @ W`` for a 2-D SeKron operator,
  level by level (batched GEMMs), in the cheaper of two orders.
* :func:`conv2d`: NCHW cross-correlation (PyTorch semantics) with a 4-D SeKron kernel
  through a staged plan, or with a dense kernel through im2col + GEMM.
* :func:`conv2d_plan` / :class:`ConvPlan` / :func:`execute_plan`: the staged convolution
  as data, so another array library can run it.
* :class:`CostTable` / :func:`cost_table`: per-machine measured costs that pick the staged
  or the dense path per call shape (``conv2d(..., path="auto")`` and the torch layers).

Running a plan with another array library
-----------------------------------------
A :class:`ConvPlan` is frozen and holds ``steps``, a tuple of small frozen dataclasses,
valid for every batch size (every batch-dependent reshape has -1 as its first entry):

``PadStep(pad)``
    zero-pad the last two axes by ``(top, bottom, left, right)``.
``ReshapeStep(shape)``
    C-order reshape (the input may be non-contiguous after a transpose).
``TransposeStep(axes)``
    permute axes, ``out.shape[i] == x.shape[axes[i]]``.
``ConvStep(factor, weight_pre_shape, weight_perm, weight_shape, stride, dilation, groups)``
    valid (unpadded) grouped cross-correlation of an NCHW array; the weight is
    ``reshape(transpose(reshape(factors[factor], weight_pre_shape), weight_perm),
    weight_shape)`` with ``weight_shape = (out_channels, in_channels // groups, kh, kw)``
    (see :func:`sekron.ops.conv_weight`).
``SumStep(axis)``
    sum over an axis (current plans fold every rank sum into a grouped conv's reduction
    and emit none; backends implement it all the same).

:func:`execute_plan` walks the steps and calls a backend: any object with

.. code-block:: python

    pad(x, pad: tuple[int, int, int, int]) -> x          # zeros; (top, bottom, left, right)
    reshape(x, shape: tuple[int, ...]) -> x              # C order, -1 allowed
    transpose(x, axes: tuple[int, ...]) -> x
    conv2d(x, weight, stride: tuple[int, int], dilation: tuple[int, int], groups: int) -> x
    sum(x, axis: int) -> x

so a torch backend is ``F.pad(x, (left, right, top, bottom))``, ``x.reshape``,
``x.permute``, ``F.conv2d(x, w, stride=stride, dilation=dilation, groups=groups)`` and
``x.sum(axis)``; its factors are torch tensors of the shapes of ``SeKronTensor.factors``.
:class:`NumpyBackend` is the reference, built on the im2col + GEMM primitive.

Examples
--------
>>> import numpy as np
>>> import sekron as sk
>>> from sekron.ops import conv2d_plan, execute_plan
>>> rng = np.random.default_rng(0)
>>> k = sk.SeKronTensor([rng.normal(size=(2, 4, 2, 3, 3)), rng.normal(size=(2, 2, 4, 1, 1))])
>>> plan = conv2d_plan(k.structure, (10, 10), stride=2, padding=1)
>>> x = rng.normal(size=(3, 8, 10, 10))
>>> y = execute_plan(plan, x, k.factors)
>>> y.shape == (3,) + plan.out_shape
True
>>> np.allclose(y, sk.conv2d(x, k.to_dense(), stride=2, padding=1))
True
"""

from __future__ import annotations

from ._conv import conv2d, execute_plan
from ._dispatch import (
    CONFIRM,
    MARGIN,
    STALE_LOAD,
    CostTable,
    PathCost,
    blas_threads,
    cost_table,
    fit_path_cost,
    limit_blas_threads,
    time_paths,
)
from ._fused import ENGINE as STAGED_ENGINE
from ._im2col import conv2d_valid
from ._matmul import matmul, rmatmul
from ._plan import (
    Backend,
    ConvPlan,
    ConvStep,
    NumpyBackend,
    PadStep,
    ReshapeStep,
    Step,
    SumStep,
    TransposeStep,
    conv2d_plan,
    conv_weight,
)

__all__ = [
    "CONFIRM",
    "MARGIN",
    "STALE_LOAD",
    "STAGED_ENGINE",
    "Backend",
    "CostTable",
    "PathCost",
    "blas_threads",
    "cost_table",
    "fit_path_cost",
    "limit_blas_threads",
    "time_paths",
    "ConvPlan",
    "ConvStep",
    "NumpyBackend",
    "PadStep",
    "ReshapeStep",
    "Step",
    "SumStep",
    "TransposeStep",
    "conv2d",
    "conv2d_plan",
    "conv2d_valid",
    "conv_weight",
    "execute_plan",
    "matmul",
    "rmatmul",
]
