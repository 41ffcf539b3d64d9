"""2-D convolution with a SeKron kernel (staged plan) or a dense kernel (im2col + GEMM)."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .._cost import as_pair, conv_stages
from .._validation import as_float_array
from ..errors import ShapeError
from ..tensor import SeKronTensor
from . import _fused
from ._dispatch import PathCost, blas_threads, cost_table, fit_path_cost, time_paths
from ._im2col import conv2d_regrouped, conv2d_valid, pad2d
from ._plan import (
    ConvPlan,
    ConvStep,
    NumpyBackend,
    PadStep,
    ReshapeStep,
    SumStep,
    TransposeStep,
    conv2d_plan,
    conv_weight,
)

__all__ = ["conv2d", "execute_plan", "run_plan"]

# The batch is run a chunk of images at a time, sized so that the largest intermediate
# of a chunk stays in the last-level cache between the steps that write and read it (the
# stages are thin, so they are bound by memory traffic, not multiply-adds). Measured on
# the 2-core machines: 3-factor plan 26 ms unchunked, 8.7 ms in chunks of ~2-4 MiB.
_BATCH_BYTES = 1 << 22

# The larger calibration batch of the cost table fills this many bytes (4 to 256 images):
# large enough that the per-image cost is the one of large batches (1-16 images
# extrapolated badly to 4096), small enough that timing a new geometry stays under ~1 s
_CALIBRATION_BYTES = 1 << 24


def conv2d(
    x: Any,
    kernel: Any,
    stride: Any = 1,
    padding: Any = 0,
    dilation: Any = 1,
    bias: Any = None,
    *,
    path: str = "auto",
) -> np.ndarray:
    """2-D cross-correlation of an NCHW batch with a SeKron or dense kernel.

    Parameters
    ----------
    x : array_like of shape (N, C, H, W)
    kernel : SeKronTensor or array_like of shape (F, C, Kh, Kw)
        A SeKron kernel (any number of factors, any ranks) runs the staged plan of
        :func:`conv2d_plan`, never forming the dense kernel; a dense kernel runs im2col +
        GEMM.
    stride, padding, dilation : int or pair of ints
        PyTorch semantics (``torch.nn.functional.conv2d``): stride and dilation >= 1,
        zero padding >= 0 on both sides of each spatial axis.
    bias : array_like of shape (F,), optional
    path : {"auto", "staged", "dense"}, default "auto"
        For a SeKron kernel: ``"staged"`` runs the plan, ``"dense"`` builds the dense
        kernel and runs im2col + GEMM, ``"auto"`` runs whichever this machine's cost
        table predicts faster for this call's shape (:class:`sekron.ops.CostTable`; a
        new geometry is timed once, about 10-200 ms, and remembered). Ignored for a
        dense kernel.

    Returns
    -------
    ndarray of shape (N, F, Ho, Wo)
        ``Ho = (H + 2 p_h - d_h (Kh - 1) - 1) // s_h + 1`` (likewise ``Wo``); dtype
        ``result_type(x, kernel)`` (float32 or float64).

    Raises
    ------
    ShapeError
        If ``x`` or the kernel is not 4-D, the channel counts differ, ``bias`` is not
        ``(F,)``, or the kernel does not fit the padded input.
    ValueError, TypeError
        For a stride or dilation < 1, a negative padding, non-integer values, or an
        unknown ``path``.
    NonFiniteError
        If ``x`` or ``bias`` holds NaN or infinity.

    Notes
    -----
    ``y[n, f, i, j] = b[f] + sum_{c,u,v} W[f, c, u, v] xp[n, c, s_h i + d_h u, s_w j + d_w v]``
    with ``xp`` the padded input. For a SeKron kernel the multiply-adds per image are
    ``Structure.macs_conv2d(H, W, stride, padding, dilation)["sekron"]``, against
    ``F C Kh Kw Ho Wo`` dense (DESIGN.md 2.6).

    Examples
    --------
    >>> import numpy as np
    >>> import sekron as sk
    >>> rng = np.random.default_rng(0)
    >>> k = sk.SeKronTensor([rng.normal(size=(1, 4, 2, 3, 1)), rng.normal(size=(1, 2, 4, 1, 3))])
    >>> x = rng.normal(size=(2, 8, 9, 9))
    >>> y = sk.conv2d(x, k, stride=2, padding=1)
    >>> y.shape
    (2, 8, 5, 5)
    >>> np.allclose(y, sk.conv2d(x, k.to_dense(), stride=2, padding=1))
    True
    """
    if path not in _PATHS:
        raise ValueError(f"path: expected one of {_PATHS}, got {path!r}")
    xa = as_float_array(x, "x", ndim=4)
    if isinstance(kernel, SeKronTensor):
        if kernel.ndim != 4:
            raise ShapeError(
                f"kernel: expected a 4-D (F, C, Kh, Kw) kernel, got shape {kernel.shape}"
            )
        kshape, kdtype = kernel.shape, kernel.dtype
    else:
        kernel = as_float_array(kernel, "kernel", ndim=4)
        kshape, kdtype = kernel.shape, kernel.dtype
    if xa.shape[1] != kshape[1]:
        raise ShapeError(
            f"x: expected {kshape[1]} input channels for a kernel of shape {kshape}, "
            f"got x of shape {xa.shape}"
        )
    st = as_pair(stride, "stride", 1)
    pd = as_pair(padding, "padding", 0)
    dl = as_pair(dilation, "dilation", 1)
    dtype = np.result_type(xa.dtype, kdtype)
    b = None
    if bias is not None:
        b = as_float_array(bias, "bias", ndim=1)
        if b.shape != (kshape[0],):
            raise ShapeError(f"bias: expected shape ({kshape[0]},), got {b.shape}")
        dtype = np.result_type(dtype, b.dtype)
    xa = xa.astype(dtype, copy=False)
    if isinstance(kernel, SeKronTensor):
        factors = [f.astype(dtype, copy=False) for f in kernel.factors]
        geometry = (xa.shape, st, pd, dl)
        if path == "auto":
            path = "staged" if _staged_wins(kernel, factors, geometry, dtype) else "dense"
        if path == "staged":
            y = run_plan(conv2d_plan(kernel.structure, xa.shape[2:], st, pd, dl), xa, factors)
        else:
            y = _dense_conv(xa, _dense_kernel(kernel, dtype), st, pd, dl)
    else:
        y = _dense_conv(xa, kernel.astype(dtype, copy=False), st, pd, dl)
    if b is not None:
        y += b.astype(dtype, copy=False)[:, None, None]
    return y


_PATHS = ("auto", "staged", "dense")


# dense kernels of recent SeKron kernels (their factors are read-only, so a kernel's
# dense form never changes; the factor tuple held here detects a reused id)
_DENSE: dict[tuple[int, str], tuple[tuple[np.ndarray, ...], np.ndarray]] = {}
_DENSE_MAX = 16


def _dense_kernel(kernel: SeKronTensor, dtype: np.dtype) -> np.ndarray:
    """``kernel.to_dense()`` in ``dtype``, remembered for the last few kernels."""
    key = (id(kernel), np.dtype(dtype).str)
    hit = _DENSE.get(key)
    if hit is not None and hit[0] is kernel.factors:
        return hit[1]
    dense = kernel.to_dense().astype(dtype, copy=False)
    if len(_DENSE) >= _DENSE_MAX:
        _DENSE.pop(next(iter(_DENSE)))
    _DENSE[key] = (kernel.factors, dense)
    return dense


def _staged_wins(
    kernel: SeKronTensor,
    factors: list[np.ndarray],
    geometry: tuple[tuple[int, ...], tuple[int, int], tuple[int, int], tuple[int, int]],
    dtype: np.dtype,
) -> bool:
    """The cost table's choice for this call (timing both paths on a new geometry).

    Remembered per kernel and call shape (a repeated call costs one dict lookup and the
    BLAS thread count, about 1 us, instead of building and hashing the table's key).
    """
    shape, st, pd, dl = geometry
    table, threads = cost_table(), blas_threads()
    fast = (id(kernel), shape, st, pd, dl, dtype.num, threads, id(table), table.generation)
    hit = _CHOICES.get(fast)
    if hit is not None and hit[0] is kernel.factors:
        return hit[1]
    wins = _table_choice(kernel, factors, geometry, dtype, table, threads)
    if len(_CHOICES) >= _CHOICES_MAX:
        _CHOICES.clear()
    # keyed by the table's state after the choice (timing a new geometry adds an entry)
    _CHOICES[(*fast[:-1], table.generation)] = (kernel.factors, wins)
    return wins


# recent choices by (kernel id, call shape, table state); the factor tuple held here
# detects a reused id, as in _DENSE
_CHOICES: dict[tuple[Any, ...], tuple[tuple[np.ndarray, ...], bool]] = {}
_CHOICES_MAX = 64


def _table_choice(
    kernel: SeKronTensor,
    factors: list[np.ndarray],
    geometry: tuple[tuple[int, ...], tuple[int, int], tuple[int, int], tuple[int, int]],
    dtype: np.dtype,
    table: Any,
    threads: int | None,
) -> bool:
    shape, st, pd, dl = geometry
    s = kernel.structure
    key = (
        "conv2d",
        "numpy",
        s.shapes,
        s.ranks,
        tuple(shape[1:]),
        st,
        pd,
        dl,
        np.dtype(dtype).name,
        threads,
        _fused.ENGINE,
    )

    C, H, W = shape[1:]
    plan = conv2d_plan(s, (H, W), st, pd, dl)

    xs: dict[int, np.ndarray] = {}  # inputs by batch size, made in the untimed warm-up

    def run(which: str, n: int) -> None:
        x = xs.get(n)
        if x is None:
            x = xs[n] = np.zeros((n, C, H, W), dtype=dtype)
        if which == "staged":
            run_plan(plan, x, factors)
        else:
            _dense_conv(x, _dense_kernel(kernel, dtype), st, pd, dl)

    def measure() -> PathCost:
        per_image = max(C * H * W, _peak_elements(plan)) * np.dtype(dtype).itemsize
        big = int(min(256, max(4, _CALIBRATION_BYTES // per_image)))
        return fit_path_cost(run, (1, big))

    return bool(table.staged_wins(key, int(shape[0]), measure, lambda n: time_paths(run, n)))


def _dense_conv(
    x: np.ndarray,
    w: np.ndarray,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> np.ndarray:
    """Dense-kernel path: pad and im2col + GEMM, in the same batch chunks as the plans."""
    N, C, H, W = x.shape
    F, _, Kh, Kw = w.shape
    Hp, Wp = H + 2 * padding[0], W + 2 * padding[1]
    for n, kk, d, axis in ((Hp, Kh, dilation[0], "height"), (Wp, Kw, dilation[1], "width")):
        if n < d * (kk - 1) + 1:
            raise ShapeError(
                f"x: padded {axis} {n} is smaller than the dilated kernel extent "
                f"{d * (kk - 1) + 1} (kernel {kk}, dilation {d})"
            )
    Ho = (Hp - dilation[0] * (Kh - 1) - 1) // stride[0] + 1
    Wo = (Wp - dilation[1] * (Kw - 1) - 1) // stride[1] + 1
    out = np.empty((N, F, Ho, Wo), dtype=x.dtype)
    per_image = max(C * Hp * Wp, F * Ho * Wo) * x.itemsize
    nb = max(1, _BATCH_BYTES // per_image)
    pad = (padding[0], padding[0], padding[1], padding[1])
    for b0 in range(0, N, nb):
        out[b0 : b0 + nb] = conv2d_valid(pad2d(x[b0 : b0 + nb], pad), w, stride, dilation, 1)
    return out


# the dtypes the fused kernel is compiled for (others run the chunked steps)
_FUSED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def run_plan(plan: ConvPlan, x: np.ndarray, factors: Any) -> np.ndarray:
    """The numpy executor of a plan: same steps and primitive as ``NumpyBackend``, faster.

    A stride-1 plan runs as its fused program (``sekron.ops._fused``): every stage of
    one image at a time in cache-resident buffers, the layout steps folded into the
    stages' offsets, images (or bands of rows) shared among the BLAS thread count. Other
    plans run on chunks of the batch (every plan is batch-agnostic and acts on each
    image alone), so that a chunk's intermediates stay in cache; builds each conv weight
    once; lets views of wide rows (the stride-1 conv outputs) flow through reshapes, so
    layout copies move whole planes; writes the last layout step straight into the
    C-contiguous result. ``x`` is ``(N, C, H, W)`` with the factors' dtype.
    """
    be = NumpyBackend()
    weights = {
        i: np.ascontiguousarray(conv_weight(s, factors[s.factor], be))
        for i, s in enumerate(plan.steps)
        if isinstance(s, ConvStep)
    }
    N = x.shape[0]
    out = np.empty((N, *plan.out_shape), dtype=np.result_type(x, *weights.values()))
    if N and _fused.ENABLED and out.dtype in _FUSED_DTYPES:
        ws = [weights[i] for i in sorted(weights)]
        if _fused.run_fused(plan, x.astype(out.dtype, copy=False), ws, out, blas_threads() or 1):
            return out
    nb = max(1, _BATCH_BYTES // (_peak_elements(plan) * out.itemsize))
    for b0 in range(0, N, nb):
        _run_steps(plan, x[b0 : b0 + nb], weights, out[b0 : b0 + nb])
    return out


@functools.lru_cache(maxsize=256)
def _peak_elements(plan: ConvPlan) -> int:
    """Elements per image of the largest array a plan's stages read or write (memoised)."""
    _, h, w = plan.in_shape
    _, stages = conv_stages(
        plan.structure.shapes, plan.structure.ranks, h, w, plan.stride, plan.padding, plan.dilation
    )
    return max(
        s.batch
        * max(s.in_channels * s.in_hw[0] * s.in_hw[1], s.out_channels * s.out_hw[0] * s.out_hw[1])
        for s in stages
    )


# The step dispatch loop of the conv plan reads best as one function.
def _run_steps(  # noqa: C901
    plan: ConvPlan, x: np.ndarray, weights: dict[int, np.ndarray], dest: np.ndarray
) -> None:
    """Run the plan's steps on one chunk and write the result into ``dest``.

    Three liberties, none changing a value: (1) the zero padding is held back while only
    1×1 stride-1 convolutions and layout steps of the leading axes follow (they map zero
    borders to zero borders), then folded into the next layout copy;
    (2) a reshape right before a convolution is left to the convolution, which reads the
    axes where they lie; (3) the last convolution writes straight into ``dest`` through
    the inverse of the final layout steps, when its rows are contiguous.
    """
    steps = plan.steps
    convs = [k for k, s in enumerate(steps) if isinstance(s, ConvStep)]
    last_conv = convs[-1] if convs else -1
    pending = (0, 0, 0, 0)
    regroup: tuple[int, ...] | None = None
    for i, step in enumerate(steps):
        if isinstance(step, PadStep):
            pending = tuple(a + b for a, b in zip(pending, step.pad, strict=True))  # type: ignore[assignment]
        elif isinstance(step, ReshapeStep):
            if i == len(steps) - 1:
                break  # the final reshape is the copy into dest below
            nxt = steps[i + 1]
            if isinstance(nxt, ConvStep) and not any(pending):
                regroup = step.shape  # the conv reads x's axes where they lie
            elif (
                isinstance(nxt, ConvStep)
                and nxt.weight_shape[2:] == (1, 1)
                and nxt.stride == (1, 1)
                and tuple(step.shape[-2:]) == _padded_hw(x, pending)
            ):
                regroup = (*step.shape[:-2], *x.shape[-2:])  # the pad stays pending
            elif any(pending):
                x, pending = _reshape_padded(x, step.shape, pending)
            else:
                x = _reshape(x, step.shape)
        elif isinstance(step, TransposeStep):
            n = len(step.axes)
            if any(pending) and tuple(step.axes[-2:]) != (n - 2, n - 1):
                x, pending = pad2d(x, pending), (0, 0, 0, 0)
            x = np.transpose(x, step.axes)
        elif isinstance(step, ConvStep):
            _, _, kh, kw = step.weight_shape
            if any(pending) and not (kh == kw == 1 and step.stride == (1, 1)):
                # padding inside the column copy (kh kw short-row block copies) measured
                # slower than one padded copy followed by the long-row column copy
                if regroup is not None:
                    x = np.reshape(x, regroup)
                    regroup = None
                x, pending = pad2d(x, pending), (0, 0, 0, 0)
            out = _dest_view(steps[i + 1 :], dest) if i == last_conv and not any(pending) else None
            x = conv2d_regrouped(
                x, regroup or x.shape, weights[i], step.stride, step.dilation, step.groups, out
            )
            regroup = None
            if out is not None and x is out:
                return
        elif isinstance(step, SumStep):
            if any(pending):
                x, pending = pad2d(x, pending), (0, 0, 0, 0)
            x = np.sum(x, axis=step.axis)
        else:  # pragma: no cover - plans only hold the step types above
            raise TypeError(f"plan: unknown step {step!r}")
    if any(pending):
        x = pad2d(x, pending)
    np.copyto(dest.reshape(x.shape), x)


def _padded_hw(x: np.ndarray, pad: tuple[int, int, int, int]) -> tuple[int, int]:
    return x.shape[-2] + pad[0] + pad[1], x.shape[-1] + pad[2] + pad[3]


def _dest_view(layout: Any, dest: np.ndarray) -> np.ndarray | None:
    """A view ``v`` of ``dest`` that the ``layout`` steps take to ``dest``.

    The ``layout`` steps (reshapes and transposes) take ``v``'s C-order regrouping to
    ``dest``; the first step, if a reshape, is left to the regrouping. None when some
    step has no such inverse view.
    """
    key = (tuple(layout), dest.shape, dest.strides, dest.dtype.itemsize)
    if key in _DEST_RECIPES:
        recipe = _DEST_RECIPES[key]
    else:
        recipe = _dest_recipe(layout, dest)
        if len(_DEST_RECIPES) >= 256:
            _DEST_RECIPES.clear()
        _DEST_RECIPES[key] = recipe
    if recipe is None:
        return None
    v = dest
    for kind, arg in recipe:
        v = np.transpose(v, arg) if kind == "t" else np.reshape(v, arg)
    return v


# the transposes and reshapes that _dest_view applies, per (layout, dest shape and
# strides): working them out took 15-30 us per call, a tenth of a batch-1 plan
_DEST_RECIPES: dict[Any, list[tuple[str, tuple[int, ...]]] | None] = {}


def _dest_recipe(layout: Any, dest: np.ndarray) -> list[tuple[str, tuple[int, ...]]] | None:
    """The steps of :func:`_dest_view` for this layout and ``dest`` geometry, or None."""
    if not all(isinstance(s, (ReshapeStep, TransposeStep)) for s in layout):
        return None
    if not layout or not isinstance(layout[-1], ReshapeStep):
        return None
    start = 1 if isinstance(layout[0], ReshapeStep) else 0
    shapes: list[tuple[int, ...]] = []  # the shape after each step, -1 resolved
    shape: tuple[int, ...] = ()
    for s in layout:
        if isinstance(s, ReshapeStep):
            known = math.prod(n for n in s.shape if n != -1)
            shape = (
                tuple(dest.size // known if n == -1 else n for n in s.shape) if known else s.shape
            )
        else:
            shape = tuple(shape[a] for a in s.axes)
        shapes.append(shape)
    v = dest
    recipe: list[tuple[str, tuple[int, ...]]] = []
    for k in range(len(layout) - 1, start - 1, -1):
        s = layout[k]
        before = shapes[k - 1] if k > 0 else None
        if isinstance(s, TransposeStep):
            perm = tuple(int(a) for a in np.argsort(s.axes))
            v = np.transpose(v, perm)
            recipe.append(("t", perm))
        elif before is not None:
            v = np.reshape(v, before)
            if not np.may_share_memory(v, dest):
                return None
            recipe.append(("r", before))
    return recipe


def _reshape_padded(
    x: np.ndarray, shape: tuple[int, ...], pad: tuple[int, int, int, int]
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """``reshape(pad2d(x, pad), shape)``: a view while one exists, else one copy.

    While a view exists the pad stays pending; else ``x`` is copied once into the
    interior of the padded result.
    """
    top, bottom, left, right = pad
    H, W = x.shape[-2:]
    if tuple(shape[-2:]) != (H + top + bottom, W + left + right):
        return _reshape(pad2d(x, pad), shape), (0, 0, 0, 0)
    inner = (*shape[:-2], H, W)
    try:
        return np.reshape(x, inner, copy=False), pad  # type: ignore[call-overload]
    except (ValueError, TypeError):  # a copy is needed (TypeError: numpy < 2.1)
        pass
    lead = list(shape[:-2])
    if -1 in lead:
        known = math.prod(n for n in lead if n != -1)
        lead[lead.index(-1)] = x.size // (H * W * known) if known else 0
    out = np.zeros((*lead, H + top + bottom, W + left + right), dtype=x.dtype)
    # regrouping the leading axes of a C-contiguous array is always a view
    target = out[..., top : top + H, left : left + W].reshape(x.shape)
    if not np.may_share_memory(target, out):  # pragma: no cover - cannot happen
        raise AssertionError("padded layout copy lost its target")
    np.copyto(target, x)
    return out, (0, 0, 0, 0)


def _byte_bounds(a: np.ndarray) -> tuple[int, int]:
    lib = getattr(np.lib, "array_utils", np)  # numpy >= 2 moved byte_bounds
    low, high = lib.byte_bounds(a)
    return int(low), int(high)


def _reshape(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``np.reshape``, with whole-row copies for rows that lie in a wider buffer.

    An array whose rows lie in a wider buffer is reshaped with the whole rows (long
    contiguous copies) and cut back to its width afterwards.
    """
    try:  # a view when one exists (numpy >= 2.1): no copy, and no byte bounds to check
        return x.reshape(shape, copy=False)
    except (ValueError, TypeError):  # TypeError: numpy < 2.1 has no ``copy``
        pass
    if x.ndim >= 2 and tuple(shape[-2:]) == x.shape[-2:] and x.size:
        it = x.itemsize
        s_h, s_w = x.strides[-2:]
        row = s_h // it
        if s_w == it and s_h % it == 0 and row > x.shape[-1]:
            wide = as_strided(x, (*x.shape[:-1], row), x.strides, writeable=False)
            root = x
            while isinstance(root.base, np.ndarray):
                root = root.base
            lo, hi = _byte_bounds(wide)
            rlo, rhi = _byte_bounds(root)
            if rlo <= lo and hi <= rhi:
                return np.reshape(wide, (*shape[:-1], row))[..., : x.shape[-1]]
    return np.reshape(x, shape)


def execute_plan(plan: ConvPlan, x: Any, factors: Any, backend: Any = None) -> Any:
    """Run a :class:`ConvPlan` on a batch ``x`` with the kernel's ``factors``.

    Parameters
    ----------
    plan : ConvPlan
    x : array of shape (N, C, H, W)
        In the backend's array type; not validated here (public entry points validate).
    factors : sequence of S arrays
        The SeKron kernel's factors (``SeKronTensor.factors`` or the backend's tensors),
        factor k of shape ``(R_1..R_{min(k, S-1)}, F_k, C_k, Kh_k, Kw_k)``.
    backend : object, optional
        With ``pad``, ``reshape``, ``transpose``, ``conv2d`` and ``sum`` methods. By
        default numpy arrays run through a chunked executor that computes what
        :class:`NumpyBackend` computes with fewer copies (:func:`run_plan`).

    Returns
    -------
    array of shape (N, F, Ho, Wo)

    Examples
    --------
    >>> import numpy as np
    >>> import sekron as sk
    >>> rng = np.random.default_rng(0)
    >>> k = sk.SeKronTensor([rng.normal(size=(2, 2, 3, 3, 1)), rng.normal(size=(2, 2, 1, 1, 3))])
    >>> plan = sk.ops.conv2d_plan(k.structure, (6, 6), padding=1)
    >>> x = rng.normal(size=(2, 3, 6, 6))
    >>> y = sk.ops.execute_plan(plan, x, k.factors)
    >>> np.allclose(y, sk.conv2d(x, k.to_dense(), padding=1))
    True
    """
    if backend is None:  # numpy: the same steps through the faster chunked executor
        return run_plan(plan, np.asarray(x), factors)
    be = backend
    for step in plan.steps:
        if isinstance(step, PadStep):
            x = be.pad(x, step.pad)
        elif isinstance(step, ReshapeStep):
            x = be.reshape(x, step.shape)
        elif isinstance(step, TransposeStep):
            x = be.transpose(x, step.axes)
        elif isinstance(step, ConvStep):
            wt = conv_weight(step, factors[step.factor], be)
            x = be.conv2d(x, wt, step.stride, step.dilation, step.groups)
        elif isinstance(step, SumStep):
            x = be.sum(x, step.axis)
        else:  # pragma: no cover - plans only hold the step types above
            raise TypeError(f"plan: unknown step {step!r}")
    return x
