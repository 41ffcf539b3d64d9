"""Calibration: the Gram matrix of every target layer's inputs, streamed through hooks.

A data-aware fit of a layer ``y = W x`` needs ``C = Σ x xᵀ`` over the inputs the layer
actually sees (DESIGN.md 2.8). :func:`calibrate` runs the model on the user's batches and
accumulates, for every ``nn.Linear`` and ``nn.Conv2d`` (``groups=1``) it targets, that
Gram in float64 as the batches stream by: activations are never kept, and the work
arrays are bounded by ``chunk_bytes``.

* ``nn.Linear``: the input flattened over all its leading dimensions, ``(N, in_features)``;
  ``C = XᵀX`` is ``in_features × in_features``.
* ``nn.Conv2d``: the im2col patches of the input, as ``torch.nn.functional.unfold`` lays
  them out (``(C, Kh, Kw)`` in C order, so that ``weight.reshape(out, -1) @ patch`` is the
  convolution), with the layer's stride, padding (any ``padding_mode``, ``"same"``,
  ``"valid"``) and dilation; one sample per output position.

A module reachable under several names (shared or tied modules) is hooked once, under its
first name in ``model.named_modules()``, so each call adds its inputs exactly once.

:func:`save_grams` and :func:`load_grams` keep the result in one ``.npz`` file (no
pickle), for ``sekron compress CKPT --grams FILE`` when no model is at hand.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sekron.errors import ArgumentTypeError, FormatError, ShapeError
from sekron.files import NpzReader, save_npz

from .distillation import _call

__all__ = ["InputGram", "calibrate", "load_grams", "save_grams"]

_FORMAT = "sekron-input-grams"
_VERSION = 1


@dataclass(frozen=True)
class InputGram:
    """The Gram matrix of one layer's inputs and the number of samples it sums.

    Attributes
    ----------
    gram : ndarray of shape (n, n), float64
        ``Σ x xᵀ`` over every input row (Linear) or im2col patch (Conv2d).
    n_samples : int
        How many rows or patches were summed (``gram / n_samples`` is the second moment).
    kind : {"Linear", "Conv2d"}

    Examples
    --------
    >>> import torch
    >>> from sekron.torch.calibration import calibrate
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), torch.nn.Flatten(), torch.nn.Linear(16, 3))
    >>> grams = calibrate(net, [torch.ones(5, 2, 4, 4)], progress=False)
    >>> [(g.kind, g.n_features, g.n_samples) for g in grams.values()]
    [('Conv2d', 18, 20), ('Linear', 16, 5)]
    >>> grams["0"].gram.shape, float(grams["0"].gram[0, 0])
    ((18, 18), 20.0)
    """

    gram: np.ndarray
    n_samples: int
    kind: str

    @property
    def n_features(self) -> int:
        """Size ``n`` of the Gram (``in_features``, or ``C·Kh·Kw`` for a convolution)."""
        return int(self.gram.shape[0])


class _Accumulator:
    """Streams one module's inputs into a float64 Gram kept on the inputs' device."""

    def __init__(self, module: nn.Module, kind: str, chunk_bytes: int):
        self.module, self.kind, self.chunk_bytes = module, kind, chunk_bytes
        self.gram: torch.Tensor | None = None
        self.n_samples = 0

    def add_rows(self, x: torch.Tensor) -> None:
        """Add ``xᵀx`` of a 2-d block of rows, converted to float64 chunk by chunk."""
        n = x.shape[1]
        if self.gram is None:
            self.gram = torch.zeros(n, n, dtype=torch.float64, device=x.device)
        rows = max(1, self.chunk_bytes // (8 * n))
        for k in range(0, x.shape[0], rows):
            block = x[k : k + rows].to(torch.float64)
            self.gram.addmm_(block.T, block)
        self.n_samples += int(x.shape[0])

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0].detach()
        if self.kind == "Linear":
            self.add_rows(x.reshape(-1, x.shape[-1]))
            return
        conv = self.module
        assert isinstance(conv, nn.Conv2d)
        if x.dim() == 3:  # unbatched (C, H, W) input
            x = x.unsqueeze(0)
        x = _pad(conv, x)
        kh, kw = conv.kernel_size
        per_item = x.shape[1] * kh * kw * _n_positions(conv, x) * 8
        items = max(1, self.chunk_bytes // max(per_item, 1))
        for k in range(0, x.shape[0], items):
            cols = F.unfold(x[k : k + items], conv.kernel_size, conv.dilation, 0, conv.stride)
            self.add_rows(cols.transpose(1, 2).reshape(-1, cols.shape[1]))


def _pad(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``x`` padded as the convolution pads it, so that unfold can run with padding 0."""
    if conv.padding == "valid":
        return x
    if conv.padding == "same":
        pads: list[int] = []
        for d, k in zip(reversed(conv.dilation), reversed(conv.kernel_size), strict=True):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
    else:
        ph, pw = (int(p) for p in conv.padding)
        pads = [pw, pw, ph, ph]
    if not any(pads):
        return x
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    return F.pad(x, pads, mode=mode)


