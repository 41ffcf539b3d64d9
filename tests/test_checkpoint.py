"""sekron.cli.checkpoint and the ``sekron compress`` command."""

from __future__ import annotations

import io
import json
import math
import zipfile

import numpy as np
import pytest

import sekron as sk
import sekron.files
from sekron.cli import main
from sekron.cli.checkpoint import (
    choose_structure,
    compress_weights,
    load_compressed,
    read_weights,
    save_compressed,
)
from sekron.errors import FormatError, ShapeError


def _weights(rng: np.random.Generator) -> dict[str, np.ndarray]:
    A, B = rng.normal(size=(3, 16, 8)), rng.normal(size=(3, 8, 16))
    low = sum(np.kron(A[r], B[r]) for r in range(3))  # Kronecker rank 3
    return {
        "fc.weight": low.astype(np.float32),
        "fc.bias": np.zeros(128, np.float32),
        "conv.weight": rng.normal(size=(32, 16, 3, 3)),
        "steps": np.array(7),
    }


@pytest.mark.parametrize("ratio", [2.0, 4.0, 16.0])
def test_ratio_budget_is_respected_and_certificates_are_true(ratio):
    rng = np.random.default_rng(0)
    for S in (2, 3):
        W = rng.normal(size=(64, 48))
        t = choose_structure(W, ratio=ratio, n_factors=S)
        assert t.n_params <= W.size / ratio
        true = np.linalg.norm(W - t.to_dense())
        eps = np.finfo(np.float64).eps
        # both are sums of squares of the same residual, rounded differently
        assert abs(t.error_bound**2 - true**2) <= 64 * eps * np.linalg.norm(W) ** 2


def test_exact_structure_is_found_within_budget():
    rng = np.random.default_rng(1)
    W = _weights(rng)["fc.weight"].astype(np.float64)
    t = choose_structure(W, ratio=8)
    # float32 weights: the discarded singular values are at float32 rounding level
    assert t.relative_error_bound < 16 * math.sqrt(W.size) * np.finfo(np.float32).eps


def test_tol_meets_its_target():
    rng = np.random.default_rng(2)
    W = rng.normal(size=(32, 32))
    t = choose_structure(W, tol=0.3)
    assert t.relative_error_bound <= 0.3


def test_bad_arguments():
    W = np.ones((8, 8))
    with pytest.raises(ValueError, match="exactly one"):
        choose_structure(W)
    with pytest.raises(ValueError, match="ratio"):
        choose_structure(W, ratio=0.5)
    with pytest.raises(ShapeError):
        choose_structure(W, ratio=1000.0)


def test_compress_weights_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    weights = _weights(rng)
    copies = {k: v.copy() for k, v in weights.items()}
    out, report = compress_weights(weights, ratio=4, min_size=1000)
    for k in weights:  # inputs untouched
        assert np.array_equal(weights[k], copies[k])
    by_name = {r.name: r for r in report}
    assert by_name["fc.weight"].skipped is None and by_name["conv.weight"].skipped is None
    assert "not floating point" in by_name["steps"].skipped
    assert by_name["fc.bias"].skipped
    assert isinstance(out["fc.weight"], sk.SeKronTensor) and out["fc.weight"].dtype == np.float32
    path = tmp_path / "c.npz"
    save_compressed(path, out)
    back = load_compressed(path)
    assert set(back) == set(weights)
    for k, v in out.items():
        if isinstance(v, sk.SeKronTensor):
            assert np.array_equal(back[k].to_dense(), v.to_dense())
            assert back[k].error_bound == v.error_bound
        else:
            assert np.array_equal(back[k], v)


def test_include_exclude(tmp_path):
    weights = _weights(np.random.default_rng(4))
    _, report = compress_weights(weights, ratio=2, include=["conv.*"], min_size=10)
    by_name = {r.name: r for r in report}
    assert by_name["fc.weight"].skipped == "not matched by --include"
    _, report = compress_weights(weights, ratio=2, exclude=["conv.*"], min_size=10)
    assert {r.name: r for r in report}["conv.weight"].skipped == "matched by --exclude"


