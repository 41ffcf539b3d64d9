"""Structure: formulas against brute-force counts; structures(): the enumeration."""

from __future__ import annotations

import itertools
import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sekron as sk
from sekron.errors import RankError, ShapeError
from sekron.testing.strategies import factorable_shapes, structures


def _brute_instances(s: sk.Structure) -> list[int]:
    """Distinct rank prefixes (r_1..r_{min(k,S-1)}) that index factor k in the nested sum."""
    S = s.n_factors
    out = []
    for k in range(S):
        seen = {idx[: min(k + 1, S - 1)] for idx in itertools.product(*(range(r) for r in s.ranks))}
        out.append(len(seen))
    return out


def _brute_n_params(s: sk.Structure) -> int:
    return sum(n * math.prod(shape) for n, shape in zip(_brute_instances(s), s.shapes, strict=True))


@settings(deadline=None)
@given(structures(max_size=128))
def test_structure_formulas_match_brute_force_counts(s):
    assert list(s.instances) == _brute_instances(s)
    assert s.n_params == _brute_n_params(s)
    assert s.n_params == sum(math.prod(fs) for fs in s.factor_shapes)
    assert s.dense_size == math.prod(s.shape)
    assert s.compression_ratio == s.dense_size / s.n_params
    sizes = [math.prod(a) for a in s.shapes]
    assert s.sizes == tuple(sizes)
    assert s.max_ranks == tuple(
        min(sizes[k], math.prod(sizes[k + 1 :])) for k in range(s.n_factors - 1)
    )
    assert s.shape == tuple(math.prod(a[n] for a in s.shapes) for n in range(s.ndim))
    assert s.is_exact == (s.ranks == s.max_ranks)


@settings(deadline=None, max_examples=25)
@given(structures(max_size=64, full_rank=True), st.integers(0, 2**32 - 1))
def test_max_ranks_are_the_largest_useful_ranks(s, seed):
    # at max_ranks the fit of a generic tensor is exact; one less at any level is not
    W = np.random.default_rng(seed).standard_normal(s.shape)
    norm = np.linalg.norm(W)
    eps = np.finfo(np.float64).eps
    assert sk.sekron(W, s).error_bound <= 100 * eps * W.size * norm
    for k, m in enumerate(s.max_ranks):
        if m > 1:
            lower = list(s.ranks)
            lower[k] = m - 1
            assert sk.sekron(W, s.with_ranks(lower)).error_bound > 1e3 * eps * W.size * norm
    with pytest.raises(RankError):
        s.with_ranks(tuple(m + 1 for m in s.max_ranks))


def test_structure_doc_example_numbers():
    s = sk.Structure([(4, 4), (4, 4), (4, 4)], ranks=(2, 3))
    assert s.instances == (2, 6, 6)
    assert s.n_params == 2 * 16 + 6 * 16 + 6 * 16
    assert s.factor_shapes == ((2, 4, 4), (2, 3, 4, 4), (2, 3, 4, 4))


def test_structure_is_immutable_and_hashable():
    s = sk.Structure([(2, 3), (3, 2)], ranks=2)
    with pytest.raises(AttributeError):
        s.ranks = (1,)
    with pytest.raises(AttributeError):
        s.anything = 1
    t = sk.Structure([[2, 3], [3, 2]], ranks=[2])
    assert s == t and hash(s) == hash(t) and len({s, t}) == 1
    assert s != s.with_ranks(1)
    assert s != sk.Structure([(3, 2), (2, 3)], ranks=2)
    assert s.__eq__("not a structure") is NotImplemented
    assert pickle.loads(pickle.dumps(s)) == s
    assert eval(repr(s), {"Structure": sk.Structure}) == s
    assert "2×3" in str(s)


def test_ranks_none_int_sequence_and_numpy_integers():
    shapes = [(2, 2), (2, 2), (2, 2)]
    assert sk.Structure(shapes).ranks == (4, 4)
    assert sk.Structure(shapes, 2).ranks == (2, 2)
    assert sk.Structure(shapes, (1, 3)).ranks == (1, 3)
    assert sk.Structure(shapes, np.int64(2)).ranks == (2, 2)
    assert sk.Structure(shapes, np.array([1, 2])).ranks == (1, 2)
    assert sk.Structure(shapes, np.array(3)).ranks == (3, 3)
    assert sk.Structure(shapes, [np.int32(1), np.int64(3)]).ranks == (1, 3)


def test_clip_caps_ranks_at_the_largest_useful_rank():
    shapes = [(2, 2), (2, 2), (2, 2)]
    assert sk.Structure(shapes, (9, 9), clip=True).ranks == (4, 4)
    assert sk.Structure(shapes, (1, 9), clip=True).ranks == (1, 4)
    assert sk.Structure([(2, 2), (2, 2)]).with_ranks(100, clip=True).ranks == (4,)
    with pytest.raises(RankError, match=r"ranks\[1\]"):
        sk.Structure(shapes, (1, 9))


