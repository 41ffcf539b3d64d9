"""A stride-1 staged plan as one program run per image (the fused executor).

The staged plan of a SeKron kernel (:mod:`sekron.ops._plan`) is a chain of thin
convolutions with layout steps between them. Run a chunk of the batch at a time, each
step streams its whole intermediate through memory: the stages are memory-bound, and a
second core adds nothing (measured: two threads copying 16 MiB ran at 0.92x one).

Here the plan is compiled once per geometry into a *program*: for every stage, the
element offsets where each input plane's reductions start (``koff``) and where each
output row goes (``ooff``), in per-image buffers. A layout step between stages only
permutes whole planes, so it costs nothing: it is folded into the next stage's
offsets, worked out by running the plan's steps on an array of plane offsets (one image,
the spatial axes set aside). The padding is a copy into a buffer whose borders stay
zero. An image's intermediates (a few hundred KiB for the layers of ResNets) then stay
in the core's L2 cache from the stage that writes them to the one that reads them, the
stages become bound by multiply-adds, and threads take whole images.

Plans with a strided stage or a sum step have no program (``None``) and run through the
chunked executor of ``sekron.ops._conv``.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass

import numpy as np

from ._plan import ConvPlan, ConvStep, PadStep, ReshapeStep, TransposeStep

__all__ = ["FusedProgram", "fused_program", "run_fused"]

#: The staged executor's version, part of the cost table's conv keys: costs timed on
#: an earlier executor are not reused for this one
ENGINE = "fused-1"

#: Whether :func:`sekron.ops._conv.run_plan` runs plans through their fused program
#: (benchmarks switch it off to time the chunked executor in the same process)
ENABLED = True


@dataclass(frozen=True, eq=False)
class FusedProgram:
    """A stride-1 plan as flat stages over per-image buffers (see the module docstring).

    ``meta[s] = (src, dst, n_planes, K, G, Og, n_pos, koff_start, ooff_start,
    w_start)``; buffer 0 is the padded image ``(C, rows, row)`` (its first image row at
    ``top``, column at ``left``), 3 the result ``(F, Ho, row)`` in output channel order,
    1 and 2 the ping-pong buffers between; ``lengths`` are their sizes in elements.
    The stages' weights ``(G, Og, K)`` lie one after the other in the flat weight array,
    in the order of the plan's conv steps.
    """

    meta: np.ndarray
    koff: np.ndarray
    ooff: np.ndarray
    top: int
    left: int
    row: int
    lengths: tuple[int, int, int, int]
    macs: int


@functools.lru_cache(maxsize=256)
def fused_program(plan: ConvPlan) -> FusedProgram | None:
    """The program of ``plan``, or None when a step has no place in one. Memoised."""
    C, H, W = plan.in_shape
    steps = plan.steps
    top = bottom = left = right = 0
    i = 0
    while i < len(steps) and isinstance(steps[i], PadStep):
        t, b, lft, r = steps[i].pad  # type: ignore[union-attr]
        top, bottom, left, right = top + t, bottom + b, left + lft, right + r
        i += 1
    h, w = H + top + bottom, W + left + right
    row = w
    off = (np.arange(C, dtype=np.int64) * (h * row)).reshape(1, C)  # plane offsets
    buf = 0
    lengths = [C * h * row, 0, 0, 0]
    meta: list[list[int]] = []
    koffs: list[np.ndarray] = []
    ooffs: list[np.ndarray] = []
    sizes: list[int] = []  # each stage's output, in elements
    k_at = o_at = w_at = macs = 0
    for step in steps[i:]:
        if isinstance(step, ReshapeStep):
            if tuple(step.shape[-2:]) != (h, w):
                return None
            off = off.reshape(step.shape[:-2])
        elif isinstance(step, TransposeStep):
            n = len(step.axes)
            if tuple(step.axes[-2:]) != (n - 2, n - 1):
                return None
            off = off.transpose(step.axes[:-2])
        elif isinstance(step, ConvStep) and step.stride == (1, 1):
            n_out, Cg, kh, kw = step.weight_shape
            g = step.groups
            dh, dw = step.dilation
            ho, wo = h - dh * (kh - 1), w - dw * (kw - 1)
            if off.ndim != 2 or ho < 1 or wo < 1:
                return None
            planes = off.reshape(-1, g, Cg)
            n_img = planes.shape[0]
            taps = (
                np.arange(kh, dtype=np.int64)[:, None] * (dh * row)
                + np.arange(kw, dtype=np.int64)[None, :] * dw
            ).reshape(-1)
            koff = (planes[:, :, :, None] + taps).reshape(n_img * g, Cg * kh * kw)
            dst = 2 if buf == 1 else 1
            ooff = np.arange(n_img * n_out, dtype=np.int64) * (ho * row)
            sizes.append(n_img * n_out * ho * row)
            n_pos = (ho - 1) * row + wo
            meta.append([buf, dst, n_img * g, Cg * kh * kw, g, n_out // g, n_pos, k_at, o_at, w_at])
            koffs.append(koff.reshape(-1))
            ooffs.append(ooff)
            k_at, o_at, w_at = k_at + koff.size, o_at + ooff.size, w_at + n_out * Cg * kh * kw
            macs += n_img * n_out * Cg * kh * kw * ho * wo
            off, buf, h, w = ooff.reshape(n_img, n_out), dst, ho, wo
        else:
            return None
    F = plan.out_shape[0]
    if not meta or off.shape != (1, F) or (h, w) != plan.out_shape[1:]:
        return None
    # the last stage writes buffer 3 in output channel order: output channel f is the
    # plane the last stage wrote at final[f]
    spacing = h * row
    final = off.reshape(-1)
    last = np.empty(F, dtype=np.int64)
    last[final // spacing] = np.arange(F, dtype=np.int64) * spacing
    ooffs[-1] = last
    meta[-1][1] = 3
    lengths[3] = F * spacing
    for m, size in zip(meta[:-1], sizes, strict=False):  # the ping-pong buffers
        lengths[m[1]] = max(lengths[m[1]], size)
    arrays = {
        "meta": np.array(meta, dtype=np.int64),
        "koff": np.concatenate(koffs),
        "ooff": np.concatenate(ooffs),
    }
    for a in arrays.values():
        a.flags.writeable = False
    return FusedProgram(
        **arrays,
        top=top,
        left=left,
        row=row,
        lengths=(lengths[0], lengths[1], lengths[2], lengths[3]),
        macs=macs,
    )


# the images a work item holds: their padded inputs fill about this many bytes (the
# buffers then stay in the core's L2 cache between numpy's copy in and the kernel)
_ITEM_BYTES = 1 << 19

#: Below this many multiply-adds per worker the work runs on the calling thread alone.
#: Measured on the 2-core VM: a no-op round trip through the thread pool took 51 us,
#: two 0.4 ms images on two threads took as long as one after the other (the idle
#: vCPU wakes late), two 2 ms jobs 1.7x less time; bands of a batch-1 image on two
#: threads ran 0.5-0.9x the one-thread program at 6-8 M multiply-adds.
THREAD_MACS = 1 << 24

Item = tuple[FusedProgram, int, int, tuple[int, int, int, int]]


def run_fused(
    plan: ConvPlan,
    x: np.ndarray,
    weights: list[np.ndarray],
    out: np.ndarray,
    threads: int = 1,
    *,
    reference: bool = False,
) -> bool:
    """Write ``plan`` applied to ``x`` (``(N, C, H, W)``) into ``out``; False if it has no program.

    ``weights`` are the plan's conv weights ``(n_out, Cg, kh, kw)`` in step order.
    ``threads`` workers take a few whole images at a time (the kernel releases the GIL);
    with fewer images than threads, each worker takes a band of output rows of every
    image, with the halo of input rows the kernel's height needs (a few rows computed
    twice). ``reference`` runs the numpy twin of the kernel instead (tests).
    """
    from . import _conv_kernels as kern
    from ._im2col import _pool

    program = fused_program(plan)
    if program is None:
        return False
    dtype = out.dtype
    w = np.concatenate([wt.reshape(-1) for wt in weights]).astype(dtype, copy=False)
    fn = kern.run_program_reference if reference else kern.run_program
    C, H, W = plan.in_shape
    F, Ho, Wo = plan.out_shape
    N = x.shape[0]
    threads = max(1, threads)
    if program.macs * N < threads * THREAD_MACS:
        threads = 1  # a worker would start its share after the calling thread is done
    if N >= threads or Ho < threads:
        # whole images, a few per work item, taken by whichever worker is free: a core
        # shared with another pool's spinning thread (OpenBLAS's wait for up to ~0.1 s
        # after each GEMM) then slows only its own worker's share
        fit = max(1, _ITEM_BYTES // (program.lengths[0] * dtype.itemsize))
        per = max(1, min(N // (4 * threads), fit))
        items: list[Item] = [(program, a, min(N, a + per), (0, H, 0, Ho)) for a in range(0, N, per)]
        shared = True
    else:  # one band of rows per worker (its input buffer holds the band's zero rows)
        items, shared, per = _bands(plan, N, threads), False, N

    def buffers(prog: FusedProgram) -> tuple[np.ndarray, ...]:
        L0, L1, L2, L3 = prog.lengths
        return (
            np.zeros(per * L0, dtype=dtype),
            np.empty(per * L3, dtype=dtype),
            np.empty(max(1, L1), dtype=dtype),
            np.empty(max(1, L2), dtype=dtype),
        )

    def run(item: Item, bufs: tuple[np.ndarray, ...]) -> None:
        prog, n0, n1, (x0, n_in, o0, n_out) = item
        xp, yp, b1, b2 = bufs
        m = n1 - n0
        L0, _, _, L3 = prog.lengths
        xv = xp[: m * L0].reshape(m, C, L0 // (C * prog.row), prog.row)
        lo, hi = max(0, x0), min(H, x0 + n_in)  # the band's rows that lie in the image
        top, left = prog.top + lo - x0, prog.left
        xv[:, :, top : top + hi - lo, left : left + W] = x[n0:n1, :, lo:hi]
        fn(xp[: m * L0], yp[: m * L3], m, prog.meta, prog.koff, prog.ooff, w, b1, b2)
        out[n0:n1, :, o0 : o0 + n_out] = yp[: m * L3].reshape(m, F, n_out, prog.row)[..., :Wo]

    if threads == 1 or len(items) == 1:
        bufs = buffers(program)
        for item in items:
            run(item, bufs)
        return True
    if not shared:
        jobs = [_pool(len(items)).submit(lambda i=i: run(i, buffers(i[0]))) for i in items]
        for job in jobs:
            job.result()
        return True
    queue = iter(items)
    lock = threading.Lock()

    def worker() -> None:
        bufs = buffers(program)
        while True:
            with lock:
                item = next(queue, None)
            if item is None:
                return
            run(item, bufs)

    jobs = [_pool(threads - 1).submit(worker) for _ in range(threads - 1)]
    worker()  # the calling thread is a worker too
    for job in jobs:
        job.result()
    return True


def _bands(plan: ConvPlan, N: int, bands: int) -> list[Item]:
    """Work items computing ``bands`` bands of output rows of all ``N`` images.

    Band ``b``'s output rows ``[o0, o1)`` need the padded input rows ``[o0, o1 + e - 1)``
    (``e`` the plan's total kernel height): its program is the plan of those rows with
    no vertical padding, and rows beyond the image read as zeros.
    """
    from ._plan import conv2d_plan

    _, H, W = plan.in_shape
    Ho = plan.out_shape[1]
    ph, pw = plan.padding
    extent = H + 2 * ph - Ho + 1
    items = []
    for b in range(bands):
        o0, o1 = Ho * b // bands, Ho * (b + 1) // bands
        rows_in = o1 - o0 + extent - 1
        band = conv2d_plan(plan.structure, (rows_in, W), 1, (0, pw), plan.dilation)
        prog = fused_program(band)
        if prog is None:  # pragma: no cover - a band plan has the whole plan's steps
            raise AssertionError("a band of a fused plan has no program")
        items.append((prog, 0, N, (o0 - ph, rows_in, o0, o1 - o0)))
    return items
