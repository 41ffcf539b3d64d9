"""``sekron structures``: rank candidate structures of one tensor.

``sekron structures [FILE]`` fits candidate SeKron structures to a tensor (a ``.npy``
file, an ``.npz`` file and a key, or the embedded default: the first weight matrix of an
MLP trained on scikit-learn's digits) and prints them best first, with parameter count,
compression ratio and certified relative error.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ..errors import SekronError
from ..selection import fit_candidates
from ..structure import Structure, structures

__all__ = [
    "add_parser",
    "kernel_matrix",
    "load_tensor",
    "pareto_front",
    "rank_structures",
    "run",
]

DEFAULT_TENSOR = "digits_mlp.npz"
BUILTINS = ("kernel", "digits-mlp")


def kernel_matrix(grid: int = 16, length_scale: float = 3.0) -> np.ndarray:
    """Inverse-multiquadric kernel matrix on a ``grid × grid`` lattice (a smooth operator).

    ``K[(i1, i2), (j1, j2)] = 1 / sqrt(1 + ((i1 − j1)² + (i2 − j2)²) / ℓ²)``: not separable,
    but of low Kronecker rank, as discretized smooth operators are.

    Examples
    --------
    >>> from sekron.cli import kernel_matrix
    >>> K = kernel_matrix(4)
    >>> K.shape, float(K[0, 0])
    ((16, 16), 1.0)
    """
    idx = np.arange(grid, dtype=np.float64)
    d1 = (idx[:, None] - idx[None, :]) ** 2
    dist2 = d1[:, None, :, None] + d1[None, :, None, :]  # (i1, i2, j1, j2)
    return (1.0 / np.sqrt(1.0 + dist2 / length_scale**2)).reshape(grid * grid, grid * grid)


def load_tensor(
    path: str | None, key: str | None = None, builtin: str = "kernel"
) -> tuple[np.ndarray, str]:
    """Load the tensor to analyse and a short description of where it came from.

    Parameters
    ----------
    path : str or None
        A ``.npy`` or ``.npz`` file; ``None`` loads the built-in tensor ``builtin``.
    key : str, optional
        The array to use in an ``.npz`` file (default: its first array).
    builtin : {"kernel", "digits-mlp"}
        ``"kernel"``: :func:`kernel_matrix` (256 × 256); ``"digits-mlp"``: the first
        weight matrix (256 × 64) of a 64-256-10 MLP trained on scikit-learn's digits.

    Returns
    -------
    W : ndarray
    description : str

    Examples
    --------
    >>> from sekron.cli import load_tensor
    >>> W, what = load_tensor(None, builtin="digits-mlp")
    >>> W.shape
    (256, 64)
    """
    if path is None and builtin == "kernel":
        return kernel_matrix(), "built-in: inverse-multiquadric kernel on a 16×16 grid (256 × 256)"
    if path is None:
        if builtin != "digits-mlp":
            raise SekronError(f"--builtin: expected one of {BUILTINS}, got {builtin!r}")
        with (
            resources.files("sekron.data").joinpath(DEFAULT_TENSOR).open("rb") as fh,
            np.load(fh) as data,
        ):
            W = np.asarray(data["W1"])
            acc = float(data["test_accuracy"])
        return W, f"built-in: first layer of a 64-256-10 MLP on digits (test accuracy {acc:.3f})"
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"FILE: no such file {path!r}")
    if p.suffix == ".npy":
        return np.load(p, allow_pickle=False), str(p)
    if p.suffix == ".npz":
        with np.load(p, allow_pickle=False) as data:
            names = list(data.files)
            if not names:
                raise SekronError(f"FILE: {path!r} holds no arrays")
            name = key if key is not None else names[0]
            if name not in names:
                raise SekronError(f"--key: expected one of {names}, got {name!r}")
            return np.asarray(data[name]), f"{p}[{name}]"
    raise SekronError(f"FILE: expected a .npy or .npz file, got {path!r}")


def rank_structures(
    W: np.ndarray,
    n_factors: Sequence[int] = (2, 3),
    ranks: Sequence[int] = (1, 2, 4, 8),
    min_compression: float = 4.0,
    min_factor_size: int = 4,
    max_candidates: int = 400,
) -> list[tuple[Structure, float]]:
    """Fit candidate structures to ``W``; return ``(structure, certified relative error)`` best first.

    Candidates are the structures of :func:`sekron.structures` for each number of factors
    and uniform rank, with at least ``min_compression``; the ``max_candidates`` with the
    most parameters per number of factors are fitted (more parameters, lower error).
    Results are sorted by error, then by parameter count.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.cli import rank_structures
    >>> W = np.kron(np.arange(1.0, 5.0).reshape(2, 2), np.ones((4, 4)))
    >>> best, err = rank_structures(W, n_factors=(2,), ranks=(1,), min_compression=1.5, min_factor_size=2)[0]
    >>> best.n_params, err < 1e-12
    (16, True)
    """
    results = []
    for S in n_factors:
        cands = structures(
            W.shape,
            S,
            ranks=list(ranks),
            min_compression=min_compression,
            min_factor_size=min_factor_size,
        )
        for st, fit in fit_candidates(W, cands[-max_candidates:]):
            err = fit.relative_error_bound
            results.append((st, 0.0 if err is None else err))
    # errors that differ only by rounding count as ties, broken by fewer parameters
    results.sort(key=lambda item: (round(item[1], 9), item[0].n_params))
    return results


def pareto_front(rows: list[tuple[Structure, float]]) -> list[tuple[Structure, float]]:
    """Keep the rows that no other row beats on both parameters and error (input sorted by error).

    Examples
    --------
    >>> from sekron import Structure
    >>> from sekron.cli import pareto_front
    >>> a, b = Structure([(2, 2), (2, 2)], 1), Structure([(2, 2), (2, 2)], 2)
    >>> [st.ranks for st, _ in pareto_front([(b, 0.0), (a, 0.5), (b, 0.6)])]
    [(2,), (1,)]
    """
    kept: list[tuple[Structure, float]] = []
    best_params = None
    for st, err in rows:
        if best_params is None or st.n_params < best_params:
            kept.append((st, err))
            best_params = st.n_params
    return kept


def _print_table(rows: list[tuple[Structure, float]], out: TextIO) -> None:
    header = ("#", "factor shapes", "ranks", "params", "compression", "rel. error (certified)")
    lines = [
        (
            str(i + 1),
            " ⊗ ".join("×".join(map(str, s)) for s in st.shapes),
            ",".join(map(str, st.ranks)),
            f"{st.n_params:,}",
            f"{st.compression_ratio:.1f}×",
            f"{err:.2e}",
        )
        for i, (st, err) in enumerate(rows)
    ]
    widths = [
        max(len(h), *(len(r[c]) for r in lines)) if lines else len(h) for c, h in enumerate(header)
    ]
    fmt = "  ".join(f"{{:<{w}}}" if c in (1, 2) else f"{{:>{w}}}" for c, w in enumerate(widths))
    print(fmt.format(*header), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for r in lines:
        print(fmt.format(*r), file=out)


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``sekron structures``; the exit status is 1 when no structure meets the filters."""
    W, what = load_tensor(args.file, args.key, args.builtin)
    start = time.perf_counter()
    rows = rank_structures(
        W,
        n_factors=args.n_factors,
        ranks=args.ranks,
        min_compression=args.min_compression,
        min_factor_size=args.min_factor_size,
    )
    elapsed = time.perf_counter() - start
    n_fitted = len(rows)
    if not args.all:
        rows = pareto_front(rows)
    print(f"tensor: {what}", file=out)
    print(f"shape {W.shape}, {W.size:,} entries, dtype {W.dtype}", file=out)
    print(
        f"fitted {n_fitted} structures (S in {list(args.n_factors)}, ranks {list(args.ranks)}, "
        f"compression >= {args.min_compression}×) in {elapsed:.2f} s; "
        + (
            "all, "
            if args.all
            else "the Pareto front (no structure has fewer parameters and less error), "
        )
        + "lowest error first:",
        file=out,
    )
    print(file=out)
    if not rows:
        print(
            "no structure meets the filters; lower --min-compression or --min-factor-size", file=out
        )
        return 1
    _print_table(rows[: args.top], out)
    return 0


