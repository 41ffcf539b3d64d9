"""Hardening across the core: extreme magnitudes, bounded enumerations, earlier fixes.

Each test names the failure it guards against; references are computed independently
(explicit loops, numpy's SVD on a hand-built rearrangement, float64 sums).
"""

from __future__ import annotations

import itertools
import math

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


# -- structures: bounded for any shape -------------------------------------------------


def _count_by_brute_force(n: int, parts: int) -> int:
    """Ordered factorizations of n into `parts` positive ints, by explicit recursion."""
    if parts == 1:
        return 1
    return sum(_count_by_brute_force(n // d, parts - 1) for d in range(1, n + 1) if n % d == 0)


@pytest.mark.parametrize("n", [1, 2, 12, 36, 64, 97, 360, 1024])
@pytest.mark.parametrize("parts", [1, 2, 3, 4])
def test_candidate_count_and_divisors_match_brute_force(n, parts):
    from sekron.structure import _divisors, _n_ordered_factorizations

    assert _divisors(n) == tuple(d for d in range(1, n + 1) if n % d == 0)
    assert _n_ordered_factorizations(n, parts) == _count_by_brute_force(n, parts)


@pytest.mark.parametrize(
    "n", [2**31 - 1, 2**61 - 1, 2**62 - 57, (2**31 - 1) * (2**31 - 19), 2**62, 600851475143]
)
def test_prime_factors_of_huge_modes(n):
    from sekron.structure import _prime_factors

    f = _prime_factors(n)
    assert math.prod(p**e for p, e in f.items()) == n
    # every factor is prime: no divisor up to its square root (checked for small ones)
    for p in f:
        assert p > 1 and (p > 10**7 or all(p % d for d in range(2, math.isqrt(p) + 1)))


def test_structures_of_huge_and_prime_shapes_finish_at_once():
    assert sk.structures((2**31 - 1,)) == []
    assert sk.structures((2**31 - 1, 2**31 - 1), 4) == []
    assert sk.structures((2**61 - 1,), 2) == []
    assert sk.structures((2,), 1000) == []  # more factors than can have 2 entries each
    found = sk.structures((2**31 - 1, 6), 2)
    assert {s.shapes for s in found} >= {((2**31 - 1, 2), (1, 3)), ((1, 6), (2**31 - 1, 1))}


def test_structures_refuse_an_enumeration_past_max_candidates():
    from sekron.errors import ArgumentError

    # (4096, 4096) into 4 factors: 455 ordered factorizations per mode, 455² candidates
    with pytest.raises(ArgumentError, match=r"max_candidates.*207,025"):
        sk.structures((4096, 4096), 4)
    with pytest.raises(ArgumentError, match="max_candidates"):
        sk.structures((64, 64), 2, max_candidates=10)
    assert len(sk.structures((64, 64), 2, max_candidates=None)) == len(sk.structures((64, 64), 2))
    with pytest.raises(sk.errors.ShapeError, match="2\\*\\*63"):
        sk.structures((2**64,), 2)


# -- the command line ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--top", "-1"], "--top"),
        (["--top", "0"], "--top"),
        (["--top", "x"], "--top"),
        (["--n-factors", "1"], "--n-factors"),
        (["--ranks", "0"], "--ranks"),
        (["--min-factor-size", "-5"], "--min-factor-size"),
        (["--min-compression", "nan"], "--min-compression"),
    ],
)
def test_cli_structures_rejects_bad_numbers_clearly(capsys, argv, flag):
    from sekron.cli import main

    with pytest.raises(SystemExit) as info:
        main(["structures", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: expected" in err


# -- one mistake, one error class ---------------------------------------------------------


def test_the_same_mistake_raises_the_same_class_everywhere():
    import sekron.fixed as fx
    from sekron.errors import ArgumentError, ArgumentTypeError

    rng = np.random.default_rng(0)
    kernel = sk.SeKronTensor([rng.normal(size=(1, 2, 1, 3, 1)), rng.normal(size=(1, 2, 2, 1, 3))])
    x = np.ones((1, 2, 6, 6))
    xq = fx.to_fixed(x, 8, rounding="nearest")
    wq = fx.to_fixed(np.ones((3, 2, 2, 2)), 8, rounding="nearest")
    calls = {
        "sk.conv2d": lambda **kw: sk.conv2d(x, kernel, **kw),
        "ops.conv2d": lambda **kw: sk.ops.conv2d(x, kernel, **kw),
        "fixed.conv2d": lambda **kw: fx.conv2d(xq, wq, **kw),
    }
    for bad, cls in (("a", ArgumentTypeError), (1.5, ArgumentTypeError), (0, ArgumentError)):
        raised = set()
        for call in calls.values():
            with pytest.raises(ArgumentError, match="stride") as info:
                call(stride=bad)
            raised.add(type(info.value))
        assert raised == {cls}, (bad, raised)
    # a type mistake is both builtins, so code written against either keeps catching it
    assert issubclass(ArgumentTypeError, TypeError) and issubclass(ArgumentTypeError, ValueError)
    for method in ("bogus", 3):
        kinds = set()
        for fit in (
            lambda m=method: sk.nkp(np.eye(4), (2, 2), rank=1, method=m),
            lambda m=method: sk.sekron(np.eye(4), [(2, 2), (2, 2)], method=m),
        ):
            with pytest.raises(ArgumentError, match="method") as info:
                fit()
            kinds.add(type(info.value))
        assert len(kinds) == 1
