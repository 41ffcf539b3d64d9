"""LoKr / LoRA adapters: optimality against independent SVDs, exact conversions, and files
that PEFT and LyCORIS load (and that they write) with the same rebuilt ΔW."""

from __future__ import annotations

import copy
import json
import math
import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from torch import nn  # noqa: E402

from sekron.errors import FormatError, NonFiniteError, RankError, ShapeError  # noqa: E402
from sekron.torch import adapters as ad  # noqa: E402

EPS64 = np.finfo(np.float64).eps
EPS32 = float(np.finfo(np.float32).eps)
INTEROP_RTOL = 1e-6  # the bar for "same ΔW" between libraries (float32 files)


def _rearranged(D: np.ndarray, a: int, c: int) -> np.ndarray:
    """Van Loan–Pitsianis R(D) written out independently: rows (i1, j1), cols (i2, j2, k)."""
    out, inp = D.shape[:2]
    b, d = out // a, inp // c
    k = int(np.prod(D.shape[2:]))
    T = D.reshape(a, b, c, d, k).transpose(0, 2, 1, 3, 4)
    return T.reshape(a * c, b * d * k)


def _tol(D: np.ndarray) -> float:
    return 100 * EPS64 * math.sqrt(D.size) * max(np.linalg.norm(D), 1.0)


