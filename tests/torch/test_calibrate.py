"""Calibration Grams against independent references: XᵀX, explicit im2col, torch's unfold."""

from __future__ import annotations

import io
import itertools
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
hypothesis = pytest.importorskip("hypothesis")

import torch.nn.functional as F  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

from sekron.errors import FormatError, ShapeError  # noqa: E402
from sekron.torch.calibration import InputGram, calibrate, load_grams, save_grams  # noqa: E402

EPS = np.finfo(np.float64).eps


def _tol(X: np.ndarray) -> float:
    # float64 sums of N products, each exact from float32 inputs: error <= N eps |x|²
    return 4 * X.shape[0] * EPS * float((X**2).sum(1).max())


def _im2col(x: np.ndarray, k: tuple[int, int], stride, padding, dilation) -> np.ndarray:
    """Patches written out by loops on a zero-padded copy: rows (image, oh, ow), cols (c, i, j)."""
    n, c, h, w = x.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    xp[:, :, ph : ph + h, pw : pw + w] = x
    oh = (h + 2 * ph - dh * (k[0] - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (k[1] - 1) - 1) // sw + 1
    rows = []
    for b, a, q in itertools.product(range(n), range(oh), range(ow)):
        patch = [
            xp[b, ch, a * sh + i * dh, q * sw + j * dw]
            for ch in range(c)
            for i in range(k[0])
            for j in range(k[1])
        ]
        rows.append(patch)
    return np.array(rows)


def test_linear_gram_is_xtx_over_all_leading_dims():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    data = [torch.randn(2, 3, 5) for _ in range(4)] + [torch.randn(6, 5)]
    grams = calibrate(net, data, progress=False)
    X0 = np.concatenate([d.reshape(-1, 5).numpy() for d in data]).astype(np.float64)
    with torch.no_grad():
        hid = [torch.tanh(net[0](d)).reshape(-1, 7).numpy() for d in data]
    X2 = np.concatenate(hid).astype(np.float64)
    for name, X in (("0", X0), ("2", X2)):
        g = grams[name]
        assert g.kind == "Linear" and g.n_samples == X.shape[0] == 30
        assert g.gram.dtype == np.float64
        np.testing.assert_allclose(g.gram, X.T @ X, rtol=0, atol=_tol(X))


CONVS = [
    dict(kernel_size=3),
    dict(kernel_size=(3, 2), stride=2, padding=1),
    dict(kernel_size=3, stride=(1, 2), padding=(2, 1), dilation=2),
    dict(kernel_size=2, dilation=(2, 1), padding=3, stride=3),
]


@pytest.mark.parametrize("cfg", CONVS)
@pytest.mark.parametrize("chunk_bytes", [1 << 26, 512])
def test_conv_gram_equals_explicit_im2col_and_unfold(cfg, chunk_bytes):
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 4, **cfg)
    x = torch.randn(3, 2, 7, 8)
    g = calibrate(nn.Sequential(conv), [x[:2], x[2:]], chunk_bytes=chunk_bytes, progress=False)["0"]
    P = _im2col(
        x.numpy().astype(np.float64), conv.kernel_size, conv.stride, conv.padding, conv.dilation
    )
    assert g.kind == "Conv2d" and g.n_samples == P.shape[0]
    np.testing.assert_allclose(g.gram, P.T @ P, rtol=0, atol=_tol(P))
    U = F.unfold(x.double(), conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    U = U.transpose(1, 2).reshape(-1, U.shape[1]).numpy()
    np.testing.assert_allclose(g.gram, U.T @ U, rtol=0, atol=_tol(U))
    # the (C, Kh, Kw) order is the weight's: W @ patch is the convolution's output
    with torch.no_grad():
        y = conv(x).double().permute(0, 2, 3, 1).reshape(-1, 4).numpy()
    W, b = conv.weight.detach().double().reshape(4, -1).numpy(), conv.bias.detach().double().numpy()
    np.testing.assert_allclose(P @ W.T + b, y, rtol=0, atol=1e-5)


@pytest.mark.parametrize("padding_mode", ["reflect", "circular", "replicate"])
def test_conv_padding_modes_and_same(padding_mode):
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, 3, padding="same", dilation=2, padding_mode=padding_mode)
    x = torch.randn(2, 2, 6, 6)
    g = calibrate(conv, [x], progress=False)[""]
    xp = F.pad(x.double(), [2, 2, 2, 2], mode=padding_mode)
    P = _im2col(xp.numpy(), (3, 3), (1, 1), (0, 0), (2, 2))
    assert g.n_samples == 2 * 36
    np.testing.assert_allclose(g.gram, P.T @ P, rtol=0, atol=_tol(P))


@settings(max_examples=15, deadline=None)
@given(
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 2),
    st.integers(0, 2),
    st.integers(1, 2),
    st.integers(4, 7),
    st.integers(1, 2),
)
def test_conv_gram_property(kh, kw, stride, pad, dil, size, channels):
    if size + 2 * pad < dil * (max(kh, kw) - 1) + 1:
        return
    conv = nn.Conv2d(channels, 2, (kh, kw), stride=stride, padding=pad, dilation=dil)
    x = torch.randn(2, channels, size, size + 1, generator=torch.Generator().manual_seed(size))
    g = calibrate(conv, [x], progress=False, chunk_bytes=256)[""]
    P = _im2col(x.numpy().astype(np.float64), (kh, kw), conv.stride, conv.padding, conv.dilation)
    assert g.n_samples == P.shape[0]
    np.testing.assert_allclose(g.gram, P.T @ P, rtol=0, atol=_tol(P))


