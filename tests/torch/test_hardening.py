"""Torch entry points: half-precision and meta-device layers, tied weights, refused pickles."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import sekron as sk  # noqa: E402
from sekron.errors import ArgumentError, FormatError  # noqa: E402
from sekron.torch import SeKronConv2d, SeKronLinear, compress, read_state_dict  # noqa: E402


def _kron_weight(rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    # an exact Kronecker product of values representable in every half precision
    rng = np.random.default_rng(0)
    A = rng.integers(-4, 5, size=(rows // 8, cols // 8)).astype(np.float64)
    B = rng.integers(-4, 5, size=(8, 8)).astype(np.float64) / 4
    return torch.tensor(np.kron(A, B), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_linear_compresses_and_keeps_its_dtype(dtype):
    lin = nn.Linear(64, 64).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(_kron_weight(64, 64, dtype))
    layer = SeKronLinear.from_linear(lin, structure=sk.Structure([(8, 8), (8, 8)], 1))
    x = torch.randn(3, 64).to(dtype)
    with torch.no_grad():
        y = layer(x)
    assert y.dtype == dtype
    # the fit is exact (a Kronecker product); only the half-precision matmul rounds
    ref = (x.double() @ lin.weight.double().T + lin.bias.double()).detach()
    eps = float(torch.finfo(dtype).eps)
    assert float((y.double() - ref).norm() / ref.norm()) < 64 * eps


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_compress(dtype):
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32)).to(dtype)
    out, _ = compress(model, ratio=2)
    assert isinstance(out[0], SeKronLinear) and out(torch.randn(2, 64).to(dtype)).dtype == dtype
    conv = nn.Conv2d(8, 8, 3).to(dtype)
    layer = SeKronConv2d.from_conv(conv, ratio=2)
    assert layer(torch.randn(1, 8, 6, 6).to(dtype)).dtype == dtype


def test_meta_device_weights_are_refused_by_name():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(64, 64))
        conv = nn.Conv2d(8, 8, 3)
    with pytest.raises(ArgumentError, match=r"model: parameter '0\.weight'.*meta device"):
        compress(model, ratio=4)
    with pytest.raises(ArgumentError, match=r"layer\.weight.*meta device"):
        SeKronLinear.from_linear(model[0], ratio=4)
    with pytest.raises(ArgumentError, match=r"layer\.weight.*meta device"):
        SeKronConv2d.from_conv(conv, ratio=2)


def test_tied_weights_stay_dense_and_tied():
    model = nn.Sequential(nn.Linear(64, 64, bias=False), nn.Linear(64, 64, bias=False))
    model[1].weight = model[0].weight
    out, report = compress(model, ratio=4)
    assert out[0].weight is out[1].weight  # the tie survives
    assert all(isinstance(m, nn.Linear) for m in out)
    assert any(r.skipped and "tied" in r.skipped for r in report)


class _Foreign:
    pass


def test_a_pickled_checkpoint_is_refused_in_one_line(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"w": torch.ones(2), "obj": _Foreign()}, path)
    with pytest.raises(FormatError) as info:
        read_state_dict(path)
    msg = str(info.value)
    assert "\n" not in msg and "weights_only" not in msg and "_Foreign" in msg
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint" * 4)
    with pytest.raises(FormatError) as info:
        read_state_dict(bad)
    assert "\n" not in str(info.value) and "weights_only" not in str(info.value)
