"""Budget study on all-MiniLM-L6-v2: which data-aware fit and which allocation keep quality.

The evidence for what ``sekron.torch.compress`` ships (issue 9). All 36 linears of the
six encoder blocks are replaced by rank-r factorizations ``W ≈ A B`` (``r (m + n)``
parameters), at a whole-model budget of ``Σ m n / R`` weight parameters (biases stay
dense and are not counted), R = 2 and 4, and compared by the cosine of the sentence
embedding to the original's on held-out sentences, before any distillation:

* ``svd``: the plain truncated SVD of W, the same rank in every layer (uniform);
* ``whitened``: the data-aware truncated SVD, this script's own prototype: with
  ``C = Σ x xᵀ`` the layer's input Gram (from :func:`sekron.torch.calibrate`) and
  ``L Lᵀ = C + λ tr(C)/n I``, ``Ŵ = U_r U_rᵀ W`` where ``U_r`` holds the top-r left
  singular vectors of ``W L``; uniform ranks;
* ``whitened-seq``: the same, but the layers are calibrated in order, each Gram taken on
  the inputs that the already-compressed earlier layers produce (one stage per encoder
  block: its six linears see the outputs of the compressed blocks before it);
* ``global-spectrum``: ranks from a greedy split of the budget by each layer's own
  whitened spectrum (absolute energy per parameter), whitened fits;
* ``global-sens``: ranks from a greedy split by *measured* output sensitivity: each layer
  alone is compressed at the uniform rank and the drop of the embedding cosine on
  calibration sentences, divided by that layer's relative whitened error energy, is its
  factor s_l; the predicted damage Σ s_l e_l(r_l) (e_l the relative tail energy of the
  whitened spectrum, convex in r) is then minimized greedily by marginal gain per
  parameter; whitened fits;
* ``global-sens-seq``: those ranks, fitted sequentially.

The ridge λ and the calibration-set size are chosen on one half of the held-out
sentences (``select``) for the ``whitened`` fit; every number in the table is measured on
the other half (``report``), which nothing was tuned on. Sentences come from
:func:`sekron.data.text.python_doc_sentences` (Python's own documentation, no download):
calibration sentences from its ``calibration`` split, select/report from ``held_out``.

Writes docs/img/budget_study.json and docs/img/budget_study.md.

    python examples/budget_study.py            # the published study (see its run time)
    python examples/budget_study.py --quick    # one size, one ridge, small sets
"""

from __future__ import annotations

import argparse
import copy
import heapq
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
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compress_minilm import LINEARS, batches, embed, load_encoder, similarity_scores

from sekron.data.text import python_doc_sentences
from sekron.torch.calibration import calibrate

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"


# ------------------------------------------------------------------- the fits
class Spectrum:
    """Left singular vectors and squared singular values of ``W`` or of ``W L``."""

    def __init__(self, W: np.ndarray, C: np.ndarray | None, ridge: float):
        if C is None:
            M = W
        else:
            n = C.shape[0]
            lam = ridge * np.trace(C) / n
            L = np.linalg.cholesky(C + lam * np.eye(n))
            M = W @ L
        U, s, _ = np.linalg.svd(M, full_matrices=False)
        self.U, self.energy = U, s**2
        # tail[r] = ‖(W − Ŵ_r) L‖², the data-weighted error left at rank r
        self.tail = np.concatenate([np.cumsum(self.energy[::-1])[::-1], [0.0]])

    def fit(self, W: np.ndarray, r: int) -> np.ndarray:
        A = self.U[:, :r]
        return A @ (A.T @ W)

    def rel_tail(self, r: int) -> float:
        return float(self.tail[r] / self.tail[0])


