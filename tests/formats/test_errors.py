"""Malformed format input raises FormatError naming the core or factor and the shapes."""

from __future__ import annotations

import numpy as np
import pytest
import tensorly as tl

from sekron.errors import FormatError, NonFiniteError, RankError, ShapeError
from sekron.formats import (
    cp_structure,
    from_cp,
    from_tr,
    from_tt,
    from_tt_matrix,
    from_tucker,
    to_cp,
    to_tt,
    to_tt_matrix,
    to_tucker,
    tr_structure,
    tt_structure,
    tucker_structure,
)

o = np.ones


@pytest.mark.parametrize(
    "conv,x,needles",
    [
        (from_tt, [o((1, 2, 3)), o((2, 2, 1))], ["core 0", "(1, 2, 3)", "core 1", "(2, 2, 1)"]),
        (from_tt, [o((1, 2, 3)), o((3, 2))], ["core 1", "(3, 2)", "3-d"]),
        (from_tt, [o((2, 2, 3)), o((3, 2, 1))], ["core 0", "(2, 2, 3)", "boundary"]),
        (from_tt, [o((1, 2, 3)), o((3, 2, 2))], ["core 1", "(3, 2, 2)", "boundary"]),
        (from_tt, o((1, 2, 1)), ["sequence"]),
        (from_tt, [], ["empty"]),
        (
            from_tr,
            [o((2, 2, 3)), o((3, 2, 1))],
            ["core 0", "(2, 2, 3)", "core 1", "(3, 2, 1)", "r_0"],
        ),
        (from_tr, [o((2, 2, 2))], ["at least 2", "(2, 2, 2)"]),
        (from_tr, [o((2, 2, 3)), o((2, 2, 2))], ["core 0", "core 1", "(2, 2, 2)"]),
        (from_cp, (o(3), [o((2, 2)), o((3, 2))]), ["weights", "(3,)", "(2,)"]),
        (from_cp, (o(2), [o((2, 2)), o((3, 3))]), ["factor 1", "(3, 3)", "factor 0", "(2, 2)"]),
        (from_cp, (o(2), [o((2, 2, 1))]), ["factor 0", "(2, 2, 1)"]),
        (from_cp, o(3), ["pair"]),
        (from_tucker, (o((2, 3)), [o((4, 2)), o((5, 2))]), ["factor 1", "(5, 2)", "(2, 3)"]),
        (from_tucker, (o((2, 3)), [o((4, 2))]), ["(2, 3)", "1 factors"]),
        (from_tucker, (o((2, 3)), [o((4, 2)), o(5)]), ["factor 1", "(5,)"]),
        (from_tt_matrix, [o((1, 2, 2, 1)), o((1, 2, 1))], ["core 1", "(1, 2, 1)", "4-d"]),
        (from_tt_matrix, [o((1, 2, 2, 2)), o((3, 2, 2, 1))], ["core 0", "core 1", "(3, 2, 2, 1)"]),
        (from_tt_matrix, [o((2, 2, 2, 1))], ["boundary", "(2, 2, 2, 1)"]),
    ],
)
def test_malformed_input_raises_format_error(conv, x, needles):
    with pytest.raises(FormatError) as info:
        conv(x)
    assert isinstance(info.value, ValueError)
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_non_finite_and_non_numeric_input():
    with pytest.raises(NonFiniteError, match=r"tt\[1\]"):
        from_tt([o((1, 2, 1)), np.full((1, 2, 1), np.inf)])
    with pytest.raises(NonFiniteError, match="weights"):
        from_cp((np.array([np.nan]), [o((2, 1)), o((2, 1))]))
    with pytest.raises(TypeError):
        from_tt([np.array([[["a"]]])])


def test_to_functions_reject_non_sekron_and_bad_options():
    with pytest.raises(TypeError):
        to_tt(o((2, 2)))
    with pytest.raises(TypeError):
        to_cp(o((2, 2)), 1)
    with pytest.raises(TypeError):
        to_tucker(o((2, 2)))
    with pytest.raises(TypeError):
        to_tt_matrix(o((2, 2)))
    t = from_tt(tl.random.random_tt((2, 3, 2), rank=2, random_state=0))
    with pytest.raises(ValueError, match="layout"):
        to_tt(t, layout="zigzag")
    with pytest.raises(ShapeError, match="2-D"):
        to_tt_matrix(t)
    with pytest.raises(ValueError):
        to_cp(t, 0)
    with pytest.raises(RankError, match=r"ranks\[0\]"):
        to_tucker(t, (3, 2, 2))


def test_structure_helpers_validate():
    with pytest.raises(ShapeError):
        tt_structure((4,), 1)
    with pytest.raises(RankError, match="boundary"):
        tt_structure((4, 4, 4), (2, 2, 2, 1))
    with pytest.raises(RankError):
        tt_structure((4, 4, 4), (2, 2, 2))
    with pytest.raises(RankError):
        tt_structure((4, 4, 4), (5, 2))  # above n_1
    assert tt_structure((4, 4, 4), (5, 2), clip=True).ranks == (4, 2)
    with pytest.raises(RankError, match="r_0 = r_N"):
        tr_structure((4, 4, 4), (2, 2, 2, 3))
    with pytest.raises(RankError):
        tr_structure((4, 4, 4), (2, 3, 2, 2))  # r_0 r_1 = 6 > 4
    with pytest.raises(RankError):
        cp_structure((3, 5), 4)
    with pytest.raises(RankError):
        cp_structure((3, 5), 0)
    with pytest.raises(RankError):
        tucker_structure((3, 5, 2), (1, 2, 3, 4))
