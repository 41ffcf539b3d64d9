"""The staged/dense cost table: decisions from injected costs, the fit, the cache file."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import sekron as sk
from sekron.ops import MARGIN, CostTable, PathCost, fit_path_cost
from sekron.ops import _conv as conv_mod
from sekron.ops import _dispatch as dispatch_mod

try:
    import torch
    import torch.nn.functional as tF
except ImportError:  # pragma: no cover
    torch = None


def test_decision_follows_the_injected_costs():
    # dense 1 s per image; staged 10 s fixed + 0.25 s per image: staged wins from n
    # with 10 + 0.25 n <= 0.9 n, i.e. n >= 15.38...
    cost = PathCost(dense=(0.0, 1.0), staged=(10.0, 0.25))
    table = CostTable(entries={"k": cost})
    got = [n for n in range(1, 40) if table.staged_wins("k", n, measure=None)]
    assert got == list(range(16, 40))
    assert cost.predict(16) == (16.0, 14.0)


def test_margin_needs_a_clear_win():
    # staged predicted 5 % faster is not enough (noise could make it slower than dense)
    close = PathCost(dense=(0.0, 1.0), staged=(0.0, 0.95))
    assert MARGIN < 0.95 and not close.staged_wins(100)
    assert PathCost(dense=(0.0, 1.0), staged=(0.0, MARGIN)).staged_wins(100)


def test_unknown_geometry_is_measured_once_and_remembered():
    calls = []

    def measure():
        calls.append(1)
        return PathCost(dense=(0.0, 1.0), staged=(0.0, 0.1))

    table = CostTable()
    assert [table.staged_wins(("g", 1), n, measure) for n in (1, 2, 1, 3)] == [True] * 4
    assert len(calls) == 1
    # without a way to measure, an unknown geometry runs dense
    assert table.staged_wins(("g", 2), 5, measure=None) is False
    # a new cost replaces the memoised decisions
    table.put(("g", 1), PathCost(dense=(0.0, 1.0), staged=(0.0, 2.0)))
    assert table.staged_wins(("g", 1), 1, measure) is False and len(calls) == 1


def test_cost_file_round_trip_and_bad_files(tmp_path):
    path = tmp_path / "sub" / "costs.json"
    key = ("conv2d", "numpy", ((8, 8, 3, 1), (8, 8, 1, 3)), (1,), (64, 32, 32), "float32", 1)
    cost = PathCost(dense=(1e-4, 2e-3), staged=(3e-4, 5e-4))
    CostTable(path).put(key, cost)
    assert CostTable(path).get(key) == cost
    assert json.loads(path.read_text())  # one readable JSON object
    path.write_text("not json {")
    table = CostTable(path)
    assert table.get(key) is None  # an unreadable file is ignored...
    table.put(key, cost)  # ...and replaced
    assert CostTable(path).get(key) == cost


def test_cache_location_and_switch(monkeypatch, tmp_path):
    monkeypatch.setenv("SEKRON_COST_CACHE", "off")
    assert dispatch_mod._default_path() is None
    monkeypatch.setenv("SEKRON_COST_CACHE", str(tmp_path / "c.json"))
    assert dispatch_mod._default_path() == tmp_path / "c.json"
    monkeypatch.delenv("SEKRON_COST_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert dispatch_mod._default_path() == tmp_path / "sekron" / "path_costs.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert dispatch_mod._default_path() == tmp_path / ".cache" / "sekron" / "path_costs.json"


def test_fit_recovers_a_linear_cost(monkeypatch):
    # a fake clock: dense costs 1 + 2n, staged 5 + 0.5n; the fit must recover both lines
    clock = [0.0]
    monkeypatch.setattr(dispatch_mod.time, "perf_counter", lambda: clock[0])

    def run(path, n):
        clock[0] += (1 + 2 * n) if path == "dense" else (5 + 0.5 * n)

    cost = fit_path_cost(run, (1, 9))
    assert cost.dense == pytest.approx((1.0, 2.0)) and cost.staged == pytest.approx((5.0, 0.5))
    # a noisy first run (the warm-up) is not measured; a slower repeat loses to the minimum
    extra = iter([100.0] + [0.0] * 100)

    def noisy(path, n):
        clock[0] += (1 + 2 * n) + next(extra)

    assert fit_path_cost(noisy, (1, 9)).dense == pytest.approx((1.0, 2.0))


@pytest.mark.parametrize("forced", ["staged", "dense"])
def test_conv2d_auto_runs_the_table_s_choice(monkeypatch, forced):
    rng = np.random.default_rng(5)
    struct = sk.Structure([(4, 2, 3, 1), (2, 4, 1, 3)], 2)
    kernel = sk.SeKronTensor([rng.normal(size=s) for s in struct.factor_shapes])
    x = rng.normal(size=(3, 8, 9, 9))
    staged = (0.0, 0.1) if forced == "staged" else (0.0, 10.0)
    entry = PathCost(dense=(0.0, 1.0), staged=staged)

    class Always(CostTable):  # every geometry has the injected cost
        def get(self, key):
            return entry

    monkeypatch.setattr(dispatch_mod, "_TABLE", Always())
    ran = []
    real_plan, real_dense = conv_mod.run_plan, conv_mod._dense_conv
    monkeypatch.setattr(conv_mod, "run_plan", lambda *a: ran.append("staged") or real_plan(*a))
    monkeypatch.setattr(conv_mod, "_dense_conv", lambda *a: ran.append("dense") or real_dense(*a))
    y = sk.conv2d(x, kernel, stride=2, padding=1)
    assert ran == [forced]
    want = sk.conv2d(x, kernel.to_dense(), stride=2, padding=1)
    tol = 64 * np.finfo(np.float64).eps * np.max(np.abs(want))
    np.testing.assert_allclose(y, want, rtol=0, atol=tol)
    if torch is not None:
        ref = tF.conv2d(
            torch.from_numpy(x), torch.from_numpy(kernel.to_dense()), stride=2, padding=1
        ).numpy()
        np.testing.assert_allclose(y, ref, rtol=0, atol=tol)


def test_conv2d_path_argument():
    rng = np.random.default_rng(6)
    kernel = sk.SeKronTensor([rng.normal(size=(1, 2, 2, 3, 3)), rng.normal(size=(1, 2, 2, 1, 1))])
    with pytest.raises(ValueError, match="path"):
        sk.conv2d(np.zeros((1, 4, 5, 5)), kernel, path="fast")


def test_conv2d_choice_memo_follows_the_table(monkeypatch):
    """The per-kernel memo of the choice is dropped when the table changes (``put``)."""
    rng = np.random.default_rng(7)
    struct = sk.Structure([(4, 2, 3, 1), (2, 4, 1, 3)], 2)
    kernel = sk.SeKronTensor([rng.normal(size=s) for s in struct.factor_shapes])
    x = rng.normal(size=(2, 8, 9, 9))
    table = CostTable(entries={})
    monkeypatch.setattr(dispatch_mod, "_TABLE", table)
    monkeypatch.setattr(conv_mod, "_CHOICES", {})
    keys = []
    real_wins = CostTable.staged_wins

    def measure_dense_wins(self, key, n, measure, confirm=None):
        keys.append(key)
        return real_wins(self, key, n, lambda: PathCost((0.0, 1.0), (0.0, 10.0)), confirm)

    monkeypatch.setattr(CostTable, "staged_wins", measure_dense_wins)
    ran = []
    real_plan, real_dense = conv_mod.run_plan, conv_mod._dense_conv
    monkeypatch.setattr(conv_mod, "run_plan", lambda *a: ran.append("staged") or real_plan(*a))
    monkeypatch.setattr(conv_mod, "_dense_conv", lambda *a: ran.append("dense") or real_dense(*a))
    sk.conv2d(x, kernel, padding=1)
    sk.conv2d(x, kernel, padding=1)
    assert ran == ["dense", "dense"] and len(keys) == 1  # the second call hit the memo
    table.put(keys[0], PathCost((0.0, 1.0), (0.0, 0.1)))  # the staged path now wins
    sk.conv2d(x, kernel, padding=1)
    assert ran[-1] == "staged"
    other = sk.SeKronTensor([f.copy() for f in kernel.factors])  # a new kernel, same values
    sk.conv2d(x, other, padding=1)
    assert ran[-1] == "staged" and len(keys) == 3


def test_blas_threads_follows_threadpool_limits():
    """The cached C readers see every change of the BLAS pools (part of each cost key)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from sekron.ops import blas_threads

    def counts():  # threadpoolctl's own reading, written separately
        return max(
            i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"
        )

    for n in (1, 2, 1):
        with threadpoolctl.threadpool_limits(n, user_api="blas"):
            assert blas_threads() == counts() == n
    assert blas_threads() == counts()


