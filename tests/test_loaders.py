"""Loaders trust nothing: sk.load and the compressed-checkpoint reader on hostile files.

Every file here is built byte by byte (zipfile and numpy.lib.format directly), so what a
test feeds the loaders does not depend on the writer under test. Corrupt files must give
a FormatError naming the file (and the member where there is one), never another
exception, a hang, or a silently different result.
"""

from __future__ import annotations

import io
import json
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sekron as sk
from sekron.cli.checkpoint import load_compressed, save_compressed
from sekron.errors import FormatError
from sekron.files import INFLATION_SLACK, MAX_INFLATION, NpzReader

FACTORS = [
    np.arange(12.0).reshape(2, 2, 3),
    (np.arange(16.0) - 7.5).reshape(2, 4, 2),
]


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()


def _zip(path: Path, members: dict[str, bytes], *, deflate: bool = False) -> Path:
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _tensor_members(**over: object) -> dict[str, bytes]:
    """The members of a SeKronTensor file (the documented layout), some replaced."""
    arrays: dict[str, object] = {
        "format": np.array("sekron.SeKronTensor"),
        "version": np.array(1, dtype=np.int64),
        "n_factors": np.array(2, dtype=np.int64),
        "error_bound": np.array(0.5),
        "reference_norm": np.array(3.0),
        "factor_0": FACTORS[0],
        "factor_1": FACTORS[1],
    }
    arrays.update(over)
    return {f"{k}.npy": _npy(v) for k, v in arrays.items() if v is not None}


def _dense(factors: list[np.ndarray]) -> np.ndarray:
    return sum(np.kron(factors[0][r], factors[1][r]) for r in range(factors[0].shape[0]))


def test_a_hand_built_file_loads_as_the_reference_sum():
    # the layout is read as documented: independent of SeKronTensor.save
    import tempfile

    d = Path(tempfile.mkdtemp())
    t = sk.load(_zip(d / "t.npz", _tensor_members()))
    assert np.array_equal(t.to_dense(), _dense(FACTORS))
    assert t.error_bound == 0.5 and t.reference_norm == 3.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("version", np.array(1.9)),
        ("version", np.array(1.0)),
        ("version", np.array("1")),
        ("version", np.array(True)),
        ("version", np.array([1])),
        ("version", np.array(2)),
        ("n_factors", np.array(2.7)),
        ("n_factors", np.array(1)),
        ("n_factors", np.array(-3)),
        ("n_factors", np.array(10**15)),
        ("error_bound", np.array(np.inf)),
        ("error_bound", np.array(-1.0)),
        ("error_bound", np.array(1)),
        ("reference_norm", np.array(-np.inf)),
        ("format", np.array("sekron.SomethingElse")),
        ("format", np.array(b"sekron.SeKronTensor")),
        ("factor_1", np.ones((2, 4, 2), dtype=np.int64)),
        ("factor_1", np.ones((3, 4, 2))),
        ("factor_1", np.array([["x"]])),
        ("factor_1", None),
    ],
)
def test_sk_load_rejects_each_malformed_manifest_field(tmp_path, field, value):
    path = _zip(tmp_path / "bad.npz", _tensor_members(**{field: value}))
    with pytest.raises(FormatError, match=r"bad\.npz") as info:
        sk.load(path)
    assert field in str(info.value) or (field == "factor_1" and "factor" in str(info.value))


def test_sk_load_refuses_unknown_members(tmp_path):
    members = {**_tensor_members(), "extra.npy": _npy(np.ones(2))}
    with pytest.raises(FormatError, match="extra"):
        sk.load(_zip(tmp_path / "x.npz", members))


