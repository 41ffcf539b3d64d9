"""Stage geometry and multiply-add counts of the staged SeKron convolution.

Pure integer arithmetic on factor shapes and ranks (plain tuples, so that
``structure.py`` can use this module without an import circle); no arrays are built.
The counts are those of ``sekron.ops.conv2d_plan``, stage by stage, using the real
output size of every stage (the shrinking "valid" convolutions included), so a test can
compare them with the multiply-adds the executed plan actually issues. The matrix
product's count is its plan's, :func:`sekron.contraction.linear_plan`.

Convolution (DESIGN.md 2.6), factor k of shape ``(F_k, C_k, Kh_k, Kw_k)``: stage k is a
valid grouped convolution with ``groups = P(k) = prod_{j<k} R_j``, a batch of
``(prod_{j<k} C_j)(prod_{j>k} F_j)`` images, ``P(k) F_k`` output channels and a reduction
of length ``R_k C_k Kh_k Kw_k`` (the last factor: ``P_S F_S`` outputs, reduction
``C_S Kh_S Kw_S``). Its count is the product of these with the stage's output size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ._validation import as_pair as _as_pair
from .errors import ShapeError

__all__ = [
    "ConvStage",
    "as_pair",
    "conv_stages",
    "macs_conv2d",
]


def _prod(xs: Any) -> int:
    return math.prod(int(x) for x in xs)


def _shape(shapes: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """The dense shape: per-mode products of the factor shapes."""
    return tuple(_prod(s[i] for s in shapes) for i in range(len(shapes[0])))


def as_pair(value: Any, name: str, minimum: int) -> tuple[int, int]:
    """Return an int or a pair of ints, each ``>= minimum``, as a pair."""
    return _as_pair(value, name, minimum=minimum)  # the one parser (sekron._validation)


@dataclass(frozen=True)
class ConvStage:
    """Geometry of one stage of the staged SeKron convolution.

    ``factor`` is 0-based; stages are listed in execution order (last factor first).
    Sizes are per image; ``macs`` counts multiply-adds per image.
    """

    factor: int
    groups: int
    batch: int
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    macs: int


def _stride_stage(kernels: list[int], dil: list[int], s: int) -> tuple[int, list[int]]:
    """Earliest-executed stage that may carry stride ``s`` along one axis.

    Stages run from factor S-1 down to 0. Stride can move to stage t when every later
    stage j < t has extent 1, or a dilation divisible by ``s`` (then it runs at
    dilation ``D_j / s`` on the subsampled grid). Returns t and the new dilations.
    """
    S = len(kernels)
    t = 0
    for cand in range(S - 1, -1, -1):
        if all(kernels[j] == 1 or dil[j] % s == 0 for j in range(cand)):
            t = cand
            break
    new = list(dil)
    for j in range(t):
        new[j] = 1 if kernels[j] == 1 else dil[j] // s
    return t, new


def conv_stages(
    shapes: Sequence[Sequence[int]],
    ranks: Sequence[int],
    h: int,
    w: int,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
) -> tuple[tuple[int, int], tuple[ConvStage, ...]]:
    """Padding and stage geometry of the staged SeKron convolution.

    ``shapes`` and ``ranks`` are ``Structure.shapes`` and ``Structure.ranks``. Returns
    ``((pad_h, pad_w), stages)``; ``stages`` in execution order. Raises
    :class:`ShapeError` for a non-4-D structure or a kernel larger than the padded image.
    """
    from ._validation import as_positive_int

    full = _shape(shapes)
    if len(full) != 4:
        raise ShapeError(f"structure: expected a 4-D (F, C, Kh, Kw) structure, got shape {full}")
    h = as_positive_int(h, "h")
    w = as_positive_int(w, "w")
    st = as_pair(stride, "stride", 1)
    pad = as_pair(padding, "padding", 0)
    dl = as_pair(dilation, "dilation", 1)
    S = len(shapes)
    F = [s[0] for s in shapes]
    C = [s[1] for s in shapes]
    K = [[s[2] for s in shapes], [s[3] for s in shapes]]
    # stage k dilates by the layer's dilation times the extent of all inner factors
    dils = [[dl[a] * _prod(K[a][k + 1 :]) for k in range(S)] for a in range(2)]
    at: list[int] = []
    for a in range(2):
        t, dils[a] = _stride_stage(K[a], dils[a], st[a])
        at.append(t)
    size = [h + 2 * pad[0], w + 2 * pad[1]]
    Kh, Kw = full[2], full[3]
    for a, (n, kk) in enumerate(zip(size, (Kh, Kw), strict=True)):
        if n < dl[a] * (kk - 1) + 1:
            axis = "height" if a == 0 else "width"
            raise ShapeError(
                f"x: padded {axis} {n} is smaller than the dilated kernel extent "
                f"{dl[a] * (kk - 1) + 1} (kernel {kk}, dilation {dl[a]})"
            )
    stages = []
    for k in range(S - 1, -1, -1):
        strides = (st[0] if at[0] == k else 1, st[1] if at[1] == k else 1)
        dk = (dils[0][k], dils[1][k])
        out = [(size[a] - dk[a] * (K[a][k] - 1) - 1) // strides[a] + 1 for a in range(2)]
        groups = _prod(ranks[:k])
        if k == S - 1:
            out_ch, red = _prod(ranks) * F[k], C[k]
        else:
            out_ch, red = groups * F[k], ranks[k] * C[k]
        batch = _prod(C[:k]) * _prod(F[k + 1 :])
        macs = batch * out_ch * red * K[0][k] * K[1][k] * out[0] * out[1]
        stages.append(
            ConvStage(
                factor=k,
                groups=groups if k < S - 1 else 1,
                batch=batch,
                in_channels=(groups * red) if k < S - 1 else red,
                out_channels=out_ch,
                kernel=(K[0][k], K[1][k]),
                stride=strides,
                dilation=dk,
                in_hw=(size[0], size[1]),
                out_hw=(out[0], out[1]),
                macs=macs,
            )
        )
        size = out
    return pad, tuple(stages)


def macs_conv2d(
    shapes: Sequence[Sequence[int]],
    ranks: Sequence[int],
    h: int,
    w: int,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
) -> dict[str, int]:
    """Multiply-adds of convolving one ``h × w`` image: staged SeKron and dense.

    Parameters
    ----------
    shapes : sequence of 4-tuples
        Factor shapes ``(F_k, C_k, Kh_k, Kw_k)`` (``Structure.shapes``).
    ranks : sequence of ints
        ``Structure.ranks``.
    h, w : int
        Input height and width (before padding).
    stride, padding, dilation : int or pair of ints
        As in :func:`sekron.ops.conv2d`.

    Returns
    -------
    dict
        ``{"sekron": int, "dense": int}`` per image; "sekron" sums the stages of
        :func:`sekron.ops.conv2d_plan` with their real (shrinking) output sizes, "dense"
        is ``F C Kh Kw Ho Wo``.

    Raises
    ------
    ShapeError
        If the structure is not 4-D or the kernel does not fit the padded image.
    ValueError, TypeError
        For a stride or dilation < 1 or a negative padding.

    Examples
    --------
    >>> import sekron as sk
    >>> s = sk.Structure([(8, 8, 3, 1), (8, 8, 1, 3)], ranks=1)
    >>> s.macs_conv2d(32, 32, padding=1)
    {'sekron': 3244032, 'dense': 37748736}
    """
    _pad, stages = conv_stages(shapes, ranks, h, w, stride, padding, dilation)
    F, C, Kh, Kw = _shape(shapes)
    Ho, Wo = stages[-1].out_hw
    return {"sekron": sum(s.macs for s in stages), "dense": F * C * Kh * Kw * Ho * Wo}