def uniform_ranks(shapes: dict[str, tuple[int, int]], ratio: float) -> dict[str, int]:
    return {k: int(m * n / ratio // (m + n)) for k, (m, n) in shapes.items()}


def n_params(shapes: dict[str, tuple[int, int]], ranks: dict[str, int]) -> int:
    return sum(ranks[k] * (m + n) for k, (m, n) in shapes.items())


def greedy_ranks(
    shapes: dict[str, tuple[int, int]], budget: float, gain: dict[str, np.ndarray], r_min: int = 1
) -> dict[str, int]:
    """Spend ``budget`` parameters by largest ``gain[k][r]`` (value of rank r+1) per parameter.

    With gains that decrease in r (convex error curves) this greedy is the optimum of the
    separable problem; ranks stay at most ``m n / (m + n)`` (factored never beats dense).
    """
    ranks = {k: r_min for k in shapes}
    spent = n_params(shapes, ranks)
    heap = [(-gain[k][r_min] / sum(shapes[k]), k) for k in shapes]
    heapq.heapify(heap)
    while heap:
        _, k = heapq.heappop(heap)
        m, n = shapes[k]
        if spent + m + n > budget:
            continue  # this layer's next rank does not fit; a smaller layer's still might
        ranks[k] += 1
        spent += m + n
        if ranks[k] < min(len(gain[k]), m * n // (m + n)):
            heapq.heappush(heap, (-gain[k][ranks[k]] / (m + n), k))
    return ranks


def apply(teacher: nn.Module, weights: dict[str, np.ndarray]) -> nn.Module:
    """A copy of ``teacher`` whose named linears hold the given (reconstructed) weights."""
    student = copy.deepcopy(teacher)
    for name, W in weights.items():
        lin = student.get_submodule(name)
        lin.weight.data = torch.as_tensor(W, dtype=lin.weight.dtype)
    return student


# -------------------------------------------------------------------- calibration
class _Stop(Exception):
    pass


class _UpTo(nn.Module):
    """Runs the model only until ``stop`` has run: a calibration stage needs no more."""

    def __init__(self, model: nn.Module, stop: nn.Module):
        super().__init__()
        self.model, self.stop = model, stop

    def forward(self, **kw: Any) -> None:
        def halt(*_: Any) -> None:
            raise _Stop

        handle = self.stop.register_forward_hook(halt)
        try:
            self.model(**kw)
        except _Stop:
            pass
        finally:
            handle.remove()


def grams_of(
    model: nn.Module, data: list[dict[str, torch.Tensor]], names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Input Grams of ``names`` (one Gram for a block's query/key/value, which share their input)."""
    shared = {n: n.replace(".key", ".query").replace(".value", ".query") for n in names}
    hooked = sorted(set(shared.values()), key=list(names).index)
    runner = _UpTo(model, model.get_submodule(names[-1])) if len(names) < 36 else model
    prefix = "model." if runner is not model else ""
    g = calibrate(runner, data, include=[prefix + n for n in hooked], progress=False)
    return {n: g[prefix + shared[n]].gram for n in names}


def fit_sequential(
    teacher: nn.Module,
    data: list[dict[str, torch.Tensor]],
    names: list[str],
    ranks: dict[str, int],
    ridge: float,
) -> dict[str, np.ndarray]:
    """Whitened fits, each stage calibrated on the already-compressed model's inputs."""
    student = copy.deepcopy(teacher)
    out: dict[str, np.ndarray] = {}
    blocks = sorted({int(n.split(".")[3]) for n in names})
    for b in blocks:
        # one stage per block: its six linears see the compressed earlier blocks' outputs
        # (per-linear stages cost four times the forward passes for a small difference)
        for stage in (LINEARS,):
            stage_names = [f"bert.encoder.layer.{b}.{s}" for s in stage]
            grams = grams_of(student, data, stage_names)
            for name in stage_names:
                lin = student.get_submodule(name)
                W = lin.weight.detach().double().numpy()
                out[name] = Spectrum(W, grams[name], ridge).fit(W, ranks[name])
                lin.weight.data = torch.as_tensor(out[name], dtype=lin.weight.dtype)
    return out


def sensitivities(
    teacher: nn.Module,
    data: list[dict[str, torch.Tensor]],
    ref: torch.Tensor,
    W: dict[str, np.ndarray],
    spec: dict[str, Spectrum],
    ranks: dict[str, int],
) -> dict[str, float]:
    """Damage (1 − mean cosine) per unit of relative whitened error energy, one layer at a time."""
    out = {}
    for name in W:
        lin = teacher.get_submodule(name)
        orig = lin.weight.data
        lin.weight.data = torch.as_tensor(spec[name].fit(W[name], ranks[name]), dtype=orig.dtype)
        try:
            damage = 1.0 - float((embed(teacher, data) * ref).sum(-1).mean())
        finally:
            lin.weight.data = orig
        out[name] = max(damage, 0.0) / max(spec[name].rel_tail(ranks[name]), 1e-30)
    return out


# --------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller grid and sentence sets")
    p.add_argument("--ratios", type=float, nargs="+", default=[2.0, 4.0])
    p.add_argument(
        "--ridges",
        type=float,
        nargs="+",
        default=None,
        help="ridge grid, relative to tr(C)/n (default 1e-3 1e-2 1e-1)",
    )
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=None,
        help="calibration-set sizes to try, in sentences (default 128 512)",
    )
    p.add_argument(
        "--n-select", type=int, default=None, help="held-out sentences for choices (128)"
    )
    p.add_argument("--n-report", type=int, default=None, help="held-out sentences reported (256)")
    p.add_argument(
        "--n-sens", type=int, default=None, help="calibration sentences for sensitivity (48)"
    )
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args(argv)
    q = a.quick
    a.ridges = a.ridges or ([1e-2] if q else [1e-3, 1e-2, 1e-1])
    a.sizes = sorted(a.sizes or ([128] if q else [128, 512]))
    a.n_select = a.n_select or (64 if q else 128)
    a.n_report = a.n_report or (64 if q else 256)
    a.n_sens = a.n_sens or (32 if q else 48)
    return a


def corpus(args: argparse.Namespace) -> tuple[list[str], list[str], list[str]]:
    """Calibration pool (seeded order, so sizes are nested prefixes), select and report sets."""
    calib = python_doc_sentences("calibration")
    order = np.random.default_rng(args.seed).permutation(len(calib))
    calib = [calib[i] for i in order]
    held = python_doc_sentences("held_out")
    return calib, held[0::2][: args.n_select], held[1::2][: args.n_report]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    teacher, tok = load_encoder()
    for p in teacher.parameters():
        p.requires_grad_(False)
    names = [
        f"bert.encoder.layer.{b}.{s}"
        for b in range(len(teacher.bert.encoder.layer))
        for s in LINEARS
    ]
    W = {n: teacher.get_submodule(n).weight.detach().double().numpy() for n in names}
    shapes = {n: w.shape for n, w in W.items()}
    dense = sum(m * n for m, n in shapes.values())
    calib, select, report = corpus(args)
    sizes = [s for s in args.sizes if s <= len(calib)] or [len(calib)]
    sel_b, rep_b = batches(tok, select, 64), batches(tok, report, 64)
    ref_sel, ref_rep = embed(teacher, sel_b), embed(teacher, rep_b)
    print(
        f"{len(names)} linears, {dense:,} weights; calibration pool {len(calib)}, "
        f"select {len(select)}, report {len(report)} sentences",
        flush=True,
    )

    def score(weights: dict[str, np.ndarray], data: list, ref: torch.Tensor) -> dict[str, float]:
        return similarity_scores(embed(apply(teacher, weights), data), ref)

    # Grams for nested calibration sets: each size adds the next sentences to the sums
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    grams: dict[int, dict[str, np.ndarray]] = {}
    running: dict[str, np.ndarray] = {}
    prev = 0
    for size in sizes:
        part = grams_of(teacher, batches(tok, calib[prev:size], args.batch), names)
        running = {n: running.get(n, 0) + part[n] for n in names}
        grams[size], prev = dict(running), size
    timings["grams_s"] = time.perf_counter() - t0

    # choose the ridge and the calibration size on the select half, per ratio
    t0 = time.perf_counter()
    grid: list[dict[str, Any]] = []
    for size in sizes:
        for ridge in args.ridges:
            spec = {n: Spectrum(W[n], grams[size][n], ridge) for n in names}
            for ratio in args.ratios:
                rk = uniform_ranks(shapes, ratio)
                s = score({n: spec[n].fit(W[n], rk[n]) for n in names}, sel_b, ref_sel)
                grid.append({"size": size, "ridge": ridge, "ratio": ratio, "select": s})
                print(
                    f"  select  n={size:>5} ridge={ridge:g} x{ratio:g}: cos {s['cos_mean']:.4f}",
                    flush=True,
                )
    timings["selection_s"] = time.perf_counter() - t0

    results: list[dict[str, Any]] = []
    for ratio in args.ratios:
        best = max((g for g in grid if g["ratio"] == ratio), key=lambda g: g["select"]["cos_mean"])
        size, ridge = best["size"], best["ridge"]
        cal_b = batches(tok, calib[:size], args.batch)
        uni = uniform_ranks(shapes, ratio)
        budget = dense / ratio
        plain = {n: Spectrum(W[n], None, 0.0) for n in names}
        spec = {n: Spectrum(W[n], grams[size][n], ridge) for n in names}

        def record(
            method: str,
            ranks: dict[str, int],
            weights: dict[str, np.ndarray],
            secs: float,
            ratio: float = ratio,
            size: int = size,
            ridge: float = ridge,
            budget: float = budget,
        ) -> None:
            res = {
                "method": method,
                "ratio": ratio,
                "calib_size": size,
                "ridge": ridge,
                "params": n_params(shapes, ranks),
                "budget": int(budget),
                "ranks": {n: ranks[n] for n in names},
                "fit_s": secs,
                "report": score(weights, rep_b, ref_rep),
            }
            results.append(res)
            r = res["report"]
            print(
                f"{method:>16} x{ratio:g}: cos {r['cos_mean']:.4f} (min {r['cos_min']:.4f}) "
                f"NN {r['nn_agree']:.2f}  params {res['params']:,}/{int(budget):,}  {secs:.1f}s",
                flush=True,
            )

        t0 = time.perf_counter()
        record("svd", uni, {n: plain[n].fit(W[n], uni[n]) for n in names}, time.perf_counter() - t0)
        t0 = time.perf_counter()
        record(
            "whitened", uni, {n: spec[n].fit(W[n], uni[n]) for n in names}, time.perf_counter() - t0
        )
        t0 = time.perf_counter()
        record(
            "whitened-seq",
            uni,
            fit_sequential(teacher, cal_b, names, uni, ridge),
            time.perf_counter() - t0,
        )

        t0 = time.perf_counter()
        rk = greedy_ranks(shapes, budget, {n: spec[n].energy for n in names})
        record(
            "global-spectrum",
            rk,
            {n: spec[n].fit(W[n], rk[n]) for n in names},
            time.perf_counter() - t0,
        )

        t0 = time.perf_counter()
        sens_b = batches(tok, calib[: args.n_sens], 64)
        sens = sensitivities(teacher, sens_b, embed(teacher, sens_b), W, spec, uni)
        t_sens = time.perf_counter() - t0
        gain = {n: sens[n] * spec[n].energy / spec[n].tail[0] for n in names}
        rk = greedy_ranks(shapes, budget, gain)
        record(
            "global-sens",
            rk,
            {n: spec[n].fit(W[n], rk[n]) for n in names},
            time.perf_counter() - t0,
        )
        results[-1]["sensitivity"] = sens
        results[-1]["sensitivity_s"] = t_sens
        t0 = time.perf_counter()
        record(
            "global-sens-seq",
            rk,
            fit_sequential(teacher, cal_b, names, rk, ridge),
            time.perf_counter() - t0 + t_sens,
        )

    summary = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "n_calibration_pool": len(calib),
        "n_select": len(select),
        "n_report": len(report),
        "dense_weights": dense,
        "grid": grid,
        "results": results,
        "timings": timings,
        "total_s": time.perf_counter() - t_start,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "budget_study.json").write_text(json.dumps(summary, indent=1))
    table = results_table(summary)
    (args.out / "budget_study.md").write_text(table)
    print(table)
    return summary


LABELS = {
    "svd": "plain SVD, uniform",
    "whitened": "whitened SVD, uniform",
    "whitened-seq": "whitened SVD, uniform, sequential calibration",
    "global-spectrum": "whitened SVD, global by own spectrum",
    "global-sens": "whitened SVD, global by measured sensitivity",
    "global-sens-seq": "whitened SVD, global by sensitivity, sequential",
}


def results_table(summary: dict[str, Any]) -> str:
    a, t = summary["args"], summary["timings"]
    lines = [
        f"all-MiniLM-L6-v2, all 36 encoder linears, whole-model weight budget Σmn/R, no distillation. "
        f"Scored on {summary['n_report']} held-out sentences of Python's documentation "
        f"(`sekron.data.text`, split `held_out`, odd positions); ridge and calibration size chosen "
        f"on {summary['n_select']} others (even positions). Calibration pool "
        f"{summary['n_calibration_pool']} sentences, sensitivity on {a['n_sens']} of them. "
        f"Grams {t['grams_s']:.0f} s, selection grid {t['selection_s']:.0f} s, "
        f"whole run {summary['total_s']:.0f} s (2 shared CPU cores).",
        "",
        "| method | ratio | calib. sentences | ridge | params / budget | cos mean / min | "
        "sim. Spearman | NN agree | Δ mean cos vs whitened uniform | fit s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["results"]:
        base = next(
            x for x in summary["results"] if x["ratio"] == r["ratio"] and x["method"] == "whitened"
        )
        rep = r["report"]
        delta = rep["cos_mean"] - base["report"]["cos_mean"]
        lines.append(
            f"| {LABELS[r['method']]} | {r['ratio']:g}× | {r['calib_size'] if r['method'] != 'svd' else '–'} | "
            f"{r['ridge']:g} | {r['params']:,} / {r['budget']:,} | {rep['cos_mean']:.4f} / {rep['cos_min']:.4f} | "
            f"{rep['sim_spearman']:.3f} | {rep['nn_agree']:.2f} | {delta:+.4f} | {r['fit_s']:.1f} |"
        )
    lines += [
        "",
        "Selection grid (whitened, uniform; mean cosine on the select half):",
        "",
        "| calib. sentences | ridge | " + " | ".join(f"{q:g}×" for q in a["ratios"]) + " |",
        "|---|---|" + "---|" * len(a["ratios"]),
    ]
    for size in a["sizes"]:
        for ridge in a["ridges"]:
            cells = [
                next(
                    (
                        g["select"]["cos_mean"]
                        for g in summary["grid"]
                        if g["size"] == size and g["ridge"] == ridge and g["ratio"] == q
                    ),
                    float("nan"),
                )
                for q in a["ratios"]
            ]
            lines.append(f"| {size} | {ridge:g} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
