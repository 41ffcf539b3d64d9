"""LyCORIS and PEFT adapter files: key layouts, scales, safetensors, atomic writes.

LyCORIS (kohya style) keeps one flat ``.safetensors`` file whose keys are
``lycoris_<module path with "." replaced by "_">.<tensor>``: ``lokr_w1`` (or ``lokr_w1_a``,
``lokr_w1_b``), ``lokr_w2`` (or ``lokr_w2_a``, ``lokr_w2_b``, optionally ``lokr_t2``) and a
scalar ``alpha``; the scale is ``alpha / rank`` with the rank read from ``lokr_w1_a`` or
``lokr_w2_a``, and 1 when both factors are full. LoRA layers store ``lora_up.weight``,
``lora_down.weight`` and ``alpha`` (scale ``alpha / rank``).

PEFT keeps a directory with ``adapter_config.json`` and ``adapter_model.safetensors``
whose keys are ``base_model.model.<module path>.lokr_w1`` etc. (``lora_A.weight``,
``lora_B.weight`` for LoRA); the scale is ``alpha / r`` per layer, ``r`` and ``alpha``
coming from ``rank_pattern`` and ``alpha_pattern`` or the defaults.

Both libraries rebuild their modules from their own shape rule before loading tensors
(a factor split and "w2 in full once its rank reaches half its larger side"), so the
writers store tensors in exactly the layout that rule produces.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ArgumentTypeError, FormatError, SekronError, ShapeError
from ._lokr import LoKr, LoRA, factorization

__all__ = ["load_lycoris", "load_peft", "lycoris_name", "save_lycoris", "save_peft"]

_PEFT_PREFIX = "base_model.model."
_LOKR_KEYS = {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"}
_LORA_LYCORIS = {"lora_up.weight", "lora_down.weight"}


def lycoris_name(module_name: str) -> str:
    """LyCORIS's key prefix of a module: ``"lycoris_" + name`` with dots as underscores.

    Examples
    --------
    >>> from sekron.torch.adapters import lycoris_name
    >>> lycoris_name("blocks.0.attn.q")
    'lycoris_blocks_0_attn_q'
    """
    return (
        module_name
        if module_name.startswith("lycoris_")
        else "lycoris_" + module_name.replace(".", "_")
    )


def _atomic_write(path: Path, data: bytes) -> None:
    """Write through a temporary file in the target directory, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _tensor(a: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float64, order="C")).to(
        dtype
    )  # a private, writable copy


def _full_w2(lokr: LoKr) -> bool:
    """Whether PEFT's and LyCORIS's rule stores this ``w2`` in full."""
    b, d = lokr.shape_w2[:2]
    return lokr.rank is None or lokr.rank >= max(b, d) / 2


