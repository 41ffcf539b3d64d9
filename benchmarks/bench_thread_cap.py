"""The integer layers' thread cap: numpy's BLAS and numba at one thread beside torch's pool.

While torch's intra-op pool has more than one thread, every integer layer's forward and
backward runs numpy's BLAS and numba at one thread (``sekron.torch._int_base.serial_blas``).
This times, in one process and in interleaved rounds (median), the same training steps
with the cap and with it switched off (a benchmark-only patch), at torch's default
thread count:

* ``mlp``: ``Linear(384, 1536) -> GELU -> Linear(1536, 384) -> LayerNorm`` on 512 rows,
  integerized at 16 bits; each sample is one integer step followed by one float32 step
  of the same float model (the float step is what spinning BLAS workers slow down);
* ``minilm`` (``--minilm``, needs the local all-MiniLM-L6-v2): the full encoder and a
  head, batch 16 x 32 tokens, integerized at 16 and 8 bits with ``IntSGD``, against the
  float32 step with SGD.

Nothing asserts a time. Run: env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE
python benchmarks/bench_thread_cap.py [--minilm] [--rounds 7]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _switch(capped: bool) -> None:
    """Turn the cap on (the library's behaviour) or off (benchmark-only patch)."""
    from sekron.ops import limit_blas_threads
    from sekron.torch import _int_base

    _int_base.limit_blas_threads = (  # type: ignore[assignment]
        limit_blas_threads if capped else (lambda n: contextlib.nullcontext())
    )
    _int_base.SERIAL_NUMBA = capped


def mlp(rounds: int) -> None:
    import torch

    from sekron.torch import integerize

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(384, 1536),
        torch.nn.GELU(),
        torch.nn.Linear(1536, 384),
        torch.nn.LayerNorm(384),
    )
    imodel = integerize(model, 16)
    x = torch.randn(512, 384)
    times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}

    def sample(capped: bool) -> None:
        _switch(capped)
        t0 = time.perf_counter()
        imodel.zero_grad()
        imodel(x).square().mean().backward()
        t1 = time.perf_counter()
        model.zero_grad()
        model(x).square().mean().backward()
        times[capped].append((t1 - t0, time.perf_counter() - t1))

    for capped in (True, False):
        sample(capped)  # warm-up
        times[capped].clear()
    for r in range(rounds):
        for capped in (True, False) if r % 2 == 0 else (False, True):
            sample(capped)
    for capped in (True, False):
        i = statistics.median(t[0] for t in times[capped]) * 1e3
        f = statistics.median(t[1] for t in times[capped]) * 1e3
        label = "cap on " if capped else "cap off"
        print(f"mlp {label}: integer step {i:7.1f} ms, float step after it {f:7.1f} ms")


def minilm(rounds: int) -> None:
    import torch
    import torch.nn.functional as F
    from _common import interleaved

    sys.path.insert(0, str(ROOT / "examples"))
    from integer_finetune_bert import load_minilm

    from sekron.data.text import python_doc_topics
    from sekron.torch import integerize
    from sekron.torch.integer import IntSGD

    bert, tok = load_minilm()
    s, y = python_doc_topics("train")
    s, y = s[:16], torch.tensor(y[:16])
    enc = tok(s, padding="max_length", truncation=True, max_length=32, return_tensors="pt")

    class Full(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = copy.deepcopy(bert)
            self.config = self.bert.config
            self.head = torch.nn.Linear(384, 7)

        def forward(self) -> torch.Tensor:
            h = self.bert(**enc)[0]
            w = enc["attention_mask"][..., None].float()
            return self.head((h * w).sum(1) / w.sum(1))

    def make(bits: int | None, capped: bool):
        model = Full() if bits is None else integerize(Full(), bits, seed=bits)
        model.train()
        params = list(model.parameters())
        if bits is None:
            opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
        else:
            opt = IntSGD(params, lr=1e-3, momentum=0.9, bits=bits, seed=1)

        def step() -> None:
            _switch(capped)
            loss = F.cross_entropy(model(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step

    fns = {"float32": make(None, True)}
    for bits in (16, 8):
        fns[f"int{bits} cap on"] = make(bits, True)
        fns[f"int{bits} cap off"] = make(bits, False)
    t = interleaved(fns, rounds)
    for name, sec in t.items():
        print(f"minilm {name:14s} {sec * 1e3:8.0f} ms  {sec / t['float32']:5.2f}x float32")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--minilm", action="store_true")
    args = ap.parse_args(argv)

    import torch
    from _common import blas_report

    print(blas_report(), f"; torch threads {torch.get_num_threads()}")
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    mlp(args.rounds)
    if args.minilm:
        minilm(max(3, args.rounds // 2))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    _switch(True)


if __name__ == "__main__":
    main()
