"""The ``sekron structures`` command and its helpers."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np

import sekron as sk
from sekron.cli import kernel_matrix, load_tensor, main, pareto_front, rank_structures


def test_structures_on_the_builtin_tensor_lists_a_pareto_front():
    buf = io.StringIO()
    assert main(["structures", "--n-factors", "2", "--ranks", "1", "2"], out=buf) == 0
    text = buf.getvalue()
    assert "16×16 ⊗ 16×16" in text and "rel. error" in text


def test_certified_errors_in_the_table_are_true_errors():
    W = kernel_matrix(8)
    for st, err in rank_structures(W, n_factors=(2, 3), ranks=(1, 2), min_compression=2.0):
        fit = sk.sekron(W, st)
        true = np.linalg.norm(W - fit.to_dense()) / np.linalg.norm(W)
        assert abs(err - true) <= 1e-6
    rows = rank_structures(W, n_factors=(2,), ranks=(1, 2, 4), min_compression=2.0)
    # best first: errors that differ only by rounding (below 1e-9) count as ties
    errors = [round(e, 9) for _, e in rows]
    assert errors == sorted(errors)


def test_pareto_front_keeps_only_undominated_rows():
    W = kernel_matrix(8)
    rows = rank_structures(W, n_factors=(2, 3), ranks=(1, 2, 4), min_compression=2.0)
    front = pareto_front(rows)
    for st, err in front:
        assert not any(
            o.n_params < st.n_params and e <= err for o, e in rows if (o, e) != (st, err)
        )


def test_files_and_errors(tmp_path):
    W = np.random.default_rng(0).normal(size=(16, 16))
    np.save(tmp_path / "w.npy", W)
    np.savez(tmp_path / "w.npz", other=np.ones(3), W=W)
    assert np.array_equal(load_tensor(str(tmp_path / "w.npy"))[0], W)
    assert np.array_equal(load_tensor(str(tmp_path / "w.npz"), key="W")[0], W)
    assert main(["structures", str(tmp_path / "w.npz"), "--key", "nope"], out=io.StringIO()) == 2
    assert main(["structures", str(tmp_path / "missing.npy")], out=io.StringIO()) == 2
    assert (
        main(["structures", str(tmp_path / "w.npy"), "--min-compression", "1e9"], out=io.StringIO())
        == 1
    )


def test_python_dash_m_runs():
    res = subprocess.run(
        [sys.executable, "-m", "sekron", "structures", "--builtin", "digits-mlp", "--top", "3"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "digits" in res.stdout


def test_sub_commands_come_from_one_list():
    import argparse

    from sekron import cli

    names = []
    for command in cli.COMMANDS:
        sub = argparse.ArgumentParser().add_subparsers()
        names.append(command.add_parser(sub).prog.split()[-1])
        assert callable(command.run)
    assert names == ["structures", "compress", "demo", "adapter"]
    parser = cli.build_parser()
    assert parser.parse_args(["demo", "--seed", "3"]).func is cli.demo.run


def test_the_command_imports_no_torch():
    code = "import sys, sekron.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False"
