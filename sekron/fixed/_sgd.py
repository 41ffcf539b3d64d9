"""SGD with momentum and weight decay on fixed-point operands (DESIGN 2.7, notes A5)."""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, Literal, NamedTuple

import numpy as np

from .._validation import as_float_array, check_bits, renamed
from ..errors import ArgumentError, ArgumentTypeError, ShapeError
from . import _kernels
from ._ops import add, mul
from ._tensor import (
    _FLOATS,
    FixedTensor,
    Rounding,
    Seed,
    _describe,
    check_rounding,
    requantize,
    resolve_seed,
    to_fixed,
)

__all__ = ["SGDState", "sgd_step"]

Mode = Literal["master", "integer"]

_NO_VELOCITY = np.zeros(1, dtype=np.int16)


class SGDState(NamedTuple):
    """Optimizer state of one parameter: the fixed-point velocity and the step count.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.fixed import sgd_step
    >>> g = np.array([1.0, -1.0])
    >>> w, st = sgd_step(np.ones(2), g, lr=0.5, momentum=0.9, bits=8, rounding="nearest")
    >>> st.step, st.velocity.to_float()
    (1, array([ 1., -1.]))
    >>> w, st = sgd_step(w, g, st, lr=0.5, momentum=0.9, bits=8, rounding="nearest")
    >>> st.step
    2
    """

    velocity: FixedTensor | None = None
    step: int = 0


def _hyper(v: Any, name: str, low: float, high: float | None = None) -> float:
    if type(v) is float and low <= v < (high if high is not None else math.inf):
        return v  # finite and in range: the common case, without the ABC checks below
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise ArgumentTypeError(f"{name}: expected a float, got {_describe(v)}")
    f = float(v)
    if not np.isfinite(f) or f < low or (high is not None and f >= high):
        rng = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ArgumentError(f"{name}: expected a finite float {rng}, got {f}")
    return f


def _scalar(v: float, bits: int) -> FixedTensor:
    return to_fixed(np.array(v), bits, "nearest")


@functools.lru_cache(maxsize=256)
def _scalar_parts(v: float, bits: int) -> tuple[int, int]:
    t = _scalar(v, bits)
    return int(t.mantissa), int(t.exponent)  # type: ignore[arg-type]


def _sgd_master_fused(
    w: np.ndarray,
    grad: FixedTensor,
    state: SGDState,
    lr: float,
    mu: float,
    wd: float,
    b: int,
    key: int,
) -> tuple[np.ndarray, SGDState] | None:
    """Mode "master" with stochastic rounding in one serial kernel: the same bits as the unfused chain below (the tests compare both). None when the kernel declines (non-finite weights, exponent gaps past 62 bits); the caller then runs the unfused chain."""
    vel = state.velocity
    has_v = bool(mu) and vel is not None
    if has_v and (vel.shape != w.shape or not vel.per_tensor or vel.bits > 16):  # type: ignore[union-attr]
        return None
    wd_q, wd_e = _scalar_parts(wd, b) if wd else (0, 0)
    mu_q, mu_e = _scalar_parts(mu, b) if mu else (0, 0)
    lr_q, lr_e = _scalar_parts(lr, b)
    v_in = vel.mantissa.reshape(-1) if has_v else _NO_VELOCITY  # type: ignore[union-attr]
    e_v = int(vel.exponent) if has_v else 0  # type: ignore[union-attr, arg-type]
    w_out = np.empty(w.shape, dtype=w.dtype)
    v_out = np.empty(w.shape, dtype=np.int8 if b <= 8 else np.int16)
    e = _kernels.sgd_master_flat(
        w.reshape(-1),
        grad.mantissa.reshape(-1),
        grad.exponent,
        v_in,
        e_v,
        has_v,
        b,
        wd_q,
        wd_e,
        mu_q,
        mu_e,
        lr_q,
        lr_e,
        np.uint64(key),
        w_out.reshape(-1),
        v_out.reshape(-1),
    )
    if e == _kernels.NONFINITE:
        return None
    v = FixedTensor._trusted(v_out, int(e), b)
    return w_out, SGDState(v if mu else None, state.step + 1)


