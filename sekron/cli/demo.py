"""``sekron demo``: the papers' pipeline end to end on scikit-learn's digits.

1. Train a small CNN on the bundled digits (8×8 images; no download).
2. Compress its two large convolutions at several ratios with SeKron (3 factors) and
   GKPD (2 factors, :func:`sekron.torch.compress`), and, at matched parameter counts,
   with tensorly's Tensor-Train, Tucker and CP fits converted to SeKron layers
   (:mod:`sekron.formats`), so that one convolution engine executes every format.
3. Recover accuracy with knowledge distillation from the dense teacher.
4. Fine-tune with integer arithmetic at 16, 10 and 8 bits (:func:`sekron.torch.integerize`).

Prints one table (accuracy, parameters, multiply-adds, latency) and writes a plot.
Everything is seeded; it takes a few minutes on two cores.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

__all__ = ["DemoRow", "add_parser", "run", "run_demo"]


@dataclass
class DemoRow:
    """One line of the demo table."""

    method: str
    target: str
    params: int
    macs: int
    accuracy: float
    accuracy_distilled: float | None = None
    latency_ms: float = float("nan")
    macs_staged: int | None = None
    notes: str = ""
    layer_errors: list[float] = field(default_factory=list)


def _require_torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "sekron demo needs torch: pip install torch==2.13.0 (CPU build) and sekron[torch]"
        ) from exc
    return torch


def _data(seed: int) -> tuple[Any, Any, Any, Any]:
    torch = _require_torch()
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover
        raise SystemExit("sekron demo needs scikit-learn (pip install scikit-learn)") from exc
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=seed, stratify=y)
    return (
        torch.from_numpy(X_tr),
        torch.from_numpy(y_tr).long(),
        torch.from_numpy(X_te),
        torch.from_numpy(y_te).long(),
    )


def _model() -> Any:
    torch = _require_torch()
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


COMPRESSED = ("2", "5")  # the two large convolutions (32→64 and 64→64, 3×3)


def _batches(X: Any, y: Any, batch: int, gen: Any) -> list[tuple[Any, Any]]:
    torch = _require_torch()
    perm = torch.randperm(len(X), generator=gen)
    return [(X[perm[i : i + batch]], y[perm[i : i + batch]]) for i in range(0, len(X), batch)]


def _train(
    model: Any,
    X: Any,
    y: Any,
    epochs: int,
    lr: float,
    seed: int,
    optimizer: str = "adam",
) -> None:
    torch = _require_torch()
    gen = torch.Generator().manual_seed(seed)
    opt = (
        torch.optim.Adam(model.parameters(), lr=lr)
        if optimizer == "adam"
        else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    )
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        for xb, yb in _batches(X, y, 64, gen):
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
    model.eval()


def _accuracy(model: Any, X: Any, y: Any) -> float:
    torch = _require_torch()
    model.eval()
    with torch.no_grad():
        return float((model(X).argmax(1) == y).float().mean()) * 100.0


def _latency_ms(model: Any, X: Any, repeat: int = 5) -> float:
    torch = _require_torch()
    model.eval()
    with torch.no_grad():
        model(X)  # warm-up
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            model(X)
            times.append(time.perf_counter() - start)
    return min(times) * 1e3


def _time_interleaved(timed: list[tuple[DemoRow, Any]], X: Any, rounds: int = 5) -> None:
    """Best-of-rounds latency of every model, the models taking turns in each round."""
    torch = _require_torch()
    best = [float("inf")] * len(timed)
    with torch.no_grad():
        for _, model in timed:
            model.eval()
            model(X)  # warm-up
        for _ in range(rounds):
            for i, (_, model) in enumerate(timed):
                start = time.perf_counter()
                model(X)
                best[i] = min(best[i], time.perf_counter() - start)
    for (row, _), t in zip(timed, best, strict=True):
        row.latency_ms = t * 1e3


def _conv_macs(model: Any, x: Any, staged: bool = False) -> int:
    """Multiply-adds per image of the paths the layers run.

    ``staged``: as if every SeKron layer ran its staged convolution.
    """
    torch = _require_torch()
    from ..torch import SeKronConv2d

    total = 0
    hooks = []

    def hook(module: Any, inp: Any, out: Any) -> None:
        nonlocal total
        h, w = inp[0].shape[-2:]
        if isinstance(module, SeKronConv2d):
            # count the path the layer actually runs at this input size
            if staged or module.uses_structured_path((int(h), int(w))):
                pad = module.padding if isinstance(module.padding, tuple) else (module.padding,) * 2
                c = module.structure.macs_conv2d(
                    int(h), int(w), stride=module.stride, padding=pad, dilation=module.dilation
                )
                total += c["sekron"]
            else:
                total += int(out[0].numel() * module.in_channels * math.prod(module.kernel_size))
        elif isinstance(module, torch.nn.Conv2d):
            total += int(out[0].numel() * module.in_channels * math.prod(module.kernel_size))
        elif isinstance(module, torch.nn.Linear):
            total += module.in_features * module.out_features

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, SeKronConv2d)):
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(x[:1])
    for h in hooks:
        h.remove()
    return total


def _n_params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


# -- format baselines ---------------------------------------------------------------------
def _format_params(kind: str, shape: tuple[int, ...], r: int) -> int:
    F, C, kh, kw = shape
    if kind == "tt":
        ranks = [1, min(r, F), min(r, kh * kw * C, F * C), min(r, kw), 1]
        return sum(ranks[i] * n * ranks[i + 1] for i, n in enumerate(shape))
    if kind == "tucker":
        rk = (min(r, F), min(r, C), kh, kw)
        return math.prod(rk) + sum(n * q for n, q in zip(shape, rk, strict=True))
    return r * (F + C + kh + kw)  # cp


def _format_layer(kind: str, conv: Any, budget: int) -> tuple[Any, int, float]:
    """A SeKronConv2d holding tensorly's fit of ``conv``'s kernel in one format, within budget."""
    torch = _require_torch()
    import tensorly as tl
    from tensorly.decomposition import parafac, tensor_train, tucker

    from .. import formats
    from ..torch import SeKronConv2d

    W = conv.weight.detach().cpu().numpy().astype(np.float64)
    shape = W.shape
    r = 1
    while _format_params(kind, shape, r + 1) <= budget and r < max(shape[0], shape[1]):
        r += 1
    F, C, kh, kw = shape
    tl.set_backend("numpy")
    if kind == "tt":
        fit = tensor_train(W, rank=[1, min(r, F), min(r, kh * kw * C, F * C), min(r, kw), 1])
        t = formats.from_tt(fit)
        approx = tl.tt_to_tensor(fit)
    elif kind == "tucker":
        fit = tucker(W, rank=[min(r, F), min(r, C), kh, kw], init="svd", random_state=0)
        t = formats.from_tucker(fit)
        approx = tl.tucker_to_tensor(fit)
    else:
        fit = parafac(W, rank=r, init="svd", random_state=0, n_iter_max=200)
        t = formats.from_cp(fit)
        approx = tl.cp_to_tensor(fit)
    err = float(np.linalg.norm(W - approx) / np.linalg.norm(W))
    layer = SeKronConv2d(
        t.structure, stride=conv.stride, padding=conv.padding, dilation=conv.dilation
    )
    with torch.no_grad():
        for p, a in zip(layer.factors, t.factors, strict=True):
            p.copy_(torch.from_numpy(np.array(a)).to(p.dtype))
        if layer.bias is not None and conv.bias is not None:
            layer.bias.copy_(conv.bias.detach())
    return layer, _format_params(kind, shape, r), err


def _replace(model: Any, name: str, new: Any) -> None:
    parent = model
    *path, last = name.split(".")
    for p in path:
        parent = getattr(parent, p)
    setattr(parent, last, new)


@dataclass
class _Setup:
    """What every stage of the demo shares: the data, the teacher and the seed."""

    X_tr: Any
    y_tr: Any
    X_te: Any
    y_te: Any
    teacher: Any
    seed: int
    say: Callable[[str], None]

    def row(
        self,
        method: str,
        target: str,
        model: Any,
        n_params: int | None = None,
        staged: bool = True,
        **kw: Any,
    ) -> DemoRow:
        """A table row for ``model`` measured on the test set (``staged``: count that path)."""
        return DemoRow(
            method,
            target,
            _n_params(model) if n_params is None else n_params,
            _conv_macs(model, self.X_te),
            _accuracy(model, self.X_te, self.y_te),
            macs_staged=_conv_macs(model, self.X_te, staged=True) if staged else None,
            **kw,
        )


def _train_teacher(epochs: int, seed: int, say: Callable[[str], None]) -> _Setup:
    torch = _require_torch()
    torch.manual_seed(seed)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    X_tr, y_tr, X_te, y_te = _data(seed)
    say(f"training the CNN ({epochs} epochs on {len(X_tr)} digits)")
    teacher = _model()
    _train(teacher, X_tr, y_tr, epochs, 2e-3, seed)
    return _Setup(X_tr, y_tr, X_te, y_te, teacher, seed, say)


def _sekron_students(setup: _Setup, ratio: float) -> list[tuple[DemoRow, Any]]:
    """SeKron (3 factors) and GKPD (2 factors) through :func:`sekron.torch.compress`."""
    from ..torch import compress

    # calibrated: fitted to each conv's im2col Gram on training images, with the ratio
    # shared across the compressed convs (plain rows: per layer, by the weight error)
    calib = [setup.X_tr[i : i + 256] for i in range(0, min(len(setup.X_tr), 1024), 256)]
    out = []
    for label, S, data in (
        ("SeKron (3 factors)", 3, None),
        ("GKPD (2 factors)", 2, None),
        ("SeKron (3 factors), calibrated", 3, calib),
        ("GKPD (2 factors), calibrated", 2, calib),
    ):
        setup.say(f"compressing with {label} at {ratio:g}×")
        student, report = compress(
            setup.teacher,
            ratio=ratio,
            include=list(COMPRESSED),
            n_factors=S,
            example_input=setup.X_te[:1],
            calibration=data,
            progress=False,
            random_state=setup.seed,
        )
        errors = [float(r.relative_error) for r in report if r.relative_error is not None]
        out.append((setup.row(label, f"{ratio:g}×", student, layer_errors=errors), student))
    return out


def _format_students(setup: _Setup, ratio: float) -> list[tuple[DemoRow, Any]]:
    """Tensorly's TT, Tucker and CP fits at matched parameters, run as SeKron layers."""
    convs = {name: dict(setup.teacher.named_modules())[name] for name in COMPRESSED}
    budgets = {name: int(conv.weight.numel() / ratio) for name, conv in convs.items()}
    out = []
    for kind, label in (("tt", "Tensor-Train"), ("tucker", "Tucker"), ("cp", "CP")):
        setup.say(f"fitting {label} at matched parameters ({ratio:g}×)")
        student = copy.deepcopy(setup.teacher)
        params_saved = 0
        errors = []
        for name, conv in convs.items():
            layer, n_fmt, err = _format_layer(kind, conv, budgets[name])
            _replace(student, name, layer)
            params_saved += conv.weight.numel() - n_fmt
            errors.append(err)
        n_params = _n_params(setup.teacher) - params_saved  # the format's own parameter count
        row = setup.row(
            label, f"{ratio:g}×", student, n_params, notes="run as SeKron", layer_errors=errors
        )
        out.append((row, student))
    return out


