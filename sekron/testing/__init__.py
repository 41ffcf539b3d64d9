"""Testing support for sekron and for libraries built on it.

``sekron.testing.strategies`` holds hypothesis strategies (it imports hypothesis, so it
is never imported by ``import sekron``).
"""

__all__ = ["strategies"]


def __getattr__(name: str):  # pragma: no cover - trivial
    if name == "strategies":
        import importlib

        return importlib.import_module("sekron.testing.strategies")
    raise AttributeError(name)
