"""The per-layer gap study (examples/kronecker_gap.py) on synthetic layers.

Its numbers are only worth what ``layer_row`` computes: the data-aware Kronecker fit may
never lose to the plain one on the data-weighted error, the whitened SVD it is held
against may not use more parameters, and the reported errors are the true ones.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load():
    sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location("kronecker_gap", EXAMPLES / "kronecker_gap.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _gram(n, rng):
    X = rng.normal(size=(4 * n, n)) * rng.uniform(0.1, 3.0, size=n)  # anisotropic inputs
    return X.T @ X


def test_row_on_a_random_layer():
    ex = _load()
    rng = np.random.default_rng(0)
    W = rng.normal(size=(24, 16))
    C = _gram(16, rng)
    row = ex.layer_row("w", W, C, 4.0, 0)
    assert row["svd_params"] <= row["kronecker_params"]
    assert row["data"] <= row["plain"] + 1e-12
    # the whitened SVD's error against the optimum written here: the top-r left singular
    # vectors of W L (Eckart–Young); the fit uses a small ridge, so it may only be a hair worse
    L = np.linalg.cholesky(C)
    U = np.linalg.svd(W @ L, full_matrices=False)[0][:, : row["svd_rank"]]
    E = (W - U @ U.T @ W) @ L
    best = np.linalg.norm(E) / np.linalg.norm(W @ L)
    assert best - 1e-12 <= row["svd"] <= best * 1.01 + 1e-12
    gap = row["plain"] - row["svd"]
    if gap > 0:
        assert row["closed"] == pytest.approx((row["plain"] - row["data"]) / gap)


def test_exact_kronecker_layer_has_no_error():
    ex = _load()
    rng = np.random.default_rng(1)
    a, b = ex._kron_shapes(24, 16)
    W = sum(np.kron(rng.normal(size=a), rng.normal(size=b)) for _ in range(2))
    row = ex.layer_row("w", W, _gram(16, rng), 2.0, 0)
    assert row["kronecker_params"] >= 2 * (a[0] * a[1] + b[0] * b[1])
    assert row["plain"] < 1e-10 and row["data"] < 1e-10
    assert row["kronecker_wins"] or row["svd"] < 1e-10
