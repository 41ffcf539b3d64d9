"""`import sekron` stays light: no numba, torch, tensorly or hypothesis (DESIGN.md 3)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("numba", "torch", "tensorly", "hypothesis")


def _loaded_after(code: str) -> list[str]:
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "code",
    [
        "import sekron",
        "import sekron as sk; sk.kron, sk.rearrange, sk.nkp, sk.sekron, sk.Structure, sk.load",
        "import sekron.errors, sekron.structure, sekron.tensor, sekron.decompose, sekron.svd",
        "import sekron.testing",
        "import numpy as np, sekron as sk; sk.sekron(np.ones((4, 4)), [(2, 2), (2, 2)], 1)",
    ],
)
def test_core_imports_no_heavy_dependency(code):
    assert _loaded_after(code) == []


def test_strategies_do_import_hypothesis():
    # the control: the probe does see a heavy module when one is imported
    assert "hypothesis" in _loaded_after("import sekron.testing.strategies")