def test_read_weights_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_weights(tmp_path / "none.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(FormatError):
        read_weights(bad)
    other = tmp_path / "w.txt"
    other.write_text("x")
    with pytest.raises(FormatError):
        read_weights(other)
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.ones(3))
    with pytest.raises(FormatError):
        load_compressed(plain)


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=False)
    return buf.getvalue()


def test_read_weights_refuses_an_npz_deflate_bomb_unread(tmp_path, monkeypatch):
    # 1 MiB of zeros deflates about 1000x; with the limits lowered it is a bomb, kept small
    monkeypatch.setattr(sekron.files, "MAX_INFLATION", 10)
    monkeypatch.setattr(sekron.files, "INFLATION_SLACK", 0)
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("ok.npy", _npy_bytes(np.arange(3.0)))
        z.writestr("zeros.npy", _npy_bytes(np.zeros(1 << 17)))
    info = zipfile.ZipFile(path).getinfo("zeros.npy")
    assert info.file_size > 10 * info.compress_size
    before = path.read_bytes()
    reads: list[object] = []
    real_read = np.lib.format.read_array
    monkeypatch.setattr(
        np.lib.format, "read_array", lambda *a, **k: reads.append(a) or real_read(*a, **k)
    )
    with pytest.raises(FormatError, match=r"^path: .*zeros\.npy.*inflation") as exc:
        read_weights(path)
    assert "bomb.npz" in str(exc.value)
    assert reads == []  # refused from the zip directory: no member's data was read
    assert path.read_bytes() == before


def test_read_weights_npz_round_trips_exactly(tmp_path):
    arrays = {
        "fc.weight": np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32),
        "steps": np.array(7, dtype=np.int64),
        "idx": np.arange(-3, 9, dtype=np.int16).reshape(3, 4),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
    }
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, **arrays)
        before = path.read_bytes()
        back = read_weights(path)
        assert list(back) == list(arrays)
        for k, v in arrays.items():
            assert back[k].dtype == v.dtype and back[k].shape == v.shape
            assert np.array_equal(back[k], v)
        assert path.read_bytes() == before


def test_read_weights_npy_is_bounded_and_checked(tmp_path):
    good = tmp_path / "w.npy"
    np.save(good, np.arange(12, dtype=np.int32).reshape(3, 4))
    back = read_weights(good)
    assert list(back) == ["w"] and back["w"].dtype == np.int32
    assert np.array_equal(back["w"], np.arange(12).reshape(3, 4))
    raw = good.read_bytes()
    short = tmp_path / "short.npy"
    short.write_bytes(raw[:-5])
    with pytest.raises(FormatError, match=r"^path: .*short\.npy.*truncated"):
        read_weights(short)
    assert short.read_bytes() == raw[:-5]
    # a tiny file whose header declares 8 TB: refused from the header, nothing allocated
    liar = tmp_path / "liar.npy"
    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000000,), }"
    liar.write_bytes(
        b"\x93NUMPY\x01\x00" + len(header + b"\n").to_bytes(2, "little") + header + b"\n"
    )
    with pytest.raises(FormatError, match=r"^path: .*liar\.npy.*truncated"):
        read_weights(liar)
    # a header past sekron.files.MAX_HEADER_BYTES (numpy's limit) is refused
    big = b"{'descr': '<f8', 'fortran_order': False, 'shape': (1,), }".ljust(20_000) + b"\n"
    huge = tmp_path / "huge.npy"
    huge.write_bytes(b"\x93NUMPY\x01\x00" + len(big).to_bytes(2, "little") + big + bytes(8))
    with pytest.raises(FormatError, match=r"^path: .*huge\.npy.*large"):
        read_weights(huge)
    truncated_header = tmp_path / "head.npy"
    truncated_header.write_bytes(raw[:20])
    with pytest.raises(FormatError, match=r"^path: .*head\.npy"):
        read_weights(truncated_header)


