"""``integerize``: swap a model's float layers for their integer twins.

It sits above both families of integer layers (dense ones in :mod:`.integer`, SeKron
ones in :mod:`.int_sekron`), so neither imports the other.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from .._validation import as_positive_int, check_bits, check_instance, check_rounding
from ._int_base import CheckedBits
from .int_sekron import IntSeKronConv2d, IntSeKronLinear
from .integer import (
    IntConv2d,
    IntEmbedding,
    IntLayerNorm,
    IntLinear,
    IntMatmul,
    integer_attention,
)
from .layers import SeKronConv2d, SeKronLinear

__all__ = ["integerize"]


def _integer_twin(mod: nn.Module, bits: int, kw: dict[str, Any]) -> nn.Module | None:
    """The integer layer replacing ``mod``, or None; exact types only (no subclasses)."""
    t = type(mod)
    # each `t is X` is paired with isinstance so that the type checker narrows `mod`
    if t is SeKronLinear and isinstance(mod, SeKronLinear):
        return IntSeKronLinear.from_sekron(mod, bits, **kw)
    if t is SeKronConv2d and isinstance(mod, SeKronConv2d):
        return IntSeKronConv2d.from_sekron(mod, bits, **kw)
    if t is nn.Linear and isinstance(mod, nn.Linear):
        return IntLinear.from_linear(mod, bits, **kw)
    if t is nn.Conv2d and isinstance(mod, nn.Conv2d):
        if mod.groups == 1 and mod.padding_mode == "zeros" and not isinstance(mod.padding, str):
            return IntConv2d.from_conv(mod, bits, **kw)
        return None
    if t is nn.LayerNorm and isinstance(mod, nn.LayerNorm):
        if len(mod.normalized_shape) == 1 and mod.weight is not None and mod.bias is not None:
            return IntLayerNorm.from_layer_norm(mod, bits, **kw)
        return None
    if t is nn.Embedding and isinstance(mod, nn.Embedding):
        if mod.max_norm is None and not mod.sparse:
            return IntEmbedding.from_embedding(mod, bits, **kw)
    return None


#: The name :func:`integerize` registers :func:`~sekron.torch.integer.integer_attention`
#: under in ``transformers``' attention (and mask) interfaces.
ATTENTION_NAME = "sekron_integer"


def _route_attention(target: nn.Module, bits: int, rounding: str, seed: int) -> int:
    """Give a ``transformers`` model's attention modules integer batched products.

    The model's config selects :func:`integer_attention` (registered once in
    ``AttentionInterface``, with the eager additive mask in ``AttentionMaskInterface``),
    and every module that calls the attention interface (it has ``config``, ``scaling``
    and ``is_causal``, as ``transformers``' attention modules do) gets an ``int_matmul``
    child. Returns the number of such modules; 0 (and nothing changed) for a model
    without a ``transformers`` config or when ``transformers`` is not installed.
    """
    config = getattr(target, "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        return 0
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, eager_mask
    except ImportError:  # pragma: no cover - a config-like attribute without transformers
        return 0
    mods = [
        m
        for m in target.modules()
        if hasattr(m, "config") and hasattr(m, "scaling") and hasattr(m, "is_causal")
    ]
    if not mods:
        return 0
    AttentionInterface.register(ATTENTION_NAME, integer_attention)
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)
    config._attn_implementation = ATTENTION_NAME
    for j, m in enumerate(mods):
        m.int_matmul = IntMatmul(bits=bits, rounding=rounding, seed=seed + j)
    return len(mods)


def integerize(
    model: nn.Module,
    bits: int = 8,
    *,
    rounding: str = "stochastic",
    seed: int = 0,
    norm_bits: int | None = 16,
    attention: bool = True,
    inplace: bool = False,
) -> nn.Module:
    """Replace ``nn.Linear``, ``nn.Conv2d``, ``nn.LayerNorm``, ``nn.Embedding`` and SeKron layers by integer layers.

    Parameters
    ----------
    model : nn.Module
    bits : int in 2..16, default 8
        Bit-width of the linear, convolution and embedding operands and gradients.
    rounding : {"stochastic", "nearest"}, default "stochastic"
    seed : int, default 0
        Base key; layer i gets ``seed + i`` so layers draw independent bits.
    norm_bits : int or None, default 16
        Bit-width of the layer norms (None: ``bits``); normalization is the most
        precision-hungry layer.
    attention : bool, default True
        For a Hugging Face ``transformers`` model, also run attention's two batched
        products (``Q K^T`` and ``P V``) in ``bits``-bit integers: the model's config
        selects :func:`sekron.torch.integer.integer_attention` (registered as
        ``"sekron_integer"``) and each attention module gets an
        :class:`~sekron.torch.integer.IntMatmul` child ``int_matmul``. Softmax and the
        mask stay in float.
    inplace : bool, default False
        Modify ``model``; by default a deep copy is converted.

    Returns
    -------
    nn.Module
        ``SeKronLinear`` / ``SeKronConv2d`` become ``IntSeKronLinear`` /
        ``IntSeKronConv2d`` (every stage an integer product). Other layers (activations,
        softmax, ``KroneckerEmbedding``, grouped convolutions, layers with ``max_norm`` or
        string padding) are left in float.

    Raises
    ------
    ValueError
        If ``bits`` is outside 2..16 (``TypeError`` if not an int).

    Examples
    --------
    >>> import torch
    >>> from sekron.torch import integerize
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> [type(m).__name__ for m in integerize(net, bits=8)]
    ['IntLinear', 'ReLU', 'IntLinear']
    """
    # validated once here; the twins' constructors trust a CheckedBits
    check_instance(model, "model", nn.Module, "an nn.Module")
    as_positive_int(seed, "seed", minimum=0)
    check_rounding(rounding)
    b = CheckedBits(check_bits(bits))
    nb = b if norm_bits is None else CheckedBits(check_bits(norm_bits, "norm_bits"))
    target = model if inplace else copy.deepcopy(model)
    swaps = []
    for i, (name, mod) in enumerate(target.named_modules()):
        if not name:
            continue
        kw: dict[str, Any] = {"rounding": rounding, "seed": int(seed) + i}
        twin = _integer_twin(mod, nb if type(mod) is nn.LayerNorm else b, kw)
        if twin is not None:
            twin.train(mod.training)
            swaps.append((name, twin))
    for name, twin in swaps:
        parent_name, _, attr = name.rpartition(".")
        parent = target.get_submodule(parent_name) if parent_name else target
        setattr(parent, attr, twin)
    if attention:
        _route_attention(target, b, rounding, int(seed) + 1_000_003)
    return target
