"""Pure-numpy twins of the numba kernels in ``_kernels.py``.

They compute the same bits (same hash, same rounding, same integer widths) in the plainest
numpy, so the tests can compare each kernel against them exactly. They are slow and meant
for testing, and also for the counter-based key derivation used by the wrappers.
"""

from __future__ import annotations

import numpy as np

from ._streams import GAMMA as _GAMMA
from ._streams import M1 as _M1
from ._streams import M2 as _M2
from ._streams import MASK64, stream_key

__all__ = [
    "MASK64",
    "gemm_ref",
    "hash_stream",
    "linear_bwd_ref",
    "linear_fwd_ref",
    "map_fixed_ref",
    "requant_ref",
    "round_stochastic_ref",
    "scatter_add_rows_ref",
    "shift_ref",
    "shift_stochastic_ref",
    "split_seed_ref",
    "stream_key",
]


def hash_stream(key: np.uint64, n: int) -> np.ndarray:
    """The ``n`` uint64 random words ``splitmix64(key + (i + 1) * GAMMA)``, i = 0..n-1."""
    idx = np.arange(1, n + 1, dtype=np.uint64)
    z = np.uint64(key) + idx * np.uint64(_GAMMA)  # uint64 arrays wrap modulo 2^64
    z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
    return z ^ (z >> np.uint64(31))