class Net(nn.Module):
    """A small model with the three layer kinds LoKr targets, built in the test."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(24, 32)
        self.conv = nn.Conv2d(8, 12, 3)
        self.blk = nn.Sequential(nn.Linear(64, 48))


# ---------------------------------------------------------------- shape rule


def test_factorization_is_lycoris_rule() -> None:
    lyco = pytest.importorskip("lycoris.functional.general")
    for dim in range(1, 300):
        for factor in (-1, 1, 2, 3, 4, 5, 8, 16, 32):
            assert ad.factorization(dim, factor) == lyco.factorization(dim, factor), (dim, factor)


# ---------------------------------------------------------------- extraction optimality

dims = st.sampled_from([(2, 3), (4, 2), (3, 3), (1, 5), (4, 4)])


@given(
    out=dims,
    inp=dims,
    kernel=st.sampled_from([(), (1, 1), (3, 3), (2,)]),
    seed=st.integers(0, 2**16),
)
def test_full_rank_extraction_is_eckart_young_optimum(out, inp, kernel, seed) -> None:
    rng = np.random.default_rng(seed)
    (a, b), (c, d) = out, inp
    D = rng.normal(size=(a * b, c * d, *kernel))
    lokr, fit = ad.fit_update(D, shape_w1=(a, c))
    s = np.linalg.svd(_rearranged(D, a, c), compute_uv=False)
    optimum = math.sqrt(float(np.sum(s[1:] ** 2)))
    assert abs(fit.error - optimum) <= _tol(D)
    assert abs(np.linalg.norm(D - lokr.delta()) - optimum) <= _tol(D)
    assert fit.rank is None and lokr.shape == D.shape


@pytest.mark.parametrize("shape", [(32, 24), (12, 8, 3, 3)])
def test_truncated_w2_beats_plain_truncation_and_is_certified(shape) -> None:
    rng = np.random.default_rng(1)
    D = rng.normal(size=shape)
    full, ffit = ad.fit_update(D)
    w2 = full.w2_matrix()
    U, s, Vt = np.linalg.svd(w2, full_matrices=False)
    for q in (1, 2):
        plain = np.kron(full.w1, (U[:, :q] * s[:q]) @ Vt[:q]).reshape(shape)
        lokr, fit = ad.fit_update(D, rank=q)
        exact = np.linalg.norm(D - lokr.delta())
        assert lokr.rank == q and fit.rank == q
        assert abs(fit.error - exact) <= _tol(D)  # the reported error is the true one
        assert fit.error <= np.linalg.norm(D - plain) + _tol(D)  # refinement never hurts
        assert fit.error >= ffit.error - _tol(D)  # and the full-rank NKP is the floor


def test_refinement_lowers_the_error_on_a_structured_update() -> None:
    # w1 ⊗ (rank-2 w2) plus a rank-1 Kronecker term whose w2 is large: the NKP's w2
    # mixes both, so its truncation is not the best rank-2 LoKr and ALS improves it
    rng = np.random.default_rng(3)
    D = np.kron(rng.normal(size=(4, 4)), rng.normal(size=(8, 2)) @ rng.normal(size=(2, 8)))
    D += 0.8 * np.kron(rng.normal(size=(4, 4)), rng.normal(size=(8, 8)))
    _, no_als = ad.fit_update(D, rank=2, refine=0)
    _, als = ad.fit_update(D, rank=2, refine=20)
    assert als.error < no_als.error and als.sweeps >= 1


def test_tol_picks_the_smallest_sufficient_rank() -> None:
    rng = np.random.default_rng(2)
    D = np.kron(
        rng.normal(size=(4, 4)),
        rng.normal(size=(8, 3)) @ np.diag([10, 1, 0.1]) @ rng.normal(size=(3, 8)),
    )
    D += 1e-4 * rng.normal(size=D.shape)
    _lokr, fit = ad.fit_update(D, tol=0.02)
    assert fit.relative_error <= 0.02
    q = fit.rank
    assert q is not None and q >= 2
    _, smaller = ad.fit_update(D, rank=q - 1, refine=0)
    assert smaller.relative_error > 0.02


def test_extract_from_models_and_state_dicts_agree() -> None:
    torch.manual_seed(0)
    base = Net()
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.fc.weight += 0.1 * torch.randn_like(tuned.fc.weight)
        w2 = (torch.randn(4, 2) @ torch.randn(2, 36)).reshape(4, 4, 3, 3)  # rank 2 as a matrix
        tuned.conv.weight += torch.kron(torch.randn(3, 2, 1, 1), w2)
    ex = ad.extract(base, tuned, rank=2)
    ex_sd = ad.extract(base.state_dict(), tuned.state_dict(), rank=2)
    assert sorted(ex.adapters) == sorted(ex_sd.adapters) == ["conv", "fc"]  # blk unchanged
    by_name = {f.name: f for f in ex.report}
    assert by_name["conv"].relative_error < 1e-6  # an exact Kronecker update (float32 weights)
    for name, lokr in ex.adapters.items():
        D = (
            (tuned.get_submodule(name).weight.double() - base.get_submodule(name).weight.double())
            .detach()
            .numpy()
        )
        assert abs(np.linalg.norm(D - lokr.delta()) - by_name[name].error) <= 1e-9 * np.linalg.norm(
            D
        )
        np.testing.assert_allclose(ex_sd.adapters[name].delta(), lokr.delta(), atol=1e-12)
    assert "fc" in ex.format_report()


# ---------------------------------------------------------------- conversions


@pytest.mark.parametrize("kernel", [(), (3, 3)])
@pytest.mark.parametrize("low_rank", [False, True])
def test_lokr_to_lora_is_the_truncated_svd_of_the_dense_update(kernel, low_rank) -> None:
    rng = np.random.default_rng(4)
    k = int(np.prod(kernel))
    w1 = rng.normal(size=(3, 4))
    if low_rank:
        lokr = ad.LoKr(
            w1,
            w2_a=rng.normal(size=(5, 3)),
            w2_b=rng.normal(size=(3, 2 * k)),
            scale=-0.5,
            kernel=kernel,
        )
    else:
        lokr = ad.LoKr(w1, w2=rng.normal(size=(5, 2, *kernel)), scale=0.3, kernel=kernel)
    D = lokr.delta().reshape(lokr.shape[0], -1)
    U, s, Vt = np.linalg.svd(D, full_matrices=False)
    for r in (1, 4, 6):  # rank(ΔW) = 3 · 2
        lora, err = ad.lokr_to_lora(lokr, r)
        best = (U[:, :r] * s[:r]) @ Vt[:r]
        np.testing.assert_allclose(lora.delta().reshape(D.shape), best, atol=_tol(D))
        assert abs(err - math.sqrt(float(np.sum(s[r:] ** 2)))) <= _tol(D)
        assert lora.shape == lokr.shape


def test_lokr_to_lora_at_full_rank_is_exact_and_round_trips() -> None:
    rng = np.random.default_rng(5)
    lokr = ad.LoKr(rng.normal(size=(4, 4)), w2=rng.normal(size=(8, 6)))
    lora, err = ad.lokr_to_lora(lokr, 24)
    assert err == 0.0
    np.testing.assert_allclose(lora.delta(), lokr.delta(), atol=_tol(lokr.delta()))
    for method in ("implicit", "dense"):
        back, e = ad.lora_to_lokr(lora, method=method)
        np.testing.assert_allclose(back.delta(), lokr.delta(), atol=1e3 * _tol(lokr.delta()))
        assert e <= math.sqrt(EPS64) * np.linalg.norm(lokr.delta()) * 10
    with pytest.raises(RankError):
        ad.lokr_to_lora(lokr, 25)
    assert ad.lokr_to_lora(lokr, 25, clip=True)[0].rank == 24


@pytest.mark.parametrize("kernel", [(), (3, 3)])
def test_lora_to_lokr_reaches_the_nkp_optimum_without_forming_the_update(kernel) -> None:
    rng = np.random.default_rng(6)
    k = int(np.prod(kernel))
    lora = ad.LoRA(
        rng.normal(size=(32, 3)), rng.normal(size=(3, 24 * k)), scale=0.25, kernel=kernel
    )
    D = lora.delta()
    s = np.linalg.svd(_rearranged(D, 4, 4), compute_uv=False)
    optimum = math.sqrt(float(np.sum(s[1:] ** 2)))
    imp, e_imp = ad.lora_to_lokr(lora, method="implicit")
    den, e_den = ad.lora_to_lokr(lora, method="dense")
    for lokr, e in ((imp, e_imp), (den, e_den)):
        exact = np.linalg.norm(D - lokr.delta())
        assert exact <= optimum * (1 + 1e-6) + _tol(D)
        assert abs(e - exact) <= math.sqrt(EPS64) * np.linalg.norm(D) * 10


def test_implicit_operator_matches_the_formed_rearrangement() -> None:
    rng = np.random.default_rng(7)
    up, down = rng.normal(size=(12, 2)), rng.normal(size=(2, 18))
    op = ad_lokr().LowRankRearranged(up, down, (3, 3), (4, 6))
    R = _rearranged(up @ down, 3, 3)
    X, Y = rng.normal(size=(24, 5)), rng.normal(size=(9, 5))
    np.testing.assert_allclose(op.matmat(X), R @ X, atol=1e-12)
    np.testing.assert_allclose(op.rmatmat(Y), R.T @ Y, atol=1e-12)
    assert abs(op.squared_norm() - np.sum(R**2)) <= 1e-9


def ad_lokr():
    from sekron.torch import _lokr

    return _lokr


# ---------------------------------------------------------------- merge


def test_merge_and_unmerge() -> None:
    torch.manual_seed(1)
    model = Net()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    rng = np.random.default_rng(8)
    upd = {
        "fc": ad.LoKr(rng.normal(size=(4, 4)), w2=rng.normal(size=(8, 6)), scale=0.1),
        "lycoris_conv": ad.LoRA(rng.normal(size=(12, 2)), rng.normal(size=(2, 72)), kernel=(3, 3)),
    }
    ad.merge(model, upd, multiplier=2.0)
    got = (model.fc.weight.detach() - before["fc.weight"]).double().numpy()
    np.testing.assert_allclose(
        got,
        2.0 * upd["fc"].delta(),
        atol=10 * EPS32 * before["fc.weight"].abs().max().item() + 1e-6,
    )
    got = (model.conv.weight.detach() - before["conv.weight"]).double().numpy()
    np.testing.assert_allclose(got, 2.0 * upd["lycoris_conv"].delta(), atol=1e-5)
    ad.unmerge(model, upd, multiplier=2.0)
    for n, p in model.state_dict().items():
        torch.testing.assert_close(p, before[n], atol=1e-5, rtol=0)


def test_merge_rejects_bad_adapters_without_changing_the_model() -> None:
    model = Net()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    good = ad.LoKr(np.ones((4, 4)), w2=np.ones((8, 6)))
    with pytest.raises(FormatError, match="adapters"):
        ad.merge(model, {"fc": good, "nope": good})
    with pytest.raises(ShapeError, match="adapters"):
        ad.merge(model, {"fc": good, "blk.0": good})
    for n, p in model.state_dict().items():
        assert torch.equal(p, before[n])


# ---------------------------------------------------------------- files: sekron alone


def _sample_lokrs(rng: np.random.Generator) -> dict[str, ad.LoKr]:
    return {
        "fc": ad.LoKr(
            rng.normal(size=(4, 4)),
            w2_a=rng.normal(size=(8, 2)),
            w2_b=rng.normal(size=(2, 6)),
            scale=0.7,
        ),
        "conv": ad.LoKr(
            rng.normal(size=(3, 2)), w2=rng.normal(size=(4, 4, 3, 3)), scale=1.5, kernel=(3, 3)
        ),
        "blk.0": ad.LoKr(
            rng.normal(size=(6, 8)), w2_a=rng.normal(size=(8, 1)), w2_b=rng.normal(size=(1, 8))
        ),
    }


def safetensors_keys(path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return list(f.keys())


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_file_round_trips_are_exact_in_float64(tmp_path) -> None:
    A = _sample_lokrs(np.random.default_rng(9))
    model = Net()
    p = ad.save_lycoris(tmp_path / "a.safetensors", A, dtype=torch.float64)
    back = ad.load_lycoris(p, model)
    d = ad.save_peft(tmp_path / "peft", A, dtype=torch.float64)
    back_peft = ad.load_peft(d, model)
    for name, u in A.items():
        for got in (back[name], back_peft[name]):
            # scale folding is one float64 multiply per entry of w1
            np.testing.assert_allclose(
                got.delta(), u.delta(), rtol=4 * EPS64, atol=4 * EPS64 * np.abs(u.delta()).max()
            )
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


def test_corrupted_and_foreign_files_raise_format_error(tmp_path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(FormatError, match="path"):
        ad.load_lycoris(bad)
    (tmp_path / "pickle").mkdir()
    (tmp_path / "pickle" / "adapter_config.json").write_text(json.dumps({"peft_type": "LOKR"}))
    (tmp_path / "pickle" / "adapter_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(FormatError, match="pickle"):
        ad.load_peft(tmp_path / "pickle")
    (tmp_path / "ia3").mkdir()
    (tmp_path / "ia3" / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    (tmp_path / "ia3" / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(FormatError, match="peft_type"):
        ad.load_peft(tmp_path / "ia3")
    with pytest.raises(FormatError):
        ad.save_peft(
            tmp_path / "mixed",
            {
                "a": ad.LoKr(np.ones((2, 2)), w2=np.ones((2, 2))),
                "b": ad.LoRA(np.ones((4, 1)), np.ones((1, 4))),
            },
        )


def test_bad_arguments_raise_sekron_errors() -> None:
    D = np.random.default_rng(0).normal(size=(8, 8))
    D_before = D.copy()
    with pytest.raises(RankError, match="rank"):
        ad.fit_update(D, rank=0)
    with pytest.raises(RankError, match="rank"):
        ad.fit_update(D, rank=5)  # w2 is 4×4
    with pytest.raises(ShapeError, match="shape_w1"):
        ad.fit_update(D, shape_w1=(3, 2))
    bad = D.copy()
    bad[0, 0] = np.nan
    with pytest.raises(NonFiniteError):
        ad.fit_update(bad)
    with pytest.raises(ShapeError, match="w2"):
        ad.LoKr(np.ones((2, 2)))
    with pytest.raises(ShapeError, match="down"):
        ad.LoRA(np.ones((4, 2)), np.ones((3, 4)))
    with pytest.raises(ShapeError, match="tuned"):
        ad.extract({"l.weight": np.zeros((4, 4))}, {"l.weight": np.ones((4, 2))})
    np.testing.assert_array_equal(D, D_before)


# ---------------------------------------------------------------- interop with PEFT


def test_sekron_lokr_loads_in_peft(tmp_path) -> None:
    peft = pytest.importorskip("peft")
    A = _sample_lokrs(np.random.default_rng(10))
    ad.save_peft(tmp_path / "peft", A)
    pm = peft.PeftModel.from_pretrained(Net(), str(tmp_path / "peft"))
    for name, u in A.items():
        layer = pm.base_model.model.get_submodule(name)
        dw = layer.get_delta_weight("default").detach().double().numpy()
        assert _rel(dw, u.delta()) <= INTEROP_RTOL


@pytest.mark.parametrize("variant", ["plain", "decompose_both", "effective_conv2d"])
def test_peft_lokr_loads_in_sekron(tmp_path, variant) -> None:
    peft = pytest.importorskip("peft")
    torch.manual_seed(2)
    cfg = peft.LoKrConfig(
        r=1 if variant == "effective_conv2d" else 2,
        alpha=3,
        target_modules=["fc", "conv", "blk.0"],
        rank_pattern={"fc": 1},
        alpha_pattern={"conv": 5},
        init_weights=False,
        decompose_both=variant == "decompose_both",
        use_effective_conv2d=variant == "effective_conv2d",
    )
    pm = peft.get_peft_model(Net(), cfg)
    pm.save_pretrained(str(tmp_path / "p"))
    keys = " ".join(safetensors_keys(tmp_path / "p" / "adapter_model.safetensors"))
    wanted = {"plain": "lokr_w2_a", "decompose_both": "lokr_w1_a", "effective_conv2d": "lokr_t2"}
    assert wanted[variant] in keys  # the variant really stores that layout
    got = ad.load_peft(tmp_path / "p", Net())
    assert sorted(got) == ["blk.0", "conv", "fc"]
    for name, u in got.items():
        layer = pm.base_model.model.get_submodule(name)
        dw = layer.get_delta_weight("default").detach().double().numpy()
        assert _rel(u.delta(), dw) <= INTEROP_RTOL


def test_lora_files_interoperate_with_peft(tmp_path) -> None:
    peft = pytest.importorskip("peft")
    torch.manual_seed(3)
    cfg = peft.LoraConfig(r=2, lora_alpha=3, target_modules=["fc", "conv"], init_lora_weights=False)
    pm = peft.get_peft_model(Net(), cfg)
    pm.save_pretrained(str(tmp_path / "lora"))
    loras = ad.load_peft(tmp_path / "lora")
    for name, lo in loras.items():
        dw = (
            pm.base_model.model.get_submodule(name)
            .get_delta_weight("default")
            .detach()
            .double()
            .numpy()
        )
        assert _rel(lo.delta(), dw) <= INTEROP_RTOL
    # and sekron's LoRA (converted from LoKr) loads back into PEFT
    lokrs = _sample_lokrs(np.random.default_rng(11))
    mine = {n: ad.lokr_to_lora(u, 3)[0] for n, u in lokrs.items()}
    ad.save_peft(tmp_path / "mine", mine)
    pm2 = peft.PeftModel.from_pretrained(Net(), str(tmp_path / "mine"))
    for name, lo in mine.items():
        dw = (
            pm2.base_model.model.get_submodule(name)
            .get_delta_weight("default")
            .detach()
            .double()
            .numpy()
        )
        assert _rel(dw, lo.delta()) <= INTEROP_RTOL


# ---------------------------------------------------------------- interop with LyCORIS


def _lycoris_delta(module) -> np.ndarray:
    # get_weight is what LyCORIS's forward adds to the base weight (times its unit scalar)
    return module.get_weight(module.shape).detach().double().numpy()


def test_sekron_lokr_loads_in_lycoris(tmp_path) -> None:
    lycoris = pytest.importorskip("lycoris")
    A = _sample_lokrs(np.random.default_rng(12))
    ad.save_lycoris(tmp_path / "a.safetensors", A)
    net, _ = lycoris.create_lycoris_from_weights(1.0, str(tmp_path / "a.safetensors"), Net())
    names = {ad.lycoris_name(n): n for n in A}
    assert sorted(lo.lora_name for lo in net.loras) == sorted(names)
    for lo in net.loras:
        assert _rel(_lycoris_delta(lo), A[names[lo.lora_name]].delta()) <= INTEROP_RTOL


@pytest.mark.parametrize(
    "options",
    [
        {"factor": -1},
        {"factor": 2},
        {"decompose_both": True},
        {"use_tucker": True, "linear_dim": 1},
    ],
)
def test_lycoris_lokr_loads_in_sekron(tmp_path, options) -> None:
    lycoris = pytest.importorskip("lycoris")
    torch.manual_seed(4)
    model = Net()
    kwargs = {"linear_dim": 2, "linear_alpha": 3, "algo": "lokr", **options}
    net = lycoris.create_lycoris(model, 1.0, **kwargs)
    net.apply_to()  # the modules register with the network here
    sd = net.state_dict()
    with torch.no_grad():  # LyCORIS starts from ΔW = 0; give it a real update
        for key, value in sd.items():
            if "lokr_w" in key:
                value.copy_(torch.randn_like(value))
    net.save_weights(str(tmp_path / "l.safetensors"), torch.float32, None)
    keys = " ".join(safetensors_keys(tmp_path / "l.safetensors"))
    assert ("lokr_w1_a" in keys) == bool(options.get("decompose_both"))
    assert ("lokr_t2" in keys) == bool(options.get("use_tucker"))
    got = ad.load_lycoris(tmp_path / "l.safetensors", model)
    by_name = {lo.lora_name: lo for lo in net.loras}
    assert sorted(ad.lycoris_name(n) for n in got) == sorted(by_name)
    for name, u in got.items():
        assert _rel(u.delta(), _lycoris_delta(by_name[ad.lycoris_name(name)])) <= INTEROP_RTOL


def test_extracted_adapter_reproduces_the_fine_tuned_model_in_peft_and_lycoris(tmp_path) -> None:
    peft = pytest.importorskip("peft")
    lycoris = pytest.importorskip("lycoris")
    torch.manual_seed(5)
    base = Net()
    tuned = copy.deepcopy(base)
    with torch.no_grad():
        tuned.fc.weight += torch.kron(torch.randn(4, 4), torch.randn(8, 1) @ torch.randn(1, 6))
        tuned.blk[0].weight += torch.kron(torch.randn(6, 8), torch.randn(8, 1) @ torch.randn(1, 8))
    ex = ad.extract(base, tuned, rank=1)
    assert all(f.relative_error < 1e-5 for f in ex.report)
    ad.save_peft(tmp_path / "peft", ex.adapters)
    ad.save_lycoris(tmp_path / "l.safetensors", ex.adapters)
    pm = peft.PeftModel.from_pretrained(
        copy.deepcopy(base), str(tmp_path / "peft")
    ).merge_and_unload()
    net, _ = lycoris.create_lycoris_from_weights(
        1.0, str(tmp_path / "l.safetensors"), copy.deepcopy(base)
    )
    for name in ("fc", "blk.0"):
        want = tuned.get_submodule(name).weight.detach().double().numpy()
        got = pm.get_submodule(name).weight.detach().double().numpy()
        assert _rel(got, want) <= 1e-5
        lo = next(m for m in net.loras if m.lora_name == ad.lycoris_name(name))
        base_w = base.get_submodule(name).weight.detach().double().numpy()
        assert _rel(base_w + _lycoris_delta(lo), want) <= 1e-5


# ---------------------------------------------------------------- never forming ΔW


def _peak_bytes(fn) -> int:
    import tracemalloc  # numpy reports its buffers to tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_lokr_to_lora_never_allocates_the_dense_update() -> None:
    rng = np.random.default_rng(13)
    lokr = ad.LoKr(rng.normal(size=(64, 64)), w2=rng.normal(size=(64, 64)))
    dense_bytes = 4096 * 4096 * 8
    assert _peak_bytes(lambda: ad.lokr_to_lora(lokr, 64)) < dense_bytes // 16


def test_implicit_lora_to_lokr_never_allocates_the_dense_update() -> None:
    rng = np.random.default_rng(14)
    lora = ad.LoRA(rng.normal(size=(1024, 4)), rng.normal(size=(4, 1024)))
    dense_bytes = 1024 * 1024 * 8
    assert _peak_bytes(lambda: ad.lora_to_lokr(lora, method="implicit")) < dense_bytes // 4
