"""Integer batched products (attention's Q K^T and P V): exact against int64, and routed by integerize."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sekron import fixed  # noqa: E402
from sekron.errors import ShapeError  # noqa: E402
from sekron.torch import integerize  # noqa: E402
from sekron.torch.integer import IntMatmul, integer_attention  # noqa: E402


def _full_range(shape, bits, e, rng):
    """Integers in [-m, m] with +-m present, times 2**e: their b-bit mapping is exact."""
    m = 2 ** (bits - 1) - 1
    q = rng.integers(-m, m + 1, size=shape, dtype=np.int64)
    q.flat[0] = m
    q.flat[-1] = -m
    return q, torch.from_numpy(q.astype(np.float64) * 2.0**e)


@pytest.mark.parametrize("bits", [8, 10, 12, 16])
@pytest.mark.parametrize("route", ["float_blas", "engine"])
def test_forward_and_backward_equal_int64_reference(bits, route, monkeypatch):
    if route == "engine":  # force the int64 batched_matmul route
        monkeypatch.setattr(fixed, "exact_float_matmul", lambda a, b, bound: None)
    rng = np.random.default_rng(bits)
    qa, a = _full_range((2, 3, 5, 32), bits, -7, rng)
    qb, b = _full_range((2, 3, 32, 9), bits, 2, rng)
    qg, g = _full_range((2, 3, 5, 9), bits, -11, rng)
    a.requires_grad_(True)
    b.requires_grad_(True)
    y = IntMatmul(bits=bits, rounding="nearest")(a, b)
    ref = np.matmul(qa, qb)  # int64, worst-case magnitudes K * m * m
    assert np.array_equal(y.detach().numpy(), ref.astype(np.float64) * 2.0 ** (-7 + 2))
    y.backward(g)
    da = np.matmul(qg, np.swapaxes(qb, -1, -2)).astype(np.float64) * 2.0 ** (-11 + 2)
    db = np.matmul(np.swapaxes(qa, -1, -2), qg).astype(np.float64) * 2.0 ** (-7 - 11)
    assert np.array_equal(a.grad.numpy(), da)
    assert np.array_equal(b.grad.numpy(), db)


def test_stochastic_products_use_the_engine_mapping_and_fresh_keys():
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.standard_normal((2, 4, 6)))
    b = torch.from_numpy(rng.standard_normal((2, 6, 3)))
    mm = IntMatmul(bits=8, seed=5)
    y0, y1 = mm(a, b), mm(a, b)
    assert not torch.equal(y0, y1)  # call 0 and call 1 draw different bits
    fwd, _ = fixed.forward_backward_keys(fixed.call_key(5, 0))
    aq = fixed.to_fixed(a.numpy(), 8, "stochastic", fwd, stream=fixed.STREAM_INPUT)
    bq = fixed.to_fixed(b.numpy(), 8, "stochastic", fwd, stream=fixed.STREAM_WEIGHT)
    ref = np.matmul(aq.mantissa.astype(np.int64), bq.mantissa.astype(np.int64))
    assert np.array_equal(y0.numpy(), ref * 2.0 ** (int(aq.exponent) + int(bq.exponent)))
    with pytest.raises(ShapeError):
        mm(a, b[:1])  # no broadcasting of the leading dimensions


def test_attention_function_matches_float_attention():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 7, 8, dtype=torch.float64).unbind(0)
    mask = torch.zeros(2, 1, 1, 7, dtype=torch.float64)
    mask[0, ..., -2:] = -1e9
    m = torch.nn.Module()
    out_f, w_f = integer_attention(m, q, k, v, mask)  # no int_matmul: float products
    ref_w = torch.softmax(q @ k.transpose(2, 3) / 8**0.5 + mask, -1)
    assert torch.allclose(w_f, ref_w) and torch.allclose(out_f, (ref_w @ v).transpose(1, 2))
    m.int_matmul = IntMatmul(bits=16, rounding="nearest")
    out_i, _ = integer_attention(m, q, k, v, mask)
    assert m.int_matmul.calls == 2
    assert (out_i - out_f).abs().max() < 1e-3


def test_integerize_routes_hf_attention_through_int_matmul():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    bert = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 50, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[0, 4:] = 0
    before = bert.config._attn_implementation
    ib = integerize(bert, 16, rounding="nearest")
    mms = [m for n, m in ib.named_modules() if isinstance(m, IntMatmul)]
    assert len(mms) == cfg.num_hidden_layers
    assert bert.config._attn_implementation == before  # the original is untouched
    with torch.no_grad():
        ref = bert(input_ids=ids, attention_mask=mask)[0]
        out = ib(input_ids=ids, attention_mask=mask)[0]
    assert all(m.calls == 2 for m in mms)  # Q K^T and P V, each an integer product
    assert (out - ref).abs().max() < 1e-2 * ref.abs().max()
    plain = integerize(bert, 16, attention=False)
    assert not any(isinstance(m, IntMatmul) for m in plain.modules())
