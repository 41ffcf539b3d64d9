"""``sekron compress``: compress the weights of a checkpoint file.

Reads ``.npz`` (no pickle), ``.safetensors`` (with the ``safetensors`` package) or torch
checkpoints (``.pt``, ``.pth``, ``.bin``, through :func:`sekron.torch.read_state_dict`,
``weights_only=True``), fits every eligible weight (2-D linear weights and 4-D conv
kernels) with the compressor core :func:`sekron.selection.compress_weight`, and writes
one ``.npz`` file (no pickle) that :func:`load_compressed` reads back. Each SeKron tensor
is stored with the members of :meth:`sekron.SeKronTensor.save` under a per-tensor prefix
``t<i>/``, so the two files share one layout.
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .._validation import as_path, check_exactly_one, check_ratio
from ..errors import ArgumentError, FormatError, SekronError
from ..files import MAX_HEADER_BYTES, NpzReader, check_output_path, save_npz
from ..selection import WeightReport, budget, compress_weight
from ..tensor import SeKronTensor, read_tensor

__all__ = [
    "FILE_FORMAT",
    "TensorReport",
    "add_parser",
    "choose_structure",
    "compress_weights",
    "format_report",
    "load_compressed",
    "read_weights",
    "run",
    "save_compressed",
]

FILE_FORMAT = "sekron.compressed-checkpoint"
# version 1 stored factors as t<i>_factor_<k>; version 2 uses SeKronTensor.save's members
FILE_VERSION = 2
_READABLE_VERSIONS = (1, 2)

TensorReport = WeightReport
"""The report of one tensor: :class:`sekron.selection.WeightReport` (one type for both
compressors)."""


def read_weights(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read the named arrays of a checkpoint as float or integer numpy arrays.

    Parameters
    ----------
    path : path
        ``.npz``, ``.npy``, ``.safetensors``, or a torch checkpoint (``.pt``, ``.pth``,
        ``.bin``; a state dict, possibly nested under ``"state_dict"`` or ``"model"``).

    Returns
    -------
    dict of name -> ndarray

    Raises
    ------
    FileNotFoundError
    FormatError
        Also for an ``.npz`` member :class:`sekron.files.NpzReader` refuses unread (a
        deflate bomb, an object dtype) and an ``.npy`` shorter than its header declares.

    Examples
    --------
    >>> import numpy as np, os, tempfile
    >>> from sekron.cli.checkpoint import read_weights
    >>> path = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> np.savez(path, fc=np.ones((4, 4)))
    >>> {k: v.shape for k, v in read_weights(path).items()}
    {'fc': (4, 4)}
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"path: no such file {os.fspath(path)!r}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npz":
            # every member's header and inflation checked before any data is inflated
            with NpzReader(p, name="path") as z:
                return {k: z.read(k) for k in z.members}
        if suffix == ".npy":
            return {p.stem: _read_npy(p)}
        if suffix == ".safetensors":
            try:
                from safetensors.numpy import load_file
            except ImportError as exc:
                raise FormatError(
                    "path: reading .safetensors needs the safetensors package"
                ) from exc
            return dict(load_file(str(p)))
        if suffix in (".pt", ".pth", ".bin"):
            return _read_torch(p)
    except FormatError:
        raise
    except Exception as exc:
        raise FormatError(
            f"path: could not read {os.fspath(path)!r} as a checkpoint: {exc}"
        ) from None
    raise FormatError(
        f"path: expected .npz, .npy, .safetensors, .pt, .pth or .bin, got {os.fspath(path)!r}"
    )


def _read_npy(p: Path) -> np.ndarray:
    """Read one ``.npy``, its header bounded and checked against the file's size first.

    A header declaring more data than the file holds is refused before the data is
    allocated (numpy would allocate all it declares, then find the file short).
    """
    with open(p, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh, MAX_HEADER_BYTES)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh, MAX_HEADER_BYTES)
        else:
            raise FormatError(
                f"path: {os.fspath(p)!r}: expected .npy format 1.0 or 2.0, got {version}"
            )
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        held = os.fstat(fh.fileno()).st_size - fh.tell()
        if held < nbytes:
            raise FormatError(
                f"path: {os.fspath(p)!r}: header declares shape {shape} of {dtype} "
                f"({nbytes} data bytes) but the file holds {held}; truncated?"
            )
        fh.seek(0)
        return np.lib.format.read_array(fh, allow_pickle=False, max_header_size=MAX_HEADER_BYTES)


def _read_torch(p: Path) -> dict[str, np.ndarray]:
    try:
        from ..torch import read_state_dict
    except ImportError as exc:
        raise FormatError("path: reading a torch checkpoint needs torch") from exc
    return read_state_dict(p)


def choose_structure(
    W: np.ndarray,
    *,
    ratio: float | None = None,
    tol: float | None = None,
    n_factors: int = 2,
    max_candidates: int = 6,
    random_state: Any = 0,
) -> SeKronTensor:
    """Fit ``W`` with the best of a few candidate structures under a budget or a target.

    The selection of the torch layers' ``from_linear``/``from_conv``, aimed at storage:
    with ``ratio``, the candidates that use most of the budget of ``W.size / ratio``
    parameters (plus the plain low-rank split) are fitted and the least certified error
    wins; with ``tol``, the fewest parameters meeting it win.

    Parameters
    ----------
    W : ndarray
    ratio : float >= 1, optional
    tol : float in [0, 1), optional
    n_factors : int, default 2
    max_candidates : int, default 6
    random_state : int or None

    Returns
    -------
    SeKronTensor
        With its certified ``error_bound``.

    Raises
    ------
    ValueError
        Unless exactly one of ``ratio`` and ``tol`` is given, or for ``ratio < 1``.
    ShapeError
        If no structure meets the budget.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.cli.checkpoint import choose_structure
    >>> W = np.kron(np.random.default_rng(0).normal(size=(8, 8)), np.ones((4, 4)))
    >>> t = choose_structure(W, ratio=8)
    >>> t.n_params <= W.size / 8, t.relative_error_bound < 1e-12
    (True, True)
    """
    choose = budget(
        ratio=ratio,
        tol=tol,
        n_factors=n_factors,
        max_candidates=max_candidates,
        random_state=random_state,
    )
    return choose(np.asarray(W, dtype=np.float64)).fit


def _ineligible(
    name: str,
    W: np.ndarray,
    include: Sequence[str] | None,
    exclude: Sequence[str] | None,
    min_size: int,
) -> str | None:
    """Why ``W`` is not compressed, or None if it is eligible."""
    if W.dtype.kind != "f":
        return f"dtype {W.dtype} is not floating point"
    if W.ndim not in (2, 4):
        return f"{W.ndim}-d tensors are not linear or conv weights"
    if W.size < min_size:
        return f"{W.size} entries, below --min-size {min_size}"
    if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
        return "not matched by --include"
    if exclude and any(fnmatch.fnmatchcase(name, p) for p in exclude):
        return "matched by --exclude"
    return None


def compress_weights(
    weights: dict[str, np.ndarray],
    *,
    ratio: float | None = None,
    tol: float | None = None,
    n_factors: int = 2,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    min_size: int = 4096,
    grams: dict[str, np.ndarray] | None = None,
    ridge: float = 1e-3,
    random_state: Any = 0,
    client: Any = None,
) -> tuple[dict[str, Any], list[WeightReport]]:
    """Compress every eligible weight of a state dict.

    Eligible: real 2-D or 4-D arrays with at least ``min_size`` entries whose name
    matches ``include`` (glob patterns; default all) and not ``exclude``. Others are
    kept as they are, with the reason in the report. Each eligible weight goes through
    :func:`sekron.selection.compress_weight` (parameters ranked for storage).

    With ``grams`` (input Gram matrices by layer name, as :func:`sekron.torch.calibrate`
    writes them: ``"fc"`` for the weight ``"fc.weight"``, or the weight's own name), a
    weight whose Gram is there is fitted data-aware and its report carries the relative
    data-weighted error and the plain fit's.

    With ``client`` (a ``distributed.Client``) every eligible weight is one task on its
    cluster, retried if its worker dies, fitted under the caller's BLAS thread count:
    the fits are bit-identical to the serial ones.

    Returns
    -------
    out : dict of name -> SeKronTensor or ndarray
        A fit keeps the weight's dtype if float32, else is float64.
    report : list of WeightReport

    Raises
    ------
    ValueError
        Unless exactly one of ``ratio`` and ``tol`` is given, or for ``ratio < 1``.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.cli.checkpoint import compress_weights
    >>> w = {"fc.weight": np.random.default_rng(0).normal(size=(64, 64)), "fc.bias": np.zeros(64)}
    >>> out, report = compress_weights(w, ratio=4)
    >>> [(r.name, r.skipped is None) for r in report]
    [('fc.weight', True), ('fc.bias', False)]
    """
    options = dict(
        ratio=ratio, tol=tol, n_factors=n_factors, ridge=ridge, random_state=random_state
    )
    budget(**options)  # checks ratio and tol once, before any fit
    out: dict[str, Any] = {}
    report: dict[str, WeightReport] = {}
    futures = {}
    threads = None if client is None else _blas_threads()
    for name, W in weights.items():
        reason = _ineligible(name, W, include, exclude, min_size)
        if reason is not None:
            out[name] = W
            report[name] = WeightReport(
                name, "tensor", None, W.size, W.size, skipped=reason, shape=W.shape
            )
            continue
        gram = _gram_for(name, W, grams)
        if client is None:
            out[name], report[name] = _fit_weight(name, W, gram, options, None)
        else:
            key = f"sekron-weight-{name}-{os.urandom(4).hex()}"
            futures[name] = client.submit(
                _fit_weight, name, W, gram, options, threads, key=key, retries=3
            )
    if futures:
        out.update(_gather(futures, report))
    return {k: out[k] for k in weights}, [report[k] for k in weights]


def _fit_weight(
    name: str, W: np.ndarray, gram: Any, options: dict[str, Any], blas_threads: int | None
) -> tuple[Any, WeightReport]:
    """One weight's fit (module level: a cluster's worker runs it too)."""
    if blas_threads is not None:  # BLAS reductions round by thread count: the caller's
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

        with threadpool_limits(blas_threads, user_api="blas"):
            return _fit_weight(name, W, gram, options, None)
    sel, rec = compress_weight(W.astype(np.float64), budget(**options), name=name, gram=gram)
    dtype = np.float32 if W.dtype == np.float32 else np.float64
    return (W if sel is None else sel.fit.astype(dtype)), rec


def _blas_threads() -> int | None:
    from threadpoolctl import threadpool_info  # type: ignore[import-untyped]

    counts = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return max(counts) if counts else None


def _gather(futures: dict[str, Any], report: dict[str, WeightReport]) -> dict[str, Any]:
    """The fits of ``futures`` (weight name -> future) as they finish, with a progress bar."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    names = {f.key: name for name, f in futures.items()}
    out = {}
    with tqdm(total=len(futures), desc="compress", leave=False) as bar:
        for future in as_completed(list(futures.values())):
            name = names[future.key]
            out[name], report[name] = future.result()
            future.release()
            bar.update(1)
    return out