def _bomb(path: Path, n_bytes: int, name: str = "factor_1.npy") -> Path:
    """An npz whose member `name` declares and holds n_bytes of zeros, deflated, streamed."""
    header = io.BytesIO()
    dtype = np.dtype(np.float64)
    np.lib.format.write_array_header_1_0(
        header, {"descr": dtype.str, "fortran_order": False, "shape": (n_bytes // 8,)}
    )
    members = _tensor_members(factor_1=None)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for k, v in members.items():
            z.writestr(k, v)
        with z.open(name, "w", force_zip64=True) as fh:
            fh.write(header.getvalue())
            chunk = bytes(1 << 20)
            for _ in range(n_bytes // len(chunk)):
                fh.write(chunk)
    return path


def _refused_with_little_memory(load, path: Path) -> str:
    tracemalloc.start()
    try:
        with pytest.raises(FormatError) as info:
            load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"refusing the bomb allocated {peak} bytes"
    return str(info.value)


def test_a_deflate_bomb_is_refused_before_it_is_inflated(tmp_path):
    # 64 MiB of zeros deflate to about 64 KiB: 1000x, past MAX_INFLATION
    path = _bomb(tmp_path / "bomb.npz", 64 << 20)
    assert path.stat().st_size * MAX_INFLATION + INFLATION_SLACK < 64 << 20
    msg = _refused_with_little_memory(sk.load, path)
    assert "bomb.npz" in msg and "factor_1.npy" in msg and "inflation" in msg


@pytest.mark.slow
def test_a_1_gib_deflate_bomb_is_refused_by_both_loaders(tmp_path):
    path = _bomb(tmp_path / "bomb.npz", 1 << 30)
    assert path.stat().st_size < 2 << 20
    assert "inflation" in _refused_with_little_memory(sk.load, path)
    assert "inflation" in _refused_with_little_memory(load_compressed, path)


def test_a_member_larger_than_its_header_declares_is_refused_unread(tmp_path):
    # header says (2, 4, 2) float64, the member carries 1 MiB more: refused from the sizes
    members = _tensor_members()
    members["factor_1.npy"] += bytes(1 << 20)
    with pytest.raises(FormatError, match=r"factor_1\.npy.*data bytes"):
        sk.load(_zip(tmp_path / "big.npz", members))


def test_declared_shapes_are_checked_before_any_factor_data_is_read(tmp_path):
    # factor_1's header disagrees with the ranks and its data is corrupt too: the shape
    # error must come first, so the data was never decompressed
    # (large enough that reading its header does not read ahead to its end)
    members = _tensor_members(factor_1=np.full((3, 64, 64), 7.0))
    path = _zip(tmp_path / "s.npz", members)
    raw = bytearray(path.read_bytes())
    at = raw.rindex(np.full(2, 7.0).tobytes())  # the end of factor_1's payload
    raw[at : at + 8] = b"\x01" * 8
    path.write_bytes(bytes(raw))
    with pytest.raises(FormatError, match="declared shapes"):
        sk.load(path)


def test_object_and_structured_members_are_refused(tmp_path):
    members = _tensor_members()
    members["factor_1.npy"] = _npy(np.zeros((2, 4, 2), dtype=[("a", "<f8")]))
    with pytest.raises(FormatError, match=r"factor_1\.npy.*dtype"):
        sk.load(_zip(tmp_path / "o.npz", members))
    raw = _tensor_members()["factor_1.npy"].replace(b"'<f8'", b"'|O' ")
    with pytest.raises(FormatError, match=r"factor_1\.npy"):
        sk.load(_zip(tmp_path / "o.npz", {**_tensor_members(), "factor_1.npy": raw}))


def test_npz_reader_opens_a_directory_or_missing_file_as_oserror(tmp_path):
    with pytest.raises(OSError):
        NpzReader(tmp_path)
    with pytest.raises(FileNotFoundError):
        sk.load(tmp_path / "none.npz")


# -- the compressed-checkpoint loader --------------------------------------------------


def _checkpoint_members(manifest: object | None = None, **over: object) -> dict[str, bytes]:
    tensor = _tensor_members()
    members = {f"t0/{k}": v for k, v in tensor.items()}
    members["t1/dense.npy"] = _npy(np.arange(3.0))
    if manifest is None:
        manifest = {
            "format": "sekron.compressed-checkpoint",
            "version": 2,
            "tensors": {
                "w": {"kind": "sekron", "prefix": "t0/"},
                "b": {"kind": "dense", "prefix": "t1/"},
            },
        }
    members["__manifest__.npy"] = _npy(np.array(json.dumps(manifest)))
    for k, v in over.items():
        if v is None:
            members.pop(k)
        else:
            members[k] = v  # type: ignore[assignment]
    return members


def test_a_hand_built_checkpoint_loads():
    import tempfile

    back = load_compressed(_zip(Path(tempfile.mkdtemp()) / "c.npz", _checkpoint_members()))
    assert np.array_equal(back["w"].to_dense(), _dense(FACTORS))
    assert np.array_equal(back["b"], np.arange(3.0))


def _manifest(**fields: object) -> dict[str, object]:
    m: dict[str, object] = {
        "format": "sekron.compressed-checkpoint",
        "version": 2,
        "tensors": {
            "w": {"kind": "sekron", "prefix": "t0/"},
            "b": {"kind": "dense", "prefix": "t1/"},
        },
    }
    m.update(fields)
    return m


@pytest.mark.parametrize(
    ("manifest", "match"),
    [
        (_manifest(version=1.9), "version"),
        (_manifest(version="2"), "version"),
        (_manifest(version=True), "version"),
        (_manifest(version=3), "version"),
        (_manifest(format="other"), "format"),
        (_manifest(tensors=[1, 2]), "tensors"),
        (_manifest(tensors={"w": {"kind": "sekron", "prefix": "t0/"}}), "t1/dense"),
        (
            _manifest(
                tensors={
                    "w": {"kind": "sekron", "prefix": "t0/"},
                    "b": {"kind": "quantized", "prefix": "t1/"},
                }
            ),
            "kind",
        ),
        (
            _manifest(tensors={"w": {"kind": "sekron", "prefix": "t0/"}, "b": {"kind": "dense"}}),
            "prefix",
        ),
        (
            _manifest(
                tensors={
                    "w": {"kind": "sekron", "prefix": "t0/"},
                    "b": {"kind": "dense", "prefix": "t1/"},
                    "c": {"kind": "dense", "prefix": "t1/"},
                }
            ),
            "twice",
        ),
        ([1, 2, 3], "format"),
    ],
)
def test_checkpoint_loader_rejects_each_malformed_manifest(tmp_path, manifest, match):
    path = _zip(tmp_path / "c.npz", _checkpoint_members(manifest))
    with pytest.raises(FormatError, match=match) as info:
        load_compressed(path)
    assert "c.npz" in str(info.value)


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"n_factors": 2.7}, "n_factors"),
        ({"n_factors": True}, "n_factors"),
        ({"n_factors": 10**12}, "n_factors"),
        ({"error_bound": float("inf")}, "Infinity"),
        ({"error_bound": -0.5}, "error_bound"),
        ({"reference_norm": "2"}, "reference_norm"),
        ({"index": -1}, "index"),
    ],
)
def test_version_1_manifest_fields_are_checked(tmp_path, meta, match):
    w = {"kind": "sekron", "n_factors": 2, "error_bound": 0.5, "reference_norm": 2.0}
    w.update({"index": 0, **meta})
    manifest = {"format": "sekron.compressed-checkpoint", "version": 1, "tensors": {"w": w}}
    members = {
        "__manifest__.npy": _npy(np.array(json.dumps(manifest))),
        "t0_factor_0.npy": _npy(FACTORS[0]),
        "t0_factor_1.npy": _npy(FACTORS[1]),
    }
    with pytest.raises(FormatError, match=match):
        load_compressed(_zip(tmp_path / "v1.npz", members))


