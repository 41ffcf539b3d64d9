"""Kronecker (LoKr) and low-rank (LoRA) fine-tuning adapters: extract, convert, merge, files.

A LoKr adapter stores a layer's update as ``ΔW = s · w1 ⊗ w2`` (PEFT's ``LoKr``, LyCORIS's
``lokr``), a LoRA adapter as ``ΔW = s · up @ down``. This module

* extracts the optimal LoKr adapter of each layer's update ``tuned - base`` (the nearest
  Kronecker product of :func:`sekron.nkp`, ``w2`` truncated to a rank and refined by
  alternating least squares), with the exact error of every layer;
* converts LoKr to LoRA exactly from the factors' SVDs, and LoRA to LoKr from the
  low-rank factors, without forming ``ΔW``;
* merges updates into (and out of) a model;
* reads and writes LyCORIS ``.safetensors`` files and PEFT adapter directories
  (``adapter_config.json`` + ``adapter_model.safetensors``), safetensors only.

Factor shapes follow LyCORIS's ``factor`` rule (:func:`lokr_shapes`), which is also
PEFT's for ``factor=-1``; PEFT and LyCORIS store ``w2`` in full once its rank reaches
half its larger side, and the writers here follow that rule so their loaders accept the files.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validation import as_float_array, as_positive_int, check_tol
from ..errors import ArgumentError, ArgumentTypeError, FormatError, ShapeError
from ._adapter_files import load_lycoris, load_peft, lycoris_name, save_lycoris, save_peft
from ._convert import to_numpy, to_torch
from ._lokr import (
    LoKr,
    LoRA,
    LowRankRearranged,
    check_rank,
    factorization,
    fit_lokr,
    kron_lowrank_svd,
    lokr_shapes,
    lowrank_start,
    nkp_start,
)

__all__ = [
    "Extraction",
    "LayerFit",
    "LoKr",
    "LoRA",
    "extract",
    "factorization",
    "fit_update",
    "load_lycoris",
    "load_peft",
    "lokr_shapes",
    "lokr_to_lora",
    "lora_to_lokr",
    "lycoris_name",
    "merge",
    "save_lycoris",
    "save_peft",
    "unmerge",
]

_TARGET_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass(frozen=True)
class LayerFit:
    """How one layer's update was fitted.

    Attributes
    ----------
    name : str
        Module name (the state-dict key without ``.weight``).
    shape : tuple of int
        Weight shape.
    shape_w1, shape_w2 : tuple of int
        Factor shapes.
    rank : int or None
        Rank of ``w2`` (None: full).
    error : float
        ``||ΔW - w1 ⊗ w2||_F``, computed exactly from the residual.
    relative_error : float
        ``error / ||ΔW||_F`` (0 for a zero update).
    kron_error : float
        The error of the unconstrained nearest Kronecker product, the floor for any rank.
    n_params : int
        Stored values of the adapter.
    sweeps : int
        Alternating least-squares sweeps that lowered the error.
    norm : float
        ``||ΔW||_F``.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.torch.adapters import extract
    >>> base = {"fc.weight": np.zeros((4, 4))}
    >>> fit = extract(base, {"fc.weight": np.kron(np.eye(2), np.ones((2, 2)))}).report[0]
    >>> fit.name, fit.shape, fit.shape_w1, fit.shape_w2, fit.rank, fit.n_params
    ('fc', (4, 4), (2, 2), (2, 2), None, 8)
    >>> round(fit.norm, 4), fit.relative_error < 1e-12
    (2.8284, True)
    """

    name: str
    shape: tuple[int, ...]
    shape_w1: tuple[int, ...]
    shape_w2: tuple[int, ...]
    rank: int | None
    error: float
    relative_error: float
    kron_error: float
    n_params: int
    sweeps: int
    norm: float

    @property
    def relative_floor(self) -> float:
        """``kron_error / ||ΔW||_F`` (0 for a zero update)."""
        return self.kron_error / self.norm if self.norm > 0 else 0.0


@dataclass(frozen=True)
class Extraction:
    """Adapters extracted by :func:`extract`, with their per-layer report.

    Attributes
    ----------
    adapters : dict of str to LoKr
    report : tuple of LayerFit

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.torch.adapters import extract
    >>> base = {"fc.weight": np.zeros((4, 4)), "out.weight": np.zeros((2, 4))}
    >>> tuned = {"fc.weight": np.kron(np.eye(2), np.ones((2, 2))), "out.weight": np.zeros((2, 4))}
    >>> ex = extract(base, tuned)  # "out" did not change: no adapter
    >>> list(ex.adapters), [f.name for f in ex.report]
    (['fc'], ['fc'])
    >>> np.allclose(ex.adapters["fc"].delta(), tuned["fc.weight"])
    True
    """

    adapters: dict[str, LoKr]
    report: tuple[LayerFit, ...]

    def format_report(self) -> str:
        """A plain-text table, one line per layer.

        Examples
        --------
        >>> import numpy as np
        >>> from sekron.torch.adapters import extract
        >>> base = {"fc.weight": np.zeros((4, 4))}
        >>> ex = extract(base, {"fc.weight": np.kron(np.eye(2), np.ones((2, 2)))})
        >>> print(ex.format_report().splitlines()[0].split()[:3])
        ['layer', 'shape', 'w1']
        """
        lines = [
            f"{'layer':<24} {'shape':<18} {'w1':<10} {'w2':<16} {'rank':>5} "
            f"{'rel.err':>10} {'floor':>10} {'params':>9}"
        ]
        for f in self.report:
            lines.append(
                f"{f.name:<24} {f.shape!s:<18} {f.shape_w1!s:<10} {f.shape_w2!s:<16} "
                f"{'full' if f.rank is None else f.rank:>5} {f.relative_error:>10.3e} "
                f"{f.relative_floor:>10.3e} {f.n_params:>9}"
            )
        return "\n".join(lines)


def _as_weights(obj: Any, name: str) -> dict[str, Any]:
    """Module name -> weight, for the target layers of a model or the weights of a state dict."""
    if isinstance(obj, nn.Module):
        return {n: m.weight for n, m in obj.named_modules() if isinstance(m, _TARGET_TYPES)}
    if not isinstance(obj, Mapping):
        raise ArgumentTypeError(
            f"{name}: expected an nn.Module or a state dict, got {type(obj).__name__}"
        )
    out = {}
    for key, value in obj.items():
        if isinstance(key, str) and key.endswith(".weight") and 2 <= np.ndim(value) <= 4:
            out[key[: -len(".weight")]] = value
    return out


def _numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = to_numpy(x, np.float64)
    return as_float_array(x, name).astype(np.float64, copy=False)


def _factor_shapes(
    shape: tuple[int, ...], factor: Any, shape_w1: Any
) -> tuple[tuple[int, int], tuple[int, ...]]:
    """Factor shapes from a given ``w1`` shape, else from LyCORIS's rule for ``factor``."""
    if shape_w1 is not None:
        return _check_shape_w1(shape_w1, shape, "shape_w1")
    if (
        isinstance(factor, bool)
        or not isinstance(factor, (int, np.integer))
        or factor == 0
        or factor < -1
    ):
        raise ArgumentError(f"factor: expected -1 or a positive int, got {factor!r}")
    return lokr_shapes(shape, int(factor))