class _Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = self.a  # the same module under a second name

    def forward(self, x, scale=1.0):
        return self.b(torch.relu(self.a(x))) * scale


def test_shared_module_counted_once_per_call_and_batch_forms():
    torch.manual_seed(3)
    net = _Shared()
    xs = [torch.randn(5, 4) for _ in range(3)]
    batches = [xs[0], (xs[1],), {"x": xs[2], "scale": 2.0}]
    grams = calibrate(net, batches, progress=False)
    assert sorted(grams) == ["a"]
    with torch.no_grad():
        seen = [t for x in xs for t in (x, torch.relu(net.a(x)))]
    X = torch.cat(seen).double().numpy()
    assert grams["a"].n_samples == 30
    np.testing.assert_allclose(grams["a"].gram, X.T @ X, rtol=0, atol=_tol(X))


def test_limits_state_and_filters():
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.Linear(3, 2))
    net.train()
    before = [p.detach().clone() for p in net.parameters()]
    pulled = []

    def stream():
        for i in range(100):
            pulled.append(i)
            yield torch.randn(4, 3)

    g = calibrate(net, stream(), include=["0", "2"], exclude="2", max_batches=3, progress=False)
    assert sorted(g) == ["0"] and g["0"].n_samples == 12 and len(pulled) <= 4
    assert net.training and all(
        torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True)
    )
    assert all(not m._forward_pre_hooks for m in net.modules())
    g = calibrate(net, [torch.randn(4, 3)] * 5, include="0", max_seconds=1e-9, progress=False)
    assert g["0"].n_samples == 4  # one batch always runs, then the budget stops it
    # eval mode during calibration: dropout off, so the second layer sees the first's output
    x = torch.randn(6, 3)
    g = calibrate(net, [x], include="2", progress=False)["2"]
    with torch.no_grad():
        H = net[0](x).double().numpy()
    np.testing.assert_allclose(g.gram, H.T @ H, rtol=0, atol=_tol(H))
    grouped = nn.Sequential(nn.Conv2d(2, 2, 1, groups=2), nn.Conv2d(2, 1, 1))
    assert sorted(calibrate(grouped, [torch.randn(1, 2, 3, 3)], progress=False)) == ["1"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_batches": 0}, "max_batches"),
        ({"max_batches": 1.5}, "max_batches"),
        ({"max_seconds": -1}, "max_seconds"),
        ({"include": "nothing*"}, "model"),
        ({"include": 3}, "include"),
    ],
)
def test_bad_arguments(kwargs, match):
    net = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=match):  # ShapeError, or ArgumentTypeError for a type
        calibrate(net, [torch.randn(1, 2)], progress=False, **kwargs)
    with pytest.raises(ShapeError, match="model"):
        calibrate("net", [], progress=False)  # type: ignore[arg-type]


def test_save_load_roundtrip_is_exact_atomic_and_pickle_free(tmp_path):
    rng = np.random.default_rng(5)
    A = rng.standard_normal((6, 4))
    grams = {
        "enc.0.fc": InputGram(A.T @ A, 6, "Linear"),
        "conv": InputGram(np.eye(9), 12, "Conv2d"),
    }
    path = save_grams(tmp_path / "grams.npz", grams)
    assert sorted(os.listdir(tmp_path)) == ["grams.npz"]  # no temporary left behind
    back = load_grams(path)
    assert list(back) == list(grams)
    for k in grams:
        assert back[k].n_samples == grams[k].n_samples and back[k].kind == grams[k].kind
        assert np.array_equal(back[k].gram, grams[k].gram)
    with np.load(path, allow_pickle=False) as f:
        assert all(f[k].dtype != object for k in f.files)
    # a failing write leaves the previous file intact and no temporary
    with pytest.raises(ShapeError, match="gram"):
        save_grams(path, {"bad": InputGram(np.ones((2, 3)), 1, "Linear")})
    assert sorted(os.listdir(tmp_path)) == ["grams.npz"] and list(load_grams(path)) == list(grams)
    np.savez(tmp_path / "other.npz", x=np.ones(2))
    with pytest.raises(FormatError, match="path"):
        load_grams(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(FormatError, match="path"):
        load_grams(tmp_path / "junk.npz")


def test_load_grams_checks_headers_before_reading(tmp_path):
    # a Gram member whose header is not square is refused from the header alone, and a
    # deflated member claiming far more than its size allows is refused unread
    import zipfile

    good = save_grams(tmp_path / "g.npz", {"fc": InputGram(np.eye(3), 5, "Linear")})
    bad = tmp_path / "bad.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "gram_0.npy":
                buf = io.BytesIO()
                np.save(buf, np.zeros((3, 4)))
                data = buf.getvalue()
            dst.writestr(info.filename, data)
    with pytest.raises(FormatError, match="square Gram"):
        load_grams(bad)
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "gram_0.npy":
                buf = io.BytesIO()
                np.save(buf, np.zeros((2048, 2048)))  # 32 MiB of zeros, deflates ~1000x
                data = buf.getvalue()
            dst.writestr(info.filename, data)
    with pytest.raises(FormatError, match="inflation"):
        load_grams(bomb)
