"""Fitting a model's layers on a dask.distributed cluster, and resuming from stored fits.

:func:`sekron.torch.compress` hands its per-layer fits here when given ``client=`` or
``resume_dir=``. A fit is a pure function of its :class:`~sekron.torch.compression.LayerJob`
(the layer, its calibration Gram, the options and the seed; see
:mod:`sekron.torch.compression`, which hands in its functions to skip, fit and install), so a worker computes exactly
what the serial run computes: the job travels to a worker as a CPU copy (weight + Gram),
the fitted layer comes back (factors + bias), and it is installed in the caller's model as
soon as it arrives. A task whose worker dies is rerun on another (``retries``); a task
that fails raises here. With ``resume_dir`` every fit is written as it arrives, one
atomic ``.npz`` per layer keyed by a fingerprint of everything the fit read, and a rerun
installs those instead of fitting them again.

dask.distributed is imported here, lazily; ``import sekron`` does not import it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ArgumentError, FormatError
from ..files import save_npz
from ..selection import Selection, WeightReport
from ..structure import Structure
from ..tensor import SeKronTensor
from .layers import KroneckerEmbedding, SeKronConv2d, SeKronLinear

__all__ = ["check_options", "fit_jobs"]

FIT_FORMAT = "sekron-layer-fit"
FIT_VERSION = 1
_FIT_NUMBERS = ("error_bound", "reference_norm", "data_error_bound", "data_reference_norm")
RETRIES = 3
"""Reruns of a layer's task after its worker died (or it failed on a worker)."""
IN_FLIGHT_PER_THREAD = 2
"""Tasks submitted per worker thread ahead of the results (one running, one queued)."""


def check_options(client: Any, resume_dir: Any, random_state: Any) -> None:
    """Validate ``client``, ``resume_dir`` and the seed they need, before any work."""
    if client is not None and not (hasattr(client, "submit") and hasattr(client, "gather")):
        raise ArgumentError(f"client: expected a distributed.Client, got {type(client).__name__}")
    if resume_dir is not None and not Path(resume_dir).is_dir():
        raise ArgumentError(f"resume_dir: expected an existing directory, got {str(resume_dir)!r}")
    if isinstance(random_state, (np.random.Generator, np.random.RandomState)):
        raise ArgumentError(
            "random_state: expected an int seed or None with client= or resume_dir= (a "
            "Generator's state would depend on which layers run where), got "
            f"{type(random_state).__name__}"
        )


Fit = Callable[[Any], tuple[nn.Module | None, WeightReport]]
"""``fit(job) -> (new layer or None, report)``: a pure, module-level function (it pickles)."""


def fit_jobs(
    model: nn.Module,
    jobs: list[Any],
    client: Any,
    resume_dir: Any,
    *,
    fit: Fit,
    skipped: Callable[[nn.Module, Any], WeightReport | None],
    install: Callable[[nn.Module, Any, nn.Module | None], None],
) -> Iterator[tuple[Any, WeightReport]]:
    """Fit (or read back) every job, install its layer in ``model``, yield its report.

    Reports come as the layers finish, in no fixed order. Layers left dense (ineligible
    or tied) are decided first, on the model as given, as the serial run decides them
    (``skipped``); ``fit`` runs here (with ``resume_dir`` alone) or on ``client``'s
    workers, and ``install`` puts each fitted layer in ``model``.
    """
    pending: list[Any] = []
    for job in jobs:
        rec = skipped(model, job)
        if rec is not None:
            yield job, rec
            continue
        stored = None if resume_dir is None else _read_fit(resume_dir, job)
        if stored is not None:
            new, rec = stored
            install(model, job, new)
            yield job, rec
        else:
            pending.append(job)
    if client is None:
        for job in pending:  # resume_dir only: fit here, in module order
            new, rec = fit(job)
            _write_fit(resume_dir, job, new, rec)
            install(model, job, new)
            yield job, rec
        return
    yield from _fit_on_cluster(model, pending, client, resume_dir, fit, install)


def _fit_on_cluster(
    model: nn.Module,
    jobs: list[Any],
    client: Any,
    resume_dir: Any,
    fit: Fit,
    install: Callable[[nn.Module, Any, nn.Module | None], None],
) -> Iterator[tuple[Any, WeightReport]]:
    from distributed import as_completed

    by_key: dict[str, Any] = {}
    threads = _blas_threads()
    queue = list(reversed(jobs))
    # A bounded window of tasks in flight: a task carries its weight and Gram, and the
    # scheduler holds a task's data until it is done, so submitting a large model at
    # once would hold all of it there.
    window = max(2, IN_FLIGHT_PER_THREAD * sum(client.nthreads().values()))

    def submit() -> Any:
        job = queue.pop()
        key = f"sekron-fit-{_fingerprint(job)}"
        by_key[key] = job
        # the data travels inside the task (not scattered): a task whose worker died can
        # then be rerun anywhere, which scattered data would not allow
        return client.submit(fit, _portable(job, threads), key=key, retries=RETRIES)

    running = as_completed([submit() for _ in range(min(window, len(queue)))])
    try:
        for future in running:
            if queue:
                running.add(submit())
            job = by_key[future.key]
            new, rec = future.result()
            if new is not None:
                new = new.to(job.mod.weight.device)  # type: ignore[union-attr]
            if resume_dir is not None:
                _write_fit(resume_dir, job, new, rec)
            install(model, job, new)
            yield job, rec
            future.release()
    finally:
        queue.clear()
        running.clear()


def _portable(job: Any, blas_threads: int | None) -> Any:
    """The job with a CPU copy of its layer (what a worker can receive)."""
    mod = copy.deepcopy(job.mod).cpu()
    return replace(job, mod=mod, blas_threads=blas_threads)


