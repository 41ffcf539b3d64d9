"""SeKronConv2d / SeKronLinear ``path="auto"``: the cost table's choice, both paths equal."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as tF  # noqa: E402

import sekron as sk  # noqa: E402
from sekron.ops import CostTable, PathCost  # noqa: E402
from sekron.ops import _dispatch as dispatch_mod  # noqa: E402
from sekron.torch import SeKronConv2d, SeKronLinear  # noqa: E402
from sekron.torch import layers as layers_mod  # noqa: E402


def _table(staged_per_image):
    entry = PathCost(dense=(0.0, 1.0), staged=(0.0, staged_per_image))

    class Always(CostTable):  # every geometry has the injected cost
        def get(self, key):
            return entry

    return Always()


@pytest.mark.parametrize("staged", [True, False])
def test_conv_auto_follows_the_table(monkeypatch, staged):
    monkeypatch.setattr(dispatch_mod, "_TABLE", _table(0.1 if staged else 10.0))
    ran = []
    real = layers_mod.sekron_conv2d
    monkeypatch.setattr(layers_mod, "sekron_conv2d", lambda *a: ran.append(1) or real(*a))
    torch.manual_seed(0)
    s = sk.Structure([(4, 2, 3, 1), (2, 4, 1, 3)], ranks=2)
    layer = SeKronConv2d(s, padding=1, stride=2, dtype=torch.float64)
    x = torch.randn(3, 8, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        assert layer.uses_structured_path((9, 9), 3) is staged
        y = layer(x)
        want = tF.conv2d(x, layer.dense_weight(), layer.bias, stride=2, padding=1)
    assert bool(ran) is staged
    tol = 64 * np.finfo(np.float64).eps * float(want.abs().max())
    torch.testing.assert_close(y, want, atol=tol, rtol=0)


@pytest.mark.parametrize("staged", [True, False])
def test_linear_auto_follows_the_table(monkeypatch, staged):
    monkeypatch.setattr(dispatch_mod, "_TABLE", _table(0.1 if staged else 10.0))
    ran = []
    real = layers_mod.sekron_linear
    monkeypatch.setattr(layers_mod, "sekron_linear", lambda *a: ran.append(1) or real(*a))
    torch.manual_seed(0)
    layer = SeKronLinear(sk.Structure([(4, 8), (4, 8)], ranks=2), dtype=torch.float64)
    x = torch.randn(5, 64, dtype=torch.float64)
    with torch.no_grad():
        assert layer.uses_structured_path(5) is staged
        y = layer(x)
        want = tF.linear(x, layer.dense_weight(), layer.bias)
    assert bool(ran) is staged
    tol = 64 * np.finfo(np.float64).eps * float(want.abs().max())
    torch.testing.assert_close(y, want, atol=tol, rtol=0)


def test_unknown_geometry_is_timed_once(monkeypatch):
    table = CostTable()
    monkeypatch.setattr(dispatch_mod, "_TABLE", table)
    layer = SeKronConv2d(sk.Structure([(4, 4, 3, 1), (4, 4, 1, 3)], ranks=1), padding=1)
    calls = []
    real = layer._measure
    monkeypatch.setattr(layer, "_measure", lambda hw, run=None: calls.append(hw) or real(hw, run))
    with torch.no_grad():
        for n in (1, 2, 1):
            layer(torch.randn(n, 16, 10, 10))
    assert calls == [(10, 10)], calls
    assert len(table._entries) == 1, table._entries
    (cost,) = table._entries.values()
    assert min(*cost.dense, *cost.staged) >= 0 and min(cost.predict(2)) > 0


def test_training_steps_keep_the_multiply_add_rule(monkeypatch):
    # the table times inference; with gradients recorded the layer keeps the MAC rule
    monkeypatch.setattr(dispatch_mod, "_TABLE", _table(10.0))  # the table says dense
    s = sk.Structure([(8, 8, 3, 1), (8, 8, 1, 3)], ranks=1)
    conv = SeKronConv2d(s, padding=1)
    assert conv.uses_structured_path((32, 32)) is True  # MAC rule: 11.6x fewer MACs
    assert conv.uses_structured_path((32, 32), 2) is True
    with torch.no_grad():
        assert conv.uses_structured_path((32, 32), 2) is False
    lin = SeKronLinear(sk.Structure([(16, 16), (16, 16)], ranks=1))
    assert lin.uses_structured_path(3) is True
    with torch.no_grad():
        assert lin.uses_structured_path(3) is False


def test_conv_choice_memo_follows_the_table_and_copies(monkeypatch):
    """The layer's last-call memo is dropped when the table changes, and a layer that has
    run (memo filled) still deep-copies and pickles."""
    import copy
    import pickle

    table = CostTable(entries={})
    monkeypatch.setattr(dispatch_mod, "_TABLE", table)
    ran = []
    real = layers_mod.sekron_conv2d
    monkeypatch.setattr(layers_mod, "sekron_conv2d", lambda *a: ran.append(1) or real(*a))
    torch.manual_seed(0)
    layer = SeKronConv2d(sk.Structure([(4, 2, 3, 1), (2, 4, 1, 3)], 2), padding=1)
    x = torch.randn(2, 8, 9, 9)
    monkeypatch.setattr(
        SeKronConv2d, "_measure", lambda self, hw, run=None: PathCost((0, 1.0), (0, 10.0))
    )
    with torch.no_grad():
        layer(x)
        layer(x)
        assert not ran  # dense, twice
        (key,) = table._entries
        table.put(key, PathCost((0.0, 1.0), (0.0, 0.1)))
        y = layer(x)
        assert ran == [1]
        for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
            torch.testing.assert_close(clone(x), y, rtol=0, atol=0)
