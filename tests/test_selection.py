"""sekron.selection: each strategy against an independent reference (dense reconstruction,
numpy's own SVD of the rearranged matrix), and the compressor core's report."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sekron as sk
from sekron.errors import ShapeError
from sekron.selection import (
    Selection,
    budget,
    compress_weight,
    fit_candidates,
    select,
    select_by_ratio,
    select_by_ratio_deep,
    select_by_tol,
    select_fixed,
)

EPS = np.finfo(np.float64).eps


def params(st_: sk.Structure) -> int:
    return st_.n_params


def true_rel_error(W: np.ndarray, fit: sk.SeKronTensor) -> float:
    return float(np.linalg.norm(W - fit.to_dense()) / np.linalg.norm(W))


def assert_certified(W: np.ndarray, sel: Selection) -> None:
    """The certificate is the true error of the fit, up to rounding of both sums."""
    true = np.linalg.norm(W - sel.fit.to_dense())
    bound = sel.fit.error_bound or 0.0
    assert abs(bound**2 - true**2) <= 64 * W.size * EPS * np.linalg.norm(W) ** 2


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([2.0, 3.0, 6.0]))
def test_ratio_two_factors_respects_the_budget_and_is_optimal_for_its_shapes(seed, ratio):
    W = np.random.default_rng(seed).normal(size=(12, 16))
    sel = select_by_ratio(W, ratio, cost=params, dense_cost=W.size)
    assert sel.structure.n_params <= W.size / ratio and sel.structure.n_factors == 2
    assert_certified(W, sel)
    # Eckart-Young, computed here with numpy: no rank-R fit of these shapes does better
    a, b = sel.structure.shapes
    R = sel.structure.ranks[0]
    s = np.linalg.svd(sk.rearrange(W, [a, b]).reshape(np.prod(a), np.prod(b)), compute_uv=False)
    best = np.sqrt(np.sum(s[R:] ** 2))
    assert abs(sel.fit.error_bound - best) <= 64 * W.size * EPS * np.linalg.norm(W)


def test_ratio_two_factors_finds_an_exact_kronecker_sum():
    rng = np.random.default_rng(1)
    W = sum(np.kron(rng.normal(size=(4, 8)), rng.normal(size=(8, 4))) for _ in range(2))
    # rank 2 of (4, 8) x (8, 4) takes 128 parameters of 1024: ratio 8 allows it
    sel = select_by_ratio(W, 8, cost=params, dense_cost=W.size, order="params")
    assert true_rel_error(W, sel.fit) < 64 * np.sqrt(W.size) * EPS


def test_ratio_orders_by_cost_or_by_parameters():
    W = np.random.default_rng(2).normal(size=(16, 16))
    by_params = select_by_ratio(W, 4, cost=params, dense_cost=W.size, order="params")
    by_cost = select_by_ratio(W, 4, cost=lambda s: s.macs_matmul(1)["sekron"], dense_cost=W.size)
    for sel in (by_params, by_cost):
        assert sel.structure.n_params <= W.size / 4
        assert 1 <= sel.n_candidates <= 6
    with pytest.raises(ValueError, match=r"^order: expected 'cost' or 'params'"):
        select_by_ratio(W, 4, cost=params, dense_cost=W.size, order="speed")


def test_ratio_deep_uses_three_factors_within_budget():
    W = np.random.default_rng(3).normal(size=(16, 32))
    for ratio in (2.0, 8.0):
        sel = select_by_ratio_deep(W, ratio, cost=params, dense_cost=W.size)
        assert sel.structure.n_factors == 3 and sel.structure.n_params <= W.size / ratio
        assert_certified(W, sel)
    with pytest.raises(ValueError, match=r"^n_factors: expected an integer >= 3"):
        select_by_ratio_deep(W, 2.0, n_factors=2, cost=params, dense_cost=W.size)


def test_ratio_out_of_reach_says_the_best_ratio():
    with pytest.raises(ShapeError, match="the best ratio is"):
        select_by_ratio(np.ones((4, 4)), 100, cost=params, dense_cost=16)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([0.3, 0.6, 0.9]))
def test_tol_meets_its_target_with_fewer_parameters(seed, tol):
    rng = np.random.default_rng(seed)
    # Kronecker rank 2 under noise: every target here is reachable below the dense size
    W = sum(np.kron(rng.normal(size=(4, 4)), rng.normal(size=(4, 3))) for _ in range(2))
    W = W + 0.05 * np.linalg.norm(W) / np.sqrt(W.size) * rng.normal(size=W.shape)
    sel = select_by_tol(W, tol, cost=params)
    assert true_rel_error(W, sel.fit) <= tol + 64 * W.size * EPS
    assert sel.structure.n_params < W.size


def test_tol_that_needs_the_dense_size_is_refused():
    W = np.random.default_rng(4).normal(size=(8, 8))
    with pytest.raises(ShapeError, match="no fewer than the dense"):
        select_by_tol(W, 0.0, cost=params)


def test_fixed_structure_is_fitted_as_given_or_refused():
    W = np.random.default_rng(5).normal(size=(4, 6))
    sel = select_fixed(W, sk.Structure([(2, 3), (2, 2)], 2))
    assert sel.structure == sk.Structure([(2, 3), (2, 2)], 2) and sel.n_candidates == 1
    assert_certified(W, sel)
    with pytest.raises(ShapeError, match=r"^structure: expected a structure of shape"):
        select_fixed(W, [(2, 2), (2, 2)], ranks=1)
    with pytest.raises(ShapeError, match="does not have the form"):
        select_fixed(W, [(2, 3), (2, 2)], ranks=1, accept=lambda s: False)


def test_select_dispatches_and_rejects_what_it_would_drop():
    W = np.random.default_rng(6).normal(size=(16, 16))
    common = dict(cost=params, dense_cost=W.size)
    assert select(W, ratio=4, n_factors=3, **common).structure.n_factors == 3
    assert select(W, structure=[(4, 4), (4, 4)], ranks=2, **common).structure.ranks == (2,)
    with pytest.raises(ValueError, match=r"^ranks: expected None unless structure="):
        select(W, ratio=4, ranks=7, **common)
    with pytest.raises(ValueError, match=r"^ranks: expected None unless structure="):
        select(W, tol=0.5, ranks=7, **common)
    with pytest.raises(ValueError, match="exactly one of structure=, ratio= and tol="):
        select(W, ratio=4, tol=0.5, **common)
    with pytest.raises(ValueError, match="exactly one"):
        select(W, **common)


def test_selection_leaves_its_input_alone():
    W = np.random.default_rng(7).normal(size=(8, 8)).astype(np.float32)
    copy = W.copy()
    select(W, ratio=2, cost=params, dense_cost=W.size)
    assert np.array_equal(W, copy) and W.dtype == np.float32


def test_fit_candidates_keeps_order_and_structures():
    W = np.random.default_rng(8).normal(size=(4, 8))
    cands = [sk.Structure([(2, 2), (2, 4)], r) for r in (1, 2, 4)]
    fits = fit_candidates(W, cands)
    assert [s for s, _ in fits] == cands
    errors = [fit.error_bound for _, fit in fits]
    assert errors[0] >= errors[1] >= errors[2]  # nested truncations of one SVD
    assert true_rel_error(W, fits[-1][1]) < 64 * np.sqrt(W.size) * EPS  # full rank: exact


def test_compress_weight_reports_what_it_did():
    W = np.random.default_rng(9).normal(size=(32, 32))
    sel, rep = compress_weight(W, budget(ratio=4), name="fc", kind="tensor")
    assert sel is not None and rep.skipped is None
    assert (rep.name, rep.kind, rep.shape) == ("fc", "tensor", (32, 32))
    assert rep.params_before == W.size and rep.params_after == sel.fit.n_params
    assert rep.params_after <= W.size / 4 and rep.structure == str(sel.structure)
    assert abs(rep.relative_error - true_rel_error(W, sel.fit)) <= 64 * W.size * EPS
    assert rep.macs_before is None and rep.data_error is None
    assert rep.ratio == rep.params_before / rep.params_after


def test_compress_weight_skips_what_no_structure_fits():
    sel, rep = compress_weight(np.ones((4, 4)), budget(ratio=100), name="tiny")
    assert sel is None and rep.skipped.startswith("ratio: no 2-factor structure")
    assert rep.params_after == rep.params_before == 16 and rep.structure is None


def test_budget_checks_its_arguments_once_up_front():
    with pytest.raises(ValueError, match="exactly one of ratio= and tol="):
        budget()
    with pytest.raises(ValueError, match=r"^ratio: expected a compression ratio >= 1"):
        budget(ratio=0.5)
    with pytest.raises(ValueError, match=r"^tol: expected a relative error in"):
        budget(tol=1.5)


def test_balanced_kronecker_is_always_a_candidate():
    # the cost order puts lopsided shapes first; with two seats the balanced GKPD shape
    # (exact here) and the low-rank split (not exact) must both be fitted
    rng = np.random.default_rng(3)
    W = np.kron(rng.normal(size=(8, 8)), rng.normal(size=(8, 8)))
    macs = lambda st: st.macs_matmul(1)["sekron"]  # noqa: E731
    sel = select_by_ratio(W, 4, cost=macs, dense_cost=W.size, max_candidates=2)
    assert sel.structure.shapes == ((8, 8), (8, 8))
    assert sel.relative_error < 1e-10
    assert sel.n_candidates == 2
    # one seat goes to the low-rank split, the field's first reference
    one = select_by_ratio(W, 4, cost=macs, dense_cost=W.size, max_candidates=1)
    assert one.structure.shapes == ((64, 1), (1, 64))