def cluster_client(scheduler: str | None, workers: int | None) -> Any:
    """A ``distributed.Client`` for ``--scheduler ADDR`` or ``--workers N``; None for neither.

    ``--workers N`` alone starts a ``LocalCluster`` of N one-thread worker processes
    (without dask's worker profiler).
    """
    if scheduler is None and workers is None:
        return None
    if workers is not None and workers < 1:
        raise ArgumentError(f"--workers: expected a positive number of workers, got {workers}")
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise SekronError(
            "--scheduler/--workers: need dask.distributed (pip install 'sekron[distributed]')"
        ) from None
    if scheduler is not None:
        return Client(scheduler)
    import dask

    # dask's statistical profiler holds the GIL 100 times a second in every worker; it
    # took ~20 % of a fit's CPU time (benchmarks/bench_distributed.py)
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=None)
    return Client(cluster)


def _gram_for(name: str, W: np.ndarray, grams: dict[str, np.ndarray] | None) -> np.ndarray | None:
    """The Gram of ``name``'s inputs (keyed by the layer or the weight name), checked."""
    if not grams:
        return None
    layer = name[: -len(".weight")] if name.endswith(".weight") else name
    gram = grams.get(name, grams.get(layer))
    if gram is None:
        return None
    n = int(np.prod(W.shape[1:]))
    if np.shape(gram) != (n, n):
        raise FormatError(
            f"grams: expected a {n}×{n} Gram for {name!r} of shape {W.shape}, got {np.shape(gram)}"
        )
    return np.asarray(gram, dtype=np.float64)


