"""Convolution with a SeKron kernel in torch, as staged dilated convolutions.

The staging (DESIGN.md 2.6, notes §2.5): pad once; the innermost factor S runs first at
the layer's dilation; each outer factor k then convolves its channel axis ``C_k`` with
dilation ``d · prod_{j>k} K_j``, batched over the prefix ranks as a grouped convolution
and summing its own rank inside the group. Output channels come out as ``(f_1..f_S)``.
The stride goes, per axis, to the outermost factor with extent > 1 on that axis: every
factor processed after it has extent 1 there, so it runs on the strided grid.

:class:`TorchBackend` offers the primitive operations (pad, reshape, transpose, conv2d,
sum) that a framework-agnostic convolution plan is executed with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..structure import Structure

__all__ = ["TorchBackend", "ConvGeometry", "conv_geometry", "sekron_conv2d", "conv_macs"]


class TorchBackend:
    """Primitive array operations on torch tensors, for executing a convolution plan.

    Every method is differentiable with respect to its tensor arguments.
    """

    name = "torch"

    @staticmethod
    def pad(x: torch.Tensor, pads: Sequence[int]) -> torch.Tensor:
        """Zero-pad the two last axes; ``pads = (top, bottom, left, right)``."""
        top, bottom, left, right = (int(p) for p in pads)
        if top == bottom == left == right == 0:
            return x
        return F.pad(x, (left, right, top, bottom))

    @staticmethod
    def reshape(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        return x.reshape(tuple(int(s) for s in shape))

    @staticmethod
    def transpose(x: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
        return x.permute(tuple(int(a) for a in axes))

    @staticmethod
    def conv2d(
        x: torch.Tensor,
        w: torch.Tensor,
        stride: Sequence[int] = (1, 1),
        dilation: Sequence[int] = (1, 1),
        groups: int = 1,
    ) -> torch.Tensor:
        """A 'valid' cross-correlation (``torch.nn.functional.conv2d``)."""
        return F.conv2d(x, w, stride=tuple(stride), dilation=tuple(dilation), groups=int(groups))

    @staticmethod
    def sum(x: torch.Tensor, axis: int | Sequence[int]) -> torch.Tensor:
        return x.sum(dim=axis if isinstance(axis, int) else tuple(axis))


@dataclass(frozen=True)
class ConvGeometry:
    """Per-stage settings of the staged convolution (index 0 = outermost factor)."""

    pads: tuple[int, int, int, int]
    dilations: tuple[tuple[int, int], ...]
    strides: tuple[tuple[int, int], ...]


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _pads(padding: Any, kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        th, tw = (d * (k - 1) for d, k in zip(dilation, kernel, strict=True))
        return (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    ph, pw = _pair(padding)
    return (ph, ph, pw, pw)


def conv_geometry(structure: Structure, stride: Any, padding: Any, dilation: Any) -> ConvGeometry:
    """Padding, per-stage dilation and per-stage stride of the staged convolution."""
    S = structure.n_factors
    kh = [s[2] for s in structure.shapes]
    kw = [s[3] for s in structure.shapes]
    d = _pair(dilation)
    s = _pair(stride)
    pads = _pads(padding, (math.prod(kh), math.prod(kw)), d)
    dil = tuple((d[0] * math.prod(kh[k + 1 :]), d[1] * math.prod(kw[k + 1 :])) for k in range(S))

    def stage_of(ext: list[int]) -> int:
        big = [k for k in range(S) if ext[k] > 1]
        return big[0] if big else S - 1

    sh, sw = stage_of(kh), stage_of(kw)
    strides = tuple((s[0] if k == sh else 1, s[1] if k == sw else 1) for k in range(S))
    return ConvGeometry(pads, dil, strides)


def sekron_conv2d(
    x: torch.Tensor,
    factors: Sequence[torch.Tensor],
    structure: Structure,
    geometry: ConvGeometry,
    backend: type[TorchBackend] = TorchBackend,
) -> torch.Tensor:
    """Convolve ``x`` (n, C, H, W) with the SeKron kernel held by ``factors`` (no bias)."""
    S, ranks = structure.n_factors, structure.ranks
    Fk = [s[0] for s in structure.shapes]
    Ck = [s[1] for s in structure.shapes]
    n = x.shape[0]
    Z = backend.pad(x, geometry.pads)
    # Z is indexed [n, c_<k, c_k, (r_<k, r_k), f_>k, h, w] before stage k
    Z = backend.reshape(Z, (n, math.prod(Ck), 1, 1, Z.shape[-2], Z.shape[-1]))
    for k in range(S - 1, -1, -1):
        # the innermost factor's P_{S-1} instances are extra output channels (groups 1);
        # an outer factor's prefix ranks are groups and its own rank is summed in the group
        last = k == S - 1
        P_prev = 1 if last else math.prod(ranks[:k])
        R = 1 if last else ranks[k]
        F_out = Fk[k] * (math.prod(ranks) if last else 1)
        C_pre, F_post = math.prod(Ck[:k]), math.prod(Fk[k + 1 :])
        h, w = Z.shape[-2], Z.shape[-1]
        Z = backend.reshape(Z, (n, C_pre, Ck[k], P_prev, R, F_post, h, w))
        Z = backend.transpose(Z, (0, 1, 5, 3, 4, 2, 6, 7))
        Z = backend.reshape(Z, (n * C_pre * F_post, P_prev * R * Ck[k], h, w))
        kernel = tuple(structure.shapes[k][2:])
        A = backend.reshape(factors[k], (P_prev, R, F_out, Ck[k]) + kernel)
        A = backend.transpose(A, (0, 2, 1, 3, 4, 5))
        A = backend.reshape(A, (P_prev * F_out, R * Ck[k]) + kernel)
        Z = backend.conv2d(Z, A, geometry.strides[k], geometry.dilations[k], P_prev)
        h, w = Z.shape[-2], Z.shape[-1]
        Z = backend.reshape(Z, (n, C_pre, F_post, P_prev, F_out, h, w))
        Z = backend.transpose(Z, (0, 1, 3, 4, 2, 5, 6))
    return backend.reshape(Z, (n, math.prod(Fk), Z.shape[-2], Z.shape[-1]))


def _out_len(size: int, ext: int, dil: int, stride: int) -> int:
    return (size - dil * (ext - 1) - 1) // stride + 1


def conv_macs(
    structure: Structure, in_hw: tuple[int, int], stride: Any = 1, padding: Any = 0, dilation: Any = 1
) -> dict[str, int]:
    """Exact multiply-adds per image of the staged convolution and of the dense one.

    Counted from the stage shapes (borders included), not from a formula.
    """
    geo = conv_geometry(structure, stride, padding, dilation)
    S = structure.n_factors
    Fk = [s[0] for s in structure.shapes]
    Ck = [s[1] for s in structure.shapes]
    h = in_hw[0] + geo.pads[0] + geo.pads[1]
    w = in_hw[1] + geo.pads[2] + geo.pads[3]
    F_, C_, KH, KW = structure.shape
    d, s = _pair(dilation), _pair(stride)
    dense = F_ * C_ * KH * KW * _out_len(h, KH, d[0], s[0]) * _out_len(w, KW, d[1], s[1])
    total = 0
    for k in range(S - 1, -1, -1):
        _, _, kh, kw = structure.shapes[k]
        h = _out_len(h, kh, geo.dilations[k][0], geo.strides[k][0])
        w = _out_len(w, kw, geo.dilations[k][1], geo.strides[k][1])
        # P_k instances of factor k, each applied to prod_{j<k} C_j · prod_{j>k} F_j maps
        batch = math.prod(Ck[:k]) * math.prod(Fk[k + 1 :])
        total += batch * structure.instances[k] * Fk[k] * Ck[k] * kh * kw * h * w
    return {"sekron": total, "dense": dense}
