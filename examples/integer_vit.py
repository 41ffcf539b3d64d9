"""A small vision transformer on digits: trained in float32, then fine-tuned in integers.

Data: scikit-learn's bundled 8x8 digits (1,797 images, no download), the stratified
75 / 25 split of ``examples/integer_training.py`` (``random_state=0``). The pre-training
uses only the first half of the training images (673), the fine-tuning all 1,347, so
fine-tuning has something to learn.

Model: ``transformers.ViTForImageClassification`` built from a config (no checkpoint):
16 patches of 2x2 pixels plus a class token, 2 layers, hidden 32, 4 heads, MLP 64.
Pre-training: float32, Adam, ``--pretrain-epochs`` epochs, one fixed seed. Fine-tuning,
from that checkpoint, for each seed: float32 with ``torch.optim.SGD`` and, at each width,
``integerize(model, bits)`` (the patch convolution, every linear, the layer norms at 16
bits and attention's two batched products in integers, forward and backward; softmax,
GELU and the loss in float) with :class:`sekron.torch.integer.IntSGD` -- same momentum,
same schedule (linear warm-up over 10 % of the steps, then linear decay), same batches.

Run:  python examples/integer_vit.py           (3 seeds x 5 widths, a few minutes)
      python examples/integer_vit.py --quick   (smoke test)
Writes docs/img/int_vit.json and docs/img/int_vit.png.
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

from sekron.torch import integerize
from sekron.torch.integer import IntSGD

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
WIDTHS = (16, 12, 10, 8)
PAPER_DROP = {16: 0.0, 12: None, 10: -0.5, 8: -1.7}


def digits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Digits as (N, 1, 8, 8) float images in [0, 1]: pre-train, train and test sets."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    xtr, xte, ytr, yte = train_test_split(
        x, d.target, test_size=0.25, random_state=0, stratify=d.target
    )
    t = lambda a, b: (torch.from_numpy(a), torch.from_numpy(b).long())  # noqa: E731
    half = len(ytr) // 2
    return {"pretrain": t(xtr[:half], ytr[:half]), "train": t(xtr, ytr), "test": t(xte, yte)}


def make_vit(seed: int) -> nn.Module:
    """A 2-layer ViT for 8x8 single-channel images (eager attention)."""
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=10,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    model = ViTForImageClassification(cfg)
    model.config._attn_implementation = "eager"  # the float reference: plain eager products
    return model


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Class scores of a batch of images."""
    return model(pixel_values=x).logits


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy in %, batches of 128."""
    model.eval()
    pred = torch.cat([logits(model, x[i : i + 128]).argmax(1) for i in range(0, len(y), 128)])
    model.train()
    return 100.0 * float((pred == y).float().mean())


def pretrain(data: dict, epochs: int, seed: int = 0) -> nn.Module:
    """Float32 pre-training on the first half of the training images (Adam, batch 64)."""
    model = make_vit(seed).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = data["pretrain"]
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(64):
            loss = F.cross_entropy(logits(model, x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def finetune(base: nn.Module, bits: int | None, seed: int, data: dict, cfg: dict) -> dict:
    """Fine-tune a copy of ``base`` in float32 (``bits=None``) or in integers."""
    model = copy.deepcopy(base)
    if bits is not None:
        model = integerize(model, bits, seed=1000 * seed + bits, inplace=True)
    model.train()
    if bits is None:
        opt: Any = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=0.9)
    else:
        opt = IntSGD(
            model.parameters(), lr=cfg["lr"], momentum=0.9, bits=bits, seed=77_777 * seed + bits
        )
    x, y = data["train"]
    g = torch.Generator().manual_seed(seed)
    batches = [
        b
        for _ in range(cfg["epochs"])
        for b in torch.randperm(len(y), generator=g).split(cfg["batch"])
    ]
    losses = []
    t0 = time.perf_counter()
    for step, idx in enumerate(batches):
        warm = max(1, len(batches) // 10)
        for group in opt.param_groups:  # linear warm-up over 10 %, then linear decay to 0
            group["lr"] = cfg["lr"] * min(
                (step + 1) / warm, (len(batches) - step) / (len(batches) - warm)
            )
        loss = F.cross_entropy(logits(model, x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return {
        "bits": bits,
        "seed": seed,
        "loss": losses,
        "test": accuracy(model, *data["test"]),
        "seconds_per_step": (time.perf_counter() - t0) / len(batches),
    }


def summarize(runs: list[dict]) -> list[dict]:
    """Per width: test accuracy mean, sd and spread over seeds; drop against float32."""
    by: dict[Any, list[dict]] = {}
    for r in runs:
        by.setdefault(r["bits"], []).append(r)
    ref = float(np.mean([r["test"] for r in by[None]]))
    rows = []
    for bits in [None, *WIDTHS]:
        if bits in by:
            t = np.array([r["test"] for r in by[bits]])
            rows.append(
                {
                    "bits": bits,
                    "test_mean": float(t.mean()),
                    "test_std": float(t.std(ddof=1)) if len(t) > 1 else 0.0,
                    "test_spread": float(t.max() - t.min()),
                    "drop": float(t.mean() - ref),
                    "seconds_per_step": float(np.mean([r["seconds_per_step"] for r in by[bits]])),
                }
            )
    return rows


def table(rows: list[dict], pre: float) -> str:
    """Markdown table of the summary rows."""
    out = [
        f"pre-trained float32 checkpoint: {pre:.2f} % test accuracy",
        "",
        "| width | test acc. (mean ± sd, spread) | drop vs float | paper's drop (BERT/ViT) | s / step |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        b = r["bits"]
        paper = "—" if b is None else ("n/a" if PAPER_DROP[b] is None else f"{PAPER_DROP[b]:+.1f}")
        width = "float32" if b is None else f"{b} bits"
        drop = "—" if b is None else f"{r['drop']:+.2f}"
        out.append(
            f"| {width} | {r['test_mean']:.2f} ± {r['test_std']:.2f} ({r['test_spread']:.2f}) | "
            f"{drop} | {paper} | {r['seconds_per_step']:.3f} |"
        )
    return "\n".join(out)


def plot(runs: list[dict], path: Path) -> None:
    """Fine-tuning loss (mean over seeds, smoothed) per width against float32's."""
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
        ax.plot(curve(None), color="k", lw=1.5, label="float32")
        ax.plot(curve(b), color="C1", lw=1.2, label=f"{b} bits")
        ax.set_title(f"{b} bits")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    np.atleast_1d(axes)[0].set_ylabel("fine-tuning loss")
    fig.suptitle("ViT (2 layers, dim 32) on digits: integer vs float32 fine-tuning", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> tuple[list[dict], float]:
    """Pre-train, fine-tune at every width and seed, print and write the results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--widths", type=int, nargs="*", default=list(WIDTHS))
    ap.add_argument("--pretrain-epochs", type=int, default=30)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.005)
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
    data = digits()
    cfg = {"epochs": args.epochs, "batch": 64, "lr": args.lr}
    seeds, widths, pre_epochs = args.seeds, args.widths, args.pretrain_epochs
    if args.quick:
        seeds, widths, pre_epochs = seeds[:1], [w for w in widths if w in (16, 8)], 10
        cfg["epochs"] = 1
    base = pretrain(data, pre_epochs)
    pre = accuracy(base, *data["test"])
    print(f"pre-trained float32: test {pre:.2f}", flush=True)
    runs = []
    for seed in seeds:
        for bits in [None, *widths]:
            r = finetune(base, bits, seed, data, cfg)
            runs.append(r)
            print(
                f"seed {seed} {'float32' if bits is None else f'{bits} bits':>8}: test {r['test']:.2f} "
                f"({r['seconds_per_step']:.3f} s/step; load {open('/proc/loadavg').read().split()[0]})",
                flush=True,
            )
    rows = summarize(runs)
    print(table(rows, pre))
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "int_vit.json").write_text(
            json.dumps(
                {"pretrained_test": pre, "config": cfg, "rows": rows, "runs": runs}, indent=1
            )
        )
        plot(runs, args.out / "int_vit.png")
    return rows, pre


if __name__ == "__main__":
    main()
