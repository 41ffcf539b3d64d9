"""Integer training with sekron.fixed next to float32, no torch.

1. Classification on scikit-learn's digits (bundled, no download): an MLP and a small CNN
   trained with integer linear/conv layers (forward, backward and the SGD products) at
   16, 12, 10 and 8 bits, next to float32 with the same seed, split and schedule.
   Softmax and the loss stay in float (DESIGN 2.7). Accuracy is mean +- spread over seeds.
2. Regression where precision matters: an MLP fitting a smooth function down to a low
   error floor; per bit-width, the step where its loss curve departs from float's, with
   wide (float32) master weights and with fully integer b-bit weight updates.

Writes docs/img/fixed_results.json, docs/img/fixed_results.md and docs/img/fixed_training.png.

    python examples/integer_training.py            # full run (a few minutes on 2 cores)
    python examples/integer_training.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from sekron.fixed import (
    FixedTensor,
    conv2d,
    conv2d_backward,
    linear,
    linear_backward,
    linear_relu,
    requantize,
    sgd_step,
    split_seed,
    to_fixed,
)

BITS = (16, 12, 10, 8)
N_SEEDS = 17  # seeds per integer step: 13 for the forward/backward calls, 4 for sgd_step
OUT = Path(__file__).resolve().parents[1] / "docs" / "img"


# ----------------------------------------------------------------------------- float ops
def im2col(x, k, stride, pad):
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    cols = np.empty((n, ho, wo, c, k, k), x.dtype)
    for i in range(k):
        for j in range(k):
            cols[..., i, j] = xp[
                :, :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride
            ].transpose(0, 2, 3, 1)
    return cols.reshape(n * ho * wo, -1), ho, wo


def col2im(dcols, shape, k, stride, pad, ho, wo):
    n, c, h, w = shape
    d = dcols.reshape(n, ho, wo, c, k, k)
    xp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dcols.dtype)
    for i in range(k):
        for j in range(k):
            xp[
                :, :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride
            ] += d[..., i, j].transpose(0, 3, 1, 2)
    return xp[:, :, pad : pad + h, pad : pad + w]


def relu_fixed(t: FixedTensor) -> tuple[FixedTensor, np.ndarray]:
    mask = t.mantissa > 0
    return FixedTensor(
        np.where(mask, t.mantissa, 0).astype(t.mantissa.dtype), t.exponent, t.bits
    ), mask


def mask_fixed(t: FixedTensor, mask: np.ndarray) -> FixedTensor:
    return FixedTensor(np.where(mask, t.mantissa, 0).astype(t.mantissa.dtype), t.exponent, t.bits)


def reshape_fixed(t: FixedTensor, shape) -> FixedTensor:
    return FixedTensor(t.mantissa.reshape(shape), t.exponent, t.bits)


# ---------------------------------------------------------------------------- networks
class Net:
    """MLP (64-64-10) or CNN (conv8 3x3, conv16 3x3/2, linear) on 8x8 digits."""

    def __init__(self, arch: str, rng: np.random.Generator):
        self.arch = arch

        def he(shape, fan_in):
            return (rng.normal(size=shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

        if arch == "mlp":
            self.p = {
                "W1": he((64, 64), 64),
                "b1": np.zeros(64, np.float32),
                "W2": he((10, 64), 64),
                "b2": np.zeros(10, np.float32),
            }
        else:
            self.p = {
                "K1": he((8, 1, 3, 3), 9),
                "K2": he((16, 8, 3, 3), 72),
                "W": he((10, 256), 256),
                "b": np.zeros(10, np.float32),
            }
        self.state: dict = {k: None for k in self.p}
        self.vel = {k: np.zeros_like(v) for k, v in self.p.items()}

    # float32 -----------------------------------------------------------------------
    def grads_float(self, x, y):
        p = self.p
        if self.arch == "mlp":
            h = np.maximum(x @ p["W1"].T + p["b1"], 0)
            logits = h @ p["W2"].T + p["b2"]
            g = softmax_grad(logits, y)
            gr = {"W2": g.T @ h, "b2": g.sum(0)}
            gh = (g @ p["W2"]) * (h > 0)
            gr.update(W1=gh.T @ x, b1=gh.sum(0))
            return logits, gr
        xi = x.reshape(-1, 1, 8, 8)
        c1, _h1o, _w1o = im2col(xi, 3, 1, 1)
        a1 = np.maximum(c1 @ p["K1"].reshape(8, -1).T, 0)  # (N*64, 8)
        h1 = a1.reshape(-1, 8, 8, 8).transpose(0, 3, 1, 2)
        c2, h2o, w2o = im2col(h1, 3, 2, 1)
        a2 = np.maximum(c2 @ p["K2"].reshape(16, -1).T, 0)  # (N*16, 16)
        h2 = a2.reshape(-1, 4, 4, 16).transpose(0, 3, 1, 2).reshape(-1, 256)
        logits = h2 @ p["W"].T + p["b"]
        g = softmax_grad(logits, y)
        gr = {"W": g.T @ h2, "b": g.sum(0)}
        gh2 = ((g @ p["W"]) * (h2 > 0)).reshape(-1, 16, 4, 4).transpose(0, 2, 3, 1).reshape(-1, 16)
        gr["K2"] = (gh2.T @ c2).reshape(p["K2"].shape)
        gh1 = col2im(gh2 @ p["K2"].reshape(16, -1), h1.shape, 3, 2, 1, h2o, w2o) * (h1 > 0)
        gh1 = gh1.transpose(0, 2, 3, 1).reshape(-1, 8)
        gr["K1"] = (gh1.T @ c1).reshape(p["K1"].shape)
        return logits, gr

    # integer -----------------------------------------------------------------------
    def grads_int(self, x, y, bits, seeds):
        """Integer forward and backward; ``seeds`` holds one seed per call (split_seed)."""
        p = self.p
        names = list(p)
        q = {k: to_fixed(v, bits, seed=seeds[i]) for i, (k, v) in enumerate(p.items())}
        xq = to_fixed(x, bits, seed=seeds[4])
        if self.arch == "mlp":
            # fused: GEMM + bias + requantize + ReLU in one call; the backward of layer 2
            # returns dh requantized and masked by the ReLU; layer 1 needs no dx
            h, mask = linear_relu(xq, q["W1"], q["b1"], bits, seed=seeds[5])
            logits = linear(h, q["W2"], q["b2"], seed=seeds[6]).to_float()
            g = softmax_grad(logits, y)
            gh, dW2, db2 = linear_backward(
                h, q["W2"], g, bits, seed=seeds[7], dx_bits=bits, dx_mask=mask
            )
            _, dW1, db1 = linear_backward(xq, q["W1"], gh, bits, seed=seeds[8], need_dx=False)
            return logits, dict(zip(names, (dW1, db1, dW2, db2), strict=True))
        xi = reshape_fixed(xq, (-1, 1, 8, 8))
        h1, m1 = relu_fixed(requantize(conv2d(xi, q["K1"], 1, 1), bits, seed=seeds[5]))
        h2, m2 = relu_fixed(requantize(conv2d(h1, q["K2"], 2, 1), bits, seed=seeds[6]))
        h2f = reshape_fixed(h2, (-1, 256))
        logits = linear(h2f, q["W"], q["b"], seed=seeds[7]).to_float()
        g = softmax_grad(logits, y)
        dh2, dW, db = linear_backward(h2f, q["W"], g, bits, seed=seeds[8])
        gh2 = mask_fixed(reshape_fixed(requantize(dh2, bits, seed=seeds[9]), h2.shape), m2)
        dh1, dK2 = conv2d_backward(h1, q["K2"], gh2, 2, 1, bits=bits, seed=seeds[10])
        gh1 = mask_fixed(requantize(dh1, bits, seed=seeds[11]), m1)
        _, dK1 = conv2d_backward(xi, q["K1"], gh1, 1, 1, bits=bits, seed=seeds[12])
        return logits, {"K1": dK1, "K2": dK2, "W": dW, "b": db}

    def step_int(self, x, y, bits, sr, lr=0.05, mu=0.9, wd=1e-4):
        """One integer training step: one draw from ``sr`` is split into one seed per call."""
        seeds = split_seed(sr, N_SEEDS)
        logits, gr = self.grads_int(x, y, bits, seeds)
        for i, (k, g) in enumerate(gr.items()):
            self.p[k], self.state[k] = sgd_step(
                self.p[k],
                g,
                self.state[k],
                lr=lr,
                momentum=mu,
                weight_decay=wd,
                bits=bits,
                seed=seeds[13 + i],
            )
        return logits

    def predict(self, x, bits, sr):
        if bits is None:
            return self.grads_float(x, np.zeros(len(x), int))[0]
        return self.grads_int(x, np.zeros(len(x), int), bits, split_seed(sr, N_SEEDS))[0]


def softmax_grad(logits, y):
    z = logits - logits.max(1, keepdims=True)
    pr = np.exp(z)
    pr /= pr.sum(1, keepdims=True)
    pr[np.arange(len(y)), y] -= 1.0
    return (pr / len(y)).astype(np.float32)


def train_classifier(arch, bits, seed, data, epochs, batch=32, lr=0.05, mu=0.9, wd=1e-4):
    xtr, ytr, xte, yte = data
    rng = np.random.default_rng(seed)  # init and shuffling: identical for every bit-width
    net = Net(arch, rng)
    sr = np.random.default_rng(10_000 + seed)  # rounding bits of the integer run
    for _ in range(epochs):
        perm = rng.permutation(len(xtr))
        for s in range(0, len(perm), batch):
            idx = perm[s : s + batch]
            if bits is None:
                _, gr = net.grads_float(xtr[idx], ytr[idx])
                for k, g in gr.items():  # float32 SGD with the same rule
                    g = g + wd * net.p[k]
                    net.vel[k] = mu * net.vel[k] + g
                    net.p[k] = (net.p[k] - lr * net.vel[k]).astype(np.float32)
            else:
                net.step_int(xtr[idx], ytr[idx], bits, sr, lr, mu, wd)
    pred = net.predict(xte, bits, sr).argmax(1)
    return float((pred == yte).mean() * 100)


# -------------------------------------------------------------------------- regression
def target(x):
    return np.sin(3 * x) + 0.5 * np.cos(7 * x)


def train_regression(bits, mode, steps, seed=0, width=32, lr=0.2, mu=0.9):
    """MLP 1-32-32-1 with tanh (in float, like GELU in DESIGN 2.7), full batch of 256."""
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, 256, dtype=np.float32)[:, None]
    y = target(x).astype(np.float32)
    shapes = {
        "W1": (width, 1),
        "b1": (width,),
        "W2": (width, width),
        "b2": (width,),
        "W3": (1, width),
        "b3": (1,),
    }
    p = {
        k: (rng.normal(size=s) * (np.sqrt(1.0 / s[1]) if len(s) == 2 else 0.0)).astype(np.float32)
        for k, s in shapes.items()
    }
    sr = np.random.default_rng(20_000 + seed)
    state: dict = {k: None for k in p}
    vel = {k: np.zeros_like(v) for k, v in p.items()}
    if bits is not None and mode == "integer":
        p = {k: to_fixed(v, bits, seed=sr) for k, v in p.items()}  # b-bit weights only
    losses = []
    for _ in range(steps):
        if bits is None:
            a1 = np.tanh(x @ p["W1"].T + p["b1"])
            a2 = np.tanh(a1 @ p["W2"].T + p["b2"])
            out = a2 @ p["W3"].T + p["b3"]
            g = 2 * (out - y) / len(x)
            gr = {"W3": g.T @ a2, "b3": g.sum(0)}
            g2 = (g @ p["W3"]) * (1 - a2**2)
            gr.update(W2=g2.T @ a1, b2=g2.sum(0))
            g1 = (g2 @ p["W2"]) * (1 - a1**2)
            gr.update(W1=g1.T @ x, b1=g1.sum(0))
            for k, gk in gr.items():
                vel[k] = mu * vel[k] + gk
                p[k] = (p[k] - lr * vel[k]).astype(np.float32)
        else:
            q = p if mode == "integer" else {k: to_fixed(v, bits, seed=sr) for k, v in p.items()}
            xq = to_fixed(x, bits, seed=sr)
            a1 = np.tanh(linear(xq, q["W1"], q["b1"], seed=sr).to_float())
            a1q = to_fixed(a1, bits, seed=sr)
            a2 = np.tanh(linear(a1q, q["W2"], q["b2"], seed=sr).to_float())
            a2q = to_fixed(a2, bits, seed=sr)
            out = linear(a2q, q["W3"], q["b3"], seed=sr).to_float()
            g = 2 * (out - y) / len(x)
            d2, dW3, db3 = linear_backward(a2q, q["W3"], g, bits, seed=sr)
            g2 = d2.to_float() * (1 - a2**2)
            d1, dW2, db2 = linear_backward(a1q, q["W2"], g2, bits, seed=sr)
            g1 = d1.to_float() * (1 - a1**2)
            _, dW1, db1 = linear_backward(xq, q["W1"], g1, bits, seed=sr)
            gr = {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2, "W3": dW3, "b3": db3}
            for k, gk in gr.items():
                p[k], state[k] = sgd_step(
                    p[k], gk, state[k], lr=lr, momentum=mu, bits=bits, mode=mode, seed=sr
                )
        losses.append(float(np.mean((out - y) ** 2)))
    return np.array(losses)


def departure(loss, ref, factor=2.0, window=50):
    """First step after which the loss (moving average over ``window`` steps) stays above
    ``factor`` times float32's; None if it does not stay above until the end."""
    kern = np.ones(window) / window
    lo = np.convolve(loss, kern, mode="valid")
    rf = np.convolve(ref, kern, mode="valid")
    above = lo > factor * rf
    if not above[-1]:
        return None
    idx = np.flatnonzero(~above)
    return int(idx[-1] + window) if idx.size else 0