def test_checkpoint_loader_refuses_non_finite_json_and_unclaimed_members(tmp_path):
    text = json.dumps(_manifest()).replace('"version": 2', '"version": NaN')
    members = _checkpoint_members(**{"__manifest__.npy": _npy(np.array(text))})
    with pytest.raises(FormatError, match="manifest"):
        load_compressed(_zip(tmp_path / "n.npz", members))
    members = _checkpoint_members(**{"t9/dense.npy": _npy(np.ones(2))})
    with pytest.raises(FormatError, match="t9/dense"):
        load_compressed(_zip(tmp_path / "u.npz", members))
    members = _checkpoint_members(**{"__manifest__.npy": _npy(np.array([json.dumps(_manifest())]))})
    with pytest.raises(FormatError, match="__manifest__"):
        load_compressed(_zip(tmp_path / "m.npz", members))


# -- hypothesis: corrupt files -------------------------------------------------------------


def _saved_tensor(tmp: Path) -> tuple[Path, sk.SeKronTensor]:
    t = sk.SeKronTensor(FACTORS, error_bound=0.25, reference_norm=2.0)
    path = tmp / "t.npz"
    t.save(path)
    return path, t


def _saved_checkpoint(tmp: Path) -> tuple[Path, dict[str, object]]:
    tensors = {"w": sk.SeKronTensor(FACTORS, error_bound=0.25), "b": np.arange(4.0)}
    path = tmp / "c.npz"
    save_compressed(path, tensors)
    return path, tensors


