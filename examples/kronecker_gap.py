"""Per layer of all-MiniLM-L6-v2: how much of the gap to the whitened SVD a data-aware Kronecker fit closes.

The quality issue's goal: a data-aware GKPD fit should close at least half of the gap
between the plain GKPD fit and the whitened (data-aware) SVD, on every layer, at equal
parameters. For each of the 36 encoder linears, at ratio R:

* ``plain``: the balanced 2-factor Kronecker structure of ``compress_minilm.py``'s GKPD
  baseline (``16×24 ⊗ 24×16`` for 384×384 etc.), the largest rank within ``m n / R``,
  fitted to the weight (NKP);
* ``data``: the same structure fitted to the layer's input Gram (``sk.nkp(..., gram=)``:
  alternating least squares on ``‖(W − Ŵ) L‖``);
* ``svd``: the whitened truncated SVD (``(m×1) ⊗ (1×n)``, data-aware) at the largest rank
  whose parameter count does not exceed the Kronecker fit's.

Every error is the relative data error ``‖(W − Ŵ) L‖_F / ‖W L‖_F`` on the calibration
Gram, computed from the dense residual (:func:`sekron.selection.relative_data_error`), and
the gap closed is ``(plain − data) / (plain − svd)``; where the Kronecker fit beats the
SVD (``data < svd``) the layer is one where a Kronecker structure wins.

Writes docs/img/kronecker_gap.json and docs/img/kronecker_gap.md.

    python examples/kronecker_gap.py                 # 2× and 4×, 512 calibration sentences
    python examples/kronecker_gap.py --quick         # 4× only, 64 sentences, 6 layers
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compress_minilm import LINEARS, _kron_shapes, batches, layer_grams, load_encoder

from sekron import Structure
from sekron.data.text import python_doc_sentences
from sekron.selection import fit_structure, relative_data_error

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"
RIDGE = 1e-3  # compress's default ridge, chosen on held-out sentences (budget_study.py)


def layer_row(name: str, W: np.ndarray, C: np.ndarray, ratio: float, seed: int) -> dict[str, Any]:
    """The three fits of one layer at one ratio and their relative data errors."""
    m, n = W.shape
    a, b = _kron_shapes(m, n)
    r = max(1, int(W.size / ratio // (a[0] * a[1] + b[0] * b[1])))
    kron = Structure([a, b], ranks=r)
    t0 = time.perf_counter()
    plain = fit_structure(W, kron, random_state=seed)
    t1 = time.perf_counter()
    data = fit_structure(W, kron, gram=C, ridge=RIDGE, random_state=seed)
    t2 = time.perf_counter()
    r_svd = max(1, kron.n_params // (m + n))
    svd = fit_structure(W, Structure([(m, 1), (1, n)], ranks=r_svd), gram=C, ridge=RIDGE)
    e_plain, e_data, e_svd = (relative_data_error(W, f, C) for f in (plain, data, svd))
    gap = e_plain - e_svd
    return {
        "name": name,
        "ratio": ratio,
        "kronecker": str(kron),
        "kronecker_params": kron.n_params,
        "svd_rank": r_svd,
        "svd_params": r_svd * (m + n),
        "plain": e_plain,
        "data": e_data,
        "svd": e_svd,
        "closed": (e_plain - e_data) / gap if gap > 0 else None,
        "kronecker_wins": e_data < e_svd,
        "plain_seconds": t1 - t0,
        "data_seconds": t2 - t1,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratios", type=float, nargs="+", default=[2.0, 4.0])
    p.add_argument("--n-calib", type=int, default=512, help="calibration sentences")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="4× only, 64 sentences, 6 layers")
    p.add_argument("--out", type=Path, default=OUT)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    names = [f"bert.encoder.layer.{i}.{s}" for i in range(6) for s in LINEARS]
    if args.quick:
        args.ratios, args.n_calib, names = [4.0], 64, names[:6]
    model, tokenizer = load_encoder()
    calib = python_doc_sentences("calibration")[: args.n_calib]
    start = time.perf_counter()
    grams = layer_grams(model, names, batches(tokenizer, calib, 16))
    rows = []
    with tqdm(total=len(names) * len(args.ratios), desc="layers") as bar:
        for ratio in args.ratios:
            for name in names:
                W = model.get_submodule(name).weight.detach().double().numpy()
                rows.append(layer_row(name, W, grams[name], ratio, args.seed))
                bar.update()
    summary = {
        "n_calib": len(calib),
        "ridge": RIDGE,
        "seconds": time.perf_counter() - start,
        "loadavg": os.getloadavg(),
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (args.out / f"kronecker_gap{suffix}.json").write_text(json.dumps(summary, indent=1))
    table = results_table(summary)
    (args.out / f"kronecker_gap{suffix}.md").write_text(table + "\n")
    print(table)
    return summary


def results_table(summary: dict[str, Any]) -> str:
    """A summary line per ratio, then one row per layer."""
    rows = summary["rows"]
    lines = [
        f"{summary['n_calib']} calibration sentences, ridge {summary['ridge']:g}, "
        f"{summary['seconds']:.0f} s (load average {summary['loadavg'][0]:.1f}).",
        "",
        "| ratio | layers | gap closed: min / median | layers closing ≥ half | Kronecker wins |",
        "|---|---|---|---|---|",
    ]
    for ratio in dict.fromkeys(r["ratio"] for r in rows):
        sel = [r for r in rows if r["ratio"] == ratio]
        closed = [r["closed"] for r in sel if r["closed"] is not None]
        lines.append(
            f"| {ratio:g}× | {len(sel)} | {min(closed):.2f} / {float(np.median(closed)):.2f} | "
            f"{sum(c >= 0.5 for c in closed)} of {len(closed)} | "
            f"{sum(r['kronecker_wins'] for r in sel)} |"
        )
    lines += [
        "",
        "| layer | ratio | Kronecker structure | plain | data-aware | whitened SVD (rank) | closed |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        closed = "–" if r["closed"] is None else f"{r['closed']:.2f}"
        lines.append(
            f"| {r['name']} | {r['ratio']:g}× | {r['kronecker']} | {r['plain']:.3f} | "
            f"{r['data']:.3f} | {r['svd']:.3f} ({r['svd_rank']}) | {closed} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