# -------------------------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs and steps (smoke run)")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args(argv)
    epochs = {"mlp": 4 if args.quick else 30, "cnn": 3 if args.quick else 15}
    steps = 400 if args.quick else 5000
    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    xtr, xte, ytr, yte = train_test_split(
        X, digits.target, test_size=0.25, random_state=0, stratify=digits.target
    )
    data = (xtr, ytr, xte, yte)
    results: dict = {
        "classification": {},
        "regression": {},
        "config": {"epochs": epochs, "steps": steps, "seeds": args.seeds},
    }
    t0 = time.time()
    for arch in ("mlp", "cnn"):
        for bits in (None, *BITS):
            accs = [train_classifier(arch, bits, s, data, epochs[arch]) for s in range(args.seeds)]
            name = "float32" if bits is None else f"int{bits}"
            results["classification"].setdefault(arch, {})[name] = {
                "mean": float(np.mean(accs)),
                "spread": float(np.std(accs)),
                "runs": accs,
            }
            print(
                f"{arch} {name:>8}: {np.mean(accs):6.2f} +- {np.std(accs):.2f}  ({time.time() - t0:.0f}s)",
                flush=True,
            )
    curves = {"float32": train_regression(None, "master", steps)}
    for bits in BITS:
        for mode in ("master", "integer"):
            curves[f"int{bits}-{mode}"] = train_regression(bits, mode, steps)
    for name, c in curves.items():
        dep = None if name == "float32" else departure(c, curves["float32"])
        results["regression"][name] = {
            "final_mse": float(c[-20:].mean()),
            "min_mse": float(c.min()),
            "departs_at_step": dep,
        }
        print(
            f"regression {name:>16}: final mse {c[-20:].mean():.2e}  departs from float at {dep}",
            flush=True,
        )
    write_outputs(results, curves, args.quick)
    print(f"done in {time.time() - t0:.0f}s")


