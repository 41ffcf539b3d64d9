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
from ._conv import conv2d, conv2d_backward, conv2d_float
from ._exact import (
    FLOAT32_EXACT,
    FLOAT64_EXACT,
    accumulator_bound,
    exact_float_dtype,
    exact_float_matmul,
    float32_split,
    scaled_to_float,
    split_digits,
)
from ._gemm import GemmPlan, batched_matmul, matmul, plan_gemm
from ._ops import (
    LayerNormCache,
    add,
    align_to,
    embedding,
    embedding_backward,
    layer_norm,
    layer_norm_backward,
    mul,
)
from ._sgd import SGDState, sgd_step
from ._streams import (
    GAMMA,
    M1,
    M2,
    MASK62,
    MASK64,
    STREAM_BIAS,
    STREAM_INPUT,
    STREAM_WEIGHT,
    call_key,
    forward_backward_keys,
    mix64,
    splitmix64_outputs,
    stage_key,
    stream_key,
)
from ._tensor import FixedTensor, mantissa_dtype, requantize, split_seed, to_fixed

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
    "conv2d_float",
    "add",
    "mul",
    "layer_norm",
    "layer_norm_backward",
    "LayerNormCache",
    "embedding",
    "embedding_backward",
    "SGDState",
    "sgd_step",
    # API for adapters (docs/fixed.md): alignment, exact float routes, the seed scheme
    "mantissa_dtype",
    "align_to",
    "batched_matmul",
    "FLOAT32_EXACT",
    "FLOAT64_EXACT",
    "accumulator_bound",
    "exact_float_dtype",
    "exact_float_matmul",
    "float32_split",
    "split_digits",
    "scaled_to_float",
    "GAMMA",
    "M1",
    "M2",
    "MASK64",
    "MASK62",
    "STREAM_INPUT",
    "STREAM_WEIGHT",
    "STREAM_BIAS",
    "mix64",
    "stream_key",
    "splitmix64_outputs",
    "call_key",
    "forward_backward_keys",
    "stage_key",
]
