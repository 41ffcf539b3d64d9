"""``sekron adapter extract`` and ``sekron adapter convert``, run through ``run`` on parsed args."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from sekron.torch import adapters as ad  # noqa: E402

cli = importlib.import_module("sekron.cli.adapter")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sekron")
    cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def _run(argv: list[str]) -> tuple[int, str]:
    buf = io.StringIO()
    return cli.run(_parse(argv), buf), buf.getvalue()


@pytest.fixture
def checkpoints(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    base = {
        "fc.weight": rng.normal(size=(32, 24)),
        "fc.bias": rng.normal(size=32),
        "conv.weight": rng.normal(size=(12, 8, 3, 3)),
        "head.weight": rng.normal(size=(4, 32)),
    }
    deltas = {
        "fc.weight": np.kron(
            rng.normal(size=(4, 4)), rng.normal(size=(8, 1)) @ rng.normal(size=(1, 6))
        ),
        "conv.weight": np.kron(rng.normal(size=(3, 2, 1, 1)), rng.normal(size=(4, 4, 3, 3))),
    }
    tuned = {k: v + deltas.get(k, 0.0) for k, v in base.items()}
    safetensors_torch.save_file(
        {k: torch.tensor(v) for k, v in base.items()}, str(tmp_path / "base.safetensors")
    )
    (tmp_path / "tuned").mkdir()
    safetensors_torch.save_file(
        {k: torch.tensor(v) for k, v in tuned.items()},
        str(tmp_path / "tuned" / "model.safetensors"),
    )
    return tmp_path / "base.safetensors", tmp_path / "tuned", deltas


@pytest.mark.parametrize("fmt", ["lycoris", "peft"])
def test_extract_writes_an_adapter_that_rebuilds_the_update(checkpoints, tmp_path, fmt) -> None:
    base, tuned, deltas = checkpoints
    out = tmp_path / ("out.safetensors" if fmt == "lycoris" else "peft_out")
    rc, text = _run(["adapter", "extract", str(base), str(tuned), "-o", str(out), "--format", fmt])
    assert rc == 0
    assert "fc" in text and "conv" in text and "head" not in text  # unchanged layers are left out
    got = ad.load_lycoris(out) if fmt == "lycoris" else ad.load_peft(out)
    names = {"fc": "fc.weight", "conv": "conv.weight"}
    for name, key in names.items():
        upd = got.get(name) or got[ad.lycoris_name(name)]
        D = deltas[key]
        # files are float32: one rounding per stored factor entry and per product
        assert np.linalg.norm(upd.delta() - D) <= 1e-6 * np.linalg.norm(D)


def test_convert_lokr_to_lora_and_back(checkpoints, tmp_path) -> None:
    base, tuned, deltas = checkpoints
    lokr_file = tmp_path / "lokr.safetensors"
    assert _run(["adapter", "extract", str(base), str(tuned), "-o", str(lokr_file)])[0] == 0
    lora_file = tmp_path / "lora.safetensors"
    rc, text = _run(["adapter", "convert", str(lokr_file), "-o", str(lora_file), "--to", "lora"])
    assert rc == 0 and "LoKr" in text
    loras = ad.load_lycoris(lora_file)
    assert all(isinstance(v, ad.LoRA) for v in loras.values())
    D = deltas["fc.weight"]
    assert np.linalg.norm(loras["lycoris_fc"].delta() - D) <= 1e-6 * np.linalg.norm(D)
    back_file = tmp_path / "back.safetensors"
    assert (
        _run(["adapter", "convert", str(lora_file), "-o", str(back_file), "--to", "lokr"])[0] == 0
    )
    back = ad.load_lycoris(back_file)
    assert np.linalg.norm(back["lycoris_fc"].delta() - D) <= 1e-5 * np.linalg.norm(D)
    rc, _ = _run(
        [
            "adapter",
            "convert",
            str(lokr_file),
            "-o",
            str(tmp_path / "r2.safetensors"),
            "--to",
            "lora",
            "--rank",
            "2",
        ]
    )
    assert rc == 0 and ad.load_lycoris(tmp_path / "r2.safetensors")["lycoris_fc"].rank == 2


def test_refuses_to_write_onto_an_input_and_reports_bad_files(
    checkpoints, tmp_path, capsys
) -> None:
    base, tuned, _ = checkpoints
    before = base.read_bytes()
    rc, _ = _run(["adapter", "extract", str(base), str(tuned), "-o", str(base)])
    assert rc == 2 and base.read_bytes() == before
    assert "output" in capsys.readouterr().err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"junk")
    rc, _ = _run(
        ["adapter", "convert", str(junk), "-o", str(tmp_path / "x.safetensors"), "--to", "lora"]
    )
    assert rc == 2 and "safetensors" in capsys.readouterr().err
    rc, _ = _run(
        ["adapter", "extract", str(base), str(tuned), "-o", str(tmp_path / "y"), "--rank", "0"]
    )
    assert rc == 2 and "rank" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_convert_uses_the_base_for_names_and_flattened_conv_kernels(checkpoints, tmp_path) -> None:
    base, tuned, _deltas = checkpoints
    lokr_file = tmp_path / "lokr_r1.safetensors"
    # rank 1 < 4 / 2: LyCORIS's layout stores the conv's w2 low rank, its kernel flattened
    assert (
        _run(["adapter", "extract", str(base), str(tuned), "-o", str(lokr_file), "--rank", "1"])[0]
        == 0
    )
    lora_file = tmp_path / "lora_r1.safetensors"
    argv = ["adapter", "convert", str(lokr_file), "-o", str(lora_file), "--to", "lora"]
    assert _run([*argv, "--base", str(base)])[0] == 0
    shapes = {"conv.weight": np.zeros((12, 8, 3, 3)), "fc.weight": np.zeros((32, 24))}
    loras = ad.load_lycoris(lora_file, shapes)
    assert loras["conv"].shape == (12, 8, 3, 3)
    lokrs = ad.load_lycoris(lokr_file, shapes)
    D = lokrs["conv"].delta()
    assert np.linalg.norm(loras["conv"].delta() - D) <= 1e-6 * np.linalg.norm(D)