def write_outputs(results, curves, quick):
    OUT.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if quick else ""
    (OUT / f"fixed_results{suffix}.json").write_text(json.dumps(results, indent=2))
    lines = [
        "| model | " + " | ".join(results["classification"]["mlp"]) + " |",
        "|---|" + "---|" * len(results["classification"]["mlp"]),
    ]
    for arch, row in results["classification"].items():
        lines.append(
            f"| {arch} | "
            + " | ".join(f"{v['mean']:.2f} ± {v['spread']:.2f}" for v in row.values())
            + " |"
        )
    lines += [
        "",
        "| regression run | final MSE | min MSE | departs from float32 at step |",
        "|---|---|---|---|",
    ]
    for name, v in results["regression"].items():
        dep = "—" if v["departs_at_step"] is None else str(v["departs_at_step"])
        lines.append(f"| {name} | {v['final_mse']:.2e} | {v['min_mse']:.2e} | {dep} |")
    (OUT / f"fixed_results{suffix}.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, arch in zip(axes[:2], ("mlp", "cnn"), strict=True):
        row = results["classification"][arch]
        names = list(row)
        ax.bar(
            names,
            [row[n]["mean"] for n in names],
            yerr=[row[n]["spread"] for n in names],
            color="C0",
        )
        lo = min(row[n]["mean"] for n in names)
        ax.set_ylim(max(0, lo - 5), 100)
        ax.set_title(f"digits {arch.upper()}: test accuracy (%)")
    ax = axes[2]
    ax.semilogy(curves["float32"], "k", lw=2, label="float32")
    for i, bits in enumerate(BITS):
        ax.semilogy(curves[f"int{bits}-master"], color=f"C{i}", lw=1, label=f"int{bits} master")
        ax.semilogy(
            curves[f"int{bits}-integer"], color=f"C{i}", lw=1, ls="--", label=f"int{bits} integer"
        )
    ax.set_xlabel("step")
    ax.set_title("regression MSE")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(OUT / f"fixed_training{suffix}.png", dpi=110)


if __name__ == "__main__":
    main()
