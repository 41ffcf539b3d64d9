"""Staged or dense: a per-machine cost table that picks the faster path per call shape.

A structured path (the staged SeKron convolution, the level-by-level matmul) needs
fewer multiply-adds than the dense one, but its thin GEMMs run far below the dense
GEMM's throughput, and on small batches or images the dense path can win. Counting
multiply-adds cannot tell; measuring can. For each *geometry* (everything about a call
but its batch size: structure, image size, stride, padding, dilation, dtype, backend,
thread count) both paths are timed once on this machine at two batch sizes, and each
path's time is modelled as ``t(n) = t0 + n t1`` (a fixed cost plus a cost per image,
the batch being run in cache-sized chunks). A call then runs the path with the smaller
predicted time for its batch ``n``; the staged path must win by :data:`MARGIN` so that
measurement noise can only pick the dense path, never a slower staged one.

The table lives in memory and in one JSON file per machine under the user cache
directory (``$XDG_CACHE_HOME/sekron/path_costs.json``, else ``~/.cache/sekron/``);
``SEKRON_COST_CACHE`` names another file, or ``off`` (also ``0``, ``none``) keeps the
table in memory only. Nothing here imports torch; the torch layers pass their own
measuring function.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CONFIRM",
    "MARGIN",
    "STALE_LOAD",
    "CostTable",
    "PathCost",
    "blas_threads",
    "cost_table",
    "fit_path_cost",
    "limit_blas_threads",
    "time_paths",
]

#: The staged path runs only when its predicted time is at most this fraction of the
#: dense one (a 10 % noise allowance: the chosen path stays within 1.05x of dense even
#: when one calibration run was 15 % off)
MARGIN = 0.9

#: A staged win predicted narrower than this (staged/dense above it, at most
#: :data:`MARGIN`) is timed again at the call's own batch size before it is taken: the
#: two-point line extrapolates, and near break-even a 10-20 % error picks a slower path
CONFIRM = 0.75

#: ...only while the dense path is predicted to take at most this many seconds (timing
#: both paths a few times at the call's batch must stay cheap)
CONFIRM_MAX_SECONDS = 0.05

_OFF = ("off", "0", "none", "")


@dataclass(frozen=True)
class PathCost:
    """Measured times of the two paths of one geometry: ``t(n) = t0 + n t1`` seconds.

    Attributes
    ----------
    dense, staged : pair of floats
        ``(t0, t1)`` of each path.
    load : float or None, default None
        The one-minute load average while they were timed (None: unknown).

    Examples
    --------
    >>> from sekron.ops import PathCost
    >>> c = PathCost(dense=(1e-5, 2e-4), staged=(5e-4, 5e-5))  # staged: more overhead, cheaper per image
    >>> c.staged_wins(1), c.staged_wins(64)
    (False, True)
    """

    dense: tuple[float, float]
    staged: tuple[float, float]
    load: float | None = None

    def predict(self, n: int) -> tuple[float, float]:
        """Predicted ``(dense, staged)`` seconds for a batch of ``n``."""
        return (
            self.dense[0] + n * self.dense[1],
            self.staged[0] + n * self.staged[1],
        )

    def staged_wins(self, n: int) -> bool:
        """Whether a batch of ``n`` runs the staged path (by :data:`MARGIN`)."""
        dense, staged = self.predict(n)
        return staged <= MARGIN * dense


def _line(n1: int, t1: float, n2: int, t2: float) -> tuple[float, float]:
    """The line through ``(n1, t1)`` and ``(n2, t2)``; slope and intercept kept >= 0."""
    slope = max(0.0, (t2 - t1) / (n2 - n1)) if n2 != n1 else t2 / max(n2, 1)
    return max(0.0, t1 - n1 * slope), slope


def fit_path_cost(
    run: Callable[[str, int], Any], sizes: tuple[int, int] = (1, 8), repeats: int = 3
) -> PathCost:
    """Time both paths at two batch sizes and fit ``t(n) = t0 + n t1`` to each.

    Parameters
    ----------
    run : callable
        ``run(path, n)`` runs ``path`` (``"dense"`` or ``"staged"``) once on a batch of
        ``n`` (and waits for the result).
    sizes : pair of ints, default (1, 8)
        The two batch sizes; the larger one should fill a cache-sized chunk.
    repeats : int, default 3
        Timed runs per path and size after one warm-up run; the minimum is kept. The
        runs of the two paths alternate, so load changes hit both alike.

    Returns
    -------
    PathCost

    Examples
    --------
    >>> from sekron.ops import fit_path_cost
    >>> cost = fit_path_cost(lambda path, n: sum(range(n * (1000 if path == "dense" else 10))))
    >>> cost.staged_wins(1000)
    True
    """
    n1, n2 = sizes
    before = _load()
    (d1, s1), (d2, s2) = (time_paths(run, n, repeats) for n in sizes)
    after = _load()
    load = None if before is None or after is None else max(before, after)
    return PathCost(dense=_line(n1, d1, n2, d2), staged=_line(n1, s1, n2, s2), load=load)


def _load() -> float | None:
    """The one-minute load average, or None where the platform has none."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