def test_torch_checkpoint_is_read_with_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(64, 32)
    path = tmp_path / "m.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    weights = read_weights(path)
    assert np.array_equal(weights["weight"], model.weight.detach().numpy())


def test_cli_compress(tmp_path):
    src = tmp_path / "w.npz"
    np.savez(src, **_weights(np.random.default_rng(5)))
    out = tmp_path / "out.npz"
    buf = io.StringIO()
    assert (
        main(["compress", str(src), "--ratio", "4", "-o", str(out), "--min-size", "1000"], out=buf)
        == 0
    )
    assert "total" in buf.getvalue()
    assert isinstance(load_compressed(out)["fc.weight"], sk.SeKronTensor)
    # no eligible tensor: exit status 1 and no file
    assert (
        main(
            [
                "compress",
                str(src),
                "--ratio",
                "4",
                "-o",
                str(tmp_path / "x.npz"),
                "--min-size",
                "1000000000",
            ],
            out=io.StringIO(),
        )
        == 1
    )
    assert not (tmp_path / "x.npz").exists()
    # bad arguments: exit status 2
    assert main(["compress", str(src), "-o", str(out)], out=io.StringIO()) == 2
    assert main(["compress", str(src), "--ratio", "0.5", "-o", str(out)], out=io.StringIO()) == 2


def test_each_sekron_tensor_is_stored_as_sekron_tensor_save_stores_it(tmp_path):
    t = sk.nkp(np.random.default_rng(6).normal(size=(8, 6)), (2, 3), rank=2)
    t.save(tmp_path / "t.npz")
    save_compressed(tmp_path / "c.npz", {"a": np.zeros(2), "w": t})
    with np.load(tmp_path / "t.npz") as alone, np.load(tmp_path / "c.npz") as together:
        members = {k: alone[k] for k in alone.files}
        stored = {k: together[k] for k in together.files}
    manifest = json.loads(str(stored["__manifest__"]))["tensors"]
    prefix = manifest["w"]["prefix"]
    assert {k for k in stored if k.startswith(prefix)} == {prefix + k for k in members}
    for k, v in members.items():
        assert np.array_equal(stored[prefix + k], v, equal_nan=v.dtype.kind == "f")


def test_version_1_files_still_load(tmp_path):
    # the layout of version 1, written here by hand: t<i>_factor_<k>, t<i>_dense
    A, B = np.arange(6.0).reshape(1, 2, 3), np.arange(4.0).reshape(1, 2, 2)
    header = {
        "format": "sekron.compressed-checkpoint",
        "version": 1,
        "tensors": {
            "w": {
                "kind": "sekron",
                "n_factors": 2,
                "error_bound": 0.5,
                "reference_norm": 2.0,
                "index": 0,
            },
            "b": {"kind": "dense", "index": 1},
        },
    }
    path = tmp_path / "v1.npz"
    np.savez(
        path,
        __manifest__=np.array(json.dumps(header)),
        t0_factor_0=A,
        t0_factor_1=B,
        t1_dense=np.ones(3),
    )
    back = load_compressed(path)
    assert np.array_equal(back["w"].to_dense(), np.kron(A[0], B[0]))
    assert back["w"].error_bound == 0.5 and np.array_equal(back["b"], np.ones(3))
    header["version"] = 3
    np.savez(
        path,
        __manifest__=np.array(json.dumps(header)),
        t0_factor_0=A,
        t0_factor_1=B,
        t1_dense=np.ones(3),
    )
    with pytest.raises(FormatError, match="version"):
        load_compressed(path)


def test_both_compressors_report_with_one_type():
    from sekron.cli.checkpoint import TensorReport
    from sekron.selection import WeightReport

    _, report = compress_weights({"w": np.ones((64, 64))}, ratio=4)
    assert TensorReport is WeightReport and isinstance(report[0], WeightReport)
    torch_compress = pytest.importorskip("sekron.torch.compression")
    assert torch_compress.LayerReport is WeightReport


