"""numba kernels of the fixed-point engine.

Every kernel takes arrays and scalars only, writes into an output the caller allocated,
and is self-contained within this file (``cache=True`` keys the cache on this file, so a
helper from another module could change without the cache noticing). Callers in
``_mapping.py``, ``_gemm.py`` and ``_ops.py`` validate, choose integer widths and check
every overflow bound *before* a kernel runs: the kernels themselves wrap silently.
Each kernel has a pure-numpy twin in ``_reference.py`` that the tests compare against.

Each element-wise or GEMM kernel exists twice, compiled from one body: a ``prange``
version for large inputs and a serial one (``*_serial``), since launching a parallel
region costs tens of microseconds (milliseconds under some OpenMP layers) and the small
tensors of a training step are faster on one thread. Both give the same bits.

Random bits come from a counter-based generator: element ``i`` of a draw keyed by
``key`` gets ``splitmix64(key + (i + 1) * GAMMA)``. The bits depend only on the key and
the element's index, never on the thread that computes it.
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit, prange

from . import _streams

# the constants are frozen into the compiled code (and its cache): they define the random
# bits, so they never change
GAMMA = np.uint64(_streams.GAMMA)
_M1 = np.uint64(_streams.M1)
_M2 = np.uint64(_streams.M2)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_TWO_M53 = 2.0**-53


@njit(cache=True, inline="always")
def _mix64(z: np.uint64) -> np.uint64:
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def _round_stochastic(y, key, qmax, out):  # pragma: no cover - compiled
    """``out[i] = clamp(floor(y[i]) + [u_i < frac(y[i])], -qmax, qmax)``.

    ``y`` is a flat float64 array (already scaled by a power of two, so exact), ``u_i``
    is uniform on the 2^53-point grid of [0, 1) drawn from ``key`` and ``i``. The floor
    and the fraction are exact in float64, so the result is unbiased up to 2^-53.
    """
    n = y.size
    for i in prange(n):
        v = y[i]
        f = np.floor(v)
        h = _mix64(key + np.uint64(i + 1) * GAMMA)
        u = np.float64(h >> _S11) * _TWO_M53
        q = np.int64(f)
        if u < v - f:
            q += 1
        if q > qmax:
            q = qmax
        elif q < -qmax:
            q = -qmax
        out[i] = q


def _shift_stochastic(x, shift, key, out):  # pragma: no cover - compiled
    """Unbiased stochastic right shift ``out[i] = SR(x[i] / 2^shift[i])``.

    ``x`` and ``shift`` are flat int64 arrays of equal length. For ``0 < s <= 62`` this is
    ``(x + r) >> s`` with ``r`` the top ``s`` bits of the hash (uniform in [0, 2^s)), an
    arithmetic shift: exact in expectation for negative ``x`` too. The caller keeps
    ``|x| < 2^62`` so ``x + r`` cannot wrap. For ``s >= 63`` the result is
    ``sign(x) * Bernoulli(|x| / 2^s)``, still unbiased. ``s <= 0`` is a left shift the
    caller has checked to fit.
    """
    n = x.size
    for i in prange(n):
        v = x[i]
        s = shift[i]
        if s <= 0:
            out[i] = v << (-s)
        elif s <= 62:
            h = _mix64(key + np.uint64(i + 1) * GAMMA)
            r = np.int64(h >> np.uint64(64 - s))
            out[i] = (v + r) >> s
        else:
            h = _mix64(key + np.uint64(i + 1) * GAMMA)
            mag = np.uint64(-v) if v < 0 else np.uint64(v)
            if s == 63:
                thr = mag << np.uint64(1)
            elif s - 64 >= 63:
                thr = np.uint64(0)
            else:
                thr = mag >> np.uint64(s - 64)
            bit = np.int64(1) if h < thr else np.int64(0)
            out[i] = -bit if v < 0 else bit


def _gemm_acc32(a, bt, out):  # pragma: no cover - compiled
    """``out = a @ bt.T`` with int32 accumulation; ``a`` (M, K), ``bt`` (N, K) int8/int16.

    Overflow bound: every partial sum is at most K * max|a| * max|b| in magnitude; the
    caller only launches this kernel when that bound is <= 2^31 - 1. The explicit int32
    truncation keeps numba from widening the product to int64, which lets LLVM emit
    vpmaddwd/vpdpwssd (pairwise int16 products summed into int32, exact under the same
    bound). A 2 x 2 register block: larger blocks stop LLVM from vectorizing over k.
    """
    m, k = a.shape
    n = bt.shape[0]
    for ib in prange((m + 1) // 2):
        i = 2 * ib
        if i + 1 < m:
            j = 0
            while j + 1 < n:
                c00 = np.int32(0)
                c01 = np.int32(0)
                c10 = np.int32(0)
                c11 = np.int32(0)
                for p in range(k):
                    a0 = np.int32(a[i, p])
                    a1 = np.int32(a[i + 1, p])
                    b0 = np.int32(bt[j, p])
                    b1 = np.int32(bt[j + 1, p])
                    c00 = np.int32(c00 + a0 * b0)
                    c01 = np.int32(c01 + a0 * b1)
                    c10 = np.int32(c10 + a1 * b0)
                    c11 = np.int32(c11 + a1 * b1)
                out[i, j] = c00
                out[i, j + 1] = c01
                out[i + 1, j] = c10
                out[i + 1, j + 1] = c11
                j += 2
            if j < n:
                c0 = np.int32(0)
                c1 = np.int32(0)
                for p in range(k):
                    b0 = np.int32(bt[j, p])
                    c0 = np.int32(c0 + np.int32(a[i, p]) * b0)
                    c1 = np.int32(c1 + np.int32(a[i + 1, p]) * b0)
                out[i, j] = c0
                out[i + 1, j] = c1
        else:
            for jj in range(n):
                c = np.int32(0)
                for p in range(k):
                    c = np.int32(c + np.int32(a[i, p]) * np.int32(bt[jj, p]))
                out[i, jj] = c


def _gemm_acc64(a, bt, out):  # pragma: no cover - compiled
    """``out = a @ bt.T`` with int64 accumulation (bound K * max|a| * max|b| <= 2^62); ``a``, ``bt`` int8/int16 (``gemm_nt`` converts), so each product fits int32."""
    m, k = a.shape
    n = bt.shape[0]
    for ib in prange((m + 1) // 2):
        i = 2 * ib
        i1 = min(i + 1, m - 1)
        for j in range(0, n, 2):
            j1 = min(j + 1, n - 1)
            c00 = np.int64(0)
            c01 = np.int64(0)
            c10 = np.int64(0)
            c11 = np.int64(0)
            for p in range(k):
                # int16 x int16 fits int32 exactly; widening the product (not the operands)
                # avoids 64-bit multiplies, which AVX2 lacks (10-20% faster at 1024^3)
                a0 = np.int32(a[i, p])
                a1 = np.int32(a[i1, p])
                b0 = np.int32(bt[j, p])
                b1 = np.int32(bt[j1, p])
                c00 += np.int64(a0 * b0)
                c01 += np.int64(a0 * b1)
                c10 += np.int64(a1 * b0)
                c11 += np.int64(a1 * b1)
            out[i, j] = c00
            out[i, j1] = c01
            out[i1, j] = c10
            out[i1, j1] = c11


@njit(cache=True)
def scatter_add_rows(ids, rows, out):  # pragma: no cover - compiled
    """``out[ids[t]] += rows[t]`` for every t, in the integer width of ``out``.

    Overflow bound: a row of ``out`` receives at most count(ids == v) rows, so
    max_count * max|rows| must fit ``out``'s dtype (checked by the caller).
    Sequential on purpose: rows with equal ids would race under prange.
    """
    n, d = rows.shape
    for t in range(n):
        v = ids[t]
        for j in range(d):
            out[v, j] += rows[t, j]


# ---------------------------------------------------------------------------------------
# Fused serial kernels for the small tensors of a training step (one launch instead of a
# chain of numpy calls). Each computes exactly the bits of the unfused wrapper chain it
# replaces (same hash index per element, same rounding, same clamps); ``_reference.py``
# and the tests pin that. Sizes here are small, so they are serial only.

# returned by map_fixed_flat when the input holds NaN or infinity
NONFINITE = np.int64(-(1 << 62))


@njit(cache=True)
def stream_key_nb(seed, stream):  # pragma: no cover - compiled
    """``_reference.stream_key`` in uint64 arithmetic (wraps modulo 2**64 like the masks)."""
    z = _mix64(seed + GAMMA)
    return _mix64(z ^ (np.uint64(stream) * _M2 + GAMMA))


@njit(cache=True, inline="always")
def _bit_length(m):  # pragma: no cover - compiled
    n = np.int64(0)
    while m > 0:
        m >>= 1
        n += 1
    return n


@njit(cache=True, inline="always")
def _sround(v, i, key, stochastic):  # pragma: no cover - compiled
    """Round the scaled float ``v`` (element ``i``): stochastic or half up."""
    if stochastic:
        f = np.floor(v)
        h = _mix64(key + np.uint64(i + 1) * GAMMA)
        u = np.float64(h >> _S11) * _TWO_M53
        q = np.int64(f)
        if u < v - f:
            q += 1
        return q
    return np.int64(np.floor(v + 0.5))


@njit(cache=True, inline="always")
def _ishift(v, s, i, key, stochastic):  # pragma: no cover - compiled
    """``v / 2**s`` rounded (element ``i``), for ``s <= 62``; ``s <= 0`` shifts left."""
    if s <= 0:
        return v << (-s)
    if stochastic:
        h = _mix64(key + np.uint64(i + 1) * GAMMA)
        return (v + np.int64(h >> np.uint64(64 - s))) >> s
    return (v + (np.int64(1) << (s - 1))) >> s


@njit(cache=True, inline="always")
def _clamp(q, qmax):  # pragma: no cover - compiled
    if q > qmax:
        return qmax
    if q < -qmax:
        return -qmax
    return q


@njit(cache=True, inline="always")
def _scaled(v, k, scale, exact):  # pragma: no cover - compiled
    """``v * 2**k`` correctly rounded: a multiply by the exact power of two ``scale`` when ``exact`` (``-1022 <= k <= 1023``), else ``ldexp``. Both round the exact product once, so they agree bit for bit; the multiply is ~50x cheaper than a libm ``ldexp`` call."""
    if exact:
        return v * scale
    return math.ldexp(v, k)


@njit(cache=True, inline="always")
def _pow2(k):  # pragma: no cover - compiled
    """``(2.0**k, True)`` when that is a normal float64, else ``(1.0, False)``."""
    if -1022 <= k <= 1023:
        return math.ldexp(1.0, k), True
    return 1.0, False


@njit(cache=True)
def map_fixed_flat(x, bits, stochastic, seed, stream, out):  # pragma: no cover - compiled
    """Per-tensor ``to_fixed`` of the flat float array ``x`` into ``out``; returns the exponent.

    ``exponent = floor(log2 max|x|) - (bits - 2)`` (0 for an all-zero input), then each
    ``x[i] * 2**-exponent`` (exact) rounded and clamped to ``±(2**(bits-1) - 1)``: the bits
    of ``_tensor.to_fixed`` with ``axis=None``. Returns ``NONFINITE`` (and writes nothing)
    if ``x`` holds NaN or infinity.
    """
    n = x.size
    amax = 0.0
    for i in range(n):
        v = abs(np.float64(x[i]))
        if not v <= 1.7976931348623157e308:
            return NONFINITE
        if v > amax:
            amax = v
    e = np.int64(0)
    if amax > 0:
        e = np.int64(math.frexp(amax)[1]) - 1 - (bits - 2)
    qmax = (np.int64(1) << (bits - 1)) - 1
    key = stream_key_nb(seed, stream)
    scale, exact = _pow2(-e)
    for i in range(n):
        v = _scaled(np.float64(x[i]), -e, scale, exact)
        out[i] = _clamp(_sround(v, i, key, stochastic), qmax)  # type: ignore[arg-type]
    return e


@njit(cache=True)
def requant_flat(q, e_in, bits, stochastic, seed, stream, mask, use_mask, out):  # pragma: no cover
    """Per-tensor ``requantize`` of the flat integer array ``q`` (exponent ``e_in``) into ``out``; returns the new exponent. ``shift = bitlength(max|q|) - (bits - 1)``; with ``use_mask``, elements where ``mask`` is False are then set to 0 (a ReLU mask applied after rounding). Requires ``|q| < 2**62``."""
    n = q.size
    m = np.int64(0)
    for i in range(n):
        a = abs(np.int64(q[i]))
        if a > m:
            m = a
    length = _bit_length(m)
    if length == 0:
        for i in range(n):
            out[i] = 0
        return np.int64(0)
    shift = length - (bits - 1)
    qmax = (np.int64(1) << (bits - 1)) - 1
    key = stream_key_nb(seed, stream)
    for i in range(n):
        r = _clamp(_ishift(np.int64(q[i]), shift, i, key, stochastic), qmax)
        if use_mask and not mask[i]:
            r = 0
        out[i] = r
    return e_in + shift


@njit(cache=True)
def shift_flat(q, shift, stochastic, seed, stream, out):  # pragma: no cover - compiled
    """``out[i] = round(q[i] / 2**shift)`` for one scalar ``shift <= 62`` (``<= 0``: left)."""
    key = stream_key_nb(seed, stream)
    for i in range(q.size):
        out[i] = _ishift(np.int64(q[i]), shift, i, key, stochastic)


@njit(cache=True, inline="always")
def _add_aligned(qa, ea, qb, eb, seed, out):  # pragma: no cover - compiled
    """The exact sum of ``add`` before requantization (stochastic alignment, streams 5/6); returns the target exponent. An all-zero operand does not set the target."""
    n = qa.size
    a_any = False
    b_any = False
    for i in range(n):
        if qa[i] != 0:
            a_any = True
        if qb[i] != 0:
            b_any = True
    if not a_any:
        ea = eb
    elif not b_any:
        eb = ea
    t = max(ea, eb)
    if t - ea > 62 or t - eb > 62:
        return NONFINITE  # gaps past 62 bits: the caller takes the unfused path
    key5 = stream_key_nb(seed, 5)
    key6 = stream_key_nb(seed, 6)
    for i in range(n):
        out[i] = _ishift(qa[i], t - ea, i, key5, True) + _ishift(qb[i], t - eb, i, key6, True)
    return t


@njit(cache=True)
def sgd_master_flat(
    w, g, e_g, v, e_v, has_v, bits, wd_q, wd_e, mu_q, mu_e, lr_q, lr_e, seed, w_out, v_out
):  # pragma: no cover - compiled
    """One fused ``sgd_step`` (mode "master", stochastic rounding) on flat arrays.

    ``w`` float32/float64 master weights, ``g`` the integer gradient (exponent ``e_g``),
    ``v`` the int16/int8 velocity (exponent ``e_v``, used when ``has_v``), scalars
    ``*_q * 2***_e`` already mapped to ``bits`` (``wd_q == 0`` / ``mu_q == 0`` disable weight
    decay / momentum). ``seed`` is the step's key: streams 1 (w) and 2 (g); the weight
    decay add uses ``seed + 3`` (streams 5, 6, 7), the momentum add ``seed + 4``.
    Writes the new weights and velocity; returns the velocity exponent.
    The same bits as ``_sgd.sgd_step`` composed of to_fixed / requantize / mul / add.
    Returns ``NONFINITE`` (outputs undefined) for non-finite weights or exponent gaps
    past 62 bits; the caller then runs the unfused path.
    """
    n = w.size
    no_mask = np.zeros(1, np.bool_)
    wq = np.empty(n, np.int64)
    e_w = map_fixed_flat(w, bits, True, seed, 1, wq)
    if e_w == NONFINITE:
        return NONFINITE
    gq = np.empty(n, np.int64)
    e_gq = requant_flat(g, e_g, bits, True, seed, 2, no_mask, False, gq)
    tmp = np.empty(n, np.int64)
    prod = np.empty(n, np.int64)
    if wd_q != 0:
        for i in range(n):
            prod[i] = wd_q * wq[i]
        s3 = seed + np.uint64(3)
        t = _add_aligned(gq, e_gq, prod, wd_e + e_w, s3, tmp)
        if t == NONFINITE:
            return NONFINITE
        e_gq = requant_flat(tmp, t, bits, True, s3, 7, no_mask, False, gq)
    e_vn = e_gq
    if mu_q != 0 and has_v:
        for i in range(n):
            prod[i] = mu_q * np.int64(v[i])
        s4 = seed + np.uint64(4)
        t = _add_aligned(prod, mu_e + e_v, gq, e_gq, s4, tmp)
        if t == NONFINITE:
            return NONFINITE
        e_vn = requant_flat(tmp, t, bits, True, s4, 7, no_mask, False, gq)
    scale, exact = _pow2(lr_e + e_vn)
    for i in range(n):
        v_out[i] = gq[i]
        step = _scaled(np.float64(lr_q * gq[i]), lr_e + e_vn, scale, exact)
        w_out[i] = np.float64(w[i]) - step
    return e_vn


@njit(cache=True, inline="always")
def _dot_nt(a, b, i, j, k):  # pragma: no cover - compiled
    """``sum_p a[i, p] * b[j, p]`` exactly in int64 for mantissas of at most 16 bits: each product fits int32 (|.| <= (2**15 - 1)**2), which lets LLVM vectorize it; the caller checked that ``k * m_a * m_b <= 2**62``."""
    c = np.int64(0)
    for p in range(k):
        c += np.int64(np.int32(a[i, p]) * np.int32(b[j, p]))
    return c


@njit(cache=True)
def linear_fwd_flat(
    x, w, bq, b_shift, has_bias, e_acc, bits, requant, stochastic, seed, seed_r, relu, out, mask
):  # pragma: no cover - compiled
    """Fused ``linear(x, w, bias, out_bits=bits)`` (+ ReLU) for small per-tensor operands.

    ``x`` (N, D) and ``w`` (F, D) are mantissas of at most 16 bits, ``bq`` (F,) the bias
    mantissas (used when ``has_bias``), ``b_shift = e_acc - e_bias`` with ``|b_shift| <= 62``
    (the caller checked that a left shift stays below 2**62). Computes, in one pass:

    1. the bias on the accumulator's exponent: ``_ishift(bq[j], b_shift)`` with element
       index ``j`` and stream 4 of ``seed`` (``_ops.align_to``'s draw);
    2. ``acc[i, j] = sum_p x[i, p] w[j, p] + bias[j]``, exact in int64;
    3. with ``requant``, ``requant_flat`` of ``acc`` (flat index ``i * F + j``, stream 3 of
       ``seed_r``: ``linear`` resolves a Generator seed once per draw),
       written to ``out``; else ``acc`` itself is written to ``out``;
    4. with ``relu``, ``out = max(out, 0)`` and ``mask = out > 0`` (after rounding).

    Returns the exponent of ``out``. The same bits as ``linear`` followed by
    ``np.where(q > 0, q, 0)``; ``_reference.linear_fwd_ref`` is its numpy twin.
    """
    n, d = x.shape
    f = w.shape[0]
    bal = np.zeros(f, np.int64)
    if has_bias:
        k4 = stream_key_nb(seed, 4)
        for j in range(f):
            bal[j] = _ishift(np.int64(bq[j]), b_shift, j, k4, stochastic)
    acc = np.empty(n * f, np.int64)
    for i in range(n):
        for j in range(f):
            acc[i * f + j] = _dot_nt(x, w, i, j, d) + bal[j]
    flat = out.reshape(-1)
    e = e_acc
    if requant:
        e = requant_flat(acc, e_acc, bits, stochastic, seed_r, 3, mask.reshape(-1), False, flat)
    else:
        for t in range(n * f):
            flat[t] = acc[t]
    if relu:
        mflat = mask.reshape(-1)
        for t in range(n * f):
            if flat[t] > 0:
                mflat[t] = True
            else:
                flat[t] = 0
                mflat[t] = False
    return e


# one compiled loop nest on purpose: splitting it would add calls inside the kernel
@njit(cache=True)
def linear_bwd_flat(  # noqa: C901
    x,
    w,
    gf,
    gq,
    from_float,
    bits,
    stochastic,
    seed,
    e_x,
    e_w,
    e_g,
    need_dx,
    dx_bits,
    mask,
    use_mask,
    dx_out,
    dw_out,
    db_out,
):  # pragma: no cover
    """Fused ``linear_backward`` for small per-tensor operands; returns exponents ``(e_dx, e_dw, e_db)``, or ``(NONFINITE, 0, 0)`` when ``gf`` holds NaN or infinity.

    With ``from_float`` the float gradient ``gf`` (N*F, flat) is mapped to ``bits`` twice:
    stream 1 (for dx) and stream 2 (for dW, db) of ``seed``, as ``map_fixed_flat``;
    otherwise ``gq`` (N, F) is the already-mapped gradient of exponent ``e_g`` for both.
    ``dx = g1 @ w`` (N, D) only when ``need_dx``, ``dW = g2^T @ x`` (F, D) and
    ``db = sum_n g2`` (F,) are exact int64 sums (the caller checked the bounds), written to
    outputs of the caller's dtypes. With ``dx_bits > 0``, dx is requantized to ``dx_bits``
    (stream 3, ``requant_flat``) and, with ``use_mask``, zeroed where ``mask`` is False.
    ``_reference.linear_bwd_ref`` is the numpy twin.
    """
    n, d = x.shape
    f = w.shape[0]
    g1 = np.empty((n, f), np.int64)
    g2 = np.empty((n, f), np.int64)
    eg1 = e_g
    eg2 = e_g
    if from_float:
        if need_dx:
            eg1 = map_fixed_flat(gf, bits, stochastic, seed, 1, g1.reshape(-1))
            if eg1 == NONFINITE:
                return NONFINITE, np.int64(0), np.int64(0)
        eg2 = map_fixed_flat(gf, bits, stochastic, seed, 2, g2.reshape(-1))
        if eg2 == NONFINITE:
            return NONFINITE, np.int64(0), np.int64(0)
    else:
        for i in range(n):
            for j in range(f):
                g1[i, j] = gq[i, j]
                g2[i, j] = gq[i, j]
    e_dx = eg1 + e_w
    if need_dx:
        dx = np.zeros((n, d), np.int64)
        for i in range(n):
            for j in range(f):
                c = np.int32(g1[i, j])
                if c != 0:
                    for p in range(d):
                        dx[i, p] += np.int64(c * np.int32(w[j, p]))
        if dx_bits > 0:
            e_dx = requant_flat(
                dx.reshape(-1),
                e_dx,
                dx_bits,
                stochastic,
                seed,
                3,
                mask.reshape(-1),
                use_mask,
                dx_out.reshape(-1),
            )
        else:
            for i in range(n):
                for p in range(d):
                    dx_out[i, p] = dx[i, p]
    dw = np.zeros((f, d), np.int64)
    for i in range(n):
        for j in range(f):
            c = np.int32(g2[i, j])
            if c != 0:
                for p in range(d):
                    dw[j, p] += np.int64(c * np.int32(x[i, p]))
    for j in range(f):
        for p in range(d):
            dw_out[j, p] = dw[j, p]
        s = np.int64(0)
        for i in range(n):
            s += g2[i, j]
        db_out[j] = s
    return e_dx, eg2 + e_x, eg2


def _transpose_blocked(src, dst):  # pragma: no cover - compiled
    """``dst = src.T`` for a 2-d ``src`` (R, C) and ``dst`` (C, R), in 64 x 64 tiles so both the reads and the writes stay in cache (numpy's strided copy of a transposed view is several times slower at 1024 x 1024)."""
    r, c = src.shape
    nb = (c + 63) // 64
    for jb in prange(nb):
        j0 = jb * 64
        j1 = min(j0 + 64, c)
        for i0 in range(0, r, 64):
            i1 = min(i0 + 64, r)
            for j in range(j0, j1):
                for i in range(i0, i1):
                    dst[j, i] = src[i, j]


def _renamed(fn: Callable[..., Any], suffix: str) -> Callable[..., Any]:
    """A copy of ``fn`` under another qualified name, so each compiled twin gets its own on-disk cache entry (numba names cache files after the function's qualname)."""
    twin = types.FunctionType(
        fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__, fn.__closure__
    )
    twin.__qualname__ = fn.__qualname__ + suffix
    twin.__doc__ = fn.__doc__
    return twin


round_stochastic = njit(cache=True, parallel=True)(_round_stochastic)
round_stochastic_serial = njit(cache=True)(_renamed(_round_stochastic, "_serial"))
shift_stochastic = njit(cache=True, parallel=True)(_shift_stochastic)
shift_stochastic_serial = njit(cache=True)(_renamed(_shift_stochastic, "_serial"))
gemm_acc32 = njit(cache=True, parallel=True)(_gemm_acc32)
gemm_acc32_serial = njit(cache=True)(_renamed(_gemm_acc32, "_serial"))
transpose_blocked = njit(cache=True, parallel=True)(_transpose_blocked)
gemm_acc64 = njit(cache=True, parallel=True)(_gemm_acc64)
gemm_acc64_serial = njit(cache=True)(_renamed(_gemm_acc64, "_serial"))

# below these sizes the serial twin wins (measured on 2 cores: a parallel launch costs
# about 50 us with the workqueue layer)
PARALLEL_MIN_ELEMENTS = 1 << 17
# The fused serial one-pass kernels (mapping, requantization, one-shift rounding, the SGD
# step) run up to this size, past PARALLEL_MIN_ELEMENTS too: on large tensors the
# unfused parallel chains are bound by their full-size float64/int64 temporaries and the
# page faults of allocating them, not by arithmetic. Measured on the 11.7M-element
# MiniLM embedding table: to_fixed 14-19 ms fused against 41-780 ms unfused, the SGD step
# 0.22 s against 1.27 s (1 thread) and 0.28 s against 1.03 s (2 threads), the same bits.
# The SGD kernel's int64 temporaries cost 32 bytes per element, hence the cap (2 GiB).
# Tests set it to 0 to run the unfused paths.
FUSED_MAX_ELEMENTS = 1 << 26
PARALLEL_MIN_MACS = 1 << 22
