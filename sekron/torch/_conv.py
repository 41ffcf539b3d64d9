"""Convolution with a SeKron kernel in torch: the core's plan, run by a torch backend.

The staging (pad once, innermost factor first, outer factors as dilated grouped
convolutions, DESIGN.md 2.6) is derived in one place, :func:`sekron.ops.conv2d_plan`;
this module only supplies :class:`TorchBackend`, the primitive operations the plan is
executed with, so the torch layer is differentiable and runs on torch's convolutions.
Where nothing is differentiated or traced (inference on the CPU) the same plan runs on
the core's numpy executor instead, on zero-copy views of the tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..ops import conv2d_plan, execute_plan
from ..structure import Structure

__all__ = ["TorchBackend", "constant_at_trace", "same_padding", "sekron_conv2d"]


class TorchBackend:
    """Primitive array operations on torch tensors, for the conv and the linear plans.

    The backend of :func:`sekron.ops.execute_plan` and :func:`sekron.contraction.execute_linear`.

    Every method is differentiable with respect to its tensor arguments.

    Examples
    --------
    >>> import numpy as np, torch, sekron as sk
    >>> from sekron.torch import TorchBackend
    >>> s = sk.Structure([(2, 2, 3, 1), (2, 2, 1, 3)], ranks=1)
    >>> plan = sk.ops.conv2d_plan(s, (5, 5), padding=1)
    >>> factors = [torch.randn(f, dtype=torch.float64) for f in s.factor_shapes]
    >>> x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    >>> y = sk.ops.execute_plan(plan, x, factors, TorchBackend())
    >>> ref = sk.ops.execute_plan(plan, x.numpy(), [f.numpy() for f in factors])
    >>> bool(np.allclose(y.numpy(), ref))
    True
    """

    name = "torch"

    def pad(self, x: torch.Tensor, pad: Sequence[int]) -> torch.Tensor:
        """Zero-pad the two last axes; ``pad = (top, bottom, left, right)``."""
        top, bottom, left, right = (int(p) for p in pad)
        if top == bottom == left == right == 0:
            return x
        return F.pad(x, (left, right, top, bottom))

    def reshape(self, x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        return x.reshape(tuple(int(s) for s in shape))

    def transpose(self, x: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
        return x.permute(tuple(int(a) for a in axes))

    def conv2d(
        self,
        x: torch.Tensor,
        weight: torch.Tensor,
        stride: Sequence[int] = (1, 1),
        dilation: Sequence[int] = (1, 1),
        groups: int = 1,
    ) -> torch.Tensor:
        """A 'valid' grouped cross-correlation (``torch.nn.functional.conv2d``).

        A 1×1 kernel runs as a (batched) matrix product instead: torch's CPU convolution
        is several times slower than a GEMM on the few channels of a plan's stages.
        """
        G = int(groups)
        if weight.shape[-2:] == (1, 1):
            sh, sw = (int(v) for v in stride)
            if (sh, sw) != (1, 1):
                x = x[:, :, ::sh, ::sw]
            N, C, H, W = x.shape
            Fo = weight.shape[0]
            if G == 1:
                y = torch.matmul(weight.reshape(Fo, C), x.reshape(N, C, H * W))
                return y.reshape(N, Fo, H, W)
            Cg, Fg = C // G, Fo // G
            xg = x.reshape(N, G, Cg, H * W).permute(1, 2, 0, 3).reshape(G, Cg, N * H * W)
            y = torch.bmm(weight.reshape(G, Fg, Cg), xg)
            return y.reshape(G, Fg, N, H, W).permute(2, 0, 1, 3, 4).reshape(N, Fo, H, W)
        return F.conv2d(x, weight, stride=tuple(stride), dilation=tuple(dilation), groups=G)

    def sum(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        return x.sum(dim=int(axis))

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Batched, broadcasting ``a @ b`` (for :func:`sekron.contraction.execute_linear`)."""
        return torch.matmul(a, b)


_BACKEND = TorchBackend()


def constant_at_trace(fn: Any) -> Any:
    """Mark ``fn`` to be run at trace time, its result baked into the graph.

    What ``torch.compiler.assume_constant_result`` does (``torch.compile`` and
    ``torch.export`` call ``fn`` on the trace's static values instead of tracing into it),
    without that function's import of ``torch._dynamo`` (3.7 s) at ``import sekron.torch``.
    For plans and path choices: pure functions of shapes, kept out of the traced graph.
    """
    fn._dynamo_marked_constant = True
    return fn


@constant_at_trace
def _plan_for(
    structure: Structure,
    hw: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> Any:
    return conv2d_plan(structure, hw, stride, padding, dilation)


def same_padding(kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of torch's ``padding="same"`` (extra on the far side)."""
    th, tw = (d * (k - 1) for d, k in zip(dilation, kernel, strict=True))
    return (th // 2, th - th // 2, tw // 2, tw - tw // 2)


def sekron_conv2d(
    x: torch.Tensor,
    factors: Sequence[torch.Tensor],
    structure: Structure,
    stride: tuple[int, int],
    pads: tuple[int, int, int, int],
    dilation: tuple[int, int],
) -> torch.Tensor:
    """Convolve ``x`` (n, C, H, W) with the SeKron kernel held by ``factors`` (no bias).

    ``pads`` is ``(top, bottom, left, right)``; the symmetric part goes to the plan and an
    odd remainder (``padding="same"`` with an even extent) is padded here first.
    """
    top, bottom, left, right = pads
    ph, pw = min(top, bottom), min(left, right)
    x = _BACKEND.pad(x, (top - ph, bottom - ph, left - pw, right - pw))
    plan = _plan_for(structure, (int(x.shape[-2]), int(x.shape[-1])), stride, (ph, pw), dilation)
    if _numpy_engine_applies(x, factors):
        # inference on the CPU: the core's executor (fused thin-stage kernels), zero-copy;
        # torch's CPU convolutions ran the plan's few-channel stages 3-20x slower
        xs = x.detach().numpy()
        fs = [f.detach().numpy() for f in factors]
        return torch.from_numpy(execute_plan(plan, xs, fs))
    return execute_plan(plan, x, list(factors), _BACKEND)


def _numpy_engine_applies(x: torch.Tensor, factors: Sequence[torch.Tensor]) -> bool:
    """No gradient to record, not tracing, CPU float32/float64 throughout."""
    if torch.compiler.is_compiling() or x.device.type != "cpu":
        return False
    if x.dtype not in (torch.float32, torch.float64):
        return False
    if torch.is_grad_enabled() and (x.requires_grad or any(f.requires_grad for f in factors)):
        return False
    return all(f.device.type == "cpu" and f.dtype == x.dtype for f in factors)


def conv_cost(
    structure: Structure,
    in_hw: tuple[int, int],
    stride: Any,
    pads: tuple[int, int, int, int],
    dilation: Any,
) -> dict[str, int]:
    """Multiply-adds per image from the core's cost model (``Structure.macs_conv2d``)."""
    top, bottom, left, right = pads
    ph, pw = min(top, bottom), min(left, right)
    h = in_hw[0] + top + bottom - 2 * ph
    w = in_hw[1] + left + right - 2 * pw
    return structure.macs_conv2d(h, w, stride, (ph, pw), dilation)