@pytest.mark.parametrize(
    "ranks, match",
    [
        (0, r"ranks\[0\]"),
        ((1, 0), r"ranks\[1\]"),
        ((1,), "ranks"),
        ((1, 2, 3), "ranks"),
        ("2", "ranks"),
        ((1.5, 1), r"ranks\[0\]"),
        ((True, 1), r"ranks\[0\]"),
        (-1, r"ranks\[0\]"),
    ],
)
def test_bad_ranks_raise_rank_error_naming_the_argument(ranks, match):
    with pytest.raises(RankError, match=match):
        sk.Structure([(2, 2), (2, 2), (2, 2)], ranks)


@pytest.mark.parametrize(
    "shapes", [[(2, 2)], [(2, 2), (2,)], [(2, 0), (2, 2)], "ab", [(2, -1), (1, 1)], [(), ()], 4]
)
def test_bad_shapes_raise_shape_error(shapes):
    with pytest.raises(ShapeError, match="shapes"):
        sk.Structure(shapes)


# -- structures() ------------------------------------------------------------------------


def _brute_structures(shape, S, ranks, min_factor_size=2):
    found = set()
    per_mode = [
        [c for c in itertools.product(range(1, w + 1), repeat=S) if math.prod(c) == w]
        for w in shape
    ]
    for combo in itertools.product(*per_mode):
        shapes = tuple(tuple(combo[n][k] for n in range(len(shape))) for k in range(S))
        if min(math.prod(a) for a in shapes) < min_factor_size:
            continue
        base = sk.Structure(shapes)
        for choice in ranks:
            found.add(base if choice == "full" else base.with_ranks(choice, clip=True))
    return found


@pytest.mark.parametrize(
    "shape, S, ranks",
    [
        ((16, 16), 2, [1]),
        ((8, 8), 3, [1, "full"]),
        ((12,), 2, [2]),
        ((4, 6, 2), 2, [1, 3]),
        ((8, 4), 4, [1]),
        ((6, 6), 3, [(2, 1)]),
    ],
)
def test_structures_matches_brute_force_enumeration(shape, S, ranks):
    got = sk.structures(shape, S, ranks=ranks if len(ranks) > 1 else ranks[0])
    assert len(got) == len(set(got))
    assert set(got) == _brute_structures(shape, S, ranks)


@settings(deadline=None)
@given(
    factorable_shapes(n_factors=2, max_size=144),
    st.integers(2, 3),
    st.sampled_from([1, 2, "full"]),
    st.one_of(st.none(), st.integers(4, 200)),
    st.one_of(st.none(), st.floats(1.0, 20.0)),
    st.integers(1, 4),
)
def test_structures_results_respect_every_filter(
    pair, S, ranks, max_params, min_compression, min_size
):
    shape, _ = pair
    got = sk.structures(
        shape,
        S,
        ranks=ranks,
        max_params=max_params,
        min_compression=min_compression,
        min_factor_size=min_size,
    )
    assert len(got) == len(set(got))
    keys = [(s.n_params, s.shapes, s.ranks) for s in got]
    assert keys == sorted(keys)
    for s in got:
        assert s.shape == tuple(shape) and s.n_factors == S
        assert min(s.sizes) >= min_size
        assert max_params is None or s.n_params <= max_params
        assert min_compression is None or s.compression_ratio >= min_compression
        if ranks == "full":
            assert s.ranks == s.max_ranks
        else:
            assert s.ranks == tuple(min(ranks, m) for m in s.max_ranks)
    unfiltered = sk.structures(shape, S, ranks=ranks, min_factor_size=min_size)
    expected = [
        s
        for s in unfiltered
        if (max_params is None or s.n_params <= max_params)
        and (min_compression is None or s.compression_ratio >= min_compression)
    ]
    assert got == expected
    assert (
        sk.structures(shape, S, ranks=ranks, min_factor_size=min_size, max_results=3)
        == unfiltered[:3]
    )


def test_structures_bad_arguments():
    with pytest.raises(ShapeError, match="shape"):
        sk.structures((0, 4), 2)
    with pytest.raises(ValueError, match="n_factors"):
        sk.structures((4, 4), 1)
    with pytest.raises(ValueError, match="min_compression"):
        sk.structures((4, 4), 2, min_compression=-1.0)
    with pytest.raises(ValueError, match="ranks"):
        sk.structures((4, 4), 2, ranks="max")
    with pytest.raises(ValueError, match="max_params"):
        sk.structures((4, 4), 2, max_params=0)


def test_structures_of_a_huge_prime_mode_finish_quickly_and_find_no_split():
    # a prime mode has only the trivial factorizations; the enumeration must not try
    # every number up to 2**31 - 1 to find that out
    from sekron.structure import _divisors

    assert _divisors(2**31 - 1) == (1, 2**31 - 1)
    assert _divisors(36) == (1, 2, 3, 4, 6, 9, 12, 18, 36)
    assert list(sk.structures((2**31 - 1,))) == []
