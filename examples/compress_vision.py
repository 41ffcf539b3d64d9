"""Compress a small denoising CNN and measure what it keeps in PSNR: SeKron vs GKPD, TT, Tucker, CP, SVD.

The task: Gaussian denoising of grayscale images at noise level sigma = 25/255 (pixel
values in [0, 1]). Images are scikit-image's bundled ones (``skimage.data``, shipped in
the wheel; nothing is downloaded). Whole images are split: the model trains on random
32x32 patches of ``TRAIN_IMAGES`` and is tested on a fixed 256x256 centre crop of each of
``HELD_OUT_IMAGES``, with one fixed noise draw per image (seeded).

The model is a DnCNN-like residual denoiser (Zhang et al. 2017, without batch norm):
``conv(1->32), ReLU, 4 x [conv(32->32), ReLU], conv(32->1)``, every conv 3x3 with
``padding=1`` (zeros), and the output ``noisy - body(noisy)``. It is trained in float32
with Adam on fresh patches and fresh noise every step.

The four 32->32 convs (36,864 of the model's 37,569 kernel weights; the first and last
conv are 288 weights each and stay dense, as do all biases) are compressed at a
per-layer budget of ``kernel size / R`` parameters, for each ratio R, by

* ``svd``: the truncated SVD of the kernel as a (32, 288) matrix, ``compress(...,
  methods="lowrank")``;
* ``gkpd``: two Kronecker factors of any other shapes (GKPD), ``methods="kronecker"``;
* ``gkpd-fixed``: GKPD with fixed balanced shapes, (F/8, C/8, 3, 3) ⊗ (8, 8, 1, 1), at the
  largest rank within the budget (``SeKronConv2d.from_conv(structure=...)``), since
  ``methods="kronecker"`` ranks candidate shapes by multiply-adds and may leave part of
  the budget unused;
* ``sekron``: three Kronecker factors, ``methods="sekron", n_factors=3``;
* ``auto``: ``compress``'s default two-factor families, the least error per layer;
* ``tt``: a tensor train of the kernel in mode order (C_out, Kh, Kw, C_in), TT-SVD
  (tensorly ``tensor_train``), uniform rank capped at each cut;
* ``tucker``: Tucker-2 on the two channel modes (tensorly ``partial_tucker``, HOOI), the
  3x3 spatial modes kept whole (Kim et al. 2016);
* ``cp``: a rank-R CP of the 4-way kernel (tensorly ``parafac``, CP-ALS; Lebedev et al.).

Each comes plain (fitted to the weight) and data-aware (suffix ``-data``): for the
library's structures ``compress(..., calibration=batches, budget="layer")`` (the layer's
im2col Gram, DESIGN.md 2.8; the per-layer budget keeps the comparison at equal
parameters); ``auto-data`` uses ``budget="model"`` (the library's default, the same total).
sekron has no data-aware TT, Tucker or CP fit, so for those the example minimises the
same objective ``tr((W - Ŵ) C (W - Ŵ)ᵀ)`` itself, by L-BFGS over the format's factors
started from the plain fit (the best iterate is kept: never worse than the plain fit).

The library's layers are ``SeKronConv2d`` (run on the dense path here: same outputs,
faster on this CPU at 32x32). TT, Tucker and CP layers keep their own cores as trainable
parameters and rebuild the dense kernel in each forward pass (``FactoredConv2d``): their
SeKron mirrors (``sekron.formats.from_tt`` etc.) are exact but store TT and Tucker
factors once per branch, i.e. more parameters (the script checks and prints both).

Recovery: the same number of distillation steps for every model (``sekron.torch.distill``,
MSE on the final conv's output, i.e. the predicted noise, with the original model as
teacher; Adam, the same fixed batches of noisy training patches for all).

Writes docs/img/vision_results.md, docs/img/vision_results.json and docs/img/vision_psnr.png.

    python examples/compress_vision.py            # full run (22 minutes, one thread, load ~10)
    python examples/compress_vision.py --quick    # smoke run (< 1 minute), vision_quick_* files
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

OUT = Path(__file__).resolve().parents[1] / "docs" / "img"
SIGMA = 25.0 / 255.0
TRAIN_IMAGES = (
    "astronaut",
    "coffee",
    "chelsea",
    "moon",
    "page",
    "text",
    "brick",
    "grass",
    "immunohistochemistry",
    "hubble_deep_field",
)
HELD_OUT_IMAGES = ("camera", "rocket", "coins", "gravel")
LIBRARY = ("svd", "gkpd", "gkpd-fixed", "sekron", "auto")
FORMATS = ("tt", "tucker", "cp")
METHODS = tuple(m + s for m in LIBRARY + FORMATS for s in ("", "-data"))
# "auto" (plain) chose the truncated SVD on every layer at 2x (the same PSNR as "svd")
DEFAULT_METHODS = tuple(m for m in METHODS if m != "auto")


# ------------------------------------------------------------------------------ data
def load_gray(name: str) -> np.ndarray:
    """A bundled skimage image as float32 grayscale in [0, 1]."""
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.util import img_as_float

    img = getattr(skimage.data, name)()
    if img.ndim == 3:
        img = rgb2gray(img[..., :3])
    return img_as_float(img).astype(np.float32)


def centre_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape
    s = min(size, h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return img[top : top + s, left : left + s]


def test_set(names: Sequence[str], size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean centre crops ``(n, 1, s, s)`` and their noisy versions (one fixed noise draw)."""
    clean = torch.stack([torch.from_numpy(centre_crop(load_gray(n), size)) for n in names])[:, None]
    gen = torch.Generator().manual_seed(seed)
    noisy = clean + SIGMA * torch.randn(clean.shape, generator=gen)
    return clean, noisy


