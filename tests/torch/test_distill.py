"""Distillation losses against closed forms, Capture, and the distill loop."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from sekron.errors import ArgumentError, ArgumentTypeError  # noqa: E402
from sekron.torch import Capture, attention_loss, compress, distill, hidden_loss, logit_loss  # noqa: E402


def test_losses_match_closed_forms():
    g = torch.Generator().manual_seed(0)
    s, t = (
        torch.randn(3, 5, generator=g, dtype=torch.float64),
        torch.randn(3, 5, generator=g, dtype=torch.float64),
    )
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
    teacher = nn.Sequential(
        nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)
    )
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
    with pytest.raises(ArgumentError, match="names"):
        Capture(teacher, ["nope"])
    with pytest.raises(ValueError, match="at least one"):
        distill(student, teacher, data, logits=False)
    assert len(distill(student, teacher, data, logits=False, hidden={"1": "1"}, max_steps=3)) == 3


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_capture_refuses_bad_names_clearly_and_leaves_no_hooks():
    model = nn.Sequential()
    model.add_module("encoder", nn.Sequential(nn.Linear(3, 4), nn.Tanh()))
    model.add_module("head", nn.Linear(4, 2))
    with pytest.raises(ArgumentError) as info:
        Capture(model, ["head", "encoder.O"])  # a letter O for the digit 0
    msg = str(info.value)
    assert not isinstance(info.value, KeyError)
    assert msg.startswith("names:") and "'encoder.O'" in msg
    assert "'encoder.0'" in msg  # the close match is suggested
    assert _no_hooks(model)
    with pytest.raises(ArgumentError, match=r"^names: .*'nowhere'") as info:
        Capture(model, ["nowhere"])
    assert "close names" not in str(info.value)
    assert _no_hooks(model)
    # a bare string would be iterated character by character
    for bad in ("head", b"head", 0, None, ["head", 1]):
        with pytest.raises(ArgumentTypeError, match=r"^names:"):
            Capture(model, bad)
        assert _no_hooks(model)
    with pytest.raises(ArgumentTypeError, match=r"^model:"):
        Capture("not a model", ["head"])
    # good names still work, from any iterable, and the hooks go when the block ends
    with Capture(model, (n for n in ["encoder.0", "head"])) as cap:
        assert not _no_hooks(model)
        model(torch.ones(5, 3))
    assert cap.outputs["encoder.0"].shape == (5, 4) and cap.outputs["head"].shape == (5, 2)
    assert _no_hooks(model)


class _Recorder(nn.Module):
    """A teacher that records every batch it is given (as the rows it sees)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.seen: list[torch.Tensor] = []

    def forward(self, x, scale=1.0):
        self.seen.append(x.detach().clone())
        return self.lin(x) * scale


def test_minibatching_of_a_long_list_of_samples():
    torch.manual_seed(0)
    samples = [torch.randn(3) for _ in range(50)]
    teacher, student = _Recorder(), nn.Linear(3, 2)
    losses = distill(student, teacher, samples, batch_size=16, epochs=2, lr=1e-2)
    assert len(losses) == 8 and [len(b) for b in teacher.seen] == [16, 16, 16, 2] * 2
    assert torch.equal(torch.cat(teacher.seen[:4]), torch.stack(samples))  # in order
    # shuffled: each epoch a permutation of the samples, the same for the same seed
    runs = []
    for _ in range(2):
        teacher.seen.clear()
        torch.manual_seed(1)
        student = nn.Linear(3, 2)
        runs.append(distill(student, teacher, samples, batch_size=16, shuffle=True, random_state=3))
        epoch = torch.cat(teacher.seen)
        assert not torch.equal(epoch, torch.stack(samples))
        assert sorted(epoch.tolist()) == sorted(torch.stack(samples).tolist())
    assert runs[0] == runs[1]


def test_collate_dict_samples_and_custom_collate():
    torch.manual_seed(2)
    teacher, student = _Recorder(), _Recorder()
    samples = [{"x": torch.randn(3), "scale": torch.tensor([2.0])} for _ in range(10)]
    assert len(distill(student, teacher, samples, batch_size=4)) == 3
    assert [b.shape for b in teacher.seen] == [(4, 3), (4, 3), (2, 3)]
    teacher.seen.clear()
    rows = [[1.0, 2.0, 3.0]] * 6  # plain lists: a collate turns them into tensors

    def to_batch(items):
        return torch.tensor(items)

    assert len(distill(student, teacher, rows, batch_size=5, collate=to_batch)) == 2
    assert teacher.seen[0].shape == (5, 3) and teacher.seen[1].shape == (1, 3)


def test_time_budget_progress_and_bad_limits(capsys):
    torch.manual_seed(3)
    teacher, student = _Recorder(), nn.Linear(3, 2)
    data = [torch.randn(4, 3) for _ in range(20)]
    assert len(distill(student, teacher, data, max_seconds=1e-9)) == 1  # one step, then stop
    losses = distill(student, teacher, data, max_steps=5, progress=True)
    assert len(losses) == 5 and "distill" in capsys.readouterr().err
    for kwargs, name in (
        ({"batch_size": 0}, "batch_size"),
        ({"max_seconds": -1.0}, "max_seconds"),
        ({"max_steps": 0}, "max_steps"),
    ):
        with pytest.raises(ValueError, match=name):
            distill(student, teacher, data, **kwargs)