@pytest.mark.parametrize(
    ("staged_per_image", "confirmed", "calls", "wins"),
    [
        (0.5, (1.0, 0.1), 0, True),  # a clear win is taken as predicted
        (0.85, (1.0, 1.2), 1, False),  # narrow: re-timed at n, and the re-timing says dense
        (0.85, (1.0, 0.5), 1, True),  # narrow: re-timed, and staged holds
        (0.95, (1.0, 0.1), 0, False),  # no predicted win: never re-timed
    ],
)
def test_narrow_wins_are_confirmed_at_the_call_s_batch(staged_per_image, confirmed, calls, wins):
    from sekron.ops import CONFIRM, MARGIN

    assert CONFIRM < 0.85 < MARGIN < 0.95
    table = CostTable(
        entries={"k": PathCost(dense=(0.0, 1e-3), staged=(0.0, staged_per_image * 1e-3))}
    )
    seen = []

    def confirm(n):
        seen.append(n)
        return confirmed

    assert table.staged_wins("k", 8, None, confirm) is wins
    assert table.staged_wins("k", 8, None, confirm) is wins  # memoised: timed at most once
    assert seen == [8] * calls


def test_long_calls_are_not_re_timed():
    from sekron.ops._dispatch import CONFIRM_MAX_SECONDS

    table = CostTable(entries={"k": PathCost(dense=(0.0, 1.0), staged=(0.0, 0.85))})
    n = int(CONFIRM_MAX_SECONDS / 1.0) + 1  # the dense path predicted above the cap
    assert table.staged_wins("k", n, None, lambda n: pytest.fail("re-timed")) is True