UNUSABLE = 0.3
"""Mean relative error above which :func:`quality_warning` warns (see there)."""


def quality_warning(report: Iterable[WeightReport]) -> str | None:
    """A plain warning when the errors reached would likely leave a model unusable.

    The error judged is each compressed tensor's data-weighted error where it was
    calibrated, else its weight error. Above a mean of 0.3 a model rarely keeps working
    without recovery: on all-MiniLM-L6-v2 at 4×, weight errors of 0.68–0.79 kept a mean
    embedding cosine of 0.25–0.29, whitened fits with data errors near 0.3 about 0.66.

    Examples
    --------
    >>> from sekron.selection import WeightReport
    >>> print(quality_warning([WeightReport("w", "tensor", "s", 10, 2, relative_error=0.7)]))
    warning: the compressed tensors keep a mean relative weight error of 0.700 (max 0.700, 1 tensors); above 0.3 ...
    >>> quality_warning([WeightReport("w", "tensor", "s", 10, 2, relative_error=0.05)]) is None
    True
    """
    done = [r for r in report if r.skipped is None]
    errs = [r.data_error if r.data_error is not None else r.relative_error for r in done]
    vals = [float(e) for e in errs if e is not None]
    if not vals or float(np.mean(vals)) <= UNUSABLE:
        return None
    kind = "data-weighted" if any(r.data_error is not None for r in done) else "weight"
    return (
        f"warning: the compressed tensors keep a mean relative {kind} error of "
        f"{np.mean(vals):.3f} (max {max(vals):.3f}, {len(vals)} tensors); above {UNUSABLE} a "
        "model rarely works without recovery. Calibrate (--grams, from "
        "sekron.torch.calibrate and save_grams), lower --ratio, and distill the result."
    )


