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

import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = ["conv2d_valid", "pad2d"]

# Column buffers are built for a chunk of the batch at a time so that they stay in the
# (last-level) cache between their copy and their GEMM; 1-16 MiB measured within 10 % of
# each other on the 2-core machines, 256 KiB 20-40 % slower (more, smaller GEMMs).
_CHUNK_BYTES = 1 << 22


def pad2d(x: np.ndarray, pad: tuple[int, int, int, int]) -> np.ndarray:
    """Zero-pad the last two axes of ``x`` by ``(top, bottom, left, right)``."""
    top, bottom, left, right = pad
    if not (top or bottom or left or right):
        return x
    *lead, H, W = x.shape
    out = np.zeros((*lead, H + top + bottom, W + left + right), dtype=x.dtype)
    out[..., top : top + H, left : left + W] = x
    return out


def _rows(x: np.ndarray) -> np.ndarray:
    """``x`` itself when its last axis is unit-stride and its rows do not overlap."""
    it = x.itemsize
    s_h, s_w = x.strides[2:]
    if s_w != it or s_h % it or s_h < x.shape[3] * it:
        return np.ascontiguousarray(x)
    return x


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
    """
    B, _, H, W = x.shape
    n_out, Cg, kh, kw = w.shape
    g = groups
    Og = n_out // g
    sh, sw = stride
    dh, dw = dilation
    Ho = (H - dh * (kh - 1) - 1) // sh + 1
    Wo = (W - dw * (kw - 1) - 1) // sw + 1
    K = Cg * kh * kw
    dtype = np.result_type(x, w)
    wg = np.ascontiguousarray(w, dtype=dtype).reshape(g, Og, K)
    x = _rows(x.astype(dtype, copy=False))
    it = x.itemsize
    s_b, s_c, s_h, s_w = x.strides
    if sh == sw == 1:
        row = s_h // it
        L = (Ho - 1) * row + Wo  # flat positions from the first to the last output pixel
        out = np.empty((B, g, Og, Ho * row), dtype=x.dtype)
        if kh == kw == 1:  # the input itself is the column matrix
            xv = as_strided(x, (B, g, Cg, L), (s_b, Cg * s_c, s_c, it), writeable=False)
            np.matmul(wg, xv, out=out[..., :L])
        else:
            shape: tuple[int, ...] = (g, Cg, kh, kw, L)
            strides: tuple[int, ...] = (Cg * s_c, s_c, dh * s_h, dw * it, it)
            _chunked(x, wg, out[..., :L], shape, strides)
        return out.reshape(B, n_out, Ho, row)[..., :Wo]
    out = np.empty((B, g, Og, Ho * Wo), dtype=x.dtype)
    shape = (g, Cg, kh, kw, Ho, Wo)
    strides = (Cg * s_c, s_c, dh * s_h, dw * s_w, sh * s_h, sw * s_w)
    _chunked(x, wg, out, shape, strides)
    return out.reshape(B, n_out, Ho, Wo)


def _chunked(
    x: np.ndarray,
    wg: np.ndarray,
    out: np.ndarray,
    shape: tuple[int, ...],
    strides: tuple[int, ...],
) -> None:
    """``out[b] = wg @ cols(x[b])`` for a chunk of images at a time.

    ``shape``/``strides`` describe one image's columns ``(g, Cg, kh, kw, *pixels)`` as a
    view of ``x[b]``; ``out`` is ``(B, g, Og, n_pixels)`` (its last axis may be a slice).
    """
    B = x.shape[0]
    g, K = wg.shape[0], wg.shape[2]
    n_pix = out.shape[3]
    nb = max(1, min(B, _CHUNK_BYTES // max(1, g * K * n_pix * x.itemsize)))
    cols = np.empty((nb, *shape), dtype=x.dtype)
    for b0 in range(0, B, nb):
        m = min(B - b0, nb)
        src = as_strided(x[b0:], (m, *shape), (x.strides[0], *strides), writeable=False)
        c = cols[:m]
        np.copyto(c, src)
        np.matmul(wg, c.reshape(m, g, K, n_pix), out=out[b0 : b0 + m])