class PatchSampler:
    """Random square patches (with flips) of the training images, seeded."""

    def __init__(self, images: Sequence[np.ndarray], size: int, seed: int):
        self.images = [torch.from_numpy(im) for im in images]
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)

    def clean(self, n: int) -> torch.Tensor:
        s, out = self.size, []
        for _ in range(n):
            im = self.images[self.rng.integers(len(self.images))]
            top = self.rng.integers(im.shape[0] - s + 1)
            left = self.rng.integers(im.shape[1] - s + 1)
            p = im[top : top + s, left : left + s]
            if self.rng.random() < 0.5:
                p = p.flip(1)
            if self.rng.random() < 0.5:
                p = p.flip(0)
            out.append(p)
        return torch.stack(out)[:, None]

    def pair(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(noisy, clean)`` patches, fresh noise of level ``SIGMA``."""
        c = self.clean(n)
        return c + SIGMA * torch.randn(c.shape, generator=self.gen), c


# ----------------------------------------------------------------------------- model
class DnCNN(nn.Module):
    """Residual denoiser: ``x - body(x)``, ``depth`` 3x3 convs with zero padding, no batch norm."""

    def __init__(self, channels: int = 32, depth: int = 6):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, channels, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(channels, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x)


def inner_convs(model: DnCNN) -> list[str]:
    """Names of the convs that are compressed: all but the first and the last."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return names[1:-1]


def last_conv(model: nn.Module) -> str:
    return f"body.{len(model.body) - 1}"  # type: ignore[arg-type]


def train(
    model: nn.Module, sampler: PatchSampler, steps: int, batch: int, lr: float, progress: bool
) -> list[float]:
    from tqdm.auto import tqdm

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    model.train()
    bar = tqdm(range(steps), desc="train", disable=not progress, leave=False)
    for _ in bar:
        noisy, clean = sampler.pair(batch)
        loss = F.mse_loss(model(noisy), clean)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.2e}")
    return losses


def psnr(x: torch.Tensor, ref: torch.Tensor) -> np.ndarray:
    """PSNR in dB of each image (peak 1), ``x`` clipped to [0, 1]."""
    mse = (x.clamp(0, 1) - ref).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1 / mse)).numpy()


@torch.no_grad()
def evaluate(model: nn.Module, clean: torch.Tensor, noisy: torch.Tensor) -> float:
    """Mean PSNR over the test images, one image at a time."""
    model.eval()
    out = torch.cat([model(noisy[i : i + 1]) for i in range(len(noisy))])
    return float(psnr(out, clean).mean())