#: An entry timed while the load average exceeded this many times the CPU count is
#: timed again (once per process) when the load has fallen below half of that: a machine
#: that was oversubscribed at calibration measures both paths wrongly, and the table
#: file would otherwise keep those decisions (a near-dense torch layer calibrated at
#: load 11 on 2 cores ran staged at 2.3-4.7x the dense time)
STALE_LOAD = 1.5


def time_paths(run: Callable[[str, int], Any], n: int, repeats: int = 3) -> tuple[float, float]:
    """Seconds of ``(dense, staged)`` on a batch of ``n``: the minimum of ``repeats`` runs.

    One warm-up run each first; the runs of the two paths alternate.

    Examples
    --------
    >>> from sekron.ops import time_paths
    >>> dense, staged = time_paths(lambda path, n: sum(range(n * (100 if path == "dense" else 1))), 50)
    >>> staged < dense
    True
    """
    best = {"dense": math.inf, "staged": math.inf}
    for path in ("dense", "staged"):
        run(path, n)  # warm-up (and first-call allocations)
    for r in range(max(1, repeats)):
        for path in ("dense", "staged") if r % 2 == 0 else ("staged", "dense"):
            t = time.perf_counter()
            run(path, n)
            best[path] = min(best[path], time.perf_counter() - t)
    return best["dense"], best["staged"]


def _default_path() -> Path | None:
    env = os.environ.get("SEKRON_COST_CACHE")
    if env is not None:
        return None if env.strip().lower() in _OFF else Path(env)
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "sekron" / "path_costs.json"


class CostTable:
    """Measured :class:`PathCost` per geometry, kept in memory and (optionally) a file.

    Parameters
    ----------
    path : str or Path, optional
        The JSON file to read and extend; None keeps the table in memory.
    entries : mapping, optional
        Known costs ``{key: PathCost}`` (a test injects its own).

    Notes
    -----
    Keys are tuples of str/int/float; the file stores them as their ``repr``. A file
    that cannot be read or written is ignored (the table still works in memory). Every
    new entry rewrites the file atomically (write then rename).

    Examples
    --------
    >>> from sekron.ops import CostTable, PathCost
    >>> table = CostTable(entries={("conv", 1): PathCost(dense=(0.0, 1.0), staged=(5.0, 0.25))})
    >>> [table.staged_wins(("conv", 1), n, measure=None) for n in (1, 4, 16)]
    [False, False, True]
    """

    def __init__(self, path: str | Path | None = None, entries: Any = None):
        self.path = None if path is None else Path(path)
        self._entries: dict[Hashable, PathCost] = dict(entries or {})
        self._lock = threading.Lock()
        self._loaded = self.path is None
        self._decisions: dict[tuple[Hashable, int], bool] = {}
        #: counts :meth:`put` calls; callers that memoise decisions key them by it
        self.generation = 0
        self._retimed: set[Hashable] = set()

    def _load(self) -> None:
        self._loaded = True
        if self.path is None:
            return
        try:
            raw = json.loads(self.path.read_text())
            for k, v in raw.items():
                load = float(v[2]) if len(v) > 2 and v[2] is not None else None
                cost = PathCost(tuple(v[0]), tuple(v[1]), load)  # type: ignore[arg-type]
                self._entries.setdefault(_parse_key(k), cost)
        except (OSError, ValueError, TypeError, IndexError, SyntaxError):
            pass

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            data = {
                repr(k): [list(c.dense), list(c.staged), c.load] for k, c in self._entries.items()
            }
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
            os.replace(tmp, self.path)
        except OSError:
            pass

    def get(self, key: Hashable) -> PathCost | None:
        """The stored cost of ``key``, or None."""
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    self._load()
        return self._entries.get(key)

    def put(self, key: Hashable, cost: PathCost) -> None:
        """Store ``cost`` for ``key`` (and write the file)."""
        with self._lock:
            self._entries[key] = cost
            self.generation += 1
            self._decisions = {k: v for k, v in self._decisions.items() if k[0] != key}
            self._save()

    def _stale(self, key: Hashable, cost: PathCost) -> bool:
        """Whether ``cost`` was timed on an oversubscribed machine that is quieter now.

        True at most once per key and table (a re-timed entry is not re-timed again).
        """
        cpus = os.cpu_count() or 1
        if cost.load is None or cost.load <= STALE_LOAD * cpus or key in self._retimed:
            return False
        now = _load()
        if now is None or now >= 0.5 * STALE_LOAD * cpus:
            return False
        self._retimed.add(key)
        return True

    def staged_wins(
        self,
        key: Hashable,
        n: int,
        measure: Callable[[], PathCost] | None,
        confirm: Callable[[int], tuple[float, float]] | None = None,
    ) -> bool:
        """Whether a batch of ``n`` of geometry ``key`` runs the staged path.

        An unknown ``key`` is measured with ``measure()`` and stored; with ``measure``
        None it runs the dense path. A stored cost timed at a load average above
        :data:`STALE_LOAD` times the CPU count is measured again, once, when the load has
        fallen below half of that. A narrow predicted win (staged/dense between
        :data:`CONFIRM` and :data:`MARGIN`, dense predicted under
        :data:`CONFIRM_MAX_SECONDS`) is re-timed with ``confirm(n)`` (``(dense, staged)``
        seconds at this batch, see :func:`time_paths`) when given, and taken only if the
        staged path is then faster by :data:`MARGIN`. Decisions are memoised per
        ``(key, n)``, in memory.
        """
        hit = self._decisions.get((key, n))
        if hit is not None:
            return hit
        cost = self.get(key)
        if cost is None or (measure is not None and self._stale(key, cost)):
            if measure is None:
                return False
            cost = measure()
            self.put(key, cost)
        wins = cost.staged_wins(n)
        if wins and confirm is not None:
            dense, staged = cost.predict(n)
            if staged > CONFIRM * dense and dense <= CONFIRM_MAX_SECONDS:
                dense, staged = confirm(n)
                wins = staged <= MARGIN * dense
        if len(self._decisions) > 4096:
            self._decisions.clear()
        self._decisions[key, n] = wins
        return wins