def _n_positions(conv: nn.Conv2d, x: torch.Tensor) -> int:
    out = 1
    for size, k, s, d in zip(
        x.shape[-2:], conv.kernel_size, conv.stride, conv.dilation, strict=True
    ):
        out *= max(0, (size - d * (k - 1) - 1) // s + 1)
    return out


def _targets(
    model: nn.Module, include: Sequence[str] | None, exclude: Sequence[str] | None
) -> dict[str, tuple[nn.Module, str]]:
    out: dict[str, tuple[nn.Module, str]] = {}
    for name, mod in model.named_modules():  # one entry per module object: shared counted once
        if type(mod) is nn.Linear:
            kind = "Linear"
        elif type(mod) is nn.Conv2d and mod.groups == 1:
            kind = "Conv2d"
        else:
            continue
        if include is not None and not any(fnmatch.fnmatchcase(name, p) for p in include):
            continue
        if exclude is not None and any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        out[name] = (mod, kind)
    return out


def _patterns(p: Any, name: str) -> list[str] | None:
    if p is None:
        return None
    if isinstance(p, str):
        return [p]
    if isinstance(p, Iterable) and all(isinstance(s, str) for s in p):
        return list(p)
    raise ArgumentTypeError(f"{name}: expected a glob pattern or a list of them, got {p!r}")


def _limit(value: Any, name: str, kind: type) -> Any:
    if value is None:
        return None
    ok = isinstance(value, kind) if kind is int else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not value > 0:
        what = "a positive integer" if kind is int else "a positive number of seconds"
        raise ShapeError(f"{name}: expected {what} or None, got {value!r}")
    return value


def calibrate(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    max_batches: int | None = None,
    max_seconds: float | None = None,
    chunk_bytes: int = 1 << 26,
    progress: bool = True,
) -> dict[str, InputGram]:
    """Run ``model`` on ``batches`` and return every target layer's input Gram.

    Parameters
    ----------
    model : nn.Module
        Run in eval mode under ``torch.no_grad()``; its training flag is restored and
        nothing else about it changes.
    batches : iterable of batches
        A batch is passed as ``model(*batch)`` (tuple/list), ``model(**batch)`` (dict) or
        ``model(batch)``, as :func:`sekron.torch.distill` does.
    include, exclude : glob pattern or list of them, optional
        Which ``nn.Linear`` and ``nn.Conv2d`` (``groups=1``) layers, by qualified name
        (``fnmatch``); ``exclude`` wins. Default: all of them (a model that is itself
        such a layer has the name ``""``).
    max_batches : int, optional
        Stop after this many batches.
    max_seconds : float, optional
        Stop before the next batch once this much time has passed (a budget, checked
        between batches; at least one batch always runs).
    chunk_bytes : int, default 64 MiB
        Bound on the float64 work arrays (input rows, unfolded patches) at a time.
    progress : bool, default True
        Show a tqdm progress bar (on stderr).

    Returns
    -------
    dict of str to InputGram
        For every target layer the model called: ``gram`` (n×n float64, ``Σ x xᵀ``),
        ``n_samples`` and ``kind``. Layers never called are absent.

    Raises
    ------
    ShapeError
        If ``model`` is not an ``nn.Module``, no layer matches ``include``/``exclude``,
        or a limit is not positive.

    Notes
    -----
    For a Linear layer of input ``X`` (rows over all leading dimensions), ``C = XᵀX``.
    For a Conv2d layer, ``C = Σ_p x_p x_pᵀ`` over the im2col patches ``x_p`` (one per
    output position of every image), ordered ``(C, Kh, Kw)`` like
    ``weight.reshape(out_channels, -1)``, so the layer's output at ``p`` is ``W x_p``.

    Examples
    --------
    >>> import torch
    >>> from sekron.torch.calibration import calibrate
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> data = [torch.randn(8, 3) for _ in range(5)]
    >>> grams = calibrate(net, data, progress=False)
    >>> sorted(grams), grams["0"].gram.shape, grams["0"].n_samples
    (['0', '2'], (3, 3), 40)
    >>> X = torch.cat(data).double()
    >>> bool(torch.allclose(torch.from_numpy(grams["0"].gram), X.T @ X))
    True
    """
    if not isinstance(model, nn.Module):
        raise ShapeError(f"model: expected an nn.Module, got {type(model).__name__}")
    inc, exc = _patterns(include, "include"), _patterns(exclude, "exclude")
    max_batches = _limit(max_batches, "max_batches", int)
    max_seconds = _limit(max_seconds, "max_seconds", float)
    chunk_bytes = _limit(chunk_bytes, "chunk_bytes", int)
    targets = _targets(model, inc, exc)
    if not targets:
        raise ShapeError(
            f"model: expected at least one nn.Linear or nn.Conv2d (groups=1) matching "
            f"include={include!r}, exclude={exclude!r}, got none"
        )
    accs = {name: _Accumulator(mod, kind, chunk_bytes) for name, (mod, kind) in targets.items()}
    handles = [mod.register_forward_pre_hook(accs[name]) for name, (mod, _) in targets.items()]
    was_training = model.training
    start = time.perf_counter()
    total = None if max_batches is None else max_batches
    if total is None and hasattr(batches, "__len__"):
        total = len(batches)  # type: ignore[arg-type]
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="calibrate", unit="batch", disable=not progress, leave=False)
    try:
        model.eval()
        with torch.no_grad():
            for i, batch in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                if max_seconds is not None and i > 0 and time.perf_counter() - start > max_seconds:
                    break
                _call(model, batch)
                bar.update(1)
    finally:
        bar.close()
        for h in handles:
            h.remove()
        model.train(was_training)
    return {
        name: InputGram(acc.gram.cpu().numpy(), acc.n_samples, acc.kind)
        for name, acc in accs.items()
        if acc.gram is not None
    }


