"""Hardening across the core: extreme magnitudes, bounded enumerations, earlier fixes.

Each test names the failure it guards against; references are computed independently
(explicit loops, numpy's SVD on a hand-built rearrangement, float64 sums).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import sekron as sk


def _rearranged_2d(W: np.ndarray, a: tuple[int, int], b: tuple[int, int]) -> np.ndarray:
    """R[(i1, j1), (i2, j2)] = W[i1*b0 + i2, j1*b1 + j2], by explicit loops (Van Loan)."""
    R = np.empty((a[0] * a[1], b[0] * b[1]))
    for i1, j1, i2, j2 in itertools.product(range(a[0]), range(a[1]), range(b[0]), range(b[1])):
        R[i1 * a[1] + j1, i2 * b[1] + j2] = W[i1 * b[0] + i2, j1 * b[1] + j2]
    return R


def _dense64(t: sk.SeKronTensor, scale: float) -> np.ndarray:
    """The dense tensor of ``t`` divided by ``scale``, by explicit Kronecker sums in float64."""
    f = [np.asarray(x, dtype=np.float64) for x in t.factors]
    S = len(f)
    per = scale ** (1.0 / S)
    out = 0.0
    for idx in itertools.product(*(range(r) for r in t.structure.ranks)):
        term = f[0][idx[:1]] / per
        for k in range(1, S):
            term = np.kron(term, f[k][idx[: min(k + 1, S - 1)]] / per)
        out = out + term
    return out


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_nkp_at_1e200_keeps_finite_true_certificates(rank):
    # ||W||² overflows float64 above ~1e154: the fit must not report inf / NaN
    rng = np.random.default_rng(rank)
    scale = 1e200
    W = rng.normal(size=(6, 6)) * scale
    t = sk.nkp(W, (2, 3), rank=rank)
    s = np.linalg.svd(_rearranged_2d(W / scale, (2, 3), (3, 2)), compute_uv=False)
    assert np.isfinite(t.error_bound) and np.isfinite(t.relative_error_bound)
    assert t.error_bound == pytest.approx(np.sqrt(np.sum(s[rank:] ** 2)) * scale, rel=1e-12)
    assert t.reference_norm == pytest.approx(np.linalg.norm(W / scale) * scale, rel=1e-12)
    actual = np.linalg.norm(W / scale - _dense64(t, scale)) * scale
    assert actual == pytest.approx(t.error_bound, rel=1e-9)


def test_sekron_at_1e200_and_tiny_magnitudes_scale_linearly():
    rng = np.random.default_rng(0)
    W = rng.normal(size=(8, 8))
    base = sk.sekron(W, [(2, 2), (2, 2), (2, 2)], ranks=(2, 2))
    for scale in (1e200, 1e-200, 2.0**1000):
        t = sk.sekron(W * scale, [(2, 2), (2, 2), (2, 2)], ranks=(2, 2))
        assert t.error_bound == pytest.approx(base.error_bound * scale, rel=1e-12)
        assert t.relative_error_bound == pytest.approx(base.relative_error_bound, rel=1e-12)
        actual = np.linalg.norm(W - _dense64(t, scale))
        assert actual == pytest.approx(base.error_bound, rel=1e-9)


@pytest.mark.parametrize("fit", ["nkp", "sekron"])
def test_float32_near_its_maximum_fits_without_a_foreign_error(fit):
    # used to raise NonFiniteError naming factors[0], an argument nobody passed
    rng = np.random.default_rng(1)
    big = float(np.finfo(np.float32).max) * 0.9
    W = (rng.uniform(-1, 1, size=(8, 8)) * big).astype(np.float32)
    if fit == "nkp":
        t = sk.nkp(W, (2, 2), rank=4)  # full rank: exact up to float32 rounding
    else:
        t = sk.sekron(W, [(2, 2), (2, 2), (2, 2)], ranks=(4, 4))
    assert t.dtype == np.float32
    W64 = W.astype(np.float64) / big
    err = np.linalg.norm(W64 - _dense64(t, big))
    assert err <= 64 * np.finfo(np.float32).eps * np.linalg.norm(W64)
    assert np.isfinite(t.error_bound) and t.reference_norm == pytest.approx(
        np.linalg.norm(W64) * big, rel=1e-6
    )


def test_values_in_the_normal_range_are_fitted_unscaled_bit_for_bit():
    # the rescaling only engages at extreme magnitudes: ordinary fits keep their bits
    from sekron.decompose import _scaled_norm

    W = np.random.default_rng(2).normal(size=(16, 16)) * 1e6
    W2, n, e = _scaled_norm(W)
    assert e == 0 and W2 is W and n == pytest.approx(np.sum(W**2), rel=1e-14)