def _distill_all(setup: _Setup, students: list[tuple[DemoRow, Any]], epochs: int) -> None:
    torch = _require_torch()
    from ..torch import distill

    gen = torch.Generator().manual_seed(setup.seed)
    batches = [(xb,) for xb, _ in _batches(setup.X_tr, setup.y_tr, 64, gen)]
    setup.say(f"distilling every compressed model ({epochs} epochs each)")
    for row, student in students:
        distill(
            student, setup.teacher, batches, logits=True, temperature=2.0, epochs=epochs, lr=1e-3
        )
        row.accuracy_distilled = _accuracy(student, setup.X_te, setup.y_te)


def _integer_rows(
    setup: _Setup,
    dense_row: DemoRow,
    students: list[tuple[DemoRow, Any]],
    bits: Iterable[int],
    epochs: int,
) -> list[DemoRow]:
    """Integer fine-tuning of the dense model and of the best compressed SeKron one."""
    from ..torch import integerize

    best_row, best_student = max(
        ((r, s) for r, s in students if r.method.startswith("SeKron")),
        key=lambda item: (item[0].accuracy_distilled or 0.0, -item[0].params),
    )
    rows = []
    for b in bits:
        for base, base_row in ((setup.teacher, dense_row), (best_student, best_row)):
            setup.say(f"integer fine-tuning of {base_row.method} at {b} bits")
            int_model = integerize(base, b, seed=setup.seed)
            _train(int_model, setup.X_tr, setup.y_tr, epochs, 1e-3, setup.seed, optimizer="sgd")
            n_int = sum(1 for m in int_model.modules() if type(m).__name__.startswith("Int"))
            int_row = DemoRow(
                f"{base_row.method} → int{b}",
                base_row.target,
                _n_params(int_model),
                base_row.macs,
                _accuracy(int_model, setup.X_te, setup.y_te),
                notes=f"{n_int} integer layers, fine-tuned {epochs} epochs",
            )
            int_row.latency_ms = _latency_ms(int_model, setup.X_te, repeat=1)
            rows.append(int_row)
    return rows