# --- files: exactly the path named, never over an input; calibrated compression -------


def _cli(args, tmp_path):
    buf = io.StringIO()
    return main(["compress", *map(str, args)], out=buf), buf.getvalue()


def test_cli_compress_refuses_to_write_over_its_input(tmp_path):
    src = tmp_path / "w.npz"
    np.savez(src, **_weights(np.random.default_rng(5)))
    before = src.read_bytes()
    code, _ = _cli([src, "--ratio", "4", "-o", src, "--min-size", "1000"], tmp_path)
    assert code != 0 and src.read_bytes() == before


def test_cli_compress_writes_exactly_the_named_file(tmp_path):
    src = tmp_path / "w.npz"
    np.savez(src, **_weights(np.random.default_rng(5)))
    out = tmp_path / "out.bin"
    code, _text = _cli([src, "--ratio", "4", "-o", out, "--min-size", "1000"], tmp_path)
    assert code == 0 and out.is_file() and not (tmp_path / "out.bin.npz").exists()
    assert isinstance(load_compressed(out)["fc.weight"], sk.SeKronTensor)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "w.npz"]  # no temp left


def test_cli_compress_refuses_a_directory_as_output(tmp_path):
    src = tmp_path / "w.npz"
    np.savez(src, **_weights(np.random.default_rng(5)))
    (tmp_path / "d.npz").mkdir()
    code, _ = _cli([src, "--ratio", "4", "-o", tmp_path / "d.npz"], tmp_path)
    assert code != 0 and not (tmp_path / "d.npz.npz").exists()


def test_cli_compress_refuses_negative_min_size(tmp_path):
    src = tmp_path / "w.npz"
    np.savez(src, **_weights(np.random.default_rng(5)))
    code, _ = _cli([src, "--ratio", "4", "-o", tmp_path / "o.npz", "--min-size", "-5"], tmp_path)
    assert code != 0 and not (tmp_path / "o.npz").exists()


def test_tensor_save_keeps_the_name_given(tmp_path):
    t = sk.nkp(np.eye(4), (2, 2), rank=2)
    t.save(tmp_path / "m.sk")
    assert np.array_equal(sk.load(tmp_path / "m.sk").to_dense(), t.to_dense())
    assert not (tmp_path / "m.sk.npz").exists()


def test_compress_weights_with_grams_is_data_aware_and_never_worse_on_the_data(tmp_path):
    rng = np.random.default_rng(3)
    W = rng.normal(size=(64, 96))
    # inputs with a few dominant directions: the data-aware fit should use them
    X = rng.normal(size=(2000, 8)) @ rng.normal(size=(8, 96)) + 0.05 * rng.normal(size=(2000, 96))
    C = X.T @ X / len(X)
    out, report = compress_weights({"fc.weight": W}, ratio=4, min_size=1, grams={"fc": C})
    rec = report[0]
    assert rec.data_error is not None and rec.plain_data_error is not None
    assert rec.data_error <= rec.plain_data_error + 1e-12
    # the reported data error is the true one, computed here from the dense residual
    E = W - out["fc.weight"].to_dense()
    true = np.sqrt(np.trace(E @ C @ E.T) / np.trace(W @ C @ W.T))
    assert abs(rec.data_error - true) <= 1e-6 * max(true, 1e-12)
    with pytest.raises(FormatError, match="grams"):
        compress_weights({"fc.weight": W}, ratio=4, min_size=1, grams={"fc": np.eye(5)})


def test_quality_warning_when_errors_would_make_a_model_unusable(tmp_path):
    src = tmp_path / "w.npz"
    np.savez(src, big=np.random.default_rng(0).normal(size=(128, 128)))
    code, text = _cli([src, "--ratio", "8", "-o", tmp_path / "o.npz", "--min-size", "1"], tmp_path)
    assert code == 0 and "warning:" in text and "rarely works" in text