def save_grams(path: str | os.PathLike[str], grams: Mapping[str, InputGram]) -> Path:
    """Write input Grams to one ``.npz`` file, atomically and without pickle.

    The file is first written to a temporary file in the target's directory, then renamed
    over ``path``: a reader never sees half a file, and an interrupted write leaves any
    previous file intact.

    Parameters
    ----------
    path : path-like
        Where to write (``.npz`` is not appended).
    grams : mapping of str to InputGram
        As :func:`calibrate` returns.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ShapeError
        If a Gram is not a finite square float array or ``n_samples`` is negative.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> from sekron.torch.calibration import calibrate, load_grams, save_grams
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    >>> grams = calibrate(net, [torch.randn(4, 3)], progress=False)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     back = load_grams(save_grams(os.path.join(d, "grams.npz"), grams))
    >>> back["0"].n_samples, bool((back["0"].gram == grams["0"].gram).all())
    (4, True)
    """
    arrays: dict[str, np.ndarray] = {}
    names = list(grams)
    for i, name in enumerate(names):
        g = grams[name]
        gram = np.asarray(g.gram)
        if gram.ndim != 2 or gram.shape[0] != gram.shape[1] or not np.all(np.isfinite(gram)):
            raise ShapeError(
                f"grams[{name!r}].gram: expected a finite square matrix, got shape {gram.shape}"
            )
        if int(g.n_samples) < 0:
            raise ShapeError(f"grams[{name!r}].n_samples: expected >= 0, got {g.n_samples}")
        arrays[f"gram_{i}"] = gram.astype(np.float64, copy=False)
    arrays["names"] = np.array(names, dtype=np.str_)
    arrays["n_samples"] = np.array([int(grams[n].n_samples) for n in names], dtype=np.int64)
    arrays["kinds"] = np.array([grams[n].kind for n in names], dtype=np.str_)
    arrays["format"] = np.array([_FORMAT, str(_VERSION)], dtype=np.str_)
    return save_npz(path, arrays, name="path")


def load_grams(path: str | os.PathLike[str]) -> dict[str, InputGram]:
    """Read a file written by :func:`save_grams` (never unpickles).

    Parameters
    ----------
    path : path-like

    Returns
    -------
    dict of str to InputGram

    Raises
    ------
    FormatError
        If the file is not a sekron input-Gram file, or its entries are inconsistent.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> from sekron.torch.calibration import InputGram, load_grams, save_grams
    >>> g = {"fc": InputGram(np.eye(3), 10, "Linear")}
    >>> with tempfile.TemporaryDirectory() as d:
    ...     back = load_grams(save_grams(os.path.join(d, "g.npz"), g))
    >>> back["fc"].n_samples, back["fc"].gram.shape
    (10, (3, 3))
    """
    try:
        # headers first (sekron.files.NpzReader): a file claiming more than its size
        # allows, or a non-square Gram, is refused before any member is decompressed
        with NpzReader(path) as f:
            for key in ("format", "names", "n_samples", "kinds"):
                if key not in f.members:
                    raise f.error(f"expected a {_FORMAT} file with a {key!r} member")
            fmt = [str(s) for s in f.read("format")]
            if fmt[:1] != [_FORMAT]:
                raise FormatError(f"path: expected a {_FORMAT} file, got format {fmt!r}")
            names = [str(s) for s in f.read("names")]
            counts, kinds = f.read("n_samples"), [str(s) for s in f.read("kinds")]
            for i, name in enumerate(names):
                m = f.members.get(f"gram_{i}")
                if m is None or len(m.shape) != 2 or m.shape[0] != m.shape[1]:
                    raise f.error(f"expected the square Gram of {name!r}", f"gram_{i}")
            grams = [np.array(f.read(f"gram_{i}"), dtype=np.float64) for i in range(len(names))]
    except FormatError:
        raise
    except (KeyError, ValueError, OSError) as exc:
        raise FormatError(
            f"path: expected a {_FORMAT} .npz file, could not read {path!r}: {exc}"
        ) from exc
    if len(counts) != len(names) or len(kinds) != len(names):
        raise FormatError(f"path: expected one count and kind per name in {path!r}")
    out = {}
    for name, gram, n, kind in zip(names, grams, counts, kinds, strict=True):
        if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
            raise FormatError(f"path: Gram of {name!r} is not square, got shape {gram.shape}")
        out[name] = InputGram(gram, int(n), kind)
    return out
