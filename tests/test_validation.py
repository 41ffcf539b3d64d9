"""Bad input at every public entry point of the core: the right error, naming the argument,
and nothing the caller passed is modified (not even on success)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sekron as sk
from sekron import _validation as v
from sekron.errors import (
    ArgumentError,
    ArgumentTypeError,
    DTypeError,
    FormatError,
    NonFiniteError,
    OverflowRiskError,
    RankError,
    SekronError,
    ShapeError,
)

RNG = np.random.default_rng(0)
W44 = RNG.standard_normal((4, 4))
SHAPES = [(2, 2), (2, 2)]
SHAPES3 = [(2, 1), (1, 2), (2, 2)]


def test_error_hierarchy():
    for cls, builtin in [
        (ShapeError, ValueError),
        (RankError, ValueError),
        (NonFiniteError, ValueError),
        (FormatError, ValueError),
        (OverflowRiskError, OverflowError),
        (DTypeError, TypeError),
    ]:
        assert issubclass(cls, SekronError) and issubclass(cls, builtin)


# -- each public function with an array argument, as (name, call(array)) -----------------------

ARRAY_ENTRY_POINTS = {
    "kron": (r"factors\[0\]", lambda X: sk.kron(X, np.ones((1, 1)))),
    "rearrange": ("W", lambda X: sk.rearrange(X, SHAPES)),
    "unrearrange": ("T", lambda X: sk.unrearrange(X, SHAPES)),
    "nkp": ("W", lambda X: sk.nkp(X, (2, 2))),
    "sekron": ("W", lambda X: sk.sekron(X, SHAPES3, (1, 1))),
    "SeKronTensor": (
        r"factors\[0\]",
        lambda X: sk.SeKronTensor([X.reshape(1, 4, 4), np.ones((1, 2, 2))]),
    ),
}


@pytest.mark.parametrize("entry", sorted(ARRAY_ENTRY_POINTS))
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_rejected(entry, value):
    name, call = ARRAY_ENTRY_POINTS[entry]
    X = W44.copy()
    X[2, 3] = value
    before = X.copy()
    with pytest.raises(NonFiniteError, match=name):
        call(X)
    assert np.array_equal(X, before, equal_nan=True)


@pytest.mark.parametrize("entry", sorted(ARRAY_ENTRY_POINTS))
@pytest.mark.parametrize(
    "bad",
    [
        W44.astype(str),
        W44.astype(object),
        W44.astype(complex),
        W44.astype(np.complex64),
        np.array([[b"ab"] * 4] * 4),
    ],
    ids=["str", "object", "complex128", "complex64", "bytes"],
)
def test_non_numeric_dtypes_are_rejected(entry, bad):
    name, call = ARRAY_ENTRY_POINTS[entry]
    with pytest.raises(DTypeError, match=name):
        call(bad)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: sk.rearrange(W44, [(2, 2), (2, 3)]), "shapes"),
        (lambda: sk.rearrange(W44, [(2, 2, 1), (2, 2, 1)]), "shapes"),
        (lambda: sk.rearrange(W44, [(2, 2), (2,)]), "shapes"),
        (lambda: sk.rearrange(W44, [(4, 4)]), "shapes"),
        (lambda: sk.rearrange(W44, [(2, 0), (2, 2)]), r"shapes\[0\]"),
        (lambda: sk.unrearrange(np.ones((4, 5)), SHAPES), "T"),
        (lambda: sk.nkp(np.array(1.0), (1,)), "W"),
        (lambda: sk.nkp(W44, (2, 2, 1)), "shape_a"),
        (lambda: sk.nkp(W44, (3, 2)), "shape_a"),
        (lambda: sk.nkp(W44, (2, 2), (2, 1)), "shape_b"),
        (lambda: sk.nkp(W44, "ab"), "shape_a"),
        (lambda: sk.nkp(W44, (2, -2)), "shape_a"),
        (lambda: sk.sekron(W44, [(2, 2), (2, 3)]), "shapes_or_structure"),
        (lambda: sk.sekron(W44, [(2, 2, 1), (2, 2, 1)]), "shapes_or_structure"),
        (lambda: sk.sekron(W44, sk.Structure([(2, 2), (3, 2)], 1)), "shapes_or_structure"),
        (lambda: sk.sekron(np.array(1.0), [(1,), (1,)]), "W"),
        (lambda: sk.Structure([(2, 2)]), "shapes"),
        (lambda: sk.structures((4, 0), 2), "shape"),
    ],
)
def test_shape_errors_name_the_argument(call, name):
    with pytest.raises(ShapeError, match=name):
        call()


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: sk.nkp(W44, (2, 2), rank=0), "rank"),
        (lambda: sk.nkp(W44, (2, 2), rank=-3), "rank"),
        (lambda: sk.nkp(W44, (2, 2), rank=5), "rank"),
        (lambda: sk.nkp(W44, (2, 2), rank=1.0), "rank"),
        (lambda: sk.nkp(W44, (2, 2), rank=True), "rank"),
        (lambda: sk.sekron(W44, SHAPES, 0), r"ranks\[0\]"),
        (lambda: sk.sekron(W44, SHAPES, 5), r"ranks\[0\]"),
        (lambda: sk.sekron(W44, SHAPES3, (1, 3)), r"ranks\[1\]"),
        (lambda: sk.sekron(W44, SHAPES3, (1, 1, 1)), "ranks"),
        (lambda: sk.sekron(W44, sk.Structure(SHAPES, 1), 2), "ranks"),
        (lambda: sk.Structure(SHAPES, 17), r"ranks\[0\]"),
    ],
)
def test_rank_errors_name_the_argument(call, name):
    with pytest.raises(RankError, match=name):
        call()


def test_largest_useful_rank_is_accepted_and_one_more_is_not():
    assert sk.nkp(W44, (1, 2), rank=2).structure.ranks == (2,)  # min(|a| = 2, |b| = 8)
    with pytest.raises(RankError, match="rank"):
        sk.nkp(W44, (1, 2), rank=3)
    assert sk.sekron(W44, SHAPES3, (2, 2)).structure.ranks == (2, 2)


@pytest.mark.parametrize(
    "call, exc, name",
    [
        (lambda: sk.nkp(W44, (2, 2), tol=1.0), ValueError, "tol"),
        (lambda: sk.nkp(W44, (2, 2), tol=-0.1), ValueError, "tol"),
        (lambda: sk.nkp(W44, (2, 2), tol=float("nan")), ValueError, "tol"),
        (lambda: sk.nkp(W44, (2, 2), tol="0.1"), TypeError, "tol"),
        (lambda: sk.sekron(W44, SHAPES, tol=2.0), ValueError, "tol"),
        (lambda: sk.sekron(W44, SHAPES, refine=-1), ValueError, "refine"),
        (lambda: sk.sekron(W44, SHAPES, refine=2.5), TypeError, "refine"),
        (lambda: sk.nkp(W44, (2, 2), rank=1, method="lanczos"), ValueError, "method"),
        (lambda: sk.nkp(W44, (2, 2), tol=0.1, method="lanczos"), ValueError, "method"),
        (lambda: sk.sekron(W44, SHAPES, 1, method="lanczos"), ValueError, "method"),
        (lambda: sk.nkp(W44, (2, 2), rank=1, random_state="seed"), TypeError, "random_state"),
        (lambda: sk.sekron(W44, SHAPES, 1, random_state="seed"), TypeError, "random_state"),
        (lambda: sk.nkp(W44, (2, 2), rank=1, random_state=-1), ValueError, "random_state"),
        (lambda: sk.structures((4, 4), 1), ValueError, "n_factors"),
        (lambda: sk.structures((4, 4), 2, max_params=0), ValueError, "max_params"),
        (lambda: sk.structures((4, 4), 2, min_compression=0), ValueError, "min_compression"),
        (lambda: sk.structures((4, 4), 2, max_results=0), ValueError, "max_results"),
        (lambda: sk.structures((4, 4), 2, min_factor_size=0), ValueError, "min_factor_size"),
    ],
)
def test_other_bad_arguments_name_the_argument(call, exc, name):
    with pytest.raises(exc, match=name):
        call()


# -- inputs are never modified ------------------------------------------------------------------


def _frozen(x: np.ndarray) -> np.ndarray:
    """A read-only, non-contiguous view: writing into it (or assuming C order) would show."""
    big = np.zeros((2, *x.shape), dtype=x.dtype)
    big[1] = x
    view = big[1]
    view = np.asfortranarray(view)
    view.flags.writeable = False
    return view


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_inputs_are_unchanged_after_successful_calls(dtype, tmp_path):
    rng = np.random.default_rng(1)
    W = _frozen((rng.standard_normal((4, 6)) * 3).astype(dtype))
    A = _frozen((rng.standard_normal((2, 3)) * 3).astype(dtype))
    B = _frozen((rng.standard_normal((2, 2)) * 3).astype(dtype))
    copies = [W.copy(), A.copy(), B.copy()]
    shapes = [(2, 3), (2, 2)]
    shapes_copy = [tuple(s) for s in shapes]
    sk.kron(A, B)
    sk.kron(A, B, A)
    T = sk.rearrange(W, shapes)
    sk.unrearrange(_frozen(np.ascontiguousarray(T)), shapes)
    sk.nkp(W, (2, 3), rank=2)
    sk.nkp(W, (2, 3), tol=0.3)
    sk.sekron(W, [(2, 1), (1, 3), (2, 2)], (2, 2), refine=2)
    sk.sekron(W, shapes, tol=0.3)
    factors = [_frozen(np.ones((2, 2, 3), dtype=dtype)), _frozen(np.ones((2, 2, 2), dtype=dtype))]
    fcopies = [f.copy() for f in factors]
    t = sk.SeKronTensor(factors)
    t.save(tmp_path / "t.npz")
    for before, after in zip(copies, [W, A, B], strict=True):
        assert np.array_equal(before, after) and before.dtype == after.dtype
    for before, after in zip(fcopies, factors, strict=True):
        assert np.array_equal(before, after)
    assert shapes == shapes_copy


def test_inputs_are_unchanged_after_failing_calls():
    W = W44.copy()
    W32 = W44.astype(np.float32)
    before, before32 = W.copy(), W32.copy()
    for call in (
        lambda: sk.nkp(W, (3, 2)),
        lambda: sk.nkp(W, (2, 2), rank=9),
        lambda: sk.sekron(W32, SHAPES, 9),
        lambda: sk.sekron(W, SHAPES, tol=3.0),
        lambda: sk.rearrange(W, [(3, 3), (1, 1)]),
    ):
        with pytest.raises(ValueError):
            call()
    assert np.array_equal(W, before) and np.array_equal(W32, before32)


# -- the helpers themselves --------------------------------------------------------------------


def test_as_float_array_dtypes():
    assert v.as_float_array(np.ones(2, dtype=np.float32), "x").dtype == np.float32
    assert v.as_float_array(np.ones(2, dtype=np.float16), "x").dtype == np.float32
    assert v.as_float_array(np.ones(2, dtype=np.int8), "x").dtype == np.float64
    assert v.as_float_array([True, False], "x").dtype == np.float64
    x = np.ones(3)
    assert v.as_float_array(x, "x") is x or np.shares_memory(v.as_float_array(x, "x"), x)
    with pytest.raises(ShapeError, match="x"):
        v.as_float_array(np.ones(3), "x", ndim=2)
    with pytest.raises(ShapeError, match="x"):
        v.as_float_array(np.ones(3), "x", min_ndim=2)
    assert v.as_float_array([np.nan], "x", finite=False).shape == (1,)


def test_shape_helpers():
    assert v.as_shape(3, "s") == (3,)
    assert v.as_shape(np.array([2, 3]), "s") == (2, 3)
    assert v.as_shape([np.int64(2)], "s") == (2,)
    for bad in [(), (0,), (2, True), (2.0,), "23", None]:
        with pytest.raises(ShapeError, match="s"):
            v.as_shape(bad, "s")
    assert v.as_shapes([(2, 2), (3, 3)], "x", target=(6, 6)) == ((2, 2), (3, 3))
    with pytest.raises(ShapeError, match=r"x\[1\]"):
        v.as_shapes([(2, 2), (0, 3)], "x")


def test_scalar_helpers():
    assert v.as_positive_int(np.int32(3), "n") == 3
    with pytest.raises(TypeError, match="n"):
        v.as_positive_int(True, "n")
    with pytest.raises(ValueError, match="n"):
        v.as_positive_int(0, "n")
    assert v.check_bits(8) == 8
    for bad in (1, 17):
        with pytest.raises(ValueError, match="bits"):
            v.check_bits(bad)
    with pytest.raises(TypeError, match="bits"):
        v.check_bits(8.0)
    assert v.check_tol(0) == 0.0
    with pytest.raises(ValueError, match="tol"):
        v.check_tol(float("inf"))
    g = np.random.default_rng(0)
    assert v.as_generator(g) is g
    a = v.as_generator(5).standard_normal(3)
    assert np.array_equal(a, np.random.default_rng(5).standard_normal(3))
    assert isinstance(v.as_generator(np.random.RandomState(0)), np.random.Generator)
    with pytest.raises(TypeError, match="random_state"):
        v.as_generator(1.5)
    with pytest.raises(ValueError, match="random_state"):
        v.as_generator(-1)
    err = v.rank_error("rank", 9, 4, "detail")
    assert isinstance(err, RankError) and "rank" in str(err) and "1..4" in str(err)


# -- the helpers every layer shares (ranks, pairs, ratios, rounding, "exactly one", SVD rule)


@given(st.integers(1, 10**6), st.integers(1, 10**6))
def test_as_rank_accepts_exactly_1_to_maximum(r, maximum):
    if r <= maximum:
        assert v.as_rank(r, maximum=maximum) == r and type(v.as_rank(np.int64(r))) is int
    else:
        with pytest.raises(RankError, match=rf"^rank: expected a rank in 1..{maximum}"):
            v.as_rank(r, maximum=maximum)


@pytest.mark.parametrize("bad", [0, -3, 1.0, True, "2", None, np.float64(2.0)])
def test_as_rank_rejects_non_ranks_with_a_rank_error(bad):
    with pytest.raises(RankError, match=r"^ranks\[1\]: expected an integer >= 1"):
        v.as_rank(bad, "ranks[1]")


@given(st.integers(0, 50), st.integers(0, 50), st.integers(0, 3))
def test_as_pair_of_an_int_and_of_a_pair(a, b, minimum):
    if min(a, b) >= minimum:
        assert v.as_pair(a, "stride", minimum=minimum) == (a, a)
        assert v.as_pair((a, b), "stride", minimum=minimum) == (a, b)
        assert v.as_pair(np.array([a, b]), "stride", minimum=minimum) == (a, b)
    else:
        with pytest.raises(ValueError, match=r"^stride: expected ints >= "):
            v.as_pair((a, b), "stride", minimum=minimum)


@pytest.mark.parametrize("bad", [1.5, (1, 2, 3), (1,), (1.0, 2), (True, 1), "ab", None])
def test_as_pair_rejects_non_pairs_naming_the_argument(bad):
    with pytest.raises(TypeError, match=r"^padding: expected an int or a pair of ints, got"):
        v.as_pair(bad, "padding", minimum=0)


def test_check_ratio():
    assert v.check_ratio(1) == 1.0 and v.check_ratio(np.float32(2.5)) == 2.5
    for bad in (0.5, 0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"^ratio: expected a compression ratio >= 1"):
            v.check_ratio(bad)
    for bad in ("4", None, True, [4]):
        with pytest.raises(TypeError, match=r"^--ratio: expected a number >= 1"):
            v.check_ratio(bad, "--ratio")


def test_check_rounding():
    assert v.check_rounding("stochastic") == "stochastic"
    assert v.check_rounding("nearest") == "nearest"
    for bad in ("floor", None, 1, ["nearest"]):
        with pytest.raises(ValueError, match=r"^rounding: expected 'stochastic' or 'nearest'"):
            v.check_rounding(bad)


def test_check_exactly_one():
    assert v.check_exactly_one(structure=None, ratio=0, tol=None) == "ratio"  # 0 is given
    with pytest.raises(ValueError, match="exactly one of structure=, ratio= and tol=, got none"):
        v.check_exactly_one(structure=None, ratio=None, tol=None)
    with pytest.raises(ValueError, match=r"got ratio= and tol=$"):
        v.check_exactly_one(structure=None, ratio=2, tol=0.1)


@given(st.integers(1, 5000), st.integers(1, 5000), st.integers(1, 5000))
def test_svd_auto_rule(m, n, rank):
    k = min(m, n)
    want = "full" if k <= v.SVD_FULL_BELOW or rank > k // 10 else "randomized"
    assert v.svd_method("auto", (m, n), rank) == want
    for explicit in ("full", "arpack", "randomized"):
        assert v.svd_method(explicit, (m, n), rank) == explicit


def test_svd_method_rejects_unknown_solvers_and_the_svd_module_agrees():
    from sekron.svd import choose_method

    with pytest.raises(ValueError, match=r"^method: expected 'auto'"):
        v.svd_method("lapack", (4, 4), 1)
    for shape, rank in [((513, 600), 51), ((513, 600), 52), ((512, 4096), 1), ((600, 600), 60)]:
        assert choose_method(shape, rank) == v.svd_method("auto", shape, rank)


@given(
    st.one_of(
        st.integers(-3, 5),
        st.booleans(),
        st.tuples(st.integers(-3, 5), st.integers(-3, 5)),
        st.tuples(st.integers(0, 5), st.booleans()),
        st.tuples(st.integers(0, 5)),
        st.lists(st.integers(0, 5), min_size=2, max_size=2),
        st.integers(0, 5).map(np.int64),
    ),
    st.integers(0, 2),
)
def test_as_pair_fast_path_agrees_with_the_checks(x, minimum):
    """Plain ints and int pairs take a shortcut; every input gets what the full checks give."""
    from sekron._validation import as_pair

    items = [x, x] if isinstance(x, (int, np.integer)) and not isinstance(x, bool) else x
    values = list(items) if isinstance(items, (tuple, list)) else None
    wrong_type = (
        values is None
        or len(values) != 2
        or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in values)
    )
    if wrong_type:
        with pytest.raises(ArgumentTypeError, match="stride"):
            as_pair(x, "stride", minimum=minimum)
    elif min(values) < minimum:
        with pytest.raises(ArgumentError, match="stride"):
            as_pair(x, "stride", minimum=minimum)
    else:
        got = as_pair(x, "stride", minimum=minimum)
        assert got == (int(values[0]), int(values[1]))
        assert all(type(v) is int for v in got)
