"""The core hypothesis strategies produce what they promise."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

import sekron as sk
from sekron.testing import strategies as sks


@settings(deadline=None)
@given(st.data(), st.integers(1, 3), st.integers(2, 4), st.integers(16, 600), st.integers(1, 2))
def test_shapes_factor_and_respect_limits(data, ndim, n_factors, max_size, min_dim):
    if min_dim ** (ndim * n_factors) > max_size:
        min_dim = 1
    shape, factor_shapes = data.draw(
        sks.shapes(ndim=ndim, n_factors=n_factors, max_size=max_size, max_dim=5, min_dim=min_dim)
    )
    assert len(shape) == ndim and len(factor_shapes) == n_factors
    assert all(len(a) == ndim for a in factor_shapes)
    assert all(min_dim <= d <= 5 for a in factor_shapes for d in a)
    assert shape == tuple(math.prod(a[n] for a in factor_shapes) for n in range(ndim))
    assert math.prod(shape) <= max_size
    sk.Structure(factor_shapes)  # they are a valid structure


@settings(deadline=None)
@given(sks.factorable_shapes())
def test_unconstrained_shapes(pair):
    shape, factor_shapes = pair
    assert 1 <= len(shape) <= 3 and 2 <= len(factor_shapes) <= 4
    assert math.prod(shape) <= 256


def _one(strategy):
    return find(strategy, lambda _: True, settings=settings(database=None))


def test_impossible_shape_requests_are_refused():
    with pytest.raises(ValueError, match="min_dim"):
        _one(sks.shapes(ndim=3, n_factors=4, max_size=100, min_dim=2))
    with pytest.raises(ValueError, match="n_factors"):
        _one(sks.shapes(ndim=1, n_factors=1))


@settings(deadline=None)
@given(st.data(), st.integers(2, 4), st.one_of(st.none(), st.integers(1, 3)), st.booleans())
def test_structures_ranks_within_limits(data, n_factors, max_rank, full):
    s = data.draw(
        sks.structures(n_factors=n_factors, max_size=128, max_rank=max_rank, full_rank=full)
    )
    assert isinstance(s, sk.Structure) and s.n_factors == n_factors
    assert s.dense_size <= 128
    if full:
        assert s.ranks == s.max_ranks
    else:
        assert all(1 <= r <= m for r, m in zip(s.ranks, s.max_ranks, strict=True))
        assert max_rank is None or max(s.ranks) <= max_rank


@settings(deadline=None)
@given(sks.kronecker_factors(integer=True), sks.kronecker_factors(dtype=np.float32))
def test_kronecker_factors(ints, floats):
    assert all(np.array_equal(f, np.round(f)) and np.abs(f).max() <= 3 for f in ints)
    assert len({f.ndim for f in ints}) == 1 and 2 <= len(ints) <= 4
    assert all(f.dtype == np.float32 for f in floats)
    assert sk.kron(*ints).size <= 256


@settings(deadline=None)
@given(sks.sekron_tensors(dtype=np.float32), sks.sekron_tensors(n_factors=2, ndim=2))
def test_sekron_tensors(t32, t2):
    assert isinstance(t32, sk.SeKronTensor) and t32.dtype == np.float32
    assert np.all(np.isfinite(t32.to_dense()))
    assert t2.structure.n_factors == 2 and t2.ndim == 2 and t2.dtype in (np.float32, np.float64)
    assert max(t32.structure.ranks) <= 3


@settings(deadline=None)
@given(sks.structures(n_factors=4, max_size=256, max_rank=3), st.integers(0, 2**32 - 1))
def test_tt_like_factors_are_shared_across_earlier_branches(s, seed):
    fs = sks.random_sekron_factors(s, np.random.default_rng(seed), tt_like=True)
    S = s.n_factors
    for k in range(2, S):
        n_lead = (k - 1) if k < S - 1 else (S - 2)  # rank axes the factor does not depend on
        f = fs[k]
        ref = f[(0,) * n_lead]
        for idx in np.ndindex(*f.shape[:n_lead]):
            assert np.array_equal(f[idx], ref)
    tree = sks.random_sekron_factors(s, np.random.default_rng(seed), tt_like=False)
    assert [f.shape for f in tree] == [f.shape for f in fs] == list(s.factor_shapes)


def test_scale_multiplies_the_tensor():
    s = sk.Structure([(2, 2), (2, 2), (2, 1)], (2, 2))
    a = sk.SeKronTensor(sks.random_sekron_factors(s, np.random.default_rng(0)))
    b = sk.SeKronTensor(sks.random_sekron_factors(s, np.random.default_rng(0), scale=4.0))
    assert np.array_equal(b.to_dense(), 4.0 * a.to_dense())  # a power of two: exact


def test_given_structure_is_used_and_checked():
    s = sk.Structure([(2, 3), (3, 2)], 2)
    t = _one(sks.sekron_tensors(structure=s, dtype=np.float64))
    assert t.structure == s and t.dtype == np.float64
    with pytest.raises(TypeError, match="structure"):
        _one(sks.sekron_tensors(structure=[(2, 3), (3, 2)]))
    with pytest.raises(ValueError, match="dtype"):
        _one(sks.sekron_tensors(dtype=np.int32))


@settings(deadline=None)
@given(sks.float_dtypes())
def test_float_dtypes(dt):
    assert dt in (np.dtype(np.float32), np.dtype(np.float64))
