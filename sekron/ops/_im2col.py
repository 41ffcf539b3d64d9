"""The dense convolution primitive: valid grouped cross-correlation by im2col + GEMM.

Both the dense path of :func:`sekron.ops.conv2d` and every stage of the SeKron plan run
through :func:`conv2d_valid`, so their timings compare like with like.

The column matrix is read out of the input through a strided view (no index arithmetic
in Python) one cache-sized chunk of images at a time, and multiplied per image and
group by one batched ``np.matmul`` that writes straight into the output, so each stage
costs one pass over its input, the column copy (kept near the cache) and one pass over
its output.

At stride 1 the columns are "flat": the kernel offset ``(u, v)`` of an image whose rows
are ``row`` elements apart is the shift ``u d_h row + v d_w`` of the whole image seen as
one long row, so a column is a single contiguous run of ``(Ho - 1) row + Wo`` elements
(fast long copies; a 1×1 kernel needs no copy at all). The few positions ``j >= Wo``
between rows are computed and dropped: the result is a view of a ``(.., Ho, row)``
buffer, which the next stage reads as it is (its rows are then ``row`` apart).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = ["conv2d_regrouped", "conv2d_valid", "pad2d"]

# Column buffers are built for a chunk of the batch at a time so that they stay in the
# (last-level) cache between their copy and their GEMM; 1-16 MiB measured within 10 % of
# each other on the 2-core machines, 256 KiB 20-40 % slower (more, smaller GEMMs).
_CHUNK_BYTES = 1 << 22

#: Stride-1 stages with at most this many output channels per group, or this long a
#: reduction, run the fused kernel of ``_conv_kernels`` instead of im2col + GEMM
#: (measured 1.3-2.2x faster on the 2-core machines at 4-16; BLAS wins on the wide GEMMs
#: of dense convolutions)
THIN = 32

# below this many multiply-adds handing planes to threads (tens of us) does not pay
_PARALLEL_MACS = 1 << 21


def pad2d(x: np.ndarray, pad: tuple[int, int, int, int]) -> np.ndarray:
    """Zero-pad the last two axes of ``x`` by ``(top, bottom, left, right)``."""
    top, bottom, left, right = pad
    if not (top or bottom or left or right):
        return x
    *lead, H, W = x.shape
    out = np.zeros((*lead, H + top + bottom, W + left + right), dtype=x.dtype)
    out[..., top : top + H, left : left + W] = x
    return out


def conv2d_valid(
    x: np.ndarray,
    w: np.ndarray,
    stride: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
) -> np.ndarray:
    """Valid (unpadded) grouped 2-D cross-correlation, PyTorch semantics.

    ``x`` is ``(B, groups*Cg, H, W)`` (any strides), ``w`` is ``(groups*Og, Cg, kh, kw)``;
    returns ``(B, groups*Og, Ho, Wo)`` of dtype ``result_type(x, w)`` with
    ``Ho = (H - dh (kh-1) - 1) // sh + 1``, possibly a view of a wider buffer (not
    C-contiguous). Assumes validated inputs.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.ops import conv2d_valid
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> y = conv2d_valid(x, np.ones((1, 1, 3, 3)))
    >>> y.shape, y[0, 0].tolist()
    ((1, 1, 2, 2), [[45.0, 54.0], [81.0, 90.0]])
    >>> conv2d_valid(np.ones((2, 4, 5, 5)), np.ones((6, 2, 3, 3)), stride=(2, 2), groups=2).shape
    (2, 6, 2, 2)
    """
    return conv2d_regrouped(x, x.shape, w, stride, dilation, groups)


def conv2d_regrouped(
    x: np.ndarray,
    in_shape: tuple[int, ...],
    w: np.ndarray,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    groups: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """:func:`conv2d_valid` of ``np.reshape(x, in_shape)``, without the reshape's copy.

    The copy is avoided where possible.

    ``x`` is ``(*lead, H, W)`` with any strides (a transposed view, say) and ``in_shape``
    a C-order regrouping ``(B, C, H, W)`` of it (-1 allowed). The column copy reads the
    leading axes where they lie, so a layout change before a convolution costs nothing
    when the image, group and channel boundaries fall between (or split) axes of ``x``;
    otherwise ``x`` is reshaped (copied) first.

    ``out``, optional, is ``(*lead_out, Ho, Wo)`` with a C-order regrouping
    ``(B, F, Ho, Wo)`` (a transposed view of the caller's result, say). The result is
    written into it, and ``out`` returned, when the GEMM can write there (C-contiguous
    rows and single group and channel axes); otherwise a new array is returned and
    ``out`` is left untouched.
    """
    n_out, Cg, kh, kw = w.shape
    g = groups
    Og = n_out // g
    sh, sw = stride
    dh, dw = dilation
    dtype = np.result_type(x, w)
    x = x.astype(dtype, copy=False)
    if tuple(in_shape[-2:]) != x.shape[-2:]:  # the regrouping reaches into the rows
        x = np.reshape(x, in_shape)
    H, W = x.shape[-2:]
    Ho = (H - dh * (kh - 1) - 1) // sh + 1
    Wo = (W - dw * (kw - 1) - 1) // sw + 1
    B = x.size // (g * Cg * H * W) if x.size else int(in_shape[0])
    if x.size == 0 or n_out == 0:
        return np.zeros((max(B, 0), n_out, Ho, Wo), dtype=dtype)
    K = Cg * kh * kw
    wg = np.ascontiguousarray(w, dtype=dtype).reshape(g, Og, K)
    x = _rows(x)
    parts = _split_axes(_axes(x), (B, g, Cg))
    if parts is None:
        x = _rows(np.reshape(x, (B, g * Cg, H, W)))
        parts = _split_axes(_axes(x), (B, g, Cg))
        assert parts is not None  # a (B, C) pair always splits into (B, g, Cg)
    bat, grp, chan = parts
    it = x.itemsize
    s_h, s_w = x.strides[-2:]
    flat = sh == sw == 1
    row = s_h // it if flat else Wo
    P = (Ho - 1) * row + Wo  # output positions, rows `row` apart (flat: the first to the last)
    if flat and min(Og, K) <= THIN and dtype.kind == "f" and _kernel_ok(bat, grp, chan):
        # a thin stage: the fused kernel reads the input where it lies (no column copy)
        into = _out_view(out, (B, g, Og), Ho, Wo, dtype) if row == Wo else None
        if into is not None and not _kernel_ok(_row_axes(into[1])):
            into = None
        res = _conv_thin(x, wg, (bat, grp, chan), (kh, kw), dilation, (B, Ho, Wo, row, P), into)
        return out if res is None else res  # type: ignore[return-value]
    dst = _out_view(out, (B, g, Og), Ho, Wo, dtype) if row == Wo else None
    res = None
    if dst is None:
        res = np.empty((B, g, Og, Ho * row), dtype=dtype)
        dst = bat, res[..., :P].reshape(*(n for n, _ in bat), g, Og, P)
    obat, target = dst
    if flat and kh == kw == 1 and len(grp) == len(chan) == 1 and _sizes(obat) == _sizes(bat):
        # the input itself is the column matrix: one GEMM per image and group, no copy
        xv = as_strided(x, *_shape_strides([*bat, *grp, *chan, (P, it)]), writeable=False)
        np.matmul(wg, xv, out=target)
    elif flat:
        red = [*grp, *chan, (kh, dh * s_h), (kw, dw * it)]
        _chunked(x, wg, target, obat, bat, red, [(P, it)])
    else:
        red = [*grp, *chan, (kh, dh * s_h), (kw, dw * s_w)]
        _chunked(x, wg, target, obat, bat, red, [(Ho, sh * s_h), (Wo, sw * s_w)])
    if res is None:
        assert out is not None
        return out
    return res.reshape(B, n_out, Ho, row)[..., :Wo]


def _sizes(axes: Axes) -> list[int]:
    return [n for n, _ in axes]


def _axes(x: np.ndarray) -> Axes:
    return list(zip(x.shape[:-2], x.strides[:-2], strict=True))


def _out_view(
    out: np.ndarray | None, sizes: tuple[int, int, int], Ho: int, Wo: int, dtype: np.dtype
) -> tuple[Axes, np.ndarray] | None:
    """``out`` seen as ``(*images, g, Og, Ho*Wo)`` for the GEMM, or None."""
    if out is None or out.dtype != dtype or out.shape[-2:] != (Ho, Wo):
        return None
    it = out.itemsize
    if out.strides[-1] != it or out.strides[-2] != Wo * it:
        return None
    parts = _split_axes(_axes(out), sizes)
    if parts is None or len(parts[1]) != 1 or len(parts[2]) != 1:
        return None
    obat = parts[0]
    view = as_strided(out, *_shape_strides([*obat, *parts[1], *parts[2], (Ho * Wo, it)]))
    return obat, view


def _rows(x: np.ndarray) -> np.ndarray:
    """``x`` itself when its last axis is unit-stride and its rows do not overlap."""
    it = x.itemsize
    s_h, s_w = x.strides[-2:]
    if s_w != it or s_h % it or s_h < x.shape[-1] * it:
        return np.ascontiguousarray(x)
    return x


Axes = list[tuple[int, int]]  # (length, byte stride) per axis, outermost first


def _split_axes(axes: Axes, sizes: tuple[int, ...]) -> tuple[Axes, ...] | None:
    """Regroup ``axes`` (C order) into consecutive groups of the given total ``sizes``.

    An axis is split where a boundary falls inside it; None when that is impossible.
    Each group is returned with unit axes dropped and mergeable neighbours merged, and is
    never empty (``[(1, 0)]`` for a size-1 group).
    """
    rest = [a for a in axes if a[0] != 1]
    groups: list[Axes] = []
    i = 0
    for size in sizes:
        group: Axes = []
        need = size
        while need > 1:
            if i == len(rest):
                return None
            n, s = rest[i]
            if n <= need:
                if need % n:
                    return None
                group.append((n, s))
                need //= n
                i += 1
            else:
                if n % need:
                    return None
                group.append((need, s * (n // need)))
                rest[i] = (n // need, s)
                need = 1
        merged: Axes = []
        for n, s in group:
            if merged and merged[-1][1] == n * s:
                merged[-1] = (merged[-1][0] * n, s)
            else:
                merged.append((n, s))
        groups.append(merged or [(1, 0)])
    return tuple(groups) if i == len(rest) else None


def _shape_strides(axes: Axes) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(n for n, _ in axes), tuple(s for _, s in axes)


def _chunked(
    x: np.ndarray,
    wg: np.ndarray,
    target: np.ndarray,
    obat: Axes,
    bat: Axes,
    red: Axes,
    pix: Axes,
) -> None:
    """``target[b] = wg @ cols(x)[b]`` for a chunk of the first batch axis at a time.

    The columns of image ``b`` are the view of ``x`` with axes ``bat`` (the image index,
    C order), ``red`` (group, then the reduction: channels, kernel rows, kernel columns)
    and ``pix`` (output positions).
    ``target`` is ``(*images, g, Og, n_positions)`` with the images split as ``obat``.
    """
    g, K = wg.shape[0], wg.shape[2]
    n_pix = target.shape[-1]
    (b0_len, b0_stride), inner = bat[0], bat[1:]
    per = math.prod(n for n, _ in inner)  # images per index of the first batch axis
    q = math.prod(n for n, _ in obat[1:])  # images per index of target's first axis
    nb = max(1, min(b0_len, _CHUNK_BYTES // max(1, per * g * K * n_pix * x.itemsize)))
    if per % q:
        nb = b0_len  # chunks would not align with target's axes: one chunk
    shape, strides = _shape_strides(inner + red + pix)
    cols = np.empty((nb, *shape), dtype=x.dtype)
    for b0 in range(0, b0_len, nb):
        m = min(b0_len - b0, nb)
        c = cols[:m]
        src = as_strided(
            _offset(x, b0 * b0_stride), (m, *shape), (b0_stride, *strides), writeable=False
        )
        np.copyto(c, src)
        cm = c.reshape(m * per // q, *(n for n, _ in obat[1:]), g, K, n_pix)
        np.matmul(wg, cm, out=target[b0 * per // q : (b0 + m) * per // q])


def _offset(x: np.ndarray, nbytes: int) -> np.ndarray:
    """A view of ``x``'s buffer starting ``nbytes`` past ``x``'s first element.

    ``nbytes`` is a multiple of the item size; the view is for ``as_strided`` to lay its
    axes on.
    """
    e, it = nbytes // x.itemsize, x.itemsize
    if e >= 0:
        return as_strided(x, (e + 1,), (it,), writeable=False)[e:]
    return as_strided(x, (1 - e,), (-it,), writeable=False)[-e:]


def _kernel_ok(*parts: Axes) -> bool:
    """The kernel's view of the input needs non-negative strides (a flat buffer from x[0])."""
    return all(st >= 0 for axes in parts for _, st in axes)


_POOLS: dict[int, Any] = {}


def _pool(threads: int) -> Any:
    """A thread pool of ``threads`` workers (the kernel releases the GIL)."""
    if threads not in _POOLS:
        from concurrent.futures import ThreadPoolExecutor

        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="sekron-conv")
    return _POOLS[threads]


