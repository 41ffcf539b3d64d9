"""Deployability of the staged layers: torch.compile (no graph breaks), torch.export, ONNX.

Each check runs the layer on its staged path (``path="structured"``) and compares the
compiled or exported program's output with the eager layer's, to a tolerance from the
dtype's epsilon and the reduction length. The compile checks use inductor (a C++
compiler is needed on the CPU) once per layer type; the compressed model is compiled
with the ``eager`` backend, which still refuses graph breaks under ``fullgraph=True``.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import sekron as sk  # noqa: E402
from sekron.torch import SeKronConv2d, SeKronLinear  # noqa: E402

EPS = float(np.finfo(np.float32).eps)


def _conv(path="structured"):
    torch.manual_seed(0)
    s = sk.Structure([(4, 4, 3, 1), (4, 4, 1, 3)], ranks=2)
    return SeKronConv2d(s, padding=1, path=path).eval(), torch.randn(2, 16, 12, 12)


def _linear(path="structured"):
    torch.manual_seed(0)
    return SeKronLinear(sk.Structure([(4, 8), (4, 8)], ranks=2), path=path).eval(), torch.randn(
        3, 64
    )


def _close(got, want, reduction):
    tol = 8 * reduction * EPS * float(want.abs().max())
    torch.testing.assert_close(got, want, atol=tol, rtol=0)


LAYERS = {"conv": (_conv, 16 * 9 * 2), "linear": (_linear, 64 * 2)}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(LAYERS))
def test_compile_fullgraph_inductor(kind):
    make, red = LAYERS[kind]
    layer, x = make()
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)  # fullgraph: a graph break raises
    with torch.no_grad():
        _close(compiled(x), layer(x), red)


def test_compile_counts_one_graph_and_no_break():
    from torch._dynamo.testing import CompileCounter

    layer, x = _conv()
    torch._dynamo.reset()
    counter = CompileCounter()
    fn = torch.compile(layer, fullgraph=True, backend=counter)
    with torch.no_grad():
        _close(fn(x), layer(x), LAYERS["conv"][1])
    assert counter.frame_count == 1
    # the plan was baked in: its steps are convolutions in the graph, not Python calls
    assert counter.op_count > 3


@pytest.mark.parametrize("kind", list(LAYERS))
def test_export_matches(kind):
    make, red = LAYERS[kind]
    layer, x = make()
    ep = torch.export.export(layer, (x,))
    with torch.no_grad():
        _close(ep.module()(x), layer(x), red)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    if kind == "conv":  # the staged path: several small convolutions / matmuls, no densify
        assert sum("conv" in t or "mm" in t or "matmul" in t for t in targets) >= 1


@pytest.mark.slow  # 4-11 s: the dynamo exporter's first run
@pytest.mark.parametrize("kind", list(LAYERS))
def test_onnx_export_runs_under_onnxruntime(kind, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    make, red = LAYERS[kind]
    layer, x = make()
    path = tmp_path / f"{kind}.onnx"
    torch.onnx.export(layer, (x,), str(path), dynamo=True, input_names=["x"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        _close(torch.from_numpy(got), layer(x), red)


def test_auto_layers_decide_at_trace_time(monkeypatch):
    # path="auto": the choice is made when tracing, from the static shapes (here the MAC
    # rule, the table holding nothing for this geometry), and is not part of the graph
    from sekron.ops import CostTable
    from sekron.ops import _dispatch as dispatch_mod

    table = CostTable()
    monkeypatch.setattr(dispatch_mod, "_TABLE", table)
    layer, x = _conv(path="auto")
    torch._dynamo.reset()
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    fn = torch.compile(layer, fullgraph=True, backend=counter)
    with torch.no_grad():
        _close(fn(x), layer.to_dense()(x), LAYERS["conv"][1])
    assert counter.frame_count == 1
    ep = torch.export.export(layer, (x,))
    with torch.no_grad():
        _close(ep.module()(x), layer.to_dense()(x), LAYERS["conv"][1])
    assert not table._entries  # nothing was timed while tracing


def test_compressed_model_compiles_without_graph_breaks():
    from sekron.torch import compress

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 10 * 10, 32),
    ).eval()
    x = torch.randn(2, 8, 10, 10)
    small, _report = compress(model, ratio=2, example_input=x, progress=False)
    assert any(isinstance(m, (SeKronConv2d, SeKronLinear)) for m in small.modules())
    torch._dynamo.reset()
    fn = torch.compile(small, fullgraph=True, backend="eager")
    with torch.no_grad():
        want = small(x)
        _close(fn(x), want, 16 * 10 * 10)
        ep = torch.export.export(small, (x,))
        _close(ep.module()(x), want, 16 * 10 * 10)
