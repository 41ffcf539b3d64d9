"""Compress the weights of a checkpoint file: the engine behind ``sekron compress``.

Reads ``.npz`` (no pickle), ``.safetensors`` (with the ``safetensors`` package) or torch
checkpoints (``.pt``, ``.pth``, ``.bin``, loaded with ``weights_only=True``), fits every
eligible weight (2-D linear weights and 4-D conv kernels) with a SeKron structure chosen
under a compression budget or an error target, and writes one ``.npz`` file (no pickle)
that :func:`load_compressed` reads back.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._selection import select
from .errors import FormatError, ShapeError
from .tensor import SeKronTensor

__all__ = [
    "read_weights",
    "choose_structure",
    "compress_weights",
    "save_compressed",
    "load_compressed",
    "TensorReport",
    "format_report",
    "FILE_FORMAT",
]

FILE_FORMAT = "sekron.compressed-checkpoint"
FILE_VERSION = 1


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
    FileNotFoundError, FormatError

    Examples
    --------
    >>> import numpy as np, os, tempfile
    >>> from sekron.checkpoint import read_weights
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
            with np.load(p, allow_pickle=False) as data:
                return {k: np.asarray(data[k]) for k in data.files}
        if suffix == ".npy":
            return {p.stem: np.load(p, allow_pickle=False)}
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


def _read_torch(p: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as exc:
        raise FormatError("path: reading a torch checkpoint needs torch") from exc
    obj = torch.load(p, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise FormatError(f"path: expected a state dict in {str(p)!r}, got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu()
            if t.dtype in (torch.bfloat16, torch.float16):
                t = t.float()
            out[str(k)] = t.numpy()
    return out


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
    >>> from sekron.checkpoint import choose_structure
    >>> W = np.kron(np.random.default_rng(0).normal(size=(8, 8)), np.ones((4, 4)))
    >>> t = choose_structure(W, ratio=8)
    >>> t.n_params <= W.size / 8, t.relative_error_bound < 1e-12
    (True, True)
    """
    if (ratio is None) == (tol is None):
        raise ValueError("expected exactly one of ratio= and tol=")
    sel = select(
        W,
        ratio=ratio,
        tol=tol,
        n_factors=n_factors,
        cost=lambda st: st.n_params,
        dense_cost=W.size,
        order="params",
        max_candidates=max_candidates,
        random_state=random_state,
    )
    return sel.fit


@dataclass
class TensorReport:
    """What happened to one tensor of the checkpoint."""

    name: str
    shape: tuple[int, ...]
    structure: str | None
    params_before: int
    params_after: int
    relative_error: float | None
    skipped: str | None = None


def compress_weights(
    weights: dict[str, np.ndarray],
    *,
    ratio: float | None = None,
    tol: float | None = None,
    n_factors: int = 2,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    min_size: int = 4096,
    random_state: Any = 0,
) -> tuple[dict[str, Any], list[TensorReport]]:
    """Compress every eligible weight of a state dict.

    Eligible: real 2-D or 4-D arrays with at least ``min_size`` entries whose name
    matches ``include`` (glob patterns; default all) and not ``exclude``. Others are
    kept as they are, with the reason in the report.

    Returns
    -------
    out : dict of name -> SeKronTensor or ndarray
    report : list of TensorReport

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.checkpoint import compress_weights
    >>> w = {"fc.weight": np.random.default_rng(0).normal(size=(64, 64)), "fc.bias": np.zeros(64)}
    >>> out, report = compress_weights(w, ratio=4)
    >>> [(r.name, r.skipped is None) for r in report]
    [('fc.weight', True), ('fc.bias', False)]
    """
    out: dict[str, Any] = {}
    report = []
    for name, W in weights.items():
        reason = None
        if W.dtype.kind != "f":
            reason = f"dtype {W.dtype} is not floating point"
        elif W.ndim not in (2, 4):
            reason = f"{W.ndim}-d tensors are not linear or conv weights"
        elif W.size < min_size:
            reason = f"{W.size} entries, below --min-size {min_size}"
        elif include and not any(fnmatch.fnmatchcase(name, p) for p in include):
            reason = "not matched by --include"
        elif exclude and any(fnmatch.fnmatchcase(name, p) for p in exclude):
            reason = "matched by --exclude"
        if reason is None:
            try:
                fit = choose_structure(
                    W.astype(np.float64),
                    ratio=ratio,
                    tol=tol,
                    n_factors=n_factors,
                    random_state=random_state,
                )
            except ShapeError as exc:
                reason = str(exc)
            else:
                fit = fit.astype(np.float32 if W.dtype == np.float32 else np.float64)
                out[name] = fit
                report.append(
                    TensorReport(
                        name,
                        W.shape,
                        str(fit.structure),
                        W.size,
                        fit.n_params,
                        fit.relative_error_bound,
                    )
                )
                continue
        out[name] = W
        report.append(TensorReport(name, W.shape, None, W.size, W.size, None, reason))
    return out, report


