"""Bit-exact dynamic fixed-point arithmetic for integer training (DESIGN 2.7).

A :class:`FixedTensor` holds integer mantissas (int8 for up to 8 bits, int16 for up to
16; int32/int64 for exact accumulators) and a shared power-of-two exponent. Products run
as exact integer GEMMs in numba kernels (or exact float BLAS), with the accumulator
chosen from the bound ``K * m_a * m_b`` before launch. Stochastic rounding draws from a
counter-based hash keyed by (seed, stream, element), so results do not depend on the
thread count.

This sub-package imports numba; ``import sekron`` does not import it until
``sekron.fixed`` is first used.
"""

from __future__ import annotations

from ._backward import linear, linear_backward, linear_relu, matmul_backward
from ._conv import conv2d, conv2d_backward
from ._gemm import GemmPlan, matmul, plan_gemm
from ._ops import (
    LayerNormCache,
    add,
    embedding,
    embedding_backward,
    layer_norm,
    layer_norm_backward,
    mul,
)
from ._sgd import SGDState, sgd_step
from ._tensor import FixedTensor, requantize, split_seed, to_fixed

__all__ = [
    "FixedTensor",
    "to_fixed",
    "requantize",
    "split_seed",
    "GemmPlan",
    "plan_gemm",
    "matmul",
    "matmul_backward",
    "linear",
    "linear_relu",
    "linear_backward",
    "conv2d",
    "conv2d_backward",
    "add",
    "mul",
    "layer_norm",
    "layer_norm_backward",
    "LayerNormCache",
    "embedding",
    "embedding_backward",
    "SGDState",
    "sgd_step",
]
