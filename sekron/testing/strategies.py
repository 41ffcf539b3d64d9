"""Hypothesis strategies for Kronecker-structured tensors, tensor formats and fixed point.

Use them in your own property tests::

    from hypothesis import given
    from sekron.testing import strategies as sks

    @given(sks.sekron_tensors())
    def test_my_decomposition(t): ...

The strategies are grouped by topic in private modules and re-exported here.
"""

from ._core_strategies import *  # noqa: F403
from ._core_strategies import __all__ as _core_all
from ._format_strategies import *  # noqa: F403
from ._format_strategies import __all__ as _format_all

__all__ = list(_core_all) + list(_format_all)