def test_time_paths_alternates_and_keeps_the_minimum(monkeypatch):
    from sekron.ops import time_paths

    clock = [0.0]
    order = []
    durations = {"dense": iter([9.0, 3.0, 1.0, 2.0]), "staged": iter([9.0, 5.0, 4.0, 6.0])}

    def run(path, n):
        order.append(path)
        clock[0] += next(durations[path])

    monkeypatch.setattr(dispatch_mod.time, "perf_counter", lambda: clock[0])
    assert time_paths(run, 4) == (1.0, 4.0)  # warm-ups (9, 9) are not counted
    assert order == ["dense", "staged", "dense", "staged", "staged", "dense", "dense", "staged"]


def test_cost_file_keeps_the_load_and_reads_old_files(tmp_path):
    path = tmp_path / "costs.json"
    with_load = PathCost(dense=(1e-4, 2e-3), staged=(3e-4, 5e-4), load=7.25)
    without = PathCost(dense=(1e-4, 2e-3), staged=(3e-4, 5e-4))
    table = CostTable(path)
    table.put("a", with_load)
    table.put("b", without)
    again = CostTable(path)
    assert again.get("a") == with_load and again.get("b") == without
    # a file written before the load was recorded: two lists per entry
    path.write_text(json.dumps({repr("c"): [[1e-4, 2e-3], [3e-4, 5e-4]]}))
    assert CostTable(path).get("c") == without


def test_fit_records_the_load(monkeypatch):
    loads = iter([3.0, 5.0])
    monkeypatch.setattr(dispatch_mod, "_load", lambda: next(loads))
    cost = fit_path_cost(lambda path, n: None, (1, 2), repeats=1)
    assert cost.load == 5.0  # the larger of before and after


@pytest.mark.parametrize(
    ("calibrated", "now", "retimed"),
    [
        (None, 0.1, False),  # load unknown: kept
        (1.0, 0.1, False),  # calibrated on a quiet machine: kept
        (100.0, 0.1, True),  # calibrated oversubscribed, quiet now: timed again, once
        (100.0, 50.0, False),  # still loaded: kept (timing now would be as wrong)
        (100.0, None, False),  # no load average on this platform: kept
    ],
)
def test_costs_timed_under_load_are_retimed_once_when_quiet(monkeypatch, calibrated, now, retimed):
    from sekron.ops import STALE_LOAD

    cpus = os.cpu_count() or 1
    assert calibrated is None or calibrated == 1.0 or calibrated > STALE_LOAD * cpus
    monkeypatch.setattr(dispatch_mod, "_load", lambda: now)
    stale = PathCost(dense=(0.0, 1.0), staged=(0.0, 0.1), load=calibrated)  # staged wins
    fresh = PathCost(dense=(0.0, 1.0), staged=(0.0, 10.0), load=now)  # dense wins
    table = CostTable(entries={"k": stale})
    calls = []

    def measure():
        calls.append(1)
        return fresh

    assert table.staged_wins("k", 4, measure) is (not retimed)
    assert table.staged_wins("k", 8, measure) is (not retimed)  # a new n: no second re-timing
    assert len(calls) == (1 if retimed else 0)
    assert table.get("k") == (fresh if retimed else stale)
