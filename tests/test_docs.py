"""The Python examples of the README and the docs pages run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    "README.md",
    "docs/index.md",
    "docs/getting-started.md",
    "docs/formats.md",
    "docs/compute.md",
    "docs/data-aware.md",
    "docs/fixed.md",
    "docs/torch.md",
    "docs/adapters.md",
    "docs/api/testing.md",
]


def _blocks(page: str) -> list[str]:
    text = (ROOT / page).read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if page in ("docs/torch.md", "docs/adapters.md"):
        pytest.importorskip("torch")
    blocks = _blocks(page)
    assert blocks, f"{page} has no python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    for code in blocks:  # blocks of one page share a namespace, as a reader's session does
        exec(compile(code, f"{page}:example", "exec"), namespace)
