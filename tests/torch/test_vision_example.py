"""Smoke test of examples/compress_vision.py on a tiny configuration (skimage's bundled images).

A 4-conv, 12-channel denoiser is trained for a few seconds; it must beat the noisy input
on the held-out crops. Its two inner convs are compressed at ratio 4 by the library's
SVD and GKPD (plain and calibrated) and by Tucker-2 (plain and refined on the Gram): every
layer must stay within ``kernel size / 4`` parameters, the library's data-error
certificate must match an independent measurement, and each data-aware fit must reach a
lower error on the calibration inputs than the plain fit of the same family (what the
data-aware objective minimises). Skipped when torch, tensorly or scikit-image is missing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tensorly")
pytest.importorskip("skimage")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "compress_vision.py"
RATIO = 4.0


def _load_example():
    spec = importlib.util.spec_from_file_location("compress_vision", EXAMPLE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def trained():
    ex = _load_example()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    sampler = ex.PatchSampler([ex.load_gray(n) for n in ex.TRAIN_IMAGES[:4]], 24, 0)
    clean, noisy = ex.test_set(ex.HELD_OUT_IMAGES[:2], 64, 1)
    model = ex.DnCNN(channels=12, depth=4)
    ex.train(model, sampler, steps=60, batch=16, lr=2e-3, progress=False)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    calibration = [sampler.pair(16)[0] for _ in range(2)]
    names = ex.inner_convs(model)
    grams = ex.layer_grams(model, names, calibration)
    return ex, model, sampler, clean, noisy, calibration, grams


def test_split_is_whole_images_and_disjoint():
    ex = _load_example()
    assert not set(ex.TRAIN_IMAGES) & set(ex.HELD_OUT_IMAGES)
    img = ex.load_gray(ex.HELD_OUT_IMAGES[0])
    assert img.ndim == 2 and img.dtype == np.float32 and 0.0 <= img.min() <= img.max() <= 1.0
    a, b = ex.test_set(ex.HELD_OUT_IMAGES[:1], 32, 5), ex.test_set(ex.HELD_OUT_IMAGES[:1], 32, 5)
    assert torch.equal(a[1], b[1])  # the held-out noise is a fixed, seeded draw
    noise = (a[1] - a[0]).std().item()
    assert abs(noise - ex.SIGMA) < 0.2 * ex.SIGMA


def test_trained_model_beats_noisy_input(trained):
    ex, model, _, clean, noisy, _, _ = trained
    noisy_psnr = float(ex.psnr(noisy, clean).mean())
    assert ex.evaluate(model, clean, noisy) > noisy_psnr + 1.0


@pytest.mark.parametrize("family", ["svd", "gkpd", "tucker"])
def test_budget_and_data_aware_error(trained, family):
    ex, model, _, _, _, calibration, grams = trained
    out = {}
    for method in (family, f"{family}-data"):
        small, rows = ex.compress_model(
            model,
            method,
            RATIO,
            grams,
            calibration,
            ridge=1e-3,
            max_candidates=2,
            lbfgs_iters=30,
            seed=0,
        )
        assert len(rows) == 2
        for r in rows:
            assert r["kernel_params"] <= r["dense_kernel_params"] / RATIO
            layer = small.get_submodule(r["name"])
            assert not isinstance(layer, torch.nn.Conv2d)  # every inner conv was replaced
            if method in ("svd-data", "gkpd-data"):
                # the library's certificate is the measured error on the calibration inputs
                assert r["library_data_error"] <= r["library_plain_data_error"] + 1e-9
                assert r["data_error"] == pytest.approx(r["library_data_error"], rel=1e-3, abs=1e-5)
        out[method] = [r["data_error"] for r in rows]
    for plain, aware in zip(out[family], out[f"{family}-data"], strict=True):
        assert aware < plain


def test_recovery_lowers_the_distillation_loss(trained):
    ex, model, sampler, _, _, calibration, grams = trained
    small, _ = ex.compress_model(
        model, "svd", RATIO, grams, calibration, ridge=1e-3, max_candidates=1, lbfgs_iters=0, seed=0
    )
    for p in small.parameters():
        p.requires_grad_(True)
    batches = [sampler.pair(8)[0] for _ in range(8)]

    def loss() -> float:
        with torch.no_grad():
            return sum(torch.nn.functional.mse_loss(small(x), model(x)).item() for x in batches)

    before = loss()
    losses = ex.distill_student(small, model, batches * 3, lr=1e-3)
    assert len(losses) == 24
    assert loss() < before