def save_compressed(path: str | os.PathLike[str], tensors: dict[str, Any]) -> None:
    """Write compressed and plain tensors to one ``.npz`` (readable without pickle).

    Examples
    --------
    >>> import numpy as np, os, tempfile
    >>> import sekron as sk
    >>> from sekron.checkpoint import save_compressed, load_compressed
    >>> path = os.path.join(tempfile.mkdtemp(), "c.npz")
    >>> save_compressed(path, {"w": sk.nkp(np.eye(4), (2, 2), rank=2), "b": np.zeros(3)})
    >>> sorted(load_compressed(path))
    ['b', 'w']
    """
    arrays: dict[str, Any] = {}
    manifest: dict[str, Any] = {}
    for i, (name, value) in enumerate(tensors.items()):
        if isinstance(value, SeKronTensor):
            manifest[name] = {
                "kind": "sekron",
                "n_factors": len(value.factors),
                "error_bound": value.error_bound,
                "reference_norm": value.reference_norm,
            }
            for k, f in enumerate(value.factors):
                arrays[f"t{i}_factor_{k}"] = f
        else:
            manifest[name] = {"kind": "dense"}
            arrays[f"t{i}_dense"] = np.asarray(value)
        manifest[name]["index"] = i
    header = {"format": FILE_FORMAT, "version": FILE_VERSION, "tensors": manifest}
    np.savez(path, __manifest__=np.array(json.dumps(header)), **arrays)


def load_compressed(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a file written by :func:`save_compressed` (``sekron compress``).

    Returns
    -------
    dict of name -> SeKronTensor (compressed weights) or ndarray (others)

    Raises
    ------
    FormatError
        For anything that is not such a file.

    Examples
    --------
    >>> import numpy as np, os, tempfile
    >>> from sekron.checkpoint import compress_weights, save_compressed, load_compressed
    >>> w = {"fc.weight": np.kron(np.eye(8), np.ones((8, 8))), "fc.bias": np.zeros(64)}
    >>> path = os.path.join(tempfile.mkdtemp(), "c.npz")
    >>> save_compressed(path, compress_weights(w, ratio=4, min_size=64)[0])
    >>> back = load_compressed(path)
    >>> type(back["fc.weight"]).__name__, np.allclose(back["fc.weight"].to_dense(), w["fc.weight"])
    ('SeKronTensor', True)
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            contents = {k: data[k] for k in data.files}
        header = json.loads(str(contents["__manifest__"]))
        if header.get("format") != FILE_FORMAT or header.get("version") != FILE_VERSION:
            raise FormatError(f"path: expected a {FILE_FORMAT} file of version {FILE_VERSION}")
        out: dict[str, Any] = {}
        for name, meta in header["tensors"].items():
            i = meta["index"]
            if meta["kind"] == "sekron":
                factors = [contents[f"t{i}_factor_{k}"] for k in range(meta["n_factors"])]
                out[name] = SeKronTensor(
                    factors, error_bound=meta["error_bound"], reference_norm=meta["reference_norm"]
                )
            else:
                out[name] = contents[f"t{i}_dense"]
        return out
    except FormatError:
        raise
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise FormatError(f"path: not a readable {FILE_FORMAT} file: {exc}") from None


def format_report(report: Iterable[TensorReport]) -> str:
    """The report of :func:`compress_weights` as a text table with totals.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.checkpoint import compress_weights, format_report
    >>> _, report = compress_weights({"w": np.ones((64, 64))}, ratio=4)
    >>> print(format_report(report).splitlines()[-1].split()[-2:])
    ['4.00×', 'smaller']
    """
    rows = list(report)
    header = ("tensor", "shape", "structure", "params", "after", "rel. error", "note")
    body = [
        (
            r.name,
            "×".join(map(str, r.shape)),
            r.structure or "-",
            f"{r.params_before:,}",
            f"{r.params_after:,}",
            "" if r.relative_error is None else f"{r.relative_error:.4f}",
            r.skipped or "",
        )
        for r in rows
    ]
    before = sum(r.params_before for r in rows)
    after = sum(r.params_after for r in rows)
    body.append(
        ("total", "", "", f"{before:,}", f"{after:,}", "", f"{before / max(after, 1):.2f}× smaller")
    )
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:>{w}}}" if i in (3, 4, 5) else f"{{:<{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*b) for b in body]
    return "\n".join(lines)
