"""Integer SGD: master-weight and fully integer modes."""

from __future__ import annotations

import numpy as np
import pytest

from sekron.errors import ShapeError
from sekron.fixed import SGDState, sgd_step, to_fixed


def _float_sgd(w, grads, lr, mu, wd):
    v = None
    for g in grads:
        g = g + wd * w
        v = g if v is None else mu * v + g
        w = w - lr * v
    return w


@pytest.mark.parametrize("bits", [12, 16])
def test_master_mode_follows_float_sgd(bits):
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(8, 5))
    grads = [rng.normal(size=(8, 5)) for _ in range(10)]
    w, state = w0.copy(), None
    for i, g in enumerate(grads):
        w, state = sgd_step(
            w, g, state, lr=0.05, momentum=0.9, weight_decay=1e-3, bits=bits, seed=i
        )
    ref = _float_sgd(w0, grads, 0.05, 0.9, 1e-3)
    # each step maps g, w, v (relative error < 2^-(bits-2) of each tensor's max) and the
    # velocity carries them forward: sum over 10 steps of lr * |v|max * 4 * 2^-(bits-2)
    vmax = np.abs(np.array(grads)).max() * 10
    assert np.abs(w - ref).max() <= 10 * 0.05 * vmax * 4 * 2.0 ** (-(bits - 2))
    assert state.step == 10 and state.velocity is not None


def test_integer_mode_unbiased_small_updates():
    # an update of a tenth of a unit survives in expectation only (stochastic rounding)
    n = 50_000
    w = to_fixed(np.concatenate([[1.0], np.full(n, 0.5)]), 8, "nearest")  # unit 1/64
    g = np.full(n + 1, 1.0)
    new_w, _ = sgd_step(w, g, lr=1.0 / 640, bits=8, mode="integer", seed=1)
    assert new_w.bits == 8 and new_w.mantissa.dtype == np.int8
    got = new_w.to_float()[1:]
    step = to_fixed(np.array(1.0 / 640), 8, "nearest").to_float()
    p = (step * 64) % 1
    sigma = np.sqrt(p * (1 - p) / n) / 64
    assert abs(got.mean() - (0.5 - step)) <= 5 * sigma
    # nearest rounding loses it entirely
    lost, _ = sgd_step(w, g, lr=1.0 / 640, bits=8, mode="integer", rounding="nearest")
    np.testing.assert_array_equal(lost.to_float()[1:], 0.5)


def test_master_mode_keeps_small_updates():
    w = np.full(4, 0.5, np.float32)
    new, _ = sgd_step(w, np.ones(4), lr=1e-4, bits=8, rounding="nearest")
    assert new.dtype == np.float32
    assert np.all(new < 0.5)


def test_sgd_bad_inputs_and_no_mutation():
    w = np.ones(3)
    g = np.ones(3)
    with pytest.raises(ShapeError, match="grad"):
        sgd_step(w, np.ones(4), lr=0.1)
    with pytest.raises(ValueError, match="momentum"):
        sgd_step(w, g, lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="lr"):
        sgd_step(w, g, lr=0.0)
    with pytest.raises(TypeError, match="FixedTensor"):
        sgd_step(w, g, lr=0.1, mode="integer")
    with pytest.raises(TypeError, match="master"):
        sgd_step(to_fixed(w, 8), g, lr=0.1)
    with pytest.raises(ValueError, match="mode"):
        sgd_step(w, g, lr=0.1, mode="float")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="state"):
        sgd_step(w, g, (None, 0), lr=0.1)  # type: ignore[arg-type]
    state = SGDState()
    sgd_step(w, g, state, lr=0.1, momentum=0.5)
    assert np.array_equal(w, np.ones(3)) and np.array_equal(g, np.ones(3))
