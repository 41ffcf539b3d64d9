"""Distillation losses against closed forms, Capture, and the distill loop."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from sekron.torch import Capture, attention_loss, compress, distill, hidden_loss, logit_loss  # noqa: E402


def test_losses_match_closed_forms():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    assert float(hidden_loss(s, t)) == pytest.approx(float(((s - t) ** 2).mean()), rel=1e-12)
    assert float(attention_loss(s, t)) == float(hidden_loss(s, t))
    T = 2.0
    p = torch.softmax(t / T, -1)
    kl = (p * (torch.log(p) - torch.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    assert float(logit_loss(s, t, T)) == pytest.approx(float(kl), rel=1e-10)
    assert float(logit_loss(t, t, T)) == pytest.approx(0.0, abs=np.finfo(np.float64).eps * 100)
    with pytest.raises(ValueError):
        hidden_loss(s, t[:2])
    with pytest.raises(ValueError):
        logit_loss(s, t, 0.0)


def test_capture_and_distill_recover_compressed_student():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    student, _ = compress(teacher, ratio=4, progress=False)
    data = [torch.randn(32, 32) for _ in range(10)]
    x = torch.randn(256, 32)
    with torch.no_grad():
        before = float(((student(x) - teacher(x)) ** 2).mean())
    losses = distill(student, teacher, data, hidden=["1", "3"], temperature=2.0, epochs=8, lr=3e-3)
    with torch.no_grad():
        after = float(((student(x) - teacher(x)) ** 2).mean())
    assert len(losses) == 80 and after < before
    assert all(p.grad is None for p in teacher.parameters())
    with Capture(teacher, ["1"]) as cap:
        teacher(x[:2])
    assert cap.outputs["1"].shape == (2, 64)
    with pytest.raises(KeyError):
        Capture(teacher, ["nope"])
    with pytest.raises(ValueError, match="at least one"):
        distill(student, teacher, data, logits=False)
    assert len(distill(student, teacher, data, logits=False, hidden={"1": "1"}, max_steps=3)) == 3