def _blas_threads() -> int | None:
    """The caller's BLAS thread count (workers fit under it, to give the caller's bits)."""
    from threadpoolctl import threadpool_info  # type: ignore[import-untyped]

    counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(counts) if counts else None


def _fingerprint(job: Any) -> str:
    """SHA-256 of everything the fit reads: the layer's weights and settings, Gram, options."""
    h = hashlib.sha256()
    settings = {
        "format": [FIT_FORMAT, FIT_VERSION],
        "name": job.name,
        "kind": job.kind,
        "layer": repr(job.mod),
        "in_shape": job.in_shape,
        "families": job.families,
        "opts": {k: repr(v) for k, v in sorted(job.opts.items())},
        "ridge": repr(job.ridge),
    }
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    arrays = [p.detach().cpu().numpy() for p in job.mod.parameters(recurse=False)]
    if job.gram is not None:
        arrays.append(np.asarray(job.gram))
    for a in arrays:
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _fit_path(resume_dir: Any, name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    if safe != name:  # keep distinct names distinct
        safe += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return Path(resume_dir) / f"{safe}.npz"


def _write_fit(resume_dir: Any, job: Any, new: nn.Module | None, rec: WeightReport) -> None:
    """Store a finished layer: its fit (None: kept dense) and report, atomically."""
    meta: dict[str, Any] = {"name": job.name, "report": asdict(rec)}
    arrays: dict[str, Any] = {
        "format": np.array(FIT_FORMAT),
        "version": np.array(FIT_VERSION, dtype=np.int64),
        "fingerprint": np.array(_fingerprint(job)),
    }
    sel = getattr(new, "selection", None)
    if sel is not None:
        meta["structure"] = {"shapes": sel.structure.shapes, "ranks": sel.structure.ranks}
        meta["n_candidates"] = sel.n_candidates
        fit = sel.fit
        for key in _FIT_NUMBERS:
            value = getattr(fit, key)
            arrays[f"fit_{key}"] = np.array(np.nan if value is None else value, dtype=np.float64)
        for k, f in enumerate(fit.factors):
            arrays[f"fit_factor_{k}"] = f
    arrays["meta"] = np.array(json.dumps(meta))
    save_npz(_fit_path(resume_dir, job.name), arrays, name="resume_dir")


def _read_fit(resume_dir: Any, job: Any) -> tuple[nn.Module | None, WeightReport] | None:
    """The stored fit of ``job`` (None if there is none yet); a mismatch is refused."""
    path = _fit_path(resume_dir, job.name)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            contents = {k: data[k] for k in data.files}
        if str(contents["format"]) != FIT_FORMAT or int(contents["version"]) != FIT_VERSION:
            raise ValueError(f"format {str(contents['format'])!r}, version {contents['version']}")
        meta = json.loads(str(contents["meta"]))
        fingerprint = str(contents["fingerprint"])
    except Exception as exc:
        raise FormatError(
            f"resume_dir: expected a sekron layer fit in {str(path)!r}, could not read it: {exc}"
        ) from None
    expected = _fingerprint(job)
    if meta.get("name") != job.name or fingerprint != expected:
        raise FormatError(
            f"resume_dir: {str(path)!r} holds a fit of layer {meta.get('name')!r} from other "
            f"weights, Gram or options (fingerprint {fingerprint[:12]}, expected "
            f"{expected[:12]} for layer {job.name!r}); remove it or use another directory"
        )
    report = meta["report"]
    report["shape"] = None if report["shape"] is None else tuple(report["shape"])
    rec = WeightReport(**report)
    if "structure" not in meta:
        return None, rec
    num = {k: float(contents[f"fit_{k}"]) for k in _FIT_NUMBERS}
    given = {k: None if np.isnan(v) else v for k, v in num.items()}
    fit = SeKronTensor(
        [contents[f"fit_factor_{k}"] for k in range(len(meta["structure"]["shapes"]))],
        error_bound=given["error_bound"],
        reference_norm=given["reference_norm"],
        data_error_bound=given["data_error_bound"],
        data_reference_norm=given["data_reference_norm"],
    )
    st = Structure([tuple(s) for s in meta["structure"]["shapes"]], meta["structure"]["ranks"])
    return _layer_from_selection(job, Selection(st, fit, int(meta["n_candidates"]))), rec


def _layer_from_selection(job: Any, sel: Selection) -> nn.Module:
    """The layer ``from_linear`` / ``from_conv`` / ``from_embedding`` builds for ``sel``."""
    mod, w = job.mod, job.mod.weight
    assert isinstance(w, torch.Tensor)
    new: SeKronLinear | SeKronConv2d | KroneckerEmbedding
    if job.kind == "Linear":
        new = SeKronLinear(sel.structure, bias=mod.bias is not None, device=w.device, dtype=w.dtype)
    elif job.kind == "Conv2d":
        assert isinstance(mod, nn.Conv2d)
        args = (mod.stride, mod.padding, mod.dilation)
        new = SeKronConv2d(
            sel.structure, *args, bias=mod.bias is not None, device=w.device, dtype=w.dtype
        )
    else:
        assert isinstance(mod, nn.Embedding)
        new = KroneckerEmbedding(
            sel.structure, padding_idx=mod.padding_idx, device=w.device, dtype=w.dtype
        )
    new._load_fit(sel.fit, sel)
    bias = getattr(mod, "bias", None)
    if bias is not None:
        with torch.no_grad():
            new.bias.copy_(bias)  # type: ignore[union-attr, operator]
    return new
