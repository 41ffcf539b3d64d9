"""numba kernel of the thin stride-1 convolution stages, beside its numpy reference.

A stage of the staged SeKron convolution is a convolution with few output channels per
group or a short reduction (``Og`` or ``K = Cg kh kw`` of 4-32): OpenBLAS runs such
GEMMs at a third of its dense throughput, since it packs the large operand (the column
matrix, itself a copy of the input) before multiplying, so every multiply-add costs
memory traffic. The kernel here reads the input where it lies ("flat" columns: the
kernel offset ``(u, v)`` of an image whose rows are ``row`` elements apart is the shift
``u d_h row + v d_w`` of the image seen as one long row, see ``_im2col``) and updates a
tile of 4 output channels × 1024 positions from 4 reductions at a time, so each load of an
input vector feeds 4 multiply-adds and each update of the (L1-resident) tile 4 more.

Layout: ``xbuf`` is a flat view of the input buffer; ``koff[q, k]`` is the element offset
in ``xbuf`` where reduction ``k = (c, u, v)`` of plane ``q = (image, group)`` starts, so
position ``p`` of that column is ``xbuf[koff[q, k] + p]``; ``w`` is ``(G, Og, K)``;
output row ``(q, o)`` starts at ``ooff[q Og + o]`` in the flat ``out`` and its first
``n_pos`` entries are written (rows never overlap). The kernel is self-contained (``cache=True``) and releases the GIL, so
threads can share the planes of a large stage.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["conv_flat", "conv_flat_reference", "run_program", "run_program_reference"]

_TILE = 1024  # positions per tile: 4 output rows × 1024 × 8 bytes stay in the L1 cache (48 KiB);
# 1024-2048 measured 20-30 % faster than 128-512 (fewer loop set-ups per multiply-add)


# one compiled kernel: its unrolled 4x4 blocks and tails read best in one function
def _conv_flat(xbuf, koff, w, out, ooff, n_pos, q0):  # noqa: C901  # pragma: no cover - compiled
    """``out[ooff[q Og + o] + p] = sum_k w[(q0 + q) % G, o, k] xbuf[koff[q, k] + p]``.

    For ``p < n_pos``; ``q0`` is the index of ``koff``'s first plane in the whole stage
    (a thread's share of the planes starts there).
    """
    n_planes, K = koff.shape
    G, Og = w.shape[0], w.shape[1]
    Og4 = Og - Og % 4
    K4 = K - K % 4
    for q in range(n_planes):
        g = (q0 + q) % G
        ko = koff[q]
        for p0 in range(0, n_pos, _TILE):
            n = min(n_pos, p0 + _TILE) - p0
            for o in range(0, Og4, 4):
                r = q * Og + o
                a0 = out[ooff[r] + p0 : ooff[r] + p0 + n]
                a1 = out[ooff[r + 1] + p0 : ooff[r + 1] + p0 + n]
                a2 = out[ooff[r + 2] + p0 : ooff[r + 2] + p0 + n]
                a3 = out[ooff[r + 3] + p0 : ooff[r + 3] + p0 + n]
                if K4 == 0:
                    a0[:] = 0
                    a1[:] = 0
                    a2[:] = 0
                    a3[:] = 0
                for k in range(0, K4, 4):
                    x0 = xbuf[ko[k] + p0 : ko[k] + p0 + n]
                    x1 = xbuf[ko[k + 1] + p0 : ko[k + 1] + p0 + n]
                    x2 = xbuf[ko[k + 2] + p0 : ko[k + 2] + p0 + n]
                    x3 = xbuf[ko[k + 3] + p0 : ko[k + 3] + p0 + n]
                    w00, w01, w02, w03 = w[g, o, k], w[g, o, k + 1], w[g, o, k + 2], w[g, o, k + 3]
                    w10, w11, w12, w13 = (
                        w[g, o + 1, k],
                        w[g, o + 1, k + 1],
                        w[g, o + 1, k + 2],
                        w[g, o + 1, k + 3],
                    )
                    w20, w21, w22, w23 = (
                        w[g, o + 2, k],
                        w[g, o + 2, k + 1],
                        w[g, o + 2, k + 2],
                        w[g, o + 2, k + 3],
                    )
                    w30, w31, w32, w33 = (
                        w[g, o + 3, k],
                        w[g, o + 3, k + 1],
                        w[g, o + 3, k + 2],
                        w[g, o + 3, k + 3],
                    )
                    if k == 0:  # the first reductions write the tile (no zeroing pass)
                        for p in range(n):
                            v0, v1, v2, v3 = x0[p], x1[p], x2[p], x3[p]
                            a0[p] = w00 * v0 + w01 * v1 + w02 * v2 + w03 * v3
                            a1[p] = w10 * v0 + w11 * v1 + w12 * v2 + w13 * v3
                            a2[p] = w20 * v0 + w21 * v1 + w22 * v2 + w23 * v3
                            a3[p] = w30 * v0 + w31 * v1 + w32 * v2 + w33 * v3
                        continue
                    for p in range(n):
                        v0, v1, v2, v3 = x0[p], x1[p], x2[p], x3[p]
                        a0[p] += w00 * v0 + w01 * v1 + w02 * v2 + w03 * v3
                        a1[p] += w10 * v0 + w11 * v1 + w12 * v2 + w13 * v3
                        a2[p] += w20 * v0 + w21 * v1 + w22 * v2 + w23 * v3
                        a3[p] += w30 * v0 + w31 * v1 + w32 * v2 + w33 * v3
                for k in range(K4, K):
                    x0 = xbuf[ko[k] + p0 : ko[k] + p0 + n]
                    w00, w10, w20, w30 = w[g, o, k], w[g, o + 1, k], w[g, o + 2, k], w[g, o + 3, k]
                    for p in range(n):
                        v0 = x0[p]
                        a0[p] += w00 * v0
                        a1[p] += w10 * v0
                        a2[p] += w20 * v0
                        a3[p] += w30 * v0
            for o in range(Og4, Og):
                r = q * Og + o
                a0 = out[ooff[r] + p0 : ooff[r] + p0 + n]
                if K4 == 0:
                    a0[:] = 0
                for k in range(0, K4, 4):
                    x0 = xbuf[ko[k] + p0 : ko[k] + p0 + n]
                    x1 = xbuf[ko[k + 1] + p0 : ko[k + 1] + p0 + n]
                    x2 = xbuf[ko[k + 2] + p0 : ko[k + 2] + p0 + n]
                    x3 = xbuf[ko[k + 3] + p0 : ko[k + 3] + p0 + n]
                    w00, w01, w02, w03 = w[g, o, k], w[g, o, k + 1], w[g, o, k + 2], w[g, o, k + 3]
                    if k == 0:
                        for p in range(n):
                            a0[p] = w00 * x0[p] + w01 * x1[p] + w02 * x2[p] + w03 * x3[p]
                        continue
                    for p in range(n):
                        a0[p] += w00 * x0[p] + w01 * x1[p] + w02 * x2[p] + w03 * x3[p]
                for k in range(K4, K):
                    x0 = xbuf[ko[k] + p0 : ko[k] + p0 + n]
                    w00 = w[g, o, k]
                    for p in range(n):
                        a0[p] += w00 * x0[p]


# fastmath: the reduction may be reassociated (vectorized); error bounds are those of
# any summation order, as for a BLAS GEMM. nogil: threads share a stage's planes (Python
# threads, not numba's OpenMP pool, whose spinning workers slowed the BLAS threads of the
# dense convolutions that run next by up to 2x)
conv_flat = njit(cache=True, fastmath=True, boundscheck=False, nogil=True)(_conv_flat)


def conv_flat_reference(
    xbuf: np.ndarray,
    koff: np.ndarray,
    w: np.ndarray,
    out: np.ndarray,
    ooff: np.ndarray,
    n_pos: int,
    q0: int = 0,
) -> None:
    """The numpy twin of :data:`conv_flat`: the same sums, one GEMM per plane."""
    n_planes = koff.shape[0]
    G, Og = w.shape[0], w.shape[1]
    cols = xbuf[koff[:, :, None] + np.arange(n_pos)]  # (planes, K, n_pos)
    for q in range(n_planes):
        y = w[(q0 + q) % G] @ cols[q]
        for o in range(Og):
            out[ooff[q * Og + o] : ooff[q * Og + o] + n_pos] = y[o]


# --- the whole plan per image ---------------------------------------------------------
#
# A stride-1 plan is a chain of flat stages whose layout steps only permute planes, so
# every layout step can be folded into the next stage's input offsets (``koff``) and the
# whole plan run one image at a time through buffers that stay in the L2 cache
# (``sekron.ops._fused`` builds the program and does the copies in and out, which numpy
# does at memory speed and a numba loop, unsure whether the arrays overlap, did not).
# Stage ``s`` is the row ``meta[s] = (src, dst, n_planes, K, G, Og, n_pos, koff_start,
# ooff_start, w_start)``: it reads buffer ``src`` and writes buffer ``dst`` (0 = the
# image's padded input, 1 and 2 the ping-pong buffers, 3 the image's result); its
# offsets and weight are the slices of the flat ``koff``, ``ooff`` and ``w`` that start
# there.


def _pick(k, b0, b1, b2, b3):  # pragma: no cover - compiled
    if k == 0:
        return b0
    if k == 1:
        return b1
    if k == 2:
        return b2
    return b3


def _run_program(xp, yp, n_img, meta, koff, ooff, w, b1, b2):  # pragma: no cover - compiled
    """Run the program on ``n_img`` images: inputs ``xp``, results ``yp`` (flat, one after the other)."""
    L0 = xp.shape[0] // n_img
    L3 = yp.shape[0] // n_img
    for i in range(n_img):
        b0 = xp[i * L0 : (i + 1) * L0]
        b3 = yp[i * L3 : (i + 1) * L3]
        for s in range(meta.shape[0]):
            src = _pick(meta[s, 0], b0, b1, b2, b3)
            dst = _pick(meta[s, 1], b0, b1, b2, b3)
            n_planes, K, G, Og, n_pos = meta[s, 2], meta[s, 3], meta[s, 4], meta[s, 5], meta[s, 6]
            ks, os, ws = meta[s, 7], meta[s, 8], meta[s, 9]
            ko = koff[ks : ks + n_planes * K].reshape((n_planes, K))
            wt = w[ws : ws + G * Og * K].reshape((G, Og, K))
            conv_flat(src, ko, wt, dst, ooff[os : os + n_planes * Og], n_pos, 0)


_pick = njit(cache=True, inline="always")(_pick)
run_program = njit(cache=True, fastmath=True, boundscheck=False, nogil=True)(_run_program)


def run_program_reference(
    xp: np.ndarray,
    yp: np.ndarray,
    n_img: int,
    meta: np.ndarray,
    koff: np.ndarray,
    ooff: np.ndarray,
    w: np.ndarray,
    b1: np.ndarray,
    b2: np.ndarray,
) -> None:
    """The numpy twin of :data:`run_program`: the same buffers, one GEMM per plane."""
    L0, L3 = xp.shape[0] // n_img, yp.shape[0] // n_img
    for i in range(n_img):
        bufs = (xp[i * L0 : (i + 1) * L0], b1, b2, yp[i * L3 : (i + 1) * L3])
        for src, dst, n_planes, K, G, Og, n_pos, ks, os, ws in meta.tolist():
            conv_flat_reference(
                bufs[src],
                koff[ks : ks + n_planes * K].reshape(n_planes, K),
                w[ws : ws + G * Og * K].reshape(G, Og, K),
                bufs[dst],
                ooff[os : os + n_planes * Og],
                n_pos,
            )