def _same(a: object, b: object) -> bool:
    if isinstance(a, sk.SeKronTensor):
        return (
            isinstance(b, sk.SeKronTensor)
            and all(np.array_equal(x, y) for x, y in zip(a.factors, b.factors, strict=True))
            and a.error_bound == b.error_bound
            and a.reference_norm == b.reference_norm
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return isinstance(b, np.ndarray) and np.array_equal(a, b) and a.dtype == b.dtype


corruptions = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    st.tuples(
        st.just("flip"),
        st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1),
    ),
    st.tuples(st.just("drop"), st.integers(0, 100)),
    st.tuples(st.just("rename"), st.integers(0, 100), st.sampled_from(["x.npy", "factor_9.npy"])),
    st.tuples(st.just("zero_run"), st.floats(0, 1, exclude_max=True), st.integers(1, 64)),
)


def _corrupt(path: Path, out: Path, how: tuple) -> None:
    raw = bytearray(path.read_bytes())
    kind = how[0]
    if kind == "truncate":
        out.write_bytes(bytes(raw[: int(how[1] * len(raw))]))
    elif kind == "flip":
        for where, mask in how[1]:
            raw[int(where * len(raw))] ^= mask
        out.write_bytes(bytes(raw))
    elif kind == "zero_run":
        at = int(how[1] * len(raw))
        raw[at : at + how[2]] = bytes(len(raw[at : at + how[2]]))
        out.write_bytes(bytes(raw))
    else:
        with zipfile.ZipFile(path) as z:
            members = {i.filename: z.read(i) for i in z.infolist()}
        names = sorted(members)
        victim = names[how[1] % len(names)]
        data = members.pop(victim)
        if kind == "rename":
            members[victim.rsplit("/", 1)[0] + "/" + how[2] if "/" in victim else how[2]] = data
        _zip(out, members)


def _outcome(load, path: Path, original: object) -> None:
    try:
        back = load(path)
    except FormatError as exc:
        assert str(path.name) in str(exc) or "path" in str(exc)
        return
    # a corruption that left a valid file (a timestamp, a comment) must read the same
    assert _same(original, back)


_hyp = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_hyp
@given(how=corruptions)
def test_sk_load_of_a_corrupt_file_is_a_format_error_or_the_same_tensor(tmp_path, how):
    path, t = _saved_tensor(tmp_path)
    bad = tmp_path / "bad.npz"
    _corrupt(path, bad, how)
    _outcome(sk.load, bad, t)


@_hyp
@given(how=corruptions)
def test_checkpoint_load_of_a_corrupt_file_is_a_format_error_or_the_same(tmp_path, how):
    path, tensors = _saved_checkpoint(tmp_path)
    bad = tmp_path / "bad.npz"
    _corrupt(path, bad, how)
    _outcome(load_compressed, bad, tensors)