def round_stochastic_ref(y: np.ndarray, key: np.uint64, qmax: int) -> np.ndarray:
    """Reference of ``_kernels.round_stochastic``: flat float64 in, int64 out."""
    y = np.asarray(y, dtype=np.float64).ravel()
    f = np.floor(y)
    u = (hash_stream(key, y.size) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    q = f.astype(np.int64) + (u < (y - f)).astype(np.int64)
    return np.clip(q, -qmax, qmax)


def shift_stochastic_ref(x: np.ndarray, shift: np.ndarray, key: np.uint64) -> np.ndarray:
    """Reference of ``_kernels.shift_stochastic``: flat int64 ``x`` and ``shift``."""
    x = np.asarray(x, dtype=np.int64).ravel()
    shift = np.asarray(shift, dtype=np.int64).ravel()
    h = hash_stream(key, x.size)
    out = np.empty_like(x)
    left = shift <= 0
    out[left] = x[left] << (-shift[left])
    mid = (shift > 0) & (shift <= 62)
    s = shift[mid]
    r = (h[mid] >> (np.uint64(64) - s.astype(np.uint64))).astype(np.int64)
    out[mid] = (x[mid] + r) >> s
    big = shift > 62
    for i in np.flatnonzero(big):  # rare: exponent gaps wider than 62 bits
        v, si = int(x[i]), int(shift[i])
        thr = (abs(v) << 1) if si == 63 else (abs(v) >> (si - 64) if si - 64 < 63 else 0)
        bit = 1 if int(h[i]) < thr else 0
        out[i] = -bit if v < 0 else bit
    return out


def gemm_ref(a: np.ndarray, bt: np.ndarray) -> np.ndarray:
    """Exact integer ``a @ bt.T`` in int64 (the oracle of every GEMM path)."""
    return np.asarray(a, dtype=np.int64) @ np.asarray(bt, dtype=np.int64).T


def scatter_add_rows_ref(ids: np.ndarray, rows: np.ndarray, n_rows: int) -> np.ndarray:
    """Reference of ``_kernels.scatter_add_rows`` into a fresh int64 array."""
    out = np.zeros((n_rows, rows.shape[1]), dtype=np.int64)
    np.add.at(out, np.asarray(ids, dtype=np.int64), np.asarray(rows, dtype=np.int64))
    return out


def map_fixed_ref(
    x: np.ndarray, bits: int, stochastic: bool, key: np.uint64
) -> tuple[np.ndarray, int]:
    """Reference of ``_kernels.map_fixed_flat``: (int64 mantissas, exponent) of a flat array."""
    y = np.asarray(x, dtype=np.float64).ravel()
    amax = float(np.abs(y).max(initial=0.0))
    e = int(np.frexp(amax)[1]) - 1 - (bits - 2) if amax > 0 else 0
    s = np.ldexp(y, -e)
    qmax = (1 << (bits - 1)) - 1
    if stochastic:
        return round_stochastic_ref(s, key, qmax), e
    return np.clip(np.floor(s + 0.5), -qmax, qmax).astype(np.int64), e


def requant_ref(
    q: np.ndarray, e_in: int, bits: int, stochastic: bool, key: np.uint64
) -> tuple[np.ndarray, int]:
    """Reference of ``_kernels.requant_flat`` (no mask): (int64 mantissas, exponent)."""
    q = np.asarray(q, dtype=np.int64).ravel()
    length = int(np.abs(q).max(initial=0)).bit_length()
    if length == 0:
        return np.zeros_like(q), 0
    s = length - (bits - 1)
    qmax = (1 << (bits - 1)) - 1
    return np.clip(shift_ref(q, s, stochastic, key), -qmax, qmax), e_in + s


def shift_ref(q: np.ndarray, shift: int, stochastic: bool, key: np.uint64) -> np.ndarray:
    """Reference of ``_kernels.shift_flat``: ``q / 2**shift`` rounded, one shift <= 62."""
    q = np.asarray(q, dtype=np.int64).ravel()
    if shift <= 0:
        return q << -shift
    if stochastic:
        return shift_stochastic_ref(q, np.full(q.size, shift, np.int64), key)
    return (q + (1 << (shift - 1))) >> shift


def linear_fwd_ref(
    x: np.ndarray,
    w: np.ndarray,
    bq: np.ndarray | None,
    b_shift: int,
    e_acc: int,
    bits: int | None,
    stochastic: bool,
    seed: int,
    relu: bool,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Reference of ``_kernels.linear_fwd_flat``: (int64 output (N, F), ReLU mask, exponent).

    ``bq`` None means no bias; ``bits`` None means no requantization.
    """
    acc = gemm_ref(x, w)
    if bq is not None:
        acc = acc + shift_ref(bq, b_shift, stochastic, stream_key(seed, 4))[None, :]
    e = e_acc
    if bits is not None:
        q, e = requant_ref(acc, e_acc, bits, stochastic, stream_key(seed, 3))
        acc = q.reshape(acc.shape)
    mask = acc > 0
    if relu:
        acc = np.where(mask, acc, 0)
    return acc, mask, e


def linear_bwd_ref(
    x: np.ndarray,
    w: np.ndarray,
    g: np.ndarray,
    e_g: int | None,
    bits: int,
    stochastic: bool,
    seed: int,
    e_x: int,
    e_w: int,
    dx_bits: int | None,
    mask: np.ndarray | None,
) -> tuple[tuple[np.ndarray, int], tuple[np.ndarray, int], tuple[np.ndarray, int]]:
    """Reference of ``_kernels.linear_bwd_flat``: ((dx, e), (dW, e), (db, e)) in int64.

    ``e_g`` None: ``g`` is a float gradient mapped on streams 1 and 2; else ``g`` holds
    mantissas of exponent ``e_g``. ``dx_bits`` requantizes dx on stream 3; ``mask`` zeroes it.
    """
    n, f = np.shape(g)
    if e_g is None:
        q1, eg1 = map_fixed_ref(g, bits, stochastic, stream_key(seed, 1))
        q2, eg2 = map_fixed_ref(g, bits, stochastic, stream_key(seed, 2))
        g1, g2 = q1.reshape(n, f), q2.reshape(n, f)
    else:
        g1 = g2 = np.asarray(g, np.int64)
        eg1 = eg2 = e_g
    dx = gemm_ref(g1, np.asarray(w).T)
    e_dx = eg1 + e_w
    if dx_bits is not None:
        q, e_dx = requant_ref(dx, e_dx, dx_bits, stochastic, stream_key(seed, 3))
        dx = q.reshape(dx.shape)
        if mask is not None:
            dx = np.where(mask, dx, 0)
    dw = gemm_ref(g2.T, np.asarray(x).T)
    return (dx, e_dx), (dw, eg2 + e_x), (g2.sum(axis=0), eg2)


def split_seed_ref(seed: int, n: int) -> tuple[int, ...]:
    """Reference of ``_tensor.split_seed``: ``splitmix64`` outputs ``mix(seed + (i + 1) GAMMA)``."""
    return tuple(int(v) for v in hash_stream(np.uint64(seed & MASK64), n))