def _sekron_members(t: SeKronTensor) -> dict[str, np.ndarray]:
    """The members :meth:`SeKronTensor.save` writes, read back from an in-memory file."""
    buf = io.BytesIO()
    t.save(buf)  # type: ignore[arg-type]  # np.savez underneath takes a file object
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def save_compressed(
    path: str | os.PathLike[str],
    tensors: dict[str, Any],
    *,
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> None:
    """Write compressed and plain tensors to one ``.npz`` (readable without pickle).

    Tensor ``i`` is stored under the prefix ``t<i>/``: a SeKron tensor with the members
    of :meth:`sekron.SeKronTensor.save`, a plain array as ``t<i>/dense``; a JSON
    manifest maps names to prefixes. The file is written atomically to exactly ``path``
    (:func:`sekron.files.save_npz`), never over one of ``inputs``.

    Examples
    --------
    >>> import numpy as np, os, tempfile
    >>> import sekron as sk
    >>> from sekron.cli.checkpoint import save_compressed, load_compressed
    >>> path = os.path.join(tempfile.mkdtemp(), "c.npz")
    >>> save_compressed(path, {"w": sk.nkp(np.eye(4), (2, 2), rank=2), "b": np.zeros(3)})
    >>> sorted(load_compressed(path))
    ['b', 'w']
    """
    arrays: dict[str, Any] = {}
    manifest: dict[str, Any] = {}
    for i, (name, value) in enumerate(tensors.items()):
        prefix = f"t{i}/"
        if isinstance(value, SeKronTensor):
            manifest[name] = {"kind": "sekron", "prefix": prefix}
            arrays.update({prefix + k: v for k, v in _sekron_members(value).items()})
        else:
            manifest[name] = {"kind": "dense", "prefix": prefix}
            arrays[prefix + "dense"] = np.asarray(value)
    header = {"format": FILE_FORMAT, "version": FILE_VERSION, "tensors": manifest}
    save_npz(path, {"__manifest__": np.array(json.dumps(header)), **arrays}, inputs=inputs)


_KINDS = ("sekron", "dense")
_MAX_MANIFEST_CHARS = 1 << 24  # 16 Mi characters of JSON: far above any real checkpoint


def _json_constant(token: str) -> Any:
    raise ValueError(f"non-finite number {token} in the manifest")


def _read_manifest(z: NpzReader) -> dict[str, Any]:
    """The JSON manifest, its header checked before it is read, then its fields."""
    m = z.members.get("__manifest__")
    if m is None:
        raise z.error(f"expected a {FILE_FORMAT} manifest, it is missing", "__manifest__.npy")
    if m.shape != () or m.dtype.kind != "U" or m.nbytes > 4 * _MAX_MANIFEST_CHARS:
        raise z.error(
            f"expected a 0-d string of at most {_MAX_MANIFEST_CHARS} characters, got shape "
            f"{m.shape} of {m.dtype}",
            "__manifest__.npy",
        )
    try:
        header = json.loads(str(z.read("__manifest__")), parse_constant=_json_constant)
    except FormatError:
        raise
    except Exception as exc:  # JSON errors, recursion on absurd nesting
        raise z.error(f"expected a JSON manifest: {exc}", "__manifest__.npy") from None
    if not isinstance(header, dict) or header.get("format") != FILE_FORMAT:
        got = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise z.error(f"expected format {FILE_FORMAT!r}, got {got!r}", "__manifest__.npy")
    version = header.get("version")
    if type(version) is not int or version not in _READABLE_VERSIONS:
        raise z.error(
            f"expected version as an int in {_READABLE_VERSIONS}, got {version!r}",
            "__manifest__.npy",
        )
    tensors = header.get("tensors")
    if not isinstance(tensors, dict):
        raise z.error(
            f"expected 'tensors' to map names to entries, got {type(tensors).__name__}",
            "__manifest__.npy",
        )
    for name, meta in tensors.items():
        if not isinstance(meta, dict) or meta.get("kind") not in _KINDS:
            kind = meta.get("kind") if isinstance(meta, dict) else meta
            raise z.error(
                f"tensor {name!r}: expected kind in {_KINDS}, got {kind!r}", "__manifest__.npy"
            )
    return header


def _meta_int(z: NpzReader, name: str, meta: dict[str, Any], key: str, minimum: int) -> int:
    v = meta.get(key)
    if type(v) is not int or v < minimum:
        raise z.error(
            f"tensor {name!r}: expected {key} as an int >= {minimum}, got {v!r}", "__manifest__.npy"
        )
    return v


def _meta_bound(z: NpzReader, name: str, meta: dict[str, Any], key: str) -> float | None:
    v = meta.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
        raise z.error(
            f"tensor {name!r}: expected {key} finite and >= 0 (or null), got {v!r}",
            "__manifest__.npy",
        )
    return float(v)


def _dense_member(z: NpzReader, name: str, key: str) -> str:
    if key not in z.members:
        raise z.error(f"tensor {name!r}: expected this member, it is missing", key + ".npy")
    return key


def _load_v1(z: NpzReader, name: str, meta: dict[str, Any]) -> tuple[Any, set[str]]:
    """One tensor of a version-1 file (``t<i>_factor_<k>``, ``t<i>_dense``)."""
    i = _meta_int(z, name, meta, "index", 0)
    if meta["kind"] == "dense":
        key = _dense_member(z, name, f"t{i}_dense")
        return z.read(key), {key}
    n = _meta_int(z, name, meta, "n_factors", 2)
    if n > len(z.members):  # before building n keys: n may be absurd
        raise z.error(
            f"tensor {name!r}: expected n_factors <= the {len(z.members)} members, got {n}",
            "__manifest__.npy",
        )
    keys = [f"t{i}_factor_{k}" for k in range(n)]
    for key in keys:
        m = z.members[_dense_member(z, name, key)]
        if m.dtype.kind not in "iuf" or len(m.shape) < 2:
            raise z.error(
                f"expected a real factor with at least 2 axes, got shape {m.shape} of {m.dtype}",
                key + ".npy",
            )
    eb, rn = (_meta_bound(z, name, meta, k) for k in ("error_bound", "reference_norm"))
    factors = [z.read(k) for k in keys]
    try:
        t = SeKronTensor(factors, error_bound=eb, reference_norm=rn)
    except SekronError as exc:
        raise z.error(f"tensor {name!r}: invalid factors: {exc}") from None
    return t, set(keys)


def _load_v2(z: NpzReader, name: str, meta: dict[str, Any]) -> tuple[Any, set[str]]:
    prefix = meta.get("prefix")
    if not isinstance(prefix, str) or not prefix:
        raise z.error(
            f"tensor {name!r}: expected a non-empty string prefix, got {prefix!r}",
            "__manifest__.npy",
        )
    if meta["kind"] == "dense":
        key = _dense_member(z, name, prefix + "dense")
        return z.read(key), {key}
    return read_tensor(z, prefix)


def load_compressed(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a file written by :func:`save_compressed` (``sekron compress``).

    Files of the earlier layout (version 1) are read too. Nothing is decompressed before
    the zip directory and every member's ``.npy`` header (:class:`sekron.files.NpzReader`),
    the manifest (format, an int version in 1..2, every tensor of kind ``"sekron"`` or
    ``"dense"``, counts and certificates of the right types) and each SeKron tensor's
    declared factor shapes (:func:`sekron.tensor.read_tensor`) are checked; members no
    manifest entry claims, or claimed twice, are refused.

    Returns
    -------
    dict of name -> SeKronTensor (compressed weights) or ndarray (others)

    Raises
    ------
    FormatError
        For anything that is not such a file, naming the file and the member.
    FileNotFoundError, OSError
        If there is no such file, or it cannot be opened.

    Examples
    --------
    >>> import numpy as np, os, tempfile
    >>> from sekron.cli.checkpoint import compress_weights, save_compressed, load_compressed
    >>> w = {"fc.weight": np.kron(np.eye(8), np.ones((8, 8))), "fc.bias": np.zeros(64)}
    >>> path = os.path.join(tempfile.mkdtemp(), "c.npz")
    >>> save_compressed(path, compress_weights(w, ratio=4, min_size=64)[0])
    >>> back = load_compressed(path)
    >>> type(back["fc.weight"]).__name__, np.allclose(back["fc.weight"].to_dense(), w["fc.weight"])
    ('SeKronTensor', True)
    """
    path = as_path(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"path: no such file {path!r}")
    with NpzReader(path) as z:
        header = _read_manifest(z)
        load_one = _load_v1 if header["version"] == 1 else _load_v2
        out: dict[str, Any] = {}
        claimed = {"__manifest__"}
        for name, meta in header["tensors"].items():
            value, keys = load_one(z, name, meta)
            if keys & claimed:
                raise z.error(f"tensor {name!r}: members {sorted(keys & claimed)} claimed twice")
            claimed |= keys
            out[name] = value
        extra = sorted(set(z.members) - claimed)
        if extra:
            raise z.error(f"expected only members the manifest names, got also {extra}")
    return out


def format_report(report: Iterable[WeightReport]) -> str:
    """The report of :func:`compress_weights` as a text table with totals.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.cli.checkpoint import compress_weights, format_report
    >>> _, report = compress_weights({"w": np.ones((64, 64))}, ratio=4)
    >>> print(format_report(report).splitlines()[-1].split()[-2:])
    ['4.00×', 'smaller']
    """
    rows = list(report)
    header = ("tensor", "shape", "structure", "params", "after", "rel. error", "data err.", "note")
    body = [
        (
            r.name,
            "×".join(map(str, r.shape or ())),
            r.structure or "-",
            f"{r.params_before:,}",
            f"{r.params_after:,}",
            "" if r.relative_error is None else f"{r.relative_error:.4f}",
            _data_note(r),
            r.skipped or "",
        )
        for r in rows
    ]
    before = sum(r.params_before for r in rows)
    after = sum(r.params_after for r in rows)
    body.append(
        (
            "total",
            "",
            "",
            f"{before:,}",
            f"{after:,}",
            "",
            "",
            f"{before / max(after, 1):.2f}× smaller",
        )
    )
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    fmt = "  ".join(
        f"{{:>{w}}}" if i in (3, 4, 5, 6) else f"{{:<{w}}}" for i, w in enumerate(widths)
    )
    lines = [fmt.format(*header), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*b) for b in body]
    return "\n".join(lines)


def _data_note(r: WeightReport) -> str:
    if r.data_error is None:
        return ""
    plain = "" if r.plain_data_error is None else f" (plain {r.plain_data_error:.4f})"
    return f"{r.data_error:.4f}{plain}"


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``compress`` sub-command."""
    c = subparsers.add_parser(
        "compress", help="compress the weights of a checkpoint into SeKron factors"
    )
    c.add_argument("weights", help=".npz, .safetensors or torch checkpoint (.pt, .pth, .bin)")
    c.add_argument("--ratio", type=float, default=None, help="per-tensor compression ratio")
    c.add_argument("--tol", type=float, default=None, help="per-tensor relative error target")
    c.add_argument("-o", "--output", required=True, help="output .npz (no pickle)")
    c.add_argument("--n-factors", type=int, default=2)
    c.add_argument("--include", nargs="*", default=None, help="glob patterns of tensor names")
    c.add_argument("--exclude", nargs="*", default=None, help="glob patterns of tensor names")
    c.add_argument("--min-size", type=int, default=4096, help="smallest tensor compressed")
    c.add_argument(
        "--grams",
        default=None,
        help="input Gram matrices per layer (.npz from sekron.torch.save_grams): data-aware fits",
    )
    c.add_argument("--ridge", type=float, default=1e-3, help="ridge of the Grams, relative to tr/n")
    c.add_argument(
        "--scheduler", default=None, help="dask.distributed scheduler ADDR: fit the tensors there"
    )
    c.add_argument(
        "--workers", type=int, default=None, help="fit on a local cluster of N worker processes"
    )
    return c


def _read_grams(path: str) -> dict[str, np.ndarray]:
    """Mean second moments (Gram / samples) by layer name from a ``save_grams`` file."""
    from ..torch.calibration import load_grams  # torch only when a Grams file is given

    return {k: g.gram / max(g.n_samples, 1) for k, g in load_grams(path).items()}


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``sekron compress``; the exit status is 1 when no tensor was eligible."""
    try:
        check_exactly_one(ratio=args.ratio, tol=args.tol)
        if args.ratio is not None:
            check_ratio(args.ratio, "--ratio")
    except ValueError as exc:
        raise SekronError(f"compress: {exc}") from None
    if args.min_size < 1:
        raise SekronError(f"--min-size: expected a positive number of entries, got {args.min_size}")
    inputs = [args.weights] + ([args.grams] if args.grams else [])
    check_output_path(args.output, inputs, "--output")
    weights = read_weights(args.weights)
    grams = _read_grams(args.grams) if args.grams else None
    start = time.perf_counter()
    client = cluster_client(getattr(args, "scheduler", None), getattr(args, "workers", None))
    try:
        tensors, report = compress_weights(
            weights,
            ratio=args.ratio,
            tol=args.tol,
            n_factors=args.n_factors,
            include=args.include,
            exclude=args.exclude,
            min_size=args.min_size,
            grams=grams,
            ridge=args.ridge,
            client=client,
        )
    finally:
        if client is not None:
            cluster = client.cluster
            client.close()
            if cluster is not None and args.scheduler is None:
                cluster.close()
    elapsed = time.perf_counter() - start
    print(format_report(report), file=out)
    warning = quality_warning(report)
    if warning is not None:
        print(warning, file=out)
    if not any(r.skipped is None for r in report):
        print("sekron: error: no tensor was eligible for compression", file=sys.stderr)
        return 1
    save_compressed(args.output, tensors, inputs=inputs)
    print(
        f"\nwrote {args.output} in {elapsed:.1f} s "
        "(read it with sekron.cli.checkpoint.load_compressed)",
        file=out,
    )
    return 0