def _int_at_least(minimum: int) -> Any:
    """An argparse ``type=``: an int ``>= minimum``, refused with the value shown otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an int >= {minimum}, got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an int >= {minimum}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``structures`` sub-command."""
    p = subparsers.add_parser(
        "structures", help="rank candidate SeKron structures of a tensor by certified error"
    )
    p.add_argument(
        "file", nargs="?", default=None, help=".npy or .npz file (default: an embedded tensor)"
    )
    p.add_argument("--key", default=None, help="array name inside an .npz file")
    p.add_argument(
        "--builtin", choices=BUILTINS, default="kernel", help="built-in tensor used without FILE"
    )
    p.add_argument(
        "--n-factors",
        type=_int_at_least(2),
        nargs="+",
        default=[2, 3],
        help="numbers of Kronecker factors S",
    )
    p.add_argument(
        "--ranks",
        type=_int_at_least(1),
        nargs="+",
        default=[1, 2, 4, 8],
        help="uniform ranks to try",
    )
    p.add_argument(
        "--min-compression",
        type=_positive_float,
        default=4.0,
        help="smallest compression ratio shown",
    )
    p.add_argument(
        "--min-factor-size",
        type=_int_at_least(1),
        default=4,
        help="smallest number of entries per factor",
    )
    p.add_argument("--top", type=_int_at_least(1), default=20, help="rows to print")
    p.add_argument(
        "--all", action="store_true", help="list every fitted structure, not only the Pareto front"
    )
    return p