def _check_shape_w1(
    shape_w1: Any, shape: tuple[int, ...], name: str
) -> tuple[tuple[int, int], tuple[int, ...]]:
    try:
        a, c = (int(v) for v in shape_w1)
    except (TypeError, ValueError):
        raise ShapeError(f"{name}: expected a pair (a, c), got {shape_w1!r}") from None
    if a < 1 or c < 1 or shape[0] % a or shape[1] % c:
        raise ShapeError(
            f"{name}: expected (a, c) dividing the weight's (out, in) = {shape[:2]}, got {(a, c)}"
        )
    return (a, c), (shape[0] // a, shape[1] // c, *shape[2:])


def fit_update(
    delta: Any,
    *,
    rank: int | None = None,
    tol: float | None = None,
    factor: int = -1,
    shape_w1: tuple[int, int] | None = None,
    refine: int = 10,
    name: str = "",
) -> tuple[LoKr, LayerFit]:
    r"""Optimal LoKr adapter ``w1 ⊗ w2`` of one update ``ΔW``.

    Parameters
    ----------
    delta : array_like or Tensor, shape ``(out, in)`` or ``(out, in, *k)``
        The update (a linear or conv weight difference).
    rank : int, optional
        Rank of ``w2`` as a ``(b, d·|k|)`` matrix; default full.
    tol : float, optional
        Smallest rank whose relative error is at most ``tol`` (``rank`` is then ignored);
        full rank when even the unconstrained Kronecker product misses it.
    factor : int
        LyCORIS's factorization factor (:func:`lokr_shapes`); ``-1`` balances the split.
    shape_w1 : (int, int), optional
        Shape ``(a, c)`` of ``w1``, overriding ``factor``.
    refine : int
        Most alternating least-squares sweeps for a truncated ``w2``.
    name : str
        Layer name for the report.

    Returns
    -------
    LoKr
        With ``scale=1``.
    LayerFit
        The certified error and the rest of the report line.

    Raises
    ------
    ShapeError, RankError, NonFiniteError
        For a bad shape, rank or update.

    Notes
    -----
    With the Van Loan–Pitsianis rearrangement ``R``, :math:`\|ΔW - w_1 \otimes w_2\|_F =
    \|R(ΔW) - \mathrm{vec}\,w_1\,\mathrm{vec}\,w_2^T\|_F`; at full rank the leading singular
    pair of ``R(ΔW)`` is optimal (Eckart–Young), the error is :math:`\sqrt{\sum_{k>1}\sigma_k^2}`.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.torch.adapters import fit_update
    >>> rng = np.random.default_rng(0)
    >>> w1, w2 = rng.normal(size=(4, 4)), rng.normal(size=(8, 6))
    >>> lokr, fit = fit_update(np.kron(w1, w2))
    >>> fit.shape_w1, fit.shape_w2, fit.relative_error < 1e-12
    ((4, 4), (8, 6), True)
    >>> np.allclose(lokr.delta(), np.kron(w1, w2))
    True
    """
    D = _numpy(delta, "delta")
    if D.ndim < 2:
        raise ShapeError(f"delta: expected a weight of 2 to 4 dims, got shape {D.shape}")
    shape = tuple(D.shape)
    sa, sb = _factor_shapes(shape, factor, shape_w1)
    b, dk = sb[0], math.prod(sb[1:])
    if tol is not None:
        tol, rank = check_tol(tol), None
    elif rank is not None:
        rank = check_rank(rank, "rank", min(b, dk))
    refine = as_positive_int(refine, "refine", minimum=0)
    R, norm_sq, u, x = nkp_start(D, sa, sb)
    fit = fit_lokr(R, norm_sq, u, x, (b, dk), rank=rank, tol=tol, refine=refine)
    kernel = shape[2:]
    if fit.w2 is not None:
        lokr = LoKr(fit.w1.reshape(sa), w2=fit.w2.reshape(sb), kernel=kernel)
    else:
        lokr = LoKr(fit.w1.reshape(sa), w2_a=fit.w2_a, w2_b=fit.w2_b, kernel=kernel)
    rel = fit.error / fit.norm if fit.norm > 0 else 0.0
    report = LayerFit(
        name,
        shape,
        sa,
        sb,
        fit.rank,
        fit.error,
        rel,
        fit.kron_error,
        lokr.n_params,
        fit.sweeps,
        fit.norm,
    )
    return lokr, report


def extract(
    base: Any,
    tuned: Any,
    *,
    rank: int | None = None,
    tol: float | None = None,
    factor: int = -1,
    shapes: Mapping[str, tuple[int, int]] | None = None,
    targets: Iterable[str] | None = None,
    refine: int = 10,
) -> Extraction:
    """LoKr adapters of every changed layer between a base and a fine-tuned model.

    Parameters
    ----------
    base, tuned : nn.Module or state dict
        Two models (their Linear, Conv1d and Conv2d layers) or two state dicts (their
        ``*.weight`` entries of 2 to 4 dims) with the same names and shapes.
    rank, tol, factor, refine
        As in :func:`fit_update`, for every layer.
    shapes : dict of str to (int, int), optional
        ``w1`` shape per layer name, overriding ``factor`` there.
    targets : iterable of str, optional
        Glob patterns of layer names to consider (default: all).

    Returns
    -------
    Extraction
        Adapters (``scale=1``) for the layers whose weight changed, and their report.

    Raises
    ------
    ShapeError
        If a layer's shapes differ between the two, or a given shape does not divide.
    FormatError
        If a name of ``shapes`` is not a changed layer.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from sekron.torch.adapters import extract
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> base = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    >>> tuned = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    >>> tuned.load_state_dict(base.state_dict())
    <All keys matched successfully>
    >>> with torch.no_grad():
    ...     tuned[0].weight += torch.kron(torch.randn(2, 4), torch.randn(4, 4))
    >>> ex = extract(base, tuned)
    >>> list(ex.adapters), ex.report[0].relative_error < 1e-6
    (['0'], True)
    """
    wb, wt = _as_weights(base, "base"), _as_weights(tuned, "tuned")
    pats = None if targets is None else list(targets)
    shapes = dict(shapes or {})
    adapters: dict[str, LoKr] = {}
    report: list[LayerFit] = []
    todo = []
    for name in wt:
        if pats is not None and not any(fnmatch.fnmatchcase(name, p) for p in pats):
            continue
        if name not in wb:
            raise ShapeError(f"base: expected a layer {name!r} as in tuned, got none")
        B, T = _numpy(wb[name], f"base[{name!r}]"), _numpy(wt[name], f"tuned[{name!r}]")
        if B.shape != T.shape:
            raise ShapeError(f"tuned[{name!r}]: expected shape {B.shape} as in base, got {T.shape}")
        D = T - B
        if np.any(D):
            todo.append((name, D))
    unknown = set(shapes) - {n for n, _ in todo}
    if unknown:
        raise FormatError(f"shapes: expected names of changed layers, got {sorted(unknown)}")
    for name, D in todo:
        lokr, fit = fit_update(
            D,
            rank=rank,
            tol=tol,
            factor=factor,
            shape_w1=shapes.get(name),
            refine=refine,
            name=name,
        )
        adapters[name] = lokr
        report.append(fit)
    return Extraction(adapters, tuple(report))


def lokr_to_lora(lokr: LoKr, rank: int, *, clip: bool = False) -> tuple[LoRA, float]:
    """Best rank-``rank`` LoRA of a LoKr update, from the factors' SVDs.

    Parameters
    ----------
    lokr : LoKr
    rank : int
        LoRA rank, at most ``rank(w1) · rank(w2)`` (the rank of ``ΔW``).
    clip : bool
        Lower a larger ``rank`` to that maximum instead of raising.

    Returns
    -------
    LoRA
        ``scale=1``, ``√σ`` on each side.
    float
        The exact error ``||ΔW - up @ down||_F``.

    Raises
    ------
    RankError
        If ``rank`` is outside ``1..`` the rank of ``ΔW`` (without ``clip``).

    Notes
    -----
    With ``w1 = U1 S1 V1ᵀ`` and ``w2 = U2 S2 V2ᵀ``, ``w1 ⊗ w2 = (U1 ⊗ U2)(S1 ⊗ S2)(V1 ⊗ V2)ᵀ``
    is an SVD, so the truncated SVD of ``ΔW`` (Eckart–Young) keeps the ``rank`` largest
    products ``σ_i τ_j`` with singular vectors ``u_i ⊗ u'_j`` and ``v_i ⊗ v'_j``: the cost
    is two small SVDs and ``rank (out + in)`` products, never ``out · in``.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.torch.adapters import LoKr, lokr_to_lora
    >>> rng = np.random.default_rng(0)
    >>> lokr = LoKr(rng.normal(size=(4, 4)), w2=rng.normal(size=(8, 8)))
    >>> lora, err = lokr_to_lora(lokr, 32)
    >>> s = np.linalg.svd(lokr.delta(), compute_uv=False)
    >>> bool(np.isclose(err, np.sqrt(np.sum(s[32:] ** 2))))
    True
    """
    if not isinstance(lokr, LoKr):
        raise ArgumentTypeError(f"lokr: expected a LoKr, got {type(lokr).__name__}")
    parts = (lokr.w2,) if lokr.w2 is not None else (lokr.w2_a, lokr.w2_b)
    w2p = tuple(p.reshape(p.shape[0], -1) for p in parts if p is not None)
    (U1, s1, V1t), (U2, s2, V2t) = kron_lowrank_svd(lokr.w1, w2p)
    prod = np.abs(lokr.scale) * np.outer(s1, s2).reshape(-1)
    maximum = int(np.count_nonzero(prod > prod.max(initial=0.0) * 1e-15 * prod.size)) or 1
    if clip and isinstance(rank, (int, np.integer)) and not isinstance(rank, bool):
        rank = max(1, min(int(rank), maximum))
    rank = check_rank(rank, "rank", maximum)
    ranked = np.argsort(-prod, kind="stable")
    order = ranked[:rank]
    i, j = np.divmod(order, s2.size)
    root = np.sqrt(prod[order])
    sign = 1.0 if lokr.scale >= 0 else -1.0
    # column k of kron(U1, U2) for the pair (i, j) is kron(U1[:, i], U2[:, j])
    up = (U1[:, i][:, None, :] * U2[:, j][None, :, :]).reshape(-1, rank) * (sign * root)
    down = (V1t[i][:, :, None] * V2t[j][:, None, :]).reshape(rank, -1) * root[:, None]
    err_sq = float(np.sum(prod[ranked[rank:]] ** 2))  # the discarded products, no cancellation
    return LoRA(up, down, kernel=lokr.kernel), math.sqrt(err_sq)


def _lowrank_is_cheaper(r: int, a: int, b: int, c: int, dk: int) -> bool:
    # per column: implicit r·a·dk·(b+c) against a·b·c·dk on the formed matrix, which
    # first costs r·a·b·c·dk to build; a randomized top-1 fit takes about 100 columns
    passes = 100
    implicit = passes * r * a * dk * (b + c)
    dense = r * a * b * c * dk + passes * a * b * c * dk
    return implicit < dense


def lora_to_lokr(
    lora: LoRA,
    *,
    rank: int | None = None,
    factor: int = -1,
    shape_w1: tuple[int, int] | None = None,
    method: str = "auto",
    refine: int = 10,
    random_state: Any = 0,
) -> tuple[LoKr, float]:
    """Nearest Kronecker product of a LoRA update ``up @ down``, from its factors.

    Parameters
    ----------
    lora : LoRA
    rank : int, optional
        Rank of ``w2`` (default full).
    factor, shape_w1, refine
        As in :func:`fit_update`.
    method : {"auto", "implicit", "dense"}
        ``"implicit"`` applies the rearranged update through the factors
        (``R(up @ down) = Σ_j kron(U_j, V_j)``) to a randomized solver, never forming
        ``ΔW``; ``"dense"`` forms it and uses :func:`sekron.nkp`; ``"auto"`` picks the
        one with fewer multiply-adds.
    random_state : None, int or Generator
        Seed of the randomized solver.

    Returns
    -------
    LoKr
        ``scale=1``.
    float
        The error ``||ΔW - w1 ⊗ w2||_F``, computed exactly from the factors.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.torch.adapters import LoKr, lokr_to_lora, lora_to_lokr
    >>> rng = np.random.default_rng(1)
    >>> lokr = LoKr(rng.normal(size=(4, 4)), w2=rng.normal(size=(8, 6)))
    >>> lora, _ = lokr_to_lora(lokr, 24)
    >>> back, err = lora_to_lokr(lora, method="implicit")
    >>> bool(err < 1e-6 * np.linalg.norm(lokr.delta())), np.allclose(back.delta(), lokr.delta())
    (True, True)
    """
    if not isinstance(lora, LoRA):
        raise ArgumentTypeError(f"lora: expected a LoRA, got {type(lora).__name__}")
    if method not in ("auto", "implicit", "dense"):
        raise ArgumentError(f"method: expected 'auto', 'implicit' or 'dense', got {method!r}")
    shape = lora.shape
    sa, sb = _factor_shapes(shape, factor, shape_w1)
    b, dk = sb[0], math.prod(sb[1:])
    if rank is not None:
        rank = check_rank(rank, "rank", min(b, dk))
    up = lora.up * lora.scale
    if method == "auto":
        method = "implicit" if _lowrank_is_cheaper(lora.rank, sa[0], b, sa[1], dk) else "dense"
    if method == "implicit":
        R: Any = LowRankRearranged(up, lora.down, sa, (b, dk))
        norm_sq, u, x = lowrank_start(R, random_state)
    else:
        R, norm_sq, u, x = nkp_start((up @ lora.down).reshape(shape), sa, sb)
    fit = fit_lokr(R, norm_sq, u, x, (b, dk), rank=rank, tol=None, refine=refine)
    if fit.w2 is not None:
        return LoKr(fit.w1.reshape(sa), w2=fit.w2.reshape(sb), kernel=lora.kernel), fit.error
    return LoKr(fit.w1.reshape(sa), w2_a=fit.w2_a, w2_b=fit.w2_b, kernel=lora.kernel), fit.error


def _resolve(model: nn.Module, adapters: Mapping[str, Any]) -> list[tuple[torch.Tensor, Any]]:
    """Pair every adapter with its layer (by module name or LyCORIS name), checking shapes."""
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(adapters, Mapping):
        raise ArgumentTypeError(
            f"adapters: expected a dict of name to LoKr/LoRA, got {type(adapters).__name__}"
        )
    modules = dict(model.named_modules())
    by_lycoris = {lycoris_name(n): m for n, m in modules.items()}
    pairs = []
    for name, upd in adapters.items():
        if not isinstance(upd, (LoKr, LoRA)):
            raise ArgumentTypeError(
                f"adapters[{name!r}]: expected a LoKr or LoRA, got {type(upd).__name__}"
            )
        mod = modules.get(name, by_lycoris.get(name))
        weight = getattr(mod, "weight", None)
        if mod is None or not isinstance(weight, torch.Tensor):
            raise FormatError(f"adapters: expected names of layers with a weight, got {name!r}")
        if tuple(weight.shape) != upd.shape:
            raise ShapeError(
                f"adapters[{name!r}]: expected an update of shape {tuple(weight.shape)}, "
                f"got {upd.shape}"
            )
        pairs.append((weight, upd))
    return pairs


def merge(
    model: nn.Module, adapters: Mapping[str, LoKr | LoRA], *, multiplier: float = 1.0
) -> nn.Module:
    """Add ``multiplier · ΔW`` of every adapter to its layer's weight, in place.

    Every name and shape is checked before any weight changes.

    Parameters
    ----------
    model : nn.Module
    adapters : dict of str to LoKr or LoRA
        Keyed by module name (or LyCORIS name, see :func:`lycoris_name`).
    multiplier : float

    Returns
    -------
    nn.Module
        ``model``.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from torch import nn
    >>> from sekron.torch.adapters import LoKr, merge, unmerge
    >>> layer = nn.Linear(4, 4)
    >>> before = layer.weight.detach().clone()
    >>> upd = {"": LoKr(np.eye(2), w2=np.ones((2, 2)))}
    >>> _ = merge(layer, upd)
    >>> float((layer.weight.detach() - before).sum())
    8.0
    >>> _ = unmerge(layer, upd)
    >>> bool(torch.allclose(layer.weight, before))
    True
    """
    multiplier = float(multiplier)
    pairs = _resolve(model, adapters)
    with torch.no_grad():
        for weight, upd in pairs:
            weight.add_(to_torch(upd.delta(), like=weight), alpha=multiplier)
    return model


def unmerge(
    model: nn.Module, adapters: Mapping[str, LoKr | LoRA], *, multiplier: float = 1.0
) -> nn.Module:
    """Subtract what :func:`merge` added (same arguments).

    Examples
    --------
    >>> import numpy as np
    >>> from torch import nn
    >>> from sekron.torch.adapters import LoRA, merge, unmerge
    >>> layer = nn.Linear(3, 2, bias=False)
    >>> w = layer.weight.detach().clone()
    >>> upd = {"": LoRA(np.ones((2, 1)), np.ones((1, 3)))}
    >>> bool((unmerge(merge(layer, upd), upd).weight - w).abs().max() < 1e-6)
    True
    """
    return merge(model, adapters, multiplier=-float(multiplier))
