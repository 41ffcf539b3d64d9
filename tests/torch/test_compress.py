"""compress() on small trained models: outputs stay close, the report matches the model."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

import sekron as sk  # noqa: E402
from sekron.torch import KroneckerEmbedding, SeKronConv2d, SeKronLinear, compress  # noqa: E402


def _digits():
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_digits(return_X_y=True)
    return torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)


def _train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, steps: int = 150) -> nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(X), (128,))
        loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def digits_mlp():
    X, y = _digits()
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
    )
    return _train(net, X, y, steps=300), X, y


@pytest.fixture(scope="module")
def digits_cnn():
    X, y = _digits()
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 16, 10),
    )
    return _train(net, X, y, steps=120), X, y


def _n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _accuracy(model, X, y) -> float:
    with torch.no_grad():
        return float((model(X).argmax(1) == y).float().mean())


def test_compress_mlp_low_ratio_keeps_outputs(digits_mlp):
    net, X, y = digits_mlp
    small, report = compress(net, ratio=1.25, progress=False)
    assert all(
        isinstance(m, nn.Linear) for m in net if isinstance(m, nn.Module) and m._parameters
    )  # untouched
    with torch.no_grad():
        out, ref = small(X), net(X)
    # a briefly trained MLP has nearly flat spectra, so even at ratio 1.25 the weights keep
    # 20-35% relative error; the predictions barely move
    rel = float(torch.linalg.norm(out - ref) / torch.linalg.norm(ref))
    assert rel < 0.5
    assert _accuracy(small, X, y) >= _accuracy(net, X, y) - 0.08
    # the report matches the model
    assert _n_params(net) - _n_params(small) == report.params_before - report.params_after
    for r in report:
        mod = small.get_submodule(r.name)
        assert r.params_after == _n_params(mod)
        assert r.params_before == _n_params(net.get_submodule(r.name))
        if r.skipped is None:
            assert isinstance(mod, SeKronLinear) and str(mod.structure) == r.structure
            assert mod.structure.n_params * 1.25 <= mod.in_features * mod.out_features
            assert r.macs_before == mod.in_features * mod.out_features
            assert r.relative_error == mod.fit_relative_error
            W = net.get_submodule(r.name).weight.detach().double()
            err = torch.linalg.norm(mod.dense_weight().detach().double() - W) / torch.linalg.norm(W)
            assert float(err) == pytest.approx(r.relative_error, rel=1e-3, abs=1e-5)
    assert "total parameters" in str(report)


def test_compress_cnn_with_example_input_and_inplace(digits_cnn):
    net, X, y = digits_cnn
    ref = net(X[:64]).detach()
    work = _train(nn.Sequential(*[m for m in net]), X, y, steps=0)  # same modules, same weights
    small, report = compress(work, ratio=1.5, inplace=True, example_input=X[:8], progress=False)
    assert small is work
    convs = [r for r in report if r.kind == "Conv2d"]
    assert len(convs) == 2
    first = small.get_submodule(convs[1].name)
    assert isinstance(first, SeKronConv2d) and first.stride == (2, 2) and first.padding == (1, 1)
    # MACs are per image for the 8×8 input the hooks saw
    assert convs[1].macs_before == 32 * 16 * 9 * 4 * 4
    assert (
        convs[1].macs_after
        == first.macs((8, 8))["sekron" if first.uses_structured_path((8, 8)) else "dense"]
    )
    with torch.no_grad():
        out = small(X[:64])
    assert float(torch.linalg.norm(out - ref) / torch.linalg.norm(ref)) < 0.6
    assert float((out.argmax(1) == ref.argmax(1)).float().mean()) > 0.8


def test_compress_include_exclude_embeddings_and_tol():
    torch.manual_seed(0)
    net = nn.ModuleDict(
        {"emb": nn.Embedding(40, 16), "head": nn.Linear(16, 8), "out": nn.Linear(8, 4)}
    )
    _, report = compress(net, ratio=2, embeddings=True, include=["emb", "head"], progress=False)
    assert [r.name for r in report] == ["emb", "head"]
    small, report = compress(net, ratio=2, embeddings=True, exclude="head", progress=False)
    assert [r.name for r in report] == ["emb", "out"]
    assert isinstance(small["emb"], KroneckerEmbedding) and isinstance(small["head"], nn.Linear)
    small, report = compress(net, tol=0.9, include="head", progress=False)
    assert report[0].skipped is not None or report[0].relative_error <= 0.9


def test_compress_bad_inputs(capsys):
    net = nn.Sequential(nn.ReLU(), nn.Tanh())
    with pytest.raises(ValueError, match="no eligible layer"):
        compress(net, ratio=2)
    lin = nn.Sequential(nn.Linear(8, 8))
    with pytest.raises(ValueError, match="ratio"):
        compress(lin, ratio=0.5)
    with pytest.raises(ValueError, match="exactly one"):
        compress(lin)
    with pytest.raises(TypeError):
        compress(lin, ratio=2, include=3)
    _, report = compress(nn.Sequential(nn.Linear(2, 3), nn.Conv2d(4, 4, 3, groups=2)), ratio=2)
    assert "reaches compression" in report[0].skipped
    assert "groups" in report[1].skipped
    assert "compress" in capsys.readouterr().err  # the progress line


def test_report_matches_compression_ratio_per_layer():
    torch.manual_seed(0)
    lin = nn.Linear(48, 32)
    _small, report = compress(nn.Sequential(lin), ratio=6, progress=False, max_candidates=3)
    r = report[0]
    st = sk.Structure(
        [tuple(int(d) for d in s.split("×")) for s in r.structure.split(" @")[0].split(" ⊗ ")], 1
    )
    assert st.shape == (32, 48)
    assert np.isclose(r.ratio, (48 * 32 + 32) / r.params_after)


@pytest.mark.parametrize("ratio", [3, 6])
def test_three_factor_selection_uses_the_budget(digits_cnn, ratio):
    net = digits_cnn[0]
    conv = net[3]  # the trained 16 -> 32 3x3 convolution
    budget = conv.weight.numel() / ratio
    fits = {S: SeKronConv2d.from_conv(conv, ratio=ratio, n_factors=S, in_hw=(8, 8)) for S in (2, 3)}
    for S, layer in fits.items():
        n = layer.structure.n_params
        assert budget / 2 <= n <= budget, (S, layer.structure, budget)
    # non-uniform ranks: the 3-factor fit is within 1.5x the 2-factor (GKPD) error here
    e2, e3 = fits[2].fit_relative_error, fits[3].fit_relative_error
    assert 0 < e3 <= 1.5 * e2, (e2, e3)
    # every candidate's error bound is certified: the fit's dense error matches it
    W = conv.weight.detach().double()
    W3 = fits[3].dense_weight().detach().double()
    rel = float(torch.linalg.norm(W3 - W) / torch.linalg.norm(W))
    assert rel <= e3 * (1 + 1e-6) + 1e-6


def test_compress_three_factors_params_within_budget(digits_cnn):
    net, X, _ = digits_cnn
    small, report = compress(
        net, ratio=4, n_factors=3, example_input=X[:8], progress=False, include=["3"]
    )
    (r,) = report
    assert r.skipped is None
    W = net[3].weight
    assert W.numel() / 8 <= small[3].structure.n_params <= W.numel() / 4


def test_a_layer_whose_budget_is_its_dense_size_stays_dense_and_exact():
    # ratio 1 (as the model-wide split gives a layer it does not compress at all): a
    # lossy fit at the dense parameter count would only lose accuracy
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 8))
    x = torch.randn(4, 16)
    small, report = compress(net, ratio=1.0, progress=False)
    assert all(r.skipped and "dense size" in r.skipped for r in report)
    assert all(type(m) is nn.Linear for m in small if not isinstance(m, nn.ReLU))
    assert torch.equal(small(x), net(x))
