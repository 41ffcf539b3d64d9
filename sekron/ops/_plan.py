"""The staged SeKron convolution as a plan: a short list of array steps, and its executor.

A plan is computed once per (structure, input size, stride, padding, dilation) and holds
everything an executor needs: pads, reshapes, transposes and valid grouped convolutions.
Every conv step says which factor it uses and how to turn that factor into the step's
weight by a reshape, a transpose and a reshape, so any array library can run the same
plan through a tiny backend object (see the ``sekron.ops`` module docstring). Its layout
steps are the linear contraction's (:mod:`sekron.contraction`); the executors are in
``sekron.ops._conv``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Protocol, Union

import numpy as np

from .._cost import conv_stages
from ..contraction import ReshapeStep, TransposeStep
from ..errors import ArgumentTypeError
from ..structure import Structure
from ._im2col import conv2d_valid, pad2d

__all__ = [
    "Backend",
    "ConvPlan",
    "ConvStep",
    "NumpyBackend",
    "PadStep",
    "ReshapeStep",
    "Step",
    "SumStep",
    "TransposeStep",
    "conv2d_plan",
    "conv_weight",
]


def _prod(xs: Any) -> int:
    return math.prod(int(x) for x in xs)


@dataclass(frozen=True)
class PadStep:
    """Zero-pad the last two (spatial) axes by ``pad = (top, bottom, left, right)``.

    Examples
    --------
    >>> import sekron as sk
    >>> s = sk.Structure([(4, 2, 3, 1), (2, 4, 1, 3)], 1)
    >>> sk.ops.conv2d_plan(s, (8, 8), padding=(1, 2)).steps[0]
    PadStep(pad=(1, 1, 2, 2))
    """

    pad: tuple[int, int, int, int]


@dataclass(frozen=True)
class ConvStep:
    """Valid grouped cross-correlation of an NCHW array with a weight built from a factor.

    The weight is ``reshape(transpose(reshape(factors[factor], weight_pre_shape),
    weight_perm), weight_shape)``: shape ``(out_channels, in_channels // groups, kh, kw)``.

    Examples
    --------
    >>> import sekron as sk
    >>> from sekron.ops import ConvStep
    >>> plan = sk.ops.conv2d_plan(sk.Structure([(4, 2, 3, 1), (2, 4, 1, 3)], 2), (8, 8))
    >>> convs = [s for s in plan.steps if isinstance(s, ConvStep)]
    >>> [(c.factor, c.weight_pre_shape, c.weight_shape, c.groups) for c in convs]
    [(1, (4, 4, 1, 3), (4, 4, 1, 3), 1), (0, (1, 2, 4, 2, 3, 1), (4, 4, 3, 1), 1)]
    """

    factor: int
    weight_pre_shape: tuple[int, ...]
    weight_perm: tuple[int, ...]
    weight_shape: tuple[int, int, int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


@dataclass(frozen=True)
class SumStep:
    """Sum over ``axis`` (part of the interface; current plans fold rank sums into convs).

    Examples
    --------
    No plan emits one today; a backend runs it all the same:

    >>> import numpy as np
    >>> import sekron as sk
    >>> from sekron.ops import NumpyBackend, SumStep
    >>> plan = sk.ops.conv2d_plan(sk.Structure([(4, 2, 3, 1), (2, 4, 1, 3)], 2), (8, 8))
    >>> any(isinstance(s, SumStep) for s in plan.steps)
    False
    >>> step = SumStep(axis=1)
    >>> NumpyBackend().sum(np.ones((2, 3, 4)), step.axis).shape
    (2, 4)
    """

    axis: int


Step = Union[PadStep, ReshapeStep, TransposeStep, ConvStep, SumStep]  # noqa: UP007 (py3.10 alias)


@dataclass(frozen=True)
class ConvPlan:
    """The staged convolution of a SeKron kernel, for any batch size.

    Attributes
    ----------
    structure : Structure
        The kernel's structure, factor shapes ``(F_k, C_k, Kh_k, Kw_k)``.
    in_shape : tuple of 3 ints
        ``(C, H, W)`` of the input images (before padding).
    out_shape : tuple of 3 ints
        ``(F, Ho, Wo)`` of the output images.
    stride, padding, dilation : pairs of ints
    steps : tuple of steps
        Run in order on an ``(N, C, H, W)`` array; the result is ``(N, F, Ho, Wo)``.
    macs : int
        Multiply-adds per image issued by the conv steps (equals
        ``structure.macs_conv2d(H, W, stride, padding, dilation)["sekron"]``).

    Examples
    --------
    >>> import sekron as sk
    >>> s = sk.Structure([(4, 2, 3, 1), (2, 4, 1, 3)], 1)
    >>> plan = sk.ops.conv2d_plan(s, (8, 8), padding=1)
    >>> plan.in_shape, plan.out_shape, plan.macs, len(plan.steps)
    ((8, 8, 8), (8, 8, 8), 6912, 10)
    >>> plan.macs == s.macs_conv2d(8, 8, 1, 1, 1)["sekron"]
    True
    >>> str(plan).splitlines()[0]
    'ConvPlan (8, 8, 8) -> (8, 8, 8), 6912 MACs/image'
    """

    structure: Structure
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    steps: tuple[Step, ...]
    macs: int

    def __str__(self) -> str:
        lines = [f"ConvPlan {self.in_shape} -> {self.out_shape}, {self.macs} MACs/image"]
        lines += [f"  {s}" for s in self.steps]
        return "\n".join(lines)


def _drop_unit(shape: tuple[int, ...], perm: tuple[int, ...]) -> bool:
    """True when ``perm`` only moves axes of length 1 (a reshape does the same)."""
    kept = [p for p in perm if shape[p] != 1]
    return kept == sorted(kept)


def _layout_steps(
    shape: tuple[int, ...], perm: tuple[int, ...], final: tuple[int, ...]
) -> list[Step]:
    """Reshape to ``shape``, permute by ``perm``, reshape to ``final`` (skipping no-ops)."""
    if _drop_unit(shape, perm):
        return [ReshapeStep(final)]
    return [ReshapeStep(shape), TransposeStep(perm), ReshapeStep(final)]


@functools.lru_cache(maxsize=256)
def _build_plan(
    structure: Structure,
    h: int,
    w: int,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> ConvPlan:
    pad, stages = conv_stages(structure.shapes, structure.ranks, h, w, stride, padding, dilation)
    shapes, ranks = structure.shapes, structure.ranks
    S = len(shapes)
    F = [s[0] for s in shapes]
    C = [s[1] for s in shapes]
    steps: list[Step] = []
    if pad != (0, 0):
        steps.append(PadStep((pad[0], pad[0], pad[1], pad[1])))
    H, W = stages[0].in_hw
    # stage S: every input channel group c_{<S} is its own image; all P_{S-1} instances
    # of the last factor are stacked as output channels
    steps.append(ReshapeStep((-1, C[-1], H, W)))
    pre: tuple[int, ...]
    wperm: tuple[int, ...]
    wshape: tuple[int, int, int, int]
    for st in stages:
        k = st.factor
        kh, kw = st.kernel
        if k < S - 1:
            # layout after stage k+1: (N, C_<k, C_k, F_>k+1, P(k), R_k, F_k+1, H, W);
            # move C_k next to R_k (the reduction) and F_k+1 to the batch, in C order
            Pk, R = _prod(ranks[:k]), ranks[k]
            shape = (-1, _prod(C[:k]), C[k], _prod(F[k + 2 :]), Pk, R, F[k + 1], H, W)
            perm = (0, 1, 6, 3, 4, 5, 2, 7, 8)
            full = (1, *shape[1:])
            steps += _layout_steps(full, perm, (-1, Pk * R * C[k], H, W))
            pre = (Pk, R, F[k], C[k], kh, kw)
            wperm = (0, 2, 1, 3, 4, 5)
            wshape = (Pk * F[k], R * C[k], kh, kw)
        else:
            wshape = (_prod(ranks) * F[k], C[k], kh, kw)
            pre, wperm = wshape, (0, 1, 2, 3)
        steps.append(
            ConvStep(
                factor=k,
                weight_pre_shape=pre,
                weight_perm=wperm,
                weight_shape=wshape,
                stride=st.stride,
                dilation=st.dilation,
                groups=st.groups,
            )
        )
        H, W = st.out_hw
    # layout after stage 1: (N, F_>1, F_1, Ho, Wo) -> (N, F_1, F_>1, Ho, Wo)
    Fo = _prod(F)
    steps += _layout_steps((1, _prod(F[1:]), F[0], H, W), (0, 2, 1, 3, 4), (-1, Fo, H, W))
    steps = _fix_batch_axis(steps)
    return ConvPlan(
        structure=structure,
        in_shape=(structure.shape[1], h, w),
        out_shape=(Fo, H, W),
        stride=stride,
        padding=padding,
        dilation=dilation,
        steps=tuple(steps),
        macs=sum(s.macs for s in stages),
    )


def _fix_batch_axis(steps: list[Step]) -> list[Step]:
    """Make every reshape batch-agnostic (-1 first) and merge consecutive reshapes."""
    out: list[Step] = []
    for s in steps:
        if isinstance(s, ReshapeStep):
            s = ReshapeStep((-1, *s.shape[1:]))
            if out and isinstance(out[-1], ReshapeStep):  # two reshapes in a row: keep the last
                out.pop()
        out.append(s)
    return out


def conv2d_plan(
    structure: Structure,
    in_hw: tuple[int, int],
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
) -> ConvPlan:
    """Plan the staged convolution of a SeKron kernel with a given structure.

    Parameters
    ----------
    structure : Structure
        4-D, factor shapes ``(F_k, C_k, Kh_k, Kw_k)``, any S >= 2 and ranks.
    in_hw : pair of ints
        Input height and width (before padding).
    stride, padding, dilation : int or pair of ints
        PyTorch semantics; stride and dilation >= 1, padding >= 0.

    Returns
    -------
    ConvPlan
        Frozen; valid for every batch size. Plans are cached.

    Raises
    ------
    ShapeError
        If the structure is not 4-D or the kernel does not fit the padded input.
    ValueError, TypeError
        For a bad stride, padding or dilation.

    Notes
    -----
    Pad once; run factor S at dilation ``d`` on every input channel group (all its
    instances stacked as output channels); then for k = S-1..1, factor k on its channel
    axis ``C_k`` with dilation ``d (prod_{j>k} Kh_j, prod_{j>k} Kw_j)`` as a grouped
    convolution (``groups = R_1..R_{k-1}``) whose reduction runs over ``(r_k, c_k)``, so
    the rank sum happens inside the GEMM. Output channels come out as ``(f_1..f_S)``.
    Along each axis the stride goes to the earliest stage after which every remaining
    factor has extent 1 there, or a dilation divisible by the stride.

    Examples
    --------
    >>> import sekron as sk
    >>> plan = sk.ops.conv2d_plan(sk.Structure([(4, 2, 3, 1), (2, 4, 1, 3)], 1), (8, 8), padding=1)
    >>> plan.out_shape, [type(s).__name__ for s in plan.steps][:3]
    ((8, 8, 8), ['PadStep', 'ReshapeStep', 'ConvStep'])
    """
    from .._cost import as_pair
    from .._validation import as_positive_int
    from ..errors import ShapeError

    if not isinstance(structure, Structure):
        raise ArgumentTypeError(
            f"structure: expected a sekron.Structure, got {type(structure).__name__}"
        )
    try:
        h, w = in_hw
    except (TypeError, ValueError):
        raise ShapeError(f"in_hw: expected a pair (H, W), got {in_hw!r}") from None
    return _build_plan(
        structure,
        as_positive_int(h, "in_hw[0]"),
        as_positive_int(w, "in_hw[1]"),
        as_pair(stride, "stride", 1),
        as_pair(padding, "padding", 0),
        as_pair(dilation, "dilation", 1),
    )


class Backend(Protocol):
    """What :func:`execute_plan` needs from an array library (see ``sekron.ops``).

    Examples
    --------
    Any object with the five methods, e.g. :class:`NumpyBackend`, runs a plan:

    >>> import numpy as np
    >>> import sekron as sk
    >>> rng = np.random.default_rng(0)
    >>> k = sk.SeKronTensor([rng.normal(size=(1, 4, 2, 3, 1)), rng.normal(size=(1, 2, 4, 1, 3))])
    >>> plan = sk.ops.conv2d_plan(k.structure, (8, 8), padding=1)
    >>> x = rng.normal(size=(2, 8, 8, 8))
    >>> y = sk.ops.execute_plan(plan, x, k.factors, sk.ops.NumpyBackend())
    >>> np.allclose(y, sk.conv2d(x, k.to_dense(), padding=1))
    True
    """

    def pad(self, x: Any, pad: tuple[int, int, int, int]) -> Any: ...

    def reshape(self, x: Any, shape: tuple[int, ...]) -> Any: ...

    def transpose(self, x: Any, axes: tuple[int, ...]) -> Any: ...

    def conv2d(
        self, x: Any, weight: Any, stride: tuple[int, int], dilation: tuple[int, int], groups: int
    ) -> Any: ...

    def sum(self, x: Any, axis: int) -> Any: ...


class NumpyBackend:
    """numpy arrays; convolutions by im2col + GEMM (:func:`conv2d_valid`).

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.ops import NumpyBackend
    >>> be = NumpyBackend()
    >>> x = be.pad(np.ones((1, 1, 3, 3)), (1, 1, 1, 1))
    >>> x.shape
    (1, 1, 5, 5)
    >>> be.conv2d(x, np.ones((1, 1, 3, 3)), (1, 1), (1, 1), 1)[0, 0].tolist()
    [[4.0, 6.0, 4.0], [6.0, 9.0, 6.0], [4.0, 6.0, 4.0]]
    """

    def pad(self, x: np.ndarray, pad: tuple[int, int, int, int]) -> np.ndarray:
        return pad2d(x, pad)

    def reshape(self, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return np.reshape(x, shape)

    def transpose(self, x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
        return np.transpose(x, axes)

    def conv2d(
        self,
        x: np.ndarray,
        weight: np.ndarray,
        stride: tuple[int, int],
        dilation: tuple[int, int],
        groups: int,
    ) -> np.ndarray:
        # conv2d_valid reads any strides (it copies only inputs whose rows it cannot view)
        return conv2d_valid(x, weight, stride, dilation, groups)

    def sum(self, x: np.ndarray, axis: int) -> np.ndarray:
        return np.sum(x, axis=axis)


def conv_weight(step: ConvStep, factor: Any, backend: Any) -> Any:
    """The weight of a conv step, built from its factor by reshape/transpose/reshape.

    Examples
    --------
    >>> import numpy as np
    >>> import sekron as sk
    >>> from sekron.ops import ConvStep, NumpyBackend, conv_weight
    >>> s = sk.Structure([(4, 2, 3, 1), (2, 4, 1, 3)], 2)
    >>> step = [t for t in sk.ops.conv2d_plan(s, (8, 8)).steps if isinstance(t, ConvStep)][-1]
    >>> step.factor, step.weight_pre_shape, step.weight_shape
    (0, (1, 2, 4, 2, 3, 1), (4, 4, 3, 1))
    >>> conv_weight(step, np.zeros(s.factor_shapes[0]), NumpyBackend()).shape
    (4, 4, 3, 1)
    """
    wt = backend.reshape(factor, step.weight_pre_shape)
    if step.weight_perm != tuple(range(len(step.weight_perm))):
        wt = backend.transpose(wt, step.weight_perm)
    return backend.reshape(wt, step.weight_shape)