def run_demo(
    ratios: Iterable[float] = (2.0, 4.0, 8.0),
    bits: Iterable[int] = (16, 10, 8),
    *,
    epochs: int = 30,
    distill_epochs: int = 8,
    int_epochs: int = 3,
    seed: int = 0,
    plot: str | Path | None = "sekron-demo.png",
    out: TextIO | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[DemoRow]:
    """Run the demo pipeline; return the table rows (see the module docstring).

    Parameters
    ----------
    ratios : iterable of float
        Compression ratios of the two large convolutions.
    bits : iterable of int
        Bit-widths of the integer fine-tuning runs.
    epochs, distill_epochs, int_epochs : int
        Training, distillation and integer fine-tuning epochs.
    seed : int
        Seed of the data split, initialization and batches.
    plot : path or None
        Where to write the accuracy-against-parameters plot (PNG).
    out : text stream, optional
        Where to print the table (default stdout).
    progress : callable, optional
        Called with a short message at each stage (default: print to stderr).

    Returns
    -------
    list of DemoRow
    """
    out = sys.stdout if out is None else out
    say = progress or (lambda msg: print(f"[sekron demo] {msg}", file=sys.stderr, flush=True))
    setup = _train_teacher(epochs, seed, say)
    dense = setup.row("dense CNN", "1×", setup.teacher, staged=False)
    students: list[tuple[DemoRow, Any]] = []
    for ratio in ratios:
        students += _sekron_students(setup, ratio)
        students += _format_students(setup, ratio)
    _distill_all(setup, students, distill_epochs)
    rows = [dense, *(r for r, _ in students)]
    rows += _integer_rows(setup, dense, students, bits, int_epochs)
    say("timing every float model (interleaved rounds)")
    _time_interleaved([(dense, setup.teacher), *students], setup.X_te)
    _print_rows(rows, len(setup.X_te), out)
    if plot is not None:
        _plot(rows, Path(plot))
        print(f"\nplot written to {plot}", file=out)
    return rows


def _print_rows(rows: list[DemoRow], n_test: int, out: TextIO) -> None:
    print(
        f"\nsekron demo: digits CNN, test set of {n_test} images; latency for the whole test "
        "set on the CPU; MACs per image of the path each layer runs (on 8×8 and 4×4 images "
        "the SeKron layers choose the dense path) and, as 'MACs staged', of the staged "
        "SeKron convolution",
        file=out,
    )
    header = (
        "method",
        "ratio",
        "params",
        "MACs",
        "MACs staged",
        "acc %",
        "distilled %",
        "latency ms",
        "notes",
    )
    body = [
        (
            r.method,
            r.target,
            f"{r.params:,}",
            f"{r.macs:,}",
            "" if r.macs_staged is None else f"{r.macs_staged:,}",
            f"{r.accuracy:.2f}",
            "" if r.accuracy_distilled is None else f"{r.accuracy_distilled:.2f}",
            f"{r.latency_ms:.1f}",
            r.notes,
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    line = "  ".join(f"{{:<{w}}}" if i in (0, 8) else f"{{:>{w}}}" for i, w in enumerate(widths))
    print(line.format(*header), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for b in body:
        print(line.format(*b), file=out)


def _plot(rows: list[DemoRow], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = [
        m for m in dict.fromkeys(r.method for r in rows) if "→" not in m and m != "dense CNN"
    ]
    for m in methods:
        pts = sorted((r.params, r.accuracy_distilled or r.accuracy) for r in rows if r.method == m)
        ax.plot([p for p, _ in pts], [a for _, a in pts], marker="o", label=m)
    dense = rows[0]
    ax.axhline(dense.accuracy, color="k", ls="--", lw=1, label=f"dense ({dense.params:,} params)")
    ax.set_xscale("log")
    ax.set_xlabel("parameters of the whole model")
    ax.set_ylabel("test accuracy after distillation (%)")
    ax.set_title("digits CNN: compression of its two large convolutions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``demo`` sub-command."""
    d = subparsers.add_parser(
        "demo",
        help="train a digits CNN, compress it (SeKron, GKPD, TT, Tucker, CP), distill, "
        "fine-tune with integers",
    )
    d.add_argument("--ratios", type=float, nargs="+", default=[2.0, 4.0, 8.0])
    d.add_argument("--bits", type=int, nargs="+", default=[16, 10, 8])
    d.add_argument("--epochs", type=int, default=30, help="training epochs of the dense CNN")
    d.add_argument("--distill-epochs", type=int, default=8)
    d.add_argument("--int-epochs", type=int, default=3, help="integer fine-tuning epochs")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--plot", default="sekron-demo.png", help="PNG to write ('' for none)")
    return d


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``sekron demo``."""
    run_demo(
        ratios=args.ratios,
        bits=args.bits,
        epochs=args.epochs,
        distill_epochs=args.distill_epochs,
        int_epochs=args.int_epochs,
        seed=args.seed,
        plot=None if args.plot == "" else args.plot,
        out=out,
    )
    return 0