def _row_axes(a: np.ndarray) -> Axes:
    """Every axis of ``a`` but the last (the rows' index), as (length, byte stride)."""
    return list(zip(a.shape[:-1], a.strides[:-1], strict=True))


def _offsets(axes: Axes) -> np.ndarray:
    """Byte offsets of every index of a group of axes, in C order."""
    off = np.zeros(1, dtype=np.int64)
    for n, st in axes:
        off = (off[:, None] + np.arange(n, dtype=np.int64) * st).reshape(-1)
    return off


# the kernel's offset arrays per stage geometry (they depend on shapes and strides only;
# building them took 30-50 us per stage, a tenth of a batch-1 stage)
_THIN_OFFSETS: dict[Any, tuple[np.ndarray, np.ndarray, int, int]] = {}


def _thin_offsets(
    parts: tuple[tuple[tuple[int, int], ...], ...],
    kernel: tuple[int, int],
    dilation: tuple[int, int],
    x_rows: tuple[int, int],
    out_rows: tuple[int, int, int],
    target: tuple[tuple[int, ...], tuple[int, ...]] | None,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Input offsets per (plane, reduction), output row offsets, and both buffers' lengths.

    ``x_rows`` is the input's row stride and item size (bytes); ``out_rows`` the number
    of output rows, their spacing and length (elements) in a fresh result; ``target`` the
    shape and strides of the output view written into instead, if any. Memoised.
    """
    key = (parts, kernel, dilation, x_rows, out_rows, target)
    hit = _THIN_OFFSETS.get(key)
    if hit is not None:
        return hit
    bat, grp, chan = (list(p) for p in parts)
    (kh, kw), (s_h, it), (n_rows, spacing, P) = kernel, x_rows, out_rows
    taps = (
        np.arange(kh, dtype=np.int64)[:, None] * (dilation[0] * s_h)
        + np.arange(kw, dtype=np.int64)[None, :] * (dilation[1] * it)
    ).reshape(-1)
    planes = (_offsets(bat)[:, None] + _offsets(grp)[None, :]).reshape(-1)
    red = (_offsets(chan)[:, None] + taps[None, :]).reshape(-1)
    koff = (planes[:, None] + red[None, :]) // it
    if target is None:
        rows = np.arange(n_rows, dtype=np.int64) * spacing
    else:
        shape, strides = target
        rows = _offsets(list(zip(shape[:-1], strides[:-1], strict=True))) // it
    hit = (koff, rows, int(koff.max()) + P, int(rows.max()) + P)
    for a in hit[:2]:
        a.flags.writeable = False
    if len(_THIN_OFFSETS) >= 256:
        _THIN_OFFSETS.clear()
    _THIN_OFFSETS[key] = hit
    return hit


def _conv_thin(
    x: np.ndarray,
    wg: np.ndarray,
    parts: tuple[Axes, Axes, Axes],
    kernel: tuple[int, int],
    dilation: tuple[int, int],
    sizes: tuple[int, int, int, int, int],
    into: tuple[Axes, np.ndarray] | None = None,
) -> np.ndarray | None:
    """A stride-1 stage by the fused kernel: ``(B, g*Og, Ho, Wo)``.

    Written into ``into`` (``_out_view``'s images and view) when given (None returned);
    else a new array, a view of wide rows.
    """
    from . import _conv_kernels as kern
    from ._dispatch import blas_threads

    bat, grp, chan = parts
    B, Ho, Wo, row, P = sizes
    g, Og, K = wg.shape
    it = x.itemsize
    if into is None:
        res = np.empty((B, g, Og, Ho * row), dtype=x.dtype)
        target = res
    else:
        target = into[1]  # (*images, g, Og, Ho*Wo), rows contiguous
    koff, rows, x_len, o_len = _thin_offsets(
        (tuple(bat), tuple(grp), tuple(chan)),
        kernel,
        dilation,
        (x.strides[-2], it),
        (B * g * Og, Ho * row, P),
        None if into is None else (target.shape, target.strides),
    )
    xbuf = as_strided(x, (x_len,), (it,), writeable=False)
    obuf = as_strided(target, (o_len,), (it,))
    n_planes = koff.shape[0]
    threads = min(blas_threads() or 1, n_planes)
    if threads > 1 and B * g * Og * K * P >= _PARALLEL_MACS:
        cuts = [n_planes * t // threads for t in range(threads + 1)]
        jobs = [
            _pool(threads).submit(
                kern.conv_flat, xbuf, koff[a:b], wg, obuf, rows[a * Og : b * Og], P, a
            )
            for a, b in itertools.pairwise(cuts)
        ]
        for job in jobs:
            job.result()
    else:
        kern.conv_flat(xbuf, koff, wg, obuf, rows, P, 0)
    if into is not None:
        return None
    return res.reshape(B, g * Og, Ho, row)[..., :Wo]
