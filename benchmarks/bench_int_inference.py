"""Integer inference of the demo's models against their float versions (issue 14).

The demo's digits CNN (``sekron.cli.demo._model``, three 3x3 convolutions and a linear
head) and its 3-factor SeKron compression (``compress(n_factors=3, ratio=2)``) run in
evaluation mode on the 450 test images of scikit-learn's digits, in float32 and after
``integerize`` at 16, 10 and 8 bits. Every model is timed in the same process, in
interleaved rounds (median), single threaded (torch, BLAS and numba). Two baselines:

* ``float``: the float model as torch runs it (oneDNN's direct convolution);
* ``float, im2col``: the same float convolutions lowered to im2col and one sgemm, the
  algorithm an exact integer convolution must use past the float32 limit.

The goal of issue 14 is integer inference within 2x of the float version.

Run: python benchmarks/bench_int_inference.py [--rounds 15] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv: list[str] | None = None) -> dict:
    """Time every model and print its ratio to the float model."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[16, 10, 8])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import numba
    import torch
    import torch.nn.functional as F
    from _common import blas_report, interleaved
    from threadpoolctl import threadpool_limits

    from sekron.cli.demo import _data, _model
    from sekron.torch import compress, integerize

    torch.set_num_threads(1)
    threadpool_limits(1)
    numba.set_num_threads(1)
    torch.manual_seed(0)
    _, _, X, _ = _data(0)
    dense = _model().eval()
    sekron3, _ = compress(dense, ratio=2.0, n_factors=3, progress=False)
    sekron3.eval()

    class Im2col(torch.nn.Module):
        """A float conv as unfold + one matmul (what the exact integer path computes)."""

        def __init__(self, conv: torch.nn.Conv2d):
            super().__init__()
            self.conv = conv

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            c = self.conv
            n, _, h, _ = x.shape
            cols = F.unfold(x, c.kernel_size, c.dilation, c.padding, c.stride)
            y = c.weight.reshape(c.out_channels, -1) @ cols
            ho = (h + 2 * c.padding[0] - c.dilation[0] * (c.kernel_size[0] - 1) - 1) // c.stride[
                0
            ] + 1
            y = y.reshape(n, c.out_channels, ho, -1)
            return y + c.bias[:, None, None]

    im2col = torch.nn.Sequential(
        *[Im2col(m) if isinstance(m, torch.nn.Conv2d) else m for m in dense]
    ).eval()
    models = {"dense float": dense, "dense float, im2col": im2col, "sekron float": sekron3}
    for b in args.bits:
        models[f"dense int{b}"] = integerize(dense, b, seed=b).eval()
        models[f"sekron int{b}"] = integerize(sekron3, b, seed=b).eval()

    def call(m):
        def run():
            with torch.no_grad():
                m(X)

        return run

    la0 = f"{os.getloadavg()[0]:.2f}"
    t = interleaved({k: call(m) for k, m in models.items()}, args.rounds)
    la1 = f"{os.getloadavg()[0]:.2f}"
    rows = []
    for name, sec in t.items():
        base = "sekron float" if name.startswith("sekron") else "dense float"
        rows.append({"model": name, "ms": sec * 1e3, "ratio": sec / t[base]})
        extra = (
            f", {sec / t['dense float, im2col']:.2f}x im2col"
            if name.startswith("dense int")
            else ""
        )
        print(f"{name:22s} {sec * 1e3:8.2f} ms  {sec / t[base]:5.2f}x {base}{extra}", flush=True)
    meta = {
        "images": int(X.shape[0]),
        "rounds": args.rounds,
        "load": f"{la0} -> {la1}",
        "blas": blas_report(),
        "cpus": os.cpu_count(),
    }
    print(f"load {meta['load']}; {meta['blas']}")
    out = {"meta": meta, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