# ------------------------------------------------------------- factored conv baselines
class FactoredConv2d(nn.Module):
    """A 3x3 conv whose kernel is ``build(*factors)``; the factors are the parameters.

    For comparing quality at a parameter count: the dense kernel is rebuilt in each
    forward pass, which gives the same outputs as a structured evaluation.
    """

    def __init__(
        self,
        factors: Sequence[np.ndarray],
        build: Callable[..., torch.Tensor],
        conv: nn.Conv2d,
        label: str,
    ):
        super().__init__()
        self.factors = nn.ParameterList(
            [
                nn.Parameter(torch.as_tensor(np.ascontiguousarray(f), dtype=torch.float32))
                for f in factors
            ]
        )
        self.bias = nn.Parameter(conv.bias.detach().clone()) if conv.bias is not None else None
        self.build = build
        self.padding = conv.padding
        self.label = label

    def kernel(self) -> torch.Tensor:
        return self.build(*self.factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.kernel(), self.bias, padding=self.padding)

    def extra_repr(self) -> str:
        return self.label


def _tt_build(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    # TT cores of the kernel in mode order (C_out, Kh, Kw, C_in) -> (C_out, C_in, Kh, Kw)
    return torch.einsum("xfa,ahb,bwc,cgy->fghw", a, b, c, d)


def _tucker_build(core: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.einsum("abhw,fa,cb->fchw", core, u, v)


def _cp_build(u: torch.Tensor, v: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.einsum("fr,cr,hr,wr->fchw", u, v, h, w)


def _tt_ranks(dims: Sequence[int], r: int) -> list[int]:
    cuts = [
        min(r, math.prod(dims[: k + 1]), math.prod(dims[k + 1 :])) for k in range(len(dims) - 1)
    ]
    return [1, *cuts, 1]


def _tt_params(dims: Sequence[int], ranks: Sequence[int]) -> int:
    return sum(ranks[k] * dims[k] * ranks[k + 1] for k in range(len(dims)))


def fit_format(
    W: np.ndarray, method: str, budget: float, seed: int
) -> tuple[list[np.ndarray], Callable[..., torch.Tensor], str]:
    """TT / Tucker-2 / CP factors of the kernel ``W`` (F, C, 3, 3) within ``budget`` parameters."""
    import tensorly as tl
    from tensorly.decomposition import parafac, partial_tucker, tensor_train

    tl.set_backend("numpy")
    f, c, kh, kw = W.shape
    if method == "tt":
        dims = (f, kh, kw, c)
        r = 1
        while _tt_params(dims, _tt_ranks(dims, r + 1)) <= budget and r < max(dims) ** 2:
            r += 1
        ranks = _tt_ranks(dims, r)
        cores = tensor_train(W.transpose(0, 2, 3, 1), ranks)
        return [np.asarray(g) for g in cores], _tt_build, f"TT ranks {tuple(ranks[1:-1])}"
    if method == "tucker":
        r = 1
        while (r + 1) ** 2 * kh * kw + (r + 1) * (f + c) <= budget and r < min(f, c):
            r += 1
        (core, (u, v)), _ = partial_tucker(
            W, rank=[r, r], modes=[0, 1], init="svd", n_iter_max=50, random_state=seed
        )
        return (
            [np.asarray(core), np.asarray(u), np.asarray(v)],
            _tucker_build,
            f"Tucker-2 ({r}, {r})",
        )
    if method == "cp":
        r = int(budget // (f + c + kh + kw))
        cp = parafac(W, r, init="svd", n_iter_max=200, tol=1e-8, random_state=seed)
        factors = [np.asarray(x) for x in cp.factors]
        factors[0] = factors[0] * np.asarray(cp.weights)[None, :]
        return factors, _cp_build, f"CP rank {r}"
    raise ValueError(f"method: expected one of {FORMATS}, got {method!r}")


def data_error(W: torch.Tensor, approx: torch.Tensor, gram: torch.Tensor) -> float:
    """``‖(W − Ŵ) L‖_F / ‖W L‖_F`` with ``L Lᵀ = gram`` (kernels flattened to (F, C·Kh·Kw))."""
    d = (W - approx).reshape(W.shape[0], -1).double()
    w = W.reshape(W.shape[0], -1).double()
    num = torch.einsum("fi,ij,fj->", d, gram, d)
    den = torch.einsum("fi,ij,fj->", w, gram, w)
    return float(torch.sqrt(num.clamp_min(0) / den))


def refine_on_gram(
    layer: FactoredConv2d, W: torch.Tensor, gram: torch.Tensor, ridge: float, iters: int
) -> None:
    """Minimise the data-weighted error of ``layer``'s kernel by L-BFGS over its factors.

    Same objective as the library's data-aware fits, ``tr((W − Ŵ)(C + λI)(W − Ŵ)ᵀ)``
    with ``λ = ridge · tr(C) / n``; starts from the current (plain) factors and keeps the
    best iterate, so the result is never worse than the start on that objective.
    """
    n = gram.shape[0]
    C = gram + ridge * torch.trace(gram) / n * torch.eye(n, dtype=gram.dtype)
    params = [p.detach().double().clone().requires_grad_(True) for p in layer.factors]
    Wd = W.double().reshape(W.shape[0], -1)
    scale = torch.einsum("fi,ij,fj->", Wd, C, Wd)

    def objective() -> torch.Tensor:
        d = Wd - layer.build(*params).reshape(W.shape[0], -1)
        return torch.einsum("fi,ij,fj->", d, C, d) / scale

    opt = torch.optim.LBFGS(params, lr=1, max_iter=iters, line_search_fn="strong_wolfe")
    with torch.no_grad():
        best = (float(objective()), [p.detach().clone() for p in params])

    def closure() -> torch.Tensor:
        nonlocal best
        opt.zero_grad()
        loss = objective()
        loss.backward()
        if loss.item() < best[0]:
            best = (loss.item(), [p.detach().clone() for p in params])
        return loss

    opt.step(closure)
    with torch.no_grad():
        for p, b in zip(layer.factors, best[1], strict=True):
            p.copy_(b.to(p.dtype))


# ----------------------------------------------------------------------- compressing
def layer_grams(
    model: nn.Module, names: Sequence[str], batches: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Mean second moment of each named conv's im2col patches (sekron.torch.calibrate)."""
    from sekron.torch.calibration import calibrate

    found = calibrate(model, batches, include=list(names), progress=False)
    return {k: torch.from_numpy(g.gram / g.n_samples) for k, g in found.items()}


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)


def _kernel(mod: nn.Module) -> torch.Tensor:
    from sekron.torch import SeKronConv2d

    if isinstance(mod, SeKronConv2d):
        return mod.dense_weight().detach()
    if isinstance(mod, FactoredConv2d):
        return mod.kernel().detach()
    assert isinstance(mod, nn.Conv2d)
    return mod.weight.detach()


def compress_model(
    model: DnCNN,
    method: str,
    ratio: float,
    grams: dict[str, torch.Tensor],
    calibration: list[torch.Tensor],
    *,
    ridge: float,
    max_candidates: int,
    lbfgs_iters: int,
    seed: int,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """``model`` with its inner convs replaced by ``method`` at ``kernel size / ratio`` each."""
    from sekron import Structure
    from sekron.torch import SeKronConv2d, compress

    names = inner_convs(model)
    base, aware = method.removesuffix("-data"), method.endswith("-data")
    rows: list[dict[str, Any]] = []
    if base == "gkpd-fixed":
        small = copy.deepcopy(model)
        for name in names:
            conv = small.get_submodule(name)
            assert isinstance(conv, nn.Conv2d)
            f, c, kh, kw = conv.weight.shape
            shapes = [(f // 8, c // 8, kh, kw), (8, 8, 1, 1)]
            rank = int(conv.weight.numel() / ratio // sum(math.prod(s) for s in shapes))
            gram = {"gram": grams[name].numpy(), "ridge": ridge} if aware else {}
            new = SeKronConv2d.from_conv(
                conv, Structure(shapes, ranks=rank), random_state=seed, **gram
            )
            new.path = "dense"
            _swap(small, name, new)
            rows.append(
                {
                    "name": name,
                    "structure": str(new.structure),
                    "kernel_params": new.structure.n_params,
                }
            )
    elif base in LIBRARY:
        opts: dict[str, Any] = {"max_candidates": max_candidates, "random_state": seed}
        if base != "auto":
            opts["methods"] = {"svd": "lowrank", "gkpd": "kronecker", "sekron": "sekron"}[base]
        if base == "sekron":
            opts["n_factors"] = 3
        if aware:
            opts.update(calibration=calibration, ridge=ridge)
            opts["budget"] = "model" if base == "auto" else "layer"
        small, report = compress(
            model, ratio=ratio, include=names, progress=False, example_input=calibration[0], **opts
        )
        for mod in small.modules():
            if isinstance(mod, SeKronConv2d):
                mod.path = "dense"  # same outputs; the staged path is slower on 32x32 here
        for r in report:
            rows.append(
                {
                    "name": r.name,
                    "structure": r.skipped or str(r.structure),
                    "kernel_params": r.params_after - (0 if r.skipped else _bias(small, r.name)),
                    "library_data_error": r.data_error,
                    "library_plain_data_error": r.plain_data_error,
                }
            )
    else:
        small = copy.deepcopy(model)
        for name in names:
            conv = small.get_submodule(name)
            assert isinstance(conv, nn.Conv2d)
            W = conv.weight.detach().double().numpy()
            factors, build, label = fit_format(W, base, W.size / ratio, seed)
            new = FactoredConv2d(factors, build, conv, label)
            if aware:
                refine_on_gram(new, conv.weight.detach(), grams[name], ridge, lbfgs_iters)
            _swap(small, name, new)
            rows.append(
                {
                    "name": name,
                    "structure": label,
                    "kernel_params": sum(p.numel() for p in new.factors),
                }
            )
    for row in rows:
        dense = model.get_submodule(row["name"]).weight.detach()
        approx = _kernel(small.get_submodule(row["name"]))
        row["dense_kernel_params"] = dense.numel()
        row["weight_error"] = float((dense - approx).norm() / dense.norm())
        row["data_error"] = data_error(dense, approx, grams[row["name"]])
    return small, rows


def _bias(model: nn.Module, name: str) -> int:
    b = getattr(model.get_submodule(name), "bias", None)
    return 0 if b is None else b.numel()


def mirror_params(rows_model: nn.Module, names: Sequence[str]) -> list[tuple[str, int, int, float]]:
    """For each FactoredConv2d: (format, its parameters, its SeKron mirror's, max abs diff)."""
    import tensorly as tl

    import sekron as sk

    out = []
    for name in names:
        mod = rows_model.get_submodule(name)
        if not isinstance(mod, FactoredConv2d):
            continue
        fs = [p.detach().double().numpy() for p in mod.factors]
        if mod.build is _cp_build:
            t = sk.formats.from_cp(tl.cp_tensor.CPTensor((np.ones(fs[0].shape[1]), fs)))
            kind = "cp"
        elif mod.build is _tucker_build:
            full = tl.tucker_tensor.TuckerTensor((fs[0], [fs[1], fs[2], np.eye(3), np.eye(3)]))
            t = sk.formats.from_tucker(full)
            kind = "tucker (with 3x3 identity spatial factors)"
        else:
            t = sk.formats.from_tt(tl.tt_tensor.TTTensor(fs))
            kind = "tt (mode order C_out, Kh, Kw, C_in)"
        dense = mod.kernel().detach().double().numpy()
        if mod.build is _tt_build:
            dense = dense.transpose(0, 2, 3, 1)
        diff = float(np.abs(t.to_dense() - dense).max())
        out.append((kind, sum(f.size for f in fs), t.n_params, diff))
    return out


# ---------------------------------------------------------------------------- recovery
def distill_student(
    student: nn.Module, teacher: nn.Module, batches: list[torch.Tensor], lr: float
) -> list[float]:
    """One pass over ``batches``: MSE between the final convs' outputs (the predicted noise)."""
    from sekron.torch import distill

    return distill(
        student,
        teacher,
        batches,
        hidden=[last_conv(teacher)],
        logits=False,
        epochs=1,
        lr=lr,
    )


# -------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny smoke configuration (< 1 minute)")
    p.add_argument("--ratios", type=float, nargs="+", default=None, help="default 2 4 8")
    p.add_argument("--methods", nargs="+", default=None, choices=METHODS)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--depth", type=int, default=6, help="number of convs (>= 3)")
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--train-steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--crop", type=int, default=256, help="size of the held-out centre crops")
    p.add_argument("--calib-batches", type=int, default=8)
    p.add_argument("--recovery-steps", type=int, default=50)
    p.add_argument("--recovery-batch", type=int, default=16)
    p.add_argument("--recovery-lr", type=float, default=3e-4)
    p.add_argument("--ridge", type=float, default=1e-3)
    p.add_argument("--max-candidates", type=int, default=2)
    p.add_argument("--lbfgs-iters", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.ratios = args.ratios or [4.0]
        args.methods = args.methods or [
            "svd",
            "svd-data",
            "gkpd",
            "gkpd-data",
            "tucker",
            "tucker-data",
        ]
        args.channels, args.depth, args.patch = 16, 4, 24
        args.train_steps, args.batch, args.crop = 150, 16, 96
        args.calib_batches, args.recovery_steps, args.recovery_batch = 2, 10, 8
        args.max_candidates, args.lbfgs_iters = 2, 30
    args.ratios = args.ratios or [2.0, 4.0, 8.0]
    args.methods = args.methods or list(DEFAULT_METHODS)
    if args.depth < 3:
        p.error("--depth: expected at least 3 convs (a first, an inner and a last)")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from tqdm.auto import tqdm

    args = parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    sampler = PatchSampler([load_gray(n) for n in TRAIN_IMAGES], args.patch, args.seed)
    clean, noisy = test_set(HELD_OUT_IMAGES, args.crop, args.seed + 1)
    noisy_psnr = float(psnr(noisy, clean).mean())

    model = DnCNN(args.channels, args.depth)
    losses = train(model, sampler, args.train_steps, args.batch, args.lr, not args.no_progress)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    base_psnr = evaluate(model, clean, noisy)
    train_s = time.perf_counter() - t0
    print(
        f"noisy input {noisy_psnr:.2f} dB, trained model {base_psnr:.2f} dB "
        f"({args.train_steps} steps, {train_s:.0f} s, last loss {losses[-1]:.2e})"
    )
    # calibration and recovery data: fixed noisy training patches, the same for every method
    calibration = [sampler.pair(args.batch)[0] for _ in range(args.calib_batches)]
    recovery = [sampler.pair(args.recovery_batch)[0] for _ in range(args.recovery_steps)]
    names = inner_convs(model)
    grams = layer_grams(model, names, calibration)
    dense_kernel = sum(model.get_submodule(n).weight.numel() for n in names)
    all_kernel = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))

    results = []
    mirrors: dict[str, list[tuple[str, int, int, float]]] = {}
    jobs = [(m, r) for r in args.ratios for m in args.methods]
    bar = tqdm(jobs, desc="methods", disable=args.no_progress)
    for method, ratio in bar:
        bar.set_postfix(method=method, ratio=ratio)
        start = time.perf_counter()
        small, rows = compress_model(
            model,
            method,
            ratio,
            grams,
            calibration,
            ridge=args.ridge,
            max_candidates=args.max_candidates,
            lbfgs_iters=args.lbfgs_iters,
            seed=args.seed,
        )
        fit_s = time.perf_counter() - start
        if method.removesuffix("-data") in FORMATS and method not in mirrors:
            mirrors[method] = mirror_params(small, names)
        before = evaluate(small, clean, noisy)
        for p in small.parameters():
            p.requires_grad_(True)
        start = time.perf_counter()
        rec_losses = distill_student(small, model, recovery, args.recovery_lr)
        rec_s = time.perf_counter() - start
        after = evaluate(small, clean, noisy)
        kparams = sum(r["kernel_params"] for r in rows)
        res = {
            "method": method,
            "ratio": ratio,
            "kernel_params": kparams,
            "dense_kernel_params": dense_kernel,
            "achieved_ratio": dense_kernel / kparams,
            "within_budget": all(
                r["kernel_params"] <= r["dense_kernel_params"] / ratio for r in rows
            ),
            "within_total_budget": kparams <= dense_kernel / ratio,
            "psnr_before": before,
            "psnr_after": after,
            "fit_seconds": fit_s,
            "recovery_seconds": rec_s,
            "recovery_steps": len(rec_losses),
            "recovery_loss_first_last": [rec_losses[0], rec_losses[-1]],
            "mean_weight_error": float(np.mean([r["weight_error"] for r in rows])),
            "mean_data_error": float(np.mean([r["data_error"] for r in rows])),
            "layers": rows,
        }
        results.append(res)
        args.out.mkdir(parents=True, exist_ok=True)  # partial results survive an interrupted run
        stem = "vision_quick" if args.quick else "vision"
        (args.out / f"{stem}_results.partial.json").write_text(json.dumps(results, indent=1))
        tqdm.write(
            f"{method:>12} {ratio:>3g}x: params {res['achieved_ratio']:.2f}x, data err "
            f"{res['mean_data_error']:.3f}, PSNR {before:.2f} -> {after:.2f} dB "
            f"(orig {base_psnr:.2f})"
        )
    summary = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "sigma": SIGMA,
        "train_images": list(TRAIN_IMAGES),
        "held_out_images": list(HELD_OUT_IMAGES),
        "noisy_psnr": noisy_psnr,
        "model_psnr": base_psnr,
        "model_kernel_params": all_kernel,
        "compressed_kernel_params": dense_kernel,
        "compressed_layers": names,
        "train_seconds": train_s,
        "train_loss_last": losses[-1],
        "format_mirrors": mirrors,
        "results": results,
        "total_seconds": time.perf_counter() - t0,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3]
        if Path("/proc/loadavg").exists()
        else None,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "vision_quick" if args.quick else "vision"  # a smoke run keeps the measured files
    (args.out / f"{stem}_results.json").write_text(json.dumps(summary, indent=1))
    table = results_table(summary)
    (args.out / f"{stem}_results.md").write_text(table + "\n")
    print(table)
    if not args.no_plot:
        plot(summary, args.out / f"{stem}_psnr.png")
    print(f"total {summary['total_seconds']:.0f} s, load average {summary['loadavg']}")
    return summary


def results_table(summary: dict[str, Any]) -> str:
    base = summary["model_psnr"]
    lines = [
        f"Noisy input {summary['noisy_psnr']:.2f} dB; original model {base:.2f} dB "
        f"(mean PSNR over {len(summary['held_out_images'])} held-out crops, sigma = 25/255).",
        "",
        "| method | ratio | params ratio achieved | structure (first layer) | mean data err | "
        "PSNR before | PSNR after | drop after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["results"]:
        flag = "" if r["within_total_budget"] else " (over budget)"
        lines.append(
            f"| {r['method']} | {r['ratio']:g}× | {r['achieved_ratio']:.2f}×{flag} | "
            f"{r['layers'][0]['structure']} | {r['mean_data_error']:.3f} | "
            f"{r['psnr_before']:.2f} | {r['psnr_after']:.2f} | {base - r['psnr_after']:.2f} |"
        )
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    bases = list(dict.fromkeys(r["method"].removesuffix("-data") for r in summary["results"]))
    colors = {b: plt.cm.tab10(i) for i, b in enumerate(bases)}
    for ax, key, title in zip(
        axes, ("psnr_before", "psnr_after"), ("before recovery", "after recovery"), strict=True
    ):
        for method in dict.fromkeys(r["method"] for r in summary["results"]):
            rs = sorted(
                (r for r in summary["results"] if r["method"] == method), key=lambda r: r["ratio"]
            )
            b = method.removesuffix("-data")
            ax.plot(
                [r["achieved_ratio"] for r in rs],
                [r[key] for r in rs],
                marker="o" if method.endswith("-data") else "x",
                linestyle="-" if method.endswith("-data") else "--",
                color=colors[b],
                label=method,
            )
        ax.axhline(summary["model_psnr"], color="k", lw=1, label="original")
        ax.axhline(summary["noisy_psnr"], color="grey", lw=1, ls=":", label="noisy input")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("compression of the inner convs (achieved)")
        ax.set_title(f"held-out PSNR {title}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("PSNR (dB)")
    axes[1].legend(fontsize=7, ncol=2, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