# one validated public entry: its master/integer modes and options read side by side
def sgd_step(  # noqa: C901
    weight: Any,
    grad: Any,
    state: SGDState | None = None,
    *,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    bits: int = 16,
    mode: Mode = "master",
    rounding: Rounding = "stochastic",
    seed: Seed = None,
) -> tuple[Any, SGDState]:
    """One SGD step with momentum and weight decay, every product an integer product.

    ``g' = g + wd * w``, ``v = mu * v + g'``, ``w = w - lr * v``: the gradient, weight,
    velocity and the three scalars are mapped to ``bits``; products are exact integer
    products, sums align exponents with stochastic rounding and are requantized to
    ``bits``.

    Parameters
    ----------
    weight : ndarray of float (mode "master") or FixedTensor (mode "integer")
        "master": a wide float32/float64 master copy; the integer step ``lr * v`` is added
        to it in float (the one float operation), so small updates are not lost.
        "integer": ``bits``-bit fixed-point weights updated in integers only; updates
        smaller than a unit survive only in expectation (stochastic rounding).
        Not modified.
    grad : array_like of float or FixedTensor, same shape
        The gradient (an exact accumulator is fine; it is requantized).
    state : SGDState or None
        The previous state (None on the first step).
    lr, momentum, weight_decay : float
        Learning rate (> 0), momentum in [0, 1), weight decay >= 0.
    bits : int
        Bit-width of the mapped operands and of the velocity, 2..16.
    mode : {"master", "integer"}
    rounding : {"stochastic", "nearest"}
    seed : int, numpy Generator or None

    Returns
    -------
    weight : ndarray or FixedTensor
        The new weights (a new object, same kind as the input).
    state : SGDState

    Raises
    ------
    ShapeError
        If ``grad`` and ``weight`` shapes differ.
    ValueError, TypeError
        For bad hyper-parameters, modes or operand kinds.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron.fixed import sgd_step
    >>> w, state = sgd_step(np.ones(2, np.float32), np.array([1.0, -1.0]), lr=0.5,
    ...                     bits=8, rounding="nearest")
    >>> w
    array([0.5, 1.5], dtype=float32)
    """
    b = check_bits(bits)
    rounding_ = check_rounding(rounding)
    lr_ = _hyper(lr, "lr", 0.0)
    if lr_ == 0.0:
        raise ArgumentError("lr: expected a positive float, got 0.0")
    mu = _hyper(momentum, "momentum", 0.0, 1.0)
    wd = _hyper(weight_decay, "weight_decay", 0.0)
    if mode not in ("master", "integer"):
        raise ArgumentError(f"mode: expected 'master' or 'integer', got {mode!r}")
    state = SGDState() if state is None else state
    if not isinstance(state, SGDState):
        raise ArgumentTypeError(f"state: expected an SGDState or None, got {_describe(state)}")
    key = resolve_seed(seed)
    if (
        mode == "master"
        and rounding_ == "stochastic"
        and type(weight) is np.ndarray
        and weight.dtype in _FLOATS
        and weight.size < _kernels.FUSED_MAX_ELEMENTS
    ):
        gfix: FixedTensor | None = None
        if isinstance(grad, FixedTensor):
            if grad.per_tensor and grad.shape == weight.shape and grad.bits <= 62:
                gfix = grad
        elif type(grad) is np.ndarray and grad.shape == weight.shape:
            with renamed("x", "grad"):
                gfix = to_fixed(
                    grad, b, rounding_, key, stream=2
                )  # requantizing it is the identity
        if gfix is not None:
            fused = _sgd_master_fused(weight, gfix, state, lr_, mu, wd, b, key)
            if fused is not None:
                return fused
    if mode == "master":
        if isinstance(weight, FixedTensor):
            raise ArgumentTypeError(
                "weight: mode='master' expects a float master copy, got a FixedTensor"
            )
        w_master = as_float_array(weight, "weight")
        wq = to_fixed(w_master, b, rounding_, key, stream=1)
    else:
        if not isinstance(weight, FixedTensor):
            raise ArgumentTypeError(
                f"weight: mode='integer' expects a FixedTensor, got {_describe(weight)}"
            )
        wq = weight
    if isinstance(grad, FixedTensor):
        gq = requantize(grad, b, rounding_, key, stream=2)
    else:
        with renamed("x", "grad"):
            gq = to_fixed(grad, b, rounding_, key, stream=2)
    if gq.shape != wq.shape:
        raise ShapeError(f"grad: expected shape {wq.shape} to match weight, got {gq.shape}")
    if wd:
        gq = add(gq, mul(_scalar(wd, b), wq), b, rounding=rounding_, seed=key + 3)
    v = gq
    if mu and state.velocity is not None:
        if state.velocity.shape != gq.shape:
            raise ShapeError(
                f"state: velocity of shape {state.velocity.shape} does not match {gq.shape}"
            )
        v = add(mul(_scalar(mu, b), state.velocity), gq, b, rounding=rounding_, seed=key + 4)
    step = mul(_scalar(lr_, b), v)  # exact: exponent e_lr + e_v
    new_state = SGDState(v if mu else None, state.step + 1)
    if mode == "master":
        return (w_master - step.to_float()).astype(w_master.dtype), new_state
    neg = FixedTensor._trusted(-step.mantissa, step.exponent, step.bits)
    return add(wq, neg, b, rounding=rounding_, seed=key + 5), new_state
