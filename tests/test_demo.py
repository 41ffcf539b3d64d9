"""``sekron demo`` end to end with tiny settings (the numbers themselves are in the docs)."""

from __future__ import annotations

import io

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("tensorly")


def test_demo_pipeline_runs_and_reports_consistent_rows(tmp_path):
    from sekron.cli.demo import run_demo

    buf = io.StringIO()
    plot = tmp_path / "demo.png"
    rows = run_demo(
        ratios=(4.0,),
        bits=(8,),
        epochs=3,
        distill_epochs=1,
        int_epochs=1,
        plot=plot,
        out=buf,
        progress=lambda msg: None,
    )
    methods = [r.method for r in rows]
    assert methods[0] == "dense CNN"
    for name in ("SeKron (3 factors)", "GKPD (2 factors)", "Tensor-Train", "Tucker", "CP"):
        assert name in methods
    dense = rows[0]
    for r in rows[1:]:
        if "→" in r.method:
            assert r.notes.split()[0].isdigit()  # number of integer layers
            continue
        # the two large convolutions hold most parameters: 4× on them shrinks the model
        assert r.params < dense.params
        assert 0.0 <= r.accuracy <= 100.0
        assert r.accuracy_distilled is not None
        assert r.latency_ms > 0
    assert plot.exists() and plot.stat().st_size > 0
    text = buf.getvalue()
    assert "distilled %" in text and "GKPD" in text