def _lokr_tensors(lokr: LoKr, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    # the scale goes into w1 so that the stored alpha only has to encode scale 1
    out = {"lokr_w1": _tensor(lokr.scale * lokr.w1, dtype)}
    if _full_w2(lokr):
        out["lokr_w2"] = _tensor(lokr.w2_matrix().reshape(lokr.shape_w2), dtype)
    else:
        assert lokr.w2_a is not None and lokr.w2_b is not None
        out["lokr_w2_a"] = _tensor(lokr.w2_a, dtype)
        out["lokr_w2_b"] = _tensor(lokr.w2_b, dtype)
    return out


def _lora_tensors(lora: LoRA, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    out_dim, in_dim = lora.shape[:2]
    k = lora.kernel
    up = _tensor(lora.scale * lora.up, dtype).reshape(out_dim, lora.rank, *([1] * len(k)))
    down = _tensor(lora.down, dtype).reshape(lora.rank, in_dim, *k)
    return up, down


def _check_adapters(adapters: Any) -> dict[str, LoKr | LoRA]:
    if not isinstance(adapters, Mapping) or not adapters:
        raise FormatError(
            f"adapters: expected a non-empty dict of name to LoKr/LoRA, got {adapters!r}"
        )
    kinds = {type(v) for v in adapters.values()}
    if not kinds <= {LoKr, LoRA}:
        raise FormatError(
            f"adapters: expected LoKr or LoRA values, got {sorted(k.__name__ for k in kinds)}"
        )
    return dict(adapters)


def save_lycoris(
    path: str | os.PathLike[str],
    adapters: Mapping[str, LoKr | LoRA],
    *,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write adapters as a LyCORIS ``.safetensors`` file (atomically).

    Parameters
    ----------
    path : path-like
        Target file.
    adapters : dict of str to LoKr or LoRA
        Keyed by module name (or LyCORIS name).
    dtype : torch.dtype
        Storage dtype.

    Returns
    -------
    Path

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from sekron.torch.adapters import LoKr, save_lycoris, load_lycoris
    >>> d = tempfile.mkdtemp()
    >>> p = save_lycoris(os.path.join(d, "a.safetensors"), {"fc": LoKr(np.eye(2), w2=np.ones((3, 3)))})
    >>> back = load_lycoris(p)
    >>> list(back), back["lycoris_fc"].shape
    (['lycoris_fc'], (6, 6))
    """
    from safetensors.torch import save

    adapters = _check_adapters(adapters)
    tensors: dict[str, torch.Tensor] = {}
    for name, upd in adapters.items():
        prefix = lycoris_name(name)
        if isinstance(upd, LoKr):
            parts = _lokr_tensors(upd, dtype)
            rank = None if "lokr_w2" in parts else upd.rank
            tensors.update({f"{prefix}.{k}": v for k, v in parts.items()})
            alpha = float(rank) if rank is not None else 1.0
        else:
            up, down = _lora_tensors(upd, dtype)
            tensors[f"{prefix}.lora_up.weight"] = up
            tensors[f"{prefix}.lora_down.weight"] = down
            alpha = float(upd.rank)
        tensors[f"{prefix}.alpha"] = torch.tensor(alpha, dtype=dtype)
    target = Path(path)
    if target.is_dir():
        raise FormatError(f"path: expected a file path, got the directory {str(target)!r}")
    _atomic_write(target, save(tensors, metadata={"format": "pt", "writer": "sekron"}))
    return target


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        raw = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise FormatError(f"path: expected a safetensors file, got {str(path)!r} ({exc})") from None
    return {k: v.detach().to(torch.float64).numpy() for k, v in raw.items()}


def _number(value: Any, what: str, where: str, *, integer: bool = False) -> float:
    """A finite number read from a file (an int >= 1 where ``integer``), else FormatError."""
    if isinstance(value, np.ndarray):
        value = value.item() if value.size == 1 else value
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not math.isfinite(value) or (integer and value < 1):
        kind = "an int >= 1" if integer else "a finite number"
        raise FormatError(f"{where}: expected {what} as {kind}, got {value!r}")
    return value


@contextlib.contextmanager
def _malformed(where: str, name: str) -> Iterator[None]:
    """Inside, sekron errors of a layer's tensors (bad shapes, NaN) mean a malformed file."""
    try:
        yield
    except FormatError:
        raise
    except SekronError as exc:
        raise FormatError(f"{where}: layer {name!r} is malformed: {exc}") from None


def _kernels(model: Any) -> dict[str, tuple[int, ...]]:
    """Weight shapes of a model's layers, by module name and by LyCORIS name.

    ``model`` may also be a state dict: then its ``*.weight`` entries are read.
    """
    if model is None:
        return {}
    if isinstance(model, nn.Module):
        weights = {n: getattr(m, "weight", None) for n, m in model.named_modules()}
    elif isinstance(model, Mapping):
        weights = {k[: -len(".weight")]: v for k, v in model.items() if str(k).endswith(".weight")}
    else:
        raise ArgumentTypeError(
            f"model: expected an nn.Module or a state dict, got {type(model).__name__}"
        )
    out: dict[str, tuple[int, ...]] = {}
    for n, w in weights.items():
        if isinstance(w, (torch.Tensor, np.ndarray)):
            out[n] = tuple(w.shape)
            out[lycoris_name(n)] = tuple(w.shape)
    return out


def _lokr_from(
    name: str, t: dict[str, np.ndarray], scale_of: Any, shape: tuple[int, ...] | None
) -> LoKr:
    unknown = set(t) - _LOKR_KEYS - {"alpha"}
    if unknown:
        raise FormatError(
            f"{name}: expected LoKr tensors {sorted(_LOKR_KEYS)}, got also {sorted(unknown)}"
        )
    if "lokr_w1" in t:
        w1 = t["lokr_w1"]
    elif "lokr_w1_a" in t and "lokr_w1_b" in t:
        w1 = t["lokr_w1_a"] @ t["lokr_w1_b"]
    else:
        raise FormatError(f"{name}: expected lokr_w1 or lokr_w1_a and lokr_w1_b, got {sorted(t)}")
    rank = next(
        (t[k].shape[1] for k in ("lokr_w1_a", "lokr_w2_a") if k in t and "lokr_t2" not in t), None
    )
    if "lokr_t2" in t:
        rank = t["lokr_w2_a"].shape[0]
    scale = scale_of(rank)
    if "lokr_w2" in t:
        w2 = t["lokr_w2"]
        return LoKr(w1, w2=w2, scale=scale, kernel=tuple(w2.shape[2:]))
    if "lokr_w2_a" not in t or "lokr_w2_b" not in t:
        raise FormatError(f"{name}: expected lokr_w2 or lokr_w2_a and lokr_w2_b, got {sorted(t)}")
    a, b = t["lokr_w2_a"], t["lokr_w2_b"]
    if "lokr_t2" in t:  # Tucker: w2[p, r, k, l] = Σ t2[i, j, k, l] a[i, p] b[j, r]
        w2 = np.einsum("ijkl,ip,jr->prkl", t["lokr_t2"], a, b)
        return LoKr(w1, w2=w2, scale=scale, kernel=tuple(w2.shape[2:]))
    kernel = tuple(b.shape[2:]) if b.ndim > 2 else (tuple(shape[2:]) if shape else ())
    return LoKr(w1, w2_a=a, w2_b=b.reshape(b.shape[0], -1), scale=scale, kernel=kernel)


def _group(tensors: dict[str, np.ndarray], split: Any) -> dict[str, dict[str, np.ndarray]]:
    groups: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        name, part = split(key)
        groups.setdefault(name, {})[part] = value
    return groups


def load_lycoris(
    path: str | os.PathLike[str], model: nn.Module | Mapping[str, Any] | None = None
) -> dict[str, LoKr | LoRA]:
    """Read a LyCORIS ``.safetensors`` file of LoKr and LoRA layers.

    Parameters
    ----------
    path : path-like
    model : nn.Module or state dict, optional
        The base model (or its state dict): keys become its module names (otherwise the LyCORIS names), and
        conv kernels stored flattened get their shape from it.

    Returns
    -------
    dict of str to LoKr or LoRA

    Raises
    ------
    FormatError
        For a file that is not safetensors, or layers that are neither LoKr nor LoRA
        (DoRA's ``dora_scale`` included).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from torch import nn
    >>> from sekron.torch.adapters import LoRA, save_lycoris, load_lycoris
    >>> p = os.path.join(tempfile.mkdtemp(), "lora.safetensors")
    >>> _ = save_lycoris(p, {"0": LoRA(np.ones((4, 1)), np.ones((1, 3)))})
    >>> list(load_lycoris(p, nn.Sequential(nn.Linear(3, 4))))
    ['0']
    """
    tensors = _read_safetensors(Path(path))
    shapes = _kernels(model)
    names = {lycoris_name(n): n for n in shapes if not n.startswith("lycoris_")}

    def split(key: str) -> tuple[str, str]:
        if "." not in key:
            raise FormatError(f"path: expected keys '<layer>.<tensor>', got {key!r}")
        name, part = key.split(".", 1)
        return name, part

    out: dict[str, LoKr | LoRA] = {}
    for lname, t in _group(tensors, split).items():
        alpha = _number(t["alpha"], f"{lname}.alpha", "path") if "alpha" in t else None

        def scale_of(rank: int | None, alpha: float | None = alpha) -> float:
            return 1.0 if rank is None or alpha is None or alpha == 0 else alpha / rank

        key = names.get(lname, lname)
        if model is not None and lname not in names:
            raise FormatError(f"path: expected layers of the model, got {lname!r}")
        if any(k.startswith("lokr_") for k in t):
            with _malformed("path", lname):
                out[key] = _lokr_from(lname, t, scale_of, shapes.get(lname))
        elif set(t) - {"alpha"} == _LORA_LYCORIS:
            up, down = t["lora_up.weight"], t["lora_down.weight"]
            with _malformed("path", lname):
                out[key] = LoRA(
                    up.reshape(up.shape[0], -1),
                    down.reshape(down.shape[0], -1),
                    scale=scale_of(down.shape[0]),
                    kernel=tuple(down.shape[2:]),
                )
        else:
            raise FormatError(f"path: expected LoKr or LoRA tensors for {lname!r}, got {sorted(t)}")
    return out


def _peft_split(dim: int, factor: int) -> tuple[int, int]:
    """PEFT's split: its own copy of LyCORIS's rule that keeps ``(factor, dim // factor)`` unsorted."""
    if factor > 0 and dim % factor == 0:
        return factor, dim // factor
    return factorization(dim, factor)


def _peft_factor(adapters: dict[str, LoKr]) -> int:
    """A ``decompose_factor`` under which PEFT rebuilds every layer's factor shapes."""
    cands = [-1, *sorted({d for u in adapters.values() for d in (*u.w1.shape, *u.shape_w2[:2])})]
    for f in cands:
        if all(
            _peft_split(u.shape[0], f) == (u.w1.shape[0], u.shape_w2[0])
            and _peft_split(u.shape[1], f) == (u.w1.shape[1], u.shape_w2[1])
            for u in adapters.values()
        ):
            return f
    raise FormatError(
        "adapters: expected factor shapes that PEFT's decompose_factor rule produces for one factor "
        f"for all layers, got {{name: w1 shape}} = { {n: u.w1.shape for n, u in adapters.items()} }"
    )


def _pattern(name: str) -> str:
    # PEFT matches patterns as r"(.*\.)?(key)$": anchoring makes the key this module only
    return "^" + re.escape(name) + "$"


def save_peft(
    directory: str | os.PathLike[str],
    adapters: Mapping[str, LoKr | LoRA],
    *,
    base_model_name_or_path: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write adapters (all LoKr or all LoRA) as a PEFT adapter directory (atomically per file).

    Parameters
    ----------
    directory : path-like
        Created if missing; ``adapter_config.json`` and ``adapter_model.safetensors`` land in it.
    adapters : dict of str to LoKr, or of str to LoRA
        Keyed by module name.
    base_model_name_or_path : str, optional
        Recorded in the config.
    dtype : torch.dtype

    Returns
    -------
    Path

    Raises
    ------
    FormatError
        For mixed kinds, or LoKr factor shapes that PEFT cannot rebuild from one factor.

    Examples
    --------
    >>> import numpy as np, tempfile, json, os
    >>> from sekron.torch.adapters import LoKr, save_peft
    >>> d = save_peft(tempfile.mkdtemp(), {"fc": LoKr(np.eye(2), w2=np.ones((4, 4)))})
    >>> json.load(open(os.path.join(d, "adapter_config.json")))["peft_type"]
    'LOKR'
    """
    from safetensors.torch import save

    adapters = _check_adapters(adapters)
    kinds = {type(v) for v in adapters.values()}
    if len(kinds) != 1:
        raise FormatError("adapters: expected all LoKr or all LoRA for one PEFT adapter, got both")
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    if kinds == {LoKr}:
        lokrs: dict[str, LoKr] = adapters  # type: ignore[assignment]
        factor = _peft_factor(lokrs)
        for name, u in lokrs.items():
            for k, v in _lokr_tensors(u, dtype).items():
                tensors[f"{_PEFT_PREFIX}{name}.{k}"] = v
            b, d = u.shape_w2[:2]
            ranks[name] = max(b, d) if _full_w2(u) else int(u.rank or 1)
        config: dict[str, Any] = {
            "peft_type": "LOKR",
            "alpha": 0,
            "decompose_both": False,
            "decompose_factor": factor,
            "use_effective_conv2d": False,
            "rank_dropout": 0.0,
            "module_dropout": 0.0,
            "rank_dropout_scale": False,
            "init_weights": True,
        }
        alpha_key = "alpha"
    else:
        for name, lo in adapters.items():
            assert isinstance(lo, LoRA)
            up, down = _lora_tensors(lo, dtype)
            tensors[f"{_PEFT_PREFIX}{name}.lora_A.weight"] = down
            tensors[f"{_PEFT_PREFIX}{name}.lora_B.weight"] = up
            ranks[name] = lo.rank
        config = {
            "peft_type": "LORA",
            "lora_alpha": 0,
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": False,
            "use_rslora": False,
            "use_dora": False,
            "init_lora_weights": True,
        }
        alpha_key = "lora_alpha"
    first = next(iter(ranks.values()))
    # alpha = r everywhere: scale 1, the adapter's own scale is already in w1 / up
    config.update(
        {
            "r": first,
            alpha_key: first,
            "target_modules": sorted(ranks),
            "rank_pattern": {_pattern(n): r for n, r in ranks.items()},
            "alpha_pattern": {_pattern(n): r for n, r in ranks.items()},
            "base_model_name_or_path": base_model_name_or_path,
            "inference_mode": True,
            "task_type": None,
            "modules_to_save": None,
            "revision": None,
        }
    )
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise FormatError(f"directory: expected a directory, got the file {str(target)!r}")
    target.mkdir(parents=True, exist_ok=True)
    _atomic_write(target / "adapter_model.safetensors", save(tensors, metadata={"format": "pt"}))
    _atomic_write(
        target / "adapter_config.json", json.dumps(config, indent=2, sort_keys=True).encode()
    )
    return target


def _match(patterns: Mapping[str, Any], name: str, default: Any) -> Any:
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


# complexity is a flat run of config/tensor checks, each raising its own FormatError
def load_peft(  # noqa: C901
    directory: str | os.PathLike[str], model: nn.Module | Mapping[str, Any] | None = None
) -> dict[str, LoKr | LoRA]:
    """Read a PEFT LoKr or LoRA adapter directory (safetensors only).

    Parameters
    ----------
    directory : path-like
    model : nn.Module or state dict, optional
        The base model (or its state dict), for the kernel shape of convs whose ``w2`` is stored flattened.

    Returns
    -------
    dict of str to LoKr or LoRA
        Keyed by module name.

    Raises
    ------
    FormatError
        For a missing or foreign config, a pickle-only adapter, DoRA, or unknown tensors.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> from sekron.torch.adapters import LoRA, save_peft, load_peft
    >>> d = save_peft(tempfile.mkdtemp(), {"fc": LoRA(np.ones((4, 2)), np.ones((2, 3)))})
    >>> load_peft(d)["fc"].delta().shape
    (4, 3)
    """
    root = Path(directory)
    cfg_path, st_path = root / "adapter_config.json", root / "adapter_model.safetensors"
    if not cfg_path.is_file():
        raise FormatError(
            f"directory: expected a PEFT adapter with adapter_config.json, got {str(root)!r}"
        )
    if not st_path.is_file():
        raise FormatError(
            f"directory: expected adapter_model.safetensors (pickle files are not read), "
            f"got {sorted(p.name for p in root.iterdir())}"
        )
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"directory: expected a JSON adapter_config.json, got ({exc})") from None
    kind = config.get("peft_type") if isinstance(config, dict) else None
    if kind not in ("LOKR", "LORA"):
        raise FormatError(f"directory: expected peft_type 'LOKR' or 'LORA', got {kind!r}")
    if config.get("use_dora"):
        raise FormatError("directory: expected a plain LoRA, got use_dora=true")
    shapes = _kernels(model)

    def split(key: str) -> tuple[str, str]:
        if not key.startswith(_PEFT_PREFIX):
            raise FormatError(f"directory: expected keys under {_PEFT_PREFIX!r}, got {key!r}")
        rest = key[len(_PEFT_PREFIX) :]
        suffixes = _LOKR_KEYS if kind == "LOKR" else {"lora_A.weight", "lora_B.weight"}
        for s in suffixes:
            if rest.endswith("." + s):
                return rest[: -len(s) - 1], s
        raise FormatError(f"directory: expected {kind} tensors, got {key!r}")

    r0 = config.get("r", 8)
    out: dict[str, LoKr | LoRA] = {}
    for name, t in _group(_read_safetensors(st_path), split).items():
        r = _number(
            _match(config.get("rank_pattern") or {}, name, r0), "r", "directory", integer=True
        )
        if kind == "LOKR":
            alpha = _match(config.get("alpha_pattern") or {}, name, config.get("alpha", r0))
            alpha = _number(alpha, "alpha", "directory")
            with _malformed("directory", name):
                out[name] = _lokr_from(name, t, lambda _rank, s=alpha / r: s, shapes.get(name))
        else:
            alpha = _match(config.get("alpha_pattern") or {}, name, config.get("lora_alpha", r0))
            alpha = _number(alpha, "lora_alpha", "directory")
            scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
            if set(t) != {"lora_A.weight", "lora_B.weight"}:
                raise FormatError(
                    f"directory: expected lora_A and lora_B for {name!r}, got {sorted(t)}"
                )
            down, up = t["lora_A.weight"], t["lora_B.weight"]
            with _malformed("directory", name):
                out[name] = LoRA(
                    up.reshape(up.shape[0], -1),
                    down.reshape(down.shape[0], -1),
                    scale=scale,
                    kernel=tuple(down.shape[2:]),
                )
    if model is not None:
        for name, upd in out.items():
            if name in shapes and shapes[name] != upd.shape:
                raise ShapeError(
                    f"directory: expected {name!r} of shape {shapes[name]}, got {upd.shape}"
                )
    return out
