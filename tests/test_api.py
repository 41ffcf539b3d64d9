"""The public surface is the contract: pin it, and check that it is documented."""

from __future__ import annotations

import inspect

import pytest

import sekron
import sekron.testing.strategies as strategies

PUBLIC = [
    "__version__",
    "errors",
    "kron",
    "rearrange",
    "unrearrange",
    "Structure",
    "structures",
    "nkp",
    "sekron",
    "SeKronTensor",
    "load",
    "matmul",
    "conv2d",
    "formats",
    "fixed",
]

CALLABLES = [n for n in PUBLIC if n not in ("__version__", "errors", "formats", "fixed")]


def test_all_is_pinned():
    assert sekron.__all__ == PUBLIC
    assert isinstance(sekron.__version__, str)


@pytest.mark.parametrize("name", PUBLIC)
def test_every_public_name_resolves(name):
    assert getattr(sekron, name) is not None
    assert name in dir(sekron)


def test_unknown_attribute_raises():
    with pytest.raises(AttributeError):
        sekron.no_such_thing  # noqa: B018


def _sections(doc: str) -> set[str]:
    lines = doc.splitlines()
    return {
        lines[i].strip()
        for i in range(len(lines) - 1)
        if lines[i].strip() and set(lines[i + 1].strip()) == {"-"}
    }


@pytest.mark.parametrize("name", CALLABLES)
def test_public_callables_have_numpydoc_with_examples(name):
    obj = getattr(sekron, name)
    doc = inspect.getdoc(obj)
    assert doc, f"{name} has no docstring"
    sections = _sections(doc)
    assert "Examples" in sections, f"{name}: no Examples section"
    assert ">>> " in doc.split("Examples", 1)[1]
    if inspect.isfunction(obj) and inspect.signature(obj).parameters:
        assert "Parameters" in sections, f"{name}: no Parameters section"
        assert "Returns" in sections, f"{name}: no Returns section"


@pytest.mark.parametrize("name", ["errors", "formats", "fixed"])
def test_public_modules_have_docstrings(name):
    assert inspect.getdoc(getattr(sekron, name))


@pytest.mark.parametrize("name", ["SeKronTensor", "Structure"])
def test_public_methods_are_documented(name):
    cls = getattr(sekron, name)
    for attr, member in vars(cls).items():
        if attr.startswith("_") or not callable(member):
            continue
        assert inspect.getdoc(member), f"{name}.{attr} has no docstring"


CORE_STRATEGIES = [
    "factorable_shapes",
    "shapes",
    "structures",
    "float_dtypes",
    "kronecker_factors",
    "sekron_tensors",
    "random_sekron_factors",
]


def test_core_strategies_are_exported():
    assert set(CORE_STRATEGIES) <= set(strategies.__all__)
    for name in CORE_STRATEGIES:
        doc = inspect.getdoc(getattr(strategies, name))
        assert doc and "Examples" in _sections(doc), name
