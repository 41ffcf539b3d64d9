"""A walk over the public API with bad arguments: one table, one check per (function, argument).

For every public function of ``sekron``, ``sekron.formats``, ``sekron.fixed``,
``sekron.ops`` and ``sekron.torch`` (constructors and classmethods included), each row
gives a valid call and, per argument, values that must be refused. A refusal must be a
:class:`sekron.errors.SekronError` that is also a ``TypeError`` or ``ValueError`` (or,
for :class:`~sekron.errors.OverflowRiskError`, an ``OverflowError``: DESIGN.md 5), its
message must name the argument, and no array or tensor the call was given may change.
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import sekron as sk
import sekron.fixed as fx
import sekron.formats as fm
import sekron.ops as ops
from sekron.errors import OverflowRiskError, SekronError

NAN = float("nan")
INF = float("inf")

# -- pools of bad values by the kind of argument ---------------------------------------
ARRAY = ["abc", np.array([[NAN, 1.0], [1.0, 1.0]]), np.array([[1j, 2.0], [3.0, 4.0]])]
COUNT = [2.7, "2", True, 0, -1]  # a positive int
NONNEG = [2.7, "2", True, -1]  # an int >= 0
TOL = ["a", -0.1, 1.5, NAN, INF, True]
METHOD = ["bogus", 3]
SEED = [-1, "x", 1.5]
PAIR = ["a", -1, (1, 2, 3), 1.5, (1, True)]
BITS = [1, 17, 2.5, "8", True]
ROUNDING = ["floor", 1, None]
RATIO = ["4", 0.5, -2, NAN, INF, True]


@dataclass
class Case:
    """A valid call (``good()`` builds fresh keyword arguments) and bad values per argument."""

    name: str
    func: Callable[..., Any]
    good: Callable[[], dict[str, Any]]
    bad: dict[str, list[Any]]
    names: dict[str, str] = field(default_factory=dict)  # what the message must name


_DIR = tempfile.mkdtemp(prefix="sekron-bad-inputs-")


def _saved() -> str:
    path = os.path.join(_DIR, "t.npz")
    _t22().save(path)
    return path


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _t22() -> sk.SeKronTensor:
    return sk.SeKronTensor([np.ones((2, 2, 2)), np.arange(8.0).reshape(2, 2, 2)])


def _conv_kernel() -> sk.SeKronTensor:
    rng = _rng()
    return sk.SeKronTensor([rng.normal(size=(1, 2, 1, 3, 1)), rng.normal(size=(1, 2, 2, 1, 3))])


def _fixed(shape: tuple[int, ...], bits: int = 8) -> fx.FixedTensor:
    x = np.arange(float(np.prod(shape))).reshape(shape) % 5 - 2
    return fx.to_fixed(x, bits, rounding="nearest")


CORE = [
    Case(
        "kron",
        lambda factors: sk.kron(*factors),
        lambda: {"factors": [np.ones((2, 2)), np.eye(2)]},
        {"factors": [[np.ones((2, 2)), "abc"], [np.array([[NAN]]), np.eye(2)], [np.eye(2) * 1j]]},
    ),
    Case(
        "rearrange",
        sk.rearrange,
        lambda: {"W": np.arange(16.0).reshape(4, 4), "shapes": [(2, 2), (2, 2)]},
        {"W": ARRAY, "shapes": [[(2, 2)], "ab", [(2, 3), (2, 2)], [(0, 2), (2, 2)], 3]},
    ),
    Case(
        "unrearrange",
        sk.unrearrange,
        lambda: {"T": np.arange(16.0).reshape(4, 4), "shapes": [(2, 2), (2, 2)]},
        {"T": ARRAY, "shapes": [[(2, 2)], "ab", [(2, 3), (2, 2)], 3]},
    ),
    Case(
        "Structure",
        sk.Structure,
        lambda: {"shapes": [(2, 2), (2, 2)], "ranks": 1},
        {"shapes": [[(2, 2)], "ab", [(2, 0), (2, 2)], [(2,), (2, 2)]], "ranks": [0, 2.5, "a", -1]},
    ),
    Case(
        "structures",
        sk.structures,
        lambda: {"shape": (8, 8), "n_factors": 2},
        {
            "shape": [(0, 2), "ab", (2.5,), ()],
            "n_factors": [1, 2.5, "2", True],
            "max_params": COUNT,
            "min_compression": ["a", -1, 0, NAN],
            "min_factor_size": COUNT,
            "max_results": COUNT,
            "max_candidates": COUNT,
            "ranks": ["most", 0, 2.5],
        },
    ),
    Case(
        "nkp",
        sk.nkp,
        lambda: {"W": _rng().normal(size=(4, 6)), "shape_a": (2, 3), "rank": 1},
        {
            "W": [*ARRAY, np.ones(()), np.empty((0, 2))],
            "shape_a": [(3, 3), (2,), "ab", (0, 2), 2.5],
            "shape_b": [(3, 3), (2, 3)],
            "rank": [0, 2.5, "1", 99, True],
            "tol": TOL,
            "method": METHOD,
            "random_state": SEED,
            "ridge": ["a", -1.0, NAN],
            "sweeps": NONNEG,
            "gram": ["abc", np.ones((2, 2)), np.full((6, 6), NAN)],
        },
    ),
    Case(
        "sekron",
        sk.sekron,
        lambda: {"W": _rng().normal(size=(8, 8)), "shapes_or_structure": [(2, 2), (2, 2), (2, 2)]},
        {
            "W": ["abc", np.full((8, 8), NAN), np.full((8, 8), 1j), np.ones(())],
            "shapes_or_structure": [[(2, 2)], [(3, 3), (2, 2), (2, 2)], "ab", 3],
            "ranks": [0, (1,), (1, 2, 3), 2.5, "a"],
            "tol": TOL,
            "refine": NONNEG,
            "method": METHOD,
            "random_state": SEED,
        },
    ),
    Case(
        "SeKronTensor",
        sk.SeKronTensor,
        lambda: {"factors": [np.ones((2, 2, 2)), np.ones((2, 2, 2))]},
        {
            "factors": [
                [np.ones((2, 2, 2))],
                "ab",
                [np.ones((2, 2, 2)), np.ones((3, 2, 2))],
                [np.ones((2, 2, 2)), np.full((2, 2, 2), NAN)],
                [np.ones((2, 2, 2)), np.full((2, 2, 2), 1j)],
            ],
            "error_bound": ["a", -1.0, NAN, INF],
            "reference_norm": ["a", -1.0, INF],
            "data_error_bound": [-1.0, INF],
            "data_reference_norm": [-1.0, INF],
        },
    ),
    Case(
        "SeKronTensor.transpose",
        lambda t, axes: t.transpose(axes),
        lambda: {"t": _t22(), "axes": (1, 0)},
        {"axes": [(0, 0), "ab", (0, 1, 2), (0, 2)]},
    ),
    Case(
        "SeKronTensor.astype",
        lambda t, dtype: t.astype(dtype),
        lambda: {"t": _t22(), "dtype": np.float32},
        {"dtype": [np.complex128, "U4", object]},
    ),
    Case(
        "SeKronTensor.save",
        lambda t, path: t.save(path),
        lambda: {"t": _t22(), "path": os.path.join(_DIR, "saved.npz")},
        {"path": [3, None, 1.5, "/nonexistent-dir/x.npz"]},
    ),
    Case(
        "load",
        sk.load,
        lambda: {"path": _saved()},
        {"path": [3, None, 1.5]},
    ),
    Case(
        "matmul",
        sk.matmul,
        lambda: {"op": _t22(), "X": np.ones((4, 3))},
        {"op": ["abc", 3], "X": [*ARRAY, np.ones((5, 3)), np.ones((2, 2, 4, 1))]},
    ),
    Case(
        "conv2d",
        sk.conv2d,
        lambda: {"x": np.ones((1, 2, 6, 6)), "kernel": _conv_kernel()},
        {
            "x": [*ARRAY, np.ones((1, 3, 6, 6)), np.ones((6, 6))],
            "kernel": ["abc", 3, np.ones((2, 2))],
            "stride": [*PAIR, 0],
            "padding": PAIR,
            "dilation": [*PAIR, 0],
            "bias": ["abc", np.ones(3), np.full(4, NAN)],
        },
    ),
]

FORMATS = [
    Case(
        "formats.cp_structure",
        fm.cp_structure,
        lambda: {"shape": (4, 4), "rank": 2},
        {"shape": [(0, 2), "ab"], "rank": [0, 2.5, "2", 99]},
    ),
    Case(
        "formats.tt_structure",
        fm.tt_structure,
        lambda: {"shape": (4, 4, 4), "ranks": 2},
        {"shape": [(0, 2), "ab"], "ranks": [0, 2.5, "2", (1, 2, 3, 4)]},
    ),
    Case(
        "formats.tr_structure",
        fm.tr_structure,
        lambda: {"shape": (4, 4, 4), "ranks": 2},
        {"shape": [(0, 2), "ab"], "ranks": [0, 2.5, "2"]},
    ),
    Case(
        "formats.tucker_structure",
        fm.tucker_structure,
        lambda: {"shape": (4, 4, 4), "ranks": 2},
        {"shape": [(0, 2), "ab"], "ranks": [0, 2.5, "2", (2, 2, 2, 2)]},
    ),
    Case(
        "formats.from_cp",
        fm.from_cp,
        lambda: {"cp": (np.ones(2), [np.ones((3, 2)), np.ones((4, 2))])},
        {"cp": ["abc", 3, (np.ones(2), [np.ones((3, 3)), np.ones((4, 2))]), (np.ones(2),)]},
    ),
    Case(
        "formats.from_tt",
        fm.from_tt,
        lambda: {"tt": [np.ones((1, 3, 2)), np.ones((2, 4, 1))]},
        {"tt": ["abc", 3, [np.ones((1, 3, 2)), np.ones((3, 4, 1))], [np.full((1, 3, 1), NAN)]]},
    ),
    Case(
        "formats.from_tr",
        fm.from_tr,
        lambda: {"tr": [np.ones((2, 3, 2)), np.ones((2, 4, 2))]},
        {"tr": ["abc", 3, [np.ones((2, 3, 2)), np.ones((3, 4, 2))]]},
    ),
    Case(
        "formats.from_tt_matrix",
        fm.from_tt_matrix,
        lambda: {"tt_matrix": [np.ones((1, 2, 2, 2)), np.ones((2, 2, 2, 1))]},
        {"tt_matrix": ["abc", 3, [np.ones((1, 2, 2, 2)), np.ones((3, 2, 2, 1))]]},
    ),
    Case(
        "formats.from_tucker",
        fm.from_tucker,
        lambda: {"tucker": (np.ones((2, 2)), [np.ones((3, 2)), np.ones((4, 2))])},
        {"tucker": ["abc", 3, (np.ones((2, 2)), [np.ones((3, 3)), np.ones((4, 2))])]},
    ),
    Case(
        "formats.to_cp",
        fm.to_cp,
        lambda: {"t": _t22(), "rank": 2},
        {
            "t": ["abc", np.ones((4, 4))],
            "rank": [0, 2.5, "2"],
            "n_iter_max": COUNT,
            "tol": ["a", -1.0, NAN],
        },
    ),
    Case(
        "formats.to_tt",
        fm.to_tt,
        lambda: {"t": _t22()},
        {"t": ["abc", np.ones((4, 4))], "layout": ["bogus", 3]},
    ),
    Case(
        "formats.to_tr",
        fm.to_tr,
        lambda: {"t": _t22()},
        {"t": ["abc", np.ones((4, 4))], "layout": ["bogus", 3]},
    ),
    Case("formats.to_tt_matrix", fm.to_tt_matrix, lambda: {"t": _t22()}, {"t": ["abc", 3]}),
    Case(
        "formats.to_tucker",
        fm.to_tucker,
        lambda: {"t": _t22()},
        {"t": ["abc", np.ones((4, 4))], "ranks": [0, 2.5, "2", (1, 2, 3)]},
    ),
]

FIXED = [
    Case(
        "fixed.FixedTensor",
        fx.FixedTensor,
        lambda: {"mantissa": np.array([3, -5], dtype=np.int8), "exponent": -2, "bits": 4},
        {
            "mantissa": [np.array([1.5]), "abc", np.array([100], dtype=np.int8)],
            "exponent": [1.5, "a", 10**9],
            "bits": [1, 2.5, "8", True, 99],
        },
    ),
    Case(
        "fixed.to_fixed",
        fx.to_fixed,
        lambda: {"x": np.arange(6.0).reshape(2, 3), "bits": 8},
        {
            "x": ARRAY,
            "bits": BITS,
            "rounding": ROUNDING,
            "seed": SEED,
            "axis": [5, 1.5, "a"],
            "stream": [-1, 1.5, "a"],
        },
    ),
    Case(
        "fixed.requantize",
        fx.requantize,
        lambda: {"t": _fixed((2, 3)), "bits": 6},
        {"t": ["abc", np.ones(3)], "bits": BITS, "rounding": ROUNDING, "seed": SEED},
    ),
    Case(
        "fixed.split_seed",
        fx.split_seed,
        lambda: {"seed": 3, "n": 2},
        {"seed": SEED, "n": [-1, 1.5, "2"]},
    ),
    Case(
        "fixed.plan_gemm",
        fx.plan_gemm,
        lambda: {"k": 16, "bits_a": 8},
        {
            "k": NONNEG,
            "bits_a": BITS,
            "bits_b": BITS,
            "method": METHOD,
            "acc_dtype": ["int8", 3, "float32"],
        },
    ),
    Case(
        "fixed.matmul",
        fx.matmul,
        lambda: {"a": _fixed((2, 3)), "b": _fixed((3, 4))},
        {
            "a": ["abc", np.ones((2, 3)), _fixed((2, 5))],
            "b": ["abc", np.ones((3, 4))],
            "out_bits": BITS,
            "method": METHOD,
            "rounding": ROUNDING,
            "seed": SEED,
        },
    ),
    Case(
        "fixed.linear",
        fx.linear,
        lambda: {"x": _fixed((2, 3)), "weight": _fixed((4, 3))},
        {
            "x": ["abc", np.ones((2, 3))],
            "weight": ["abc", np.ones((4, 3)), _fixed((4, 5))],
            "bias": ["abc", _fixed((7,))],
            "out_bits": BITS,
            "rounding": ROUNDING,
        },
    ),
    Case(
        "fixed.conv2d",
        fx.conv2d,
        lambda: {"x": _fixed((1, 2, 5, 5)), "weight": _fixed((3, 2, 2, 2))},
        {
            "x": ["abc", np.ones((1, 2, 5, 5)), _fixed((1, 3, 5, 5))],
            "weight": ["abc", np.ones((3, 2, 2, 2))],
            "stride": [*PAIR, 0],
            "padding": PAIR,
            "dilation": [*PAIR, 0],
            "out_bits": BITS,
            "groups": [0, 1.5, "1", 3],
        },
    ),
    Case(
        "fixed.add",
        fx.add,
        lambda: {"a": _fixed((2, 3)), "b": _fixed((2, 3))},
        {"a": ["abc", np.ones((2, 3))], "b": ["abc", _fixed((4, 4))], "out_bits": BITS},
    ),
    Case(
        "fixed.mul",
        fx.mul,
        lambda: {"a": _fixed((2, 3)), "b": _fixed((2, 3))},
        {"a": ["abc", np.ones((2, 3))], "b": ["abc", _fixed((4, 4))], "out_bits": BITS},
    ),
    Case(
        "fixed.layer_norm",
        fx.layer_norm,
        lambda: {"x": np.ones((2, 4)), "gamma": np.ones(4), "beta": np.zeros(4)},
        {
            "x": ARRAY,
            "gamma": ["abc", np.ones(3), np.full(4, NAN)],
            "beta": ["abc", np.ones(3)],
            "bits": BITS,
            "eps": ["a", -1.0, 0.0, NAN],
            "rounding": ROUNDING,
        },
    ),
    Case(
        "fixed.embedding",
        fx.embedding,
        lambda: {"table": _fixed((3, 2)), "ids": np.array([0, 2])},
        {"table": ["abc", np.ones((3, 2))], "ids": [np.array([3]), np.array([-1]), "a", [0.5]]},
    ),
    Case(
        "fixed.embedding_backward",
        fx.embedding_backward,
        lambda: {"grad_out": np.ones((2, 2)), "ids": np.array([0, 1]), "num_embeddings": 3},
        {
            "grad_out": [*ARRAY, np.ones((3, 2))],
            "ids": [np.array([5, 0]), "a"],
            "num_embeddings": COUNT,
            "bits": BITS,
        },
    ),
    Case(
        "fixed.sgd_step",
        fx.sgd_step,
        lambda: {"weight": np.ones(2, np.float32), "grad": np.ones(2), "lr": 0.5},
        {
            "weight": ARRAY,
            "grad": [*ARRAY, np.ones(3)],
            "lr": ["a", -1.0, 0.0, NAN],
            "momentum": ["a", -0.5, 1.0, NAN],
            "weight_decay": ["a", -1.0, NAN],
            "bits": BITS,
            "mode": ["bogus", 3],
            "rounding": ROUNDING,
            "state": ["abc", 3],
        },
    ),
    Case("fixed.mantissa_dtype", fx.mantissa_dtype, lambda: {"bits": 8}, {"bits": [0, 2.5, "8"]}),
    Case(
        "fixed.align_to",
        fx.align_to,
        lambda: {"t": _fixed((2,)), "exponent": 0, "rounding": "nearest", "seed": 0},
        {"t": ["abc", np.ones(2)], "exponent": [1.5, "a"], "rounding": ROUNDING, "seed": SEED},
    ),
    Case(
        "fixed.accumulator_bound",
        fx.accumulator_bound,
        lambda: {"k": 4, "bits_a": 8},
        {"k": NONNEG, "bits_a": BITS, "bits_b": BITS},
    ),
]

OPS = [
    Case(
        "ops.conv2d_plan",
        ops.conv2d_plan,
        lambda: {"structure": _conv_kernel().structure, "in_hw": (6, 6)},
        {
            "structure": ["abc", 3],
            "in_hw": [(0, 6), "ab", (6,), 6.5],
            "stride": [*PAIR, 0],
            "padding": PAIR,
            "dilation": [*PAIR, 0],
        },
    ),
    Case(
        "ops.matmul",
        ops.matmul,
        lambda: {"op": _t22(), "X": np.ones((4, 3))},
        {"op": ["abc", 3], "X": [*ARRAY, np.ones((5, 3))]},
    ),
    Case(
        "ops.rmatmul",
        ops.rmatmul,
        lambda: {"X": np.ones((3, 4)), "op": _t22()},
        {"op": ["abc", 3], "X": [*ARRAY, np.ones((3, 5))]},
    ),
    Case(
        "ops.conv2d",
        ops.conv2d,
        lambda: {"x": np.ones((1, 2, 6, 6)), "kernel": _conv_kernel()},
        {"x": [*ARRAY, np.ones((1, 3, 6, 6))], "stride": PAIR, "padding": PAIR},
    ),
]


def _torch_cases() -> list[Case]:
    try:
        import torch
        from torch import nn
    except ImportError:  # pragma: no cover - torch is a test dependency
        return []
    import sekron.torch as skt

    def lin() -> nn.Module:
        torch.manual_seed(0)
        return nn.Linear(16, 16)

    def model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))

    def checkpoint() -> str:
        path = os.path.join(_DIR, "m.pt")
        torch.save(nn.Linear(2, 2).state_dict(), path)
        return path

    st = sk.Structure([(4, 4), (4, 4)], 1)
    conv_st = sk.Structure([(2, 2, 1, 3), (2, 2, 3, 1)], 1)
    return [
        Case(
            "torch.compress",
            lambda **kw: skt.compress(progress=False, **kw),
            lambda: {"model": model(), "ratio": 2},
            {
                "model": ["abc", 3],
                "ratio": RATIO,
                "tol": TOL,
                "budget": ["bogus", 3],
                "methods": ["bogus", 3],
                "n_factors": [1, 2.5, "2"],
                "include": [3, ["nothing-matches-this"]],
                "max_candidates": COUNT,
                "ridge": ["a", -1.0, NAN],
                "max_batches": COUNT,
                "random_state": SEED,
            },
        ),
        Case(
            "torch.SeKronLinear",
            skt.SeKronLinear,
            lambda: {"structure": st},
            {"structure": ["abc", 3, sk.Structure([(2, 2, 2), (2, 2, 2)], 1)], "path": ["x", 3]},
        ),
        Case(
            "torch.SeKronLinear.from_linear",
            skt.SeKronLinear.from_linear,
            lambda: {"layer": lin(), "ratio": 2},
            {
                "layer": ["abc", nn.Conv2d(2, 2, 1)],
                "ratio": RATIO,
                "tol": TOL,
                "n_factors": [1, 2.5, "2"],
                "structure": ["abc", sk.Structure([(2, 2), (2, 2)], 1)],
                "max_candidates": COUNT,
                "random_state": SEED,
            },
        ),
        Case(
            "torch.SeKronConv2d",
            skt.SeKronConv2d,
            lambda: {"structure": conv_st},
            {
                "structure": ["abc", 3, st],
                "stride": [*PAIR, 0],
                "padding": ["a", -1, (1, 2, 3), 1.5, "bogus"],
                "dilation": [*PAIR, 0],
            },
        ),
        Case(
            "torch.SeKronConv2d.from_conv",
            skt.SeKronConv2d.from_conv,
            lambda: {"layer": nn.Conv2d(4, 4, 3), "ratio": 2},
            {
                "layer": ["abc", lin(), nn.Conv2d(4, 4, 3, groups=2)],
                "ratio": RATIO,
                "tol": TOL,
                "in_hw": [(0, 5), "ab", 1.5],
            },
        ),
        Case(
            "torch.KroneckerEmbedding.from_embedding",
            skt.KroneckerEmbedding.from_embedding,
            lambda: {"layer": nn.Embedding(16, 16), "ratio": 2},
            {"layer": ["abc", lin()], "ratio": RATIO, "tol": TOL},
        ),
        Case(
            "torch.IntLinear.from_linear",
            skt.IntLinear.from_linear,
            lambda: {"layer": lin()},
            {"layer": ["abc", nn.Conv2d(2, 2, 1)], "bits": BITS},
        ),
        Case(
            "torch.integerize",
            skt.integerize,
            lambda: {"model": model()},
            {
                "model": ["abc", 3],
                "bits": BITS,
                "rounding": ROUNDING,
                "seed": SEED,
                "norm_bits": BITS,
            },
        ),
        Case(
            "torch.linear_macs",
            skt.linear_macs,
            lambda: {"structure": st},
            {"structure": ["abc", 3]},
        ),
        Case(
            "torch.logit_loss",
            skt.logit_loss,
            lambda: {"student_logits": torch.zeros(2, 3), "teacher_logits": torch.zeros(2, 3)},
            {
                "temperature": ["a", 0.0, -1.0, NAN],
                "student_logits": [torch.zeros(2, 4), "abc"],
            },
        ),
        Case(
            "torch.hidden_loss",
            skt.hidden_loss,
            lambda: {"student": torch.zeros(2, 3), "teacher": torch.zeros(2, 3)},
            {"student": [torch.zeros(2, 4), "abc"]},
        ),
        Case(
            "torch.distill",
            skt.distill,
            lambda: {"student": model(), "teacher": model(), "data": [torch.zeros(2, 16)]},
            {
                "student": ["abc", 3],
                "teacher": ["abc"],
                "epochs": COUNT,
                "lr": ["a", -1.0, 0.0, NAN],
                "temperature": ["a", 0.0, -1.0],
                "max_steps": COUNT,
                "batch_size": COUNT,
                "random_state": SEED,
                "hidden": [3, ["no.such.module"]],
            },
        ),
        Case(
            "torch.read_state_dict",
            skt.read_state_dict,
            lambda: {"path": checkpoint()},
            {"path": [3, None, 1.5]},
        ),
    ]


CASES = CORE + FORMATS + FIXED + OPS + _torch_cases()


def _params() -> list[Any]:
    out = []
    for case in CASES:
        for arg, values in case.bad.items():
            for i, value in enumerate(values):
                out.append(pytest.param(case, arg, value, id=f"{case.name}-{arg}-{i}"))
    return out


def _snapshot(obj: Any) -> list[tuple[Any, Any]]:
    """Every array or tensor reachable in ``obj`` with a private copy of it."""
    found: list[tuple[Any, Any]] = []

    def walk(x: Any) -> None:
        if isinstance(x, np.ndarray):
            found.append((x, x.copy()))
        elif type(x).__module__.startswith("torch") and hasattr(x, "detach"):
            found.append((x, x.detach().clone()))
        elif hasattr(x, "state_dict") and callable(x.state_dict):  # a torch module
            for v in x.state_dict().values():
                walk(v)
        elif isinstance(x, fx.FixedTensor):
            walk(x.mantissa)
        elif isinstance(x, sk.SeKronTensor):
            for f in x.factors:
                walk(f)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)

    walk(obj)
    return found


def _unchanged(before: list[tuple[Any, Any]]) -> bool:
    for live, saved in before:
        if isinstance(live, np.ndarray):
            if not np.array_equal(live, saved, equal_nan=live.dtype.kind in "fc"):
                return False
        else:
            import torch

            a, b = live.detach(), saved
            if a.shape != b.shape or not torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)):
                return False
    return True


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_valid_call_of_each_row_succeeds(case):
    # a row whose good call already fails would make its bad values prove nothing
    case.func(**case.good())


@pytest.mark.parametrize(("case", "arg", "value"), _params())
def test_a_bad_argument_is_refused_by_name_and_changes_nothing(case, arg, value):
    kwargs = case.good()
    kwargs[arg] = value
    before = _snapshot([kwargs, value])
    with pytest.raises(SekronError) as info:
        case.func(**copy.copy(kwargs))
    exc = info.value
    assert isinstance(exc, (TypeError, ValueError, OverflowRiskError)), type(exc).__name__
    named = case.names.get(arg, arg)
    assert named in str(exc), f"the message does not name {named!r}: {exc}"
    assert _unchanged(before), "the call modified an input"