manifest_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@_hyp
@given(
    field=st.sampled_from(["format", "version", "tensors", "kind", "prefix", "name"]),
    value=manifest_values,
)
def test_checkpoint_manifest_with_any_altered_field_is_a_format_error_or_the_same(
    tmp_path, field, value
):
    path, tensors = _saved_checkpoint(tmp_path)
    with zipfile.ZipFile(path) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    manifest = json.loads(str(np.load(io.BytesIO(members["__manifest__.npy"]))))
    if field in ("kind", "prefix"):
        manifest["tensors"]["w"][field] = value
    elif field == "name":
        manifest["tensors"] = {str(value): manifest["tensors"]["w"], "b": manifest["tensors"]["b"]}
    else:
        manifest[field] = value
    members["__manifest__.npy"] = _npy(np.array(json.dumps(manifest)))
    bad = _zip(tmp_path / "bad.npz", members)
    try:
        back = load_compressed(bad)
    except FormatError as exc:
        assert "bad.npz" in str(exc)
        return
    # only a rename of the tensor (or a no-op) may still load; then it holds the same data
    expected = {manifest_key: tensors[k] for manifest_key, k in zip(back, ["w", "b"], strict=True)}
    assert _same(expected, back)


@_hyp
@given(
    field=st.sampled_from(["version", "n_factors", "error_bound", "reference_norm", "format"]),
    value=st.one_of(
        st.integers(-(2**62), 2**62),
        st.floats(),
        st.booleans(),
        st.text(max_size=4),
        st.lists(st.integers(0, 3), min_size=1, max_size=2),
    ),
)
def test_sk_load_with_any_altered_scalar_is_a_format_error_or_valid(tmp_path, field, value):
    path = _zip(tmp_path / "bad.npz", _tensor_members(**{field: np.array(value)}))
    try:
        t = sk.load(path)
    except FormatError as exc:
        assert "bad.npz" in str(exc)
        return
    # what loaded must be what the file says: a valid value for that field
    assert np.array_equal(t.to_dense(), _dense(FACTORS))
    v = np.array(value)
    assert v.shape == () and v.dtype.kind != "b"
    if field in ("version", "n_factors"):
        assert v.dtype.kind in "iu" and int(v) == {"version": 1, "n_factors": 2}[field]
    elif field == "format":
        assert str(v) == "sekron.SeKronTensor"
    else:
        assert v.dtype.kind == "f" and (np.isnan(v) or (np.isfinite(v) and v >= 0))


# -- adapter files (LyCORIS and PEFT) -------------------------------------------------


def _lora_tensors(**over):
    torch = pytest.importorskip("torch")
    t = {"0.lora_up.weight": torch.ones(4, 1), "0.lora_down.weight": torch.ones(1, 3)}
    t.update(over)
    return t


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"0.alpha": "inf"}, "alpha"),
        ({"0.alpha": [1.0, 2.0, 3.0]}, "alpha"),
        ({"0.lora_up.weight": "nan"}, "malformed"),
        ({"0.lora_up.weight": "rank2"}, "malformed"),
    ],
)
def test_lycoris_files_with_bad_values_are_format_errors(tmp_path, over, match):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    from sekron.torch.adapters import load_lycoris

    fill = {
        "inf": torch.tensor(float("inf")),
        "nan": torch.full((4, 1), float("nan")),
        "rank2": torch.ones(4, 2),
    }
    tensors = _lora_tensors()
    for k, v in over.items():
        tensors[k] = torch.tensor(v) if isinstance(v, list) else fill[v]
    path = tmp_path / "a.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(FormatError, match=match):
        load_lycoris(path)


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"rank_pattern": {"^fc$": "8"}}, "r"),
        ({"rank_pattern": {"^fc$": 0}}, "r"),
        ({"rank_pattern": {}, "r": True}, "r"),
        ({"alpha_pattern": {"^fc$": "x"}}, "lora_alpha"),
        ({"alpha_pattern": {}, "lora_alpha": None}, "lora_alpha"),
    ],
)
def test_peft_configs_with_bad_numbers_are_format_errors(tmp_path, config, match):
    pytest.importorskip("torch")
    from sekron.torch.adapters import LoRA, load_peft, save_peft

    save_peft(tmp_path, {"fc": LoRA(np.ones((4, 1)), np.ones((1, 3)))})
    cfg = tmp_path / "adapter_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), **config}))
    with pytest.raises(FormatError, match=match):
        load_peft(tmp_path)
