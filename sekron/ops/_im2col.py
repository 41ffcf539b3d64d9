"""The dense convolution primitive: valid grouped cross-correlation by im2col + GEMM.

Both the dense path of :func:`sekron.ops.conv2d` and every stage of the SeKron plan run
through :func:`conv2d_valid`, so their timings compare like with like.
"""

from __future__ import annotations

import numpy as np

__all__ = ["conv2d_valid", "pad2d"]

# im2col buffers are built for a chunk of the batch at a time, so that the column matrix
# stays near the cache instead of streaming the whole expanded input through memory.
_CHUNK_BYTES = 1 << 23
# Below this many weight entries per group (Og * K) numpy's own multiply-add loops
# (einsum without BLAS) beat OpenBLAS, whose thin-matrix GEMMs were measured 10-50x slower
# on the 2-core machines (e.g. (4, 24) @ (24, 43008): 22 ms sgemm, 0.45 ms einsum).
_SMALL_WEIGHT = 256


def pad2d(x: np.ndarray, pad: tuple[int, int, int, int]) -> np.ndarray:
    """Zero-pad the last two axes of ``x`` by ``(top, bottom, left, right)``."""
    top, bottom, left, right = pad
    if not (top or bottom or left or right):
        return x
    widths = [(0, 0)] * (x.ndim - 2) + [(top, bottom), (left, right)]
    return np.pad(x, widths)


def conv2d_valid(
    x: np.ndarray,
    w: np.ndarray,
    stride: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
) -> np.ndarray:
    """Valid (unpadded) grouped 2-D cross-correlation, PyTorch semantics.

    ``x`` is ``(B, groups*Cg, H, W)``, ``w`` is ``(groups*Og, Cg, kh, kw)``; returns
    ``(B, groups*Og, Ho, Wo)`` with ``Ho = (H - dh (kh-1) - 1) // sh + 1``. Assumes
    validated, same-dtype inputs.
    """
    B, Cin, H, W = x.shape
    n_out, Cg, kh, kw = w.shape
    g = groups
    Og = n_out // g
    sh, sw = stride
    dh, dw = dilation
    Ho = (H - dh * (kh - 1) - 1) // sh + 1
    Wo = (W - dw * (kw - 1) - 1) // sw + 1
    K = Cg * kh * kw
    wg = w.reshape(g, Og, K)
    small = Og * K <= _SMALL_WEIGHT
    if kh == kw == 1 and sh == sw == 1:  # a 1x1 convolution is a GEMM on the input itself
        xs = x.reshape(B, g, Cg, H * W)
        out = np.einsum("gok,bgkn->bgon", wg, xs) if small else np.matmul(wg, xs)
        return out.reshape(B, n_out, H, W)
    out = np.empty((B, g, Og, Ho * Wo), dtype=np.result_type(x, w))
    xg = x.reshape(B, g, Cg, H, W)
    per_image = g * K * Ho * Wo * x.itemsize
    chunk = max(1, min(B, _CHUNK_BYTES // max(per_image, 1)))
    # columns are (group, reduction, image, pixel): one wide GEMM per group and chunk
    # (OpenBLAS is much faster on (Og, K) @ (K, many) than on many (K, Ho Wo) blocks)
    cols = np.empty((g, Cg, kh, kw, chunk, Ho, Wo), dtype=x.dtype)
    for b0 in range(0, B, chunk):
        b1 = min(B, b0 + chunk)
        nb = b1 - b0
        c = cols[:, :, :, :, :nb]
        src = xg[b0:b1].transpose(1, 2, 0, 3, 4)  # (g, Cg, nb, H, W), a view
        for u in range(kh):
            hs = slice(u * dh, u * dh + sh * (Ho - 1) + 1, sh)
            for v in range(kw):
                ws = slice(v * dw, v * dw + sw * (Wo - 1) + 1, sw)
                c[:, :, u, v] = src[:, :, :, hs, ws]
        if nb < chunk:
            c = np.ascontiguousarray(c)
        cm = c.reshape(g, K, nb * Ho * Wo)
        res = np.einsum("gok,gkn->gon", wg, cm) if small else np.matmul(wg, cm)
        out[b0:b1] = res.reshape(g, Og, nb, Ho * Wo).transpose(2, 0, 1, 3)
    return out.reshape(B, n_out, Ho, Wo)