def _parse_key(text: str) -> Hashable:
    import ast

    return ast.literal_eval(text)  # type: ignore[no-any-return]


_TABLE: CostTable | None = None


def cost_table() -> CostTable:
    """The process-wide table, backed by the per-machine file (see the module notes).

    Examples
    --------
    >>> from sekron.ops import CostTable, cost_table
    >>> isinstance(cost_table(), CostTable)
    True
    """
    global _TABLE
    if _TABLE is None:
        _TABLE = CostTable(_default_path())
    return _TABLE


_CONTROLLERS: Any = None
_READERS: Any = None


def _controllers() -> tuple[Any, ...]:
    """The loaded BLAS libraries' threadpoolctl controllers, looked up once (none without it)."""
    global _CONTROLLERS
    if _CONTROLLERS is None:
        try:
            from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped]
        except ImportError:
            _CONTROLLERS = ()
        else:
            _CONTROLLERS = tuple(ThreadpoolController().select(user_api="blas").lib_controllers)
    return _CONTROLLERS  # type: ignore[no-any-return]


def blas_threads() -> int | None:
    """The BLAS thread count of numpy now (threadpoolctl, if installed), part of a cost key.

    Examples
    --------
    >>> from sekron.ops import blas_threads
    >>> n = blas_threads()
    >>> n is None or n >= 1
    True
    """
    global _READERS
    if _READERS is None:
        _READERS = tuple(_thread_reader(c) for c in _controllers())
    if not _READERS:
        return None
    return max(int(read()) for read in _READERS)


def _thread_reader(controller: Any) -> Callable[[], Any]:
    """The C function that reports an OpenBLAS's thread count, else the controller's method.

    threadpoolctl looks the symbol up on every ``num_threads`` read (0.8 us per library);
    a layer asks on every call, so the function is looked up once here.
    """
    if type(controller).__name__ == "OpenBLASController":
        try:
            layer = controller.threading_layer
            name = "omp_get_max_threads" if layer == "openmp" else "openblas_get_num_threads"
            func = controller._get_symbol(name)
        except Exception:  # a threadpoolctl without these internals
            func = None
        if func is not None:
            return func  # type: ignore[no-any-return]
    return controller.get_num_threads  # type: ignore[no-any-return]


class _BlasLimit:
    """The context of :func:`limit_blas_threads`: set on entry, restored on exit."""

    def __init__(self, n: int):
        self._n = n
        self._saved: list[tuple[Any, Any]] = []

    def __enter__(self) -> _BlasLimit:
        for c in _controllers():
            old = c.get_num_threads()
            if old is not None and old > self._n:
                c.set_num_threads(self._n)
                self._saved.append((c, old))
        return self

    def __exit__(self, *exc: Any) -> None:
        for c, old in self._saved:
            c.set_num_threads(old)
        self._saved.clear()


def limit_blas_threads(n: int = 1) -> _BlasLimit:
    """Cap numpy's BLAS pools at ``n`` threads inside a ``with`` block (threadpoolctl).

    About 8 us per block (threadpoolctl's own context manager takes 20 us). The pools are
    process-wide: other threads calling BLAS meanwhile are capped too. Without
    threadpoolctl it does nothing.

    Examples
    --------
    >>> from sekron.ops import blas_threads, limit_blas_threads
    >>> with limit_blas_threads(1):
    ...     inside = blas_threads()
    >>> inside in (None, 1)
    True
    """
    return _BlasLimit(n)
