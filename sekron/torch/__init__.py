r"""Torch adapters: SeKron layers, model compression, integer layers, distillation.

This sub-package is the only part of sekron that imports torch (an optional extra:
``pip install sekron[torch]``). The decompositions, the cost model and the integer
kernels stay in the framework-agnostic core; here they are wrapped as ``nn.Module``\ s
and ``torch.autograd.Function``\ s.
"""

from __future__ import annotations

from . import adapters
from ._contract import linear_macs
from ._conv import TorchBackend
from .calibration import InputGram, calibrate, load_grams, save_grams
from .compression import CompressionReport, LayerReport, compress
from .distillation import Capture, attention_loss, distill, hidden_loss, logit_loss
from .int_model import integerize
from .int_sekron import IntSeKronConv2d, IntSeKronLinear, IntTorchBackend
from .integer import (
    IntConv2d,
    IntEmbedding,
    IntLayerNorm,
    IntLinear,
    IntMatmul,
    IntSGD,
    integer_attention,
)
from .layers import KroneckerEmbedding, SeKronConv2d, SeKronLinear
from .state_dict import read_state_dict

__all__ = [
    "Capture",
    "CompressionReport",
    "InputGram",
    "IntConv2d",
    "IntEmbedding",
    "IntLayerNorm",
    "IntLinear",
    "IntMatmul",
    "IntSGD",
    "IntSeKronConv2d",
    "IntSeKronLinear",
    "IntTorchBackend",
    "KroneckerEmbedding",
    "LayerReport",
    "SeKronConv2d",
    "SeKronLinear",
    "TorchBackend",
    "adapters",
    "attention_loss",
    "calibrate",
    "compress",
    "distill",
    "hidden_loss",
    "integer_attention",
    "integerize",
    "linear_macs",
    "load_grams",
    "logit_loss",
    "read_state_dict",
    "save_grams",
]
