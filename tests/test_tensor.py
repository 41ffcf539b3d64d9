"""SeKronTensor: reconstruction against an independent reference, algebra, files."""

from __future__ import annotations

import itertools
import os
import pickle
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sekron as sk
from sekron.errors import DTypeError, FormatError, NonFiniteError, ShapeError
from sekron.testing.strategies import random_sekron_factors, sekron_tensors, structures


def _nested_sum_reference(factors: list[np.ndarray]) -> np.ndarray:
    """Σ over every rank index of A_1[r1] ⊗ A_2[r1,r2] ⊗ ... ⊗ A_S[r1..r_{S-1}] (numpy.kron)."""
    S = len(factors)
    ranks = factors[-1].shape[: S - 1]
    out = None
    for idx in itertools.product(*(range(r) for r in ranks)):
        term = factors[0][idx[:1]]
        for k in range(1, S):
            term = np.kron(term, factors[k][idx[: min(k + 1, S - 1)]])
        out = term if out is None else out + term
    return out


def _tol(t: sk.SeKronTensor) -> float:
    """Reconstruction tolerance: eps × number of terms × the size of the summed magnitudes."""
    eps = np.finfo(t.dtype).eps
    factors = [np.abs(f.astype(np.float64)) for f in t.factors]
    bound = np.abs(_nested_sum_reference(factors)).max()
    return 4 * eps * (sum(t.structure.ranks) + t.structure.n_factors) * bound


@settings(deadline=None)
@given(sekron_tensors(max_size=128))
def test_to_dense_equals_the_nested_sum_of_kronecker_products(t):
    dense = t.to_dense()
    assert dense.shape == t.shape and dense.dtype == t.dtype
    ref = _nested_sum_reference([f.astype(np.float64) for f in t.factors])
    np.testing.assert_allclose(dense, ref, rtol=0, atol=_tol(t))
    np.testing.assert_allclose(np.asarray(t), dense, rtol=0, atol=0)
    assert np.array_equal(sk.unrearrange(t.rearranged(), t.structure.shapes), dense)
    np.testing.assert_allclose(
        t.norm(), np.linalg.norm(ref), rtol=0, atol=_tol(t) * np.sqrt(dense.size)
    )


@settings(deadline=None)
@given(structures(max_size=128, max_rank=3), st.integers(0, 2**32 - 1))
def test_to_dense_is_exact_for_integer_factors(s, seed):
    rng = np.random.default_rng(seed)
    factors = [rng.integers(-3, 4, size=fs).astype(np.float64) for fs in s.factor_shapes]
    t = sk.SeKronTensor(factors)
    assert np.array_equal(t.to_dense(), _nested_sum_reference(factors))


@settings(deadline=None)
@given(structures(max_size=128, max_rank=3), st.integers(0, 2**32 - 1), st.data())
def test_transpose_permutes_the_modes_of_the_dense_tensor(s, seed, data):
    rng = np.random.default_rng(seed)
    factors = [rng.integers(-3, 4, size=fs).astype(np.float64) for fs in s.factor_shapes]
    t = sk.SeKronTensor(factors, error_bound=0.5, reference_norm=2.0)
    axes = data.draw(st.permutations(range(s.ndim)))
    tt = t.transpose(axes)
    assert np.array_equal(tt.to_dense(), t.to_dense().transpose(axes))
    assert np.array_equal(t.T.to_dense(), t.to_dense().T)
    assert tt.error_bound == 0.5 and tt.reference_norm == 2.0
    with pytest.raises(ShapeError, match="axes"):
        t.transpose((*tuple(range(s.ndim)), 0))


def test_facts_of_a_small_tensor():
    A, B = np.arange(4.0).reshape(1, 2, 2), np.ones((1, 3, 3))
    t = sk.SeKronTensor([A, B])
    assert t.shape == (6, 6) and t.ndim == 2 and t.n_params == 13
    assert t.compression_ratio == 36 / 13
    assert t.error_bound is None and t.relative_error_bound is None
    assert "SeKronTensor" in repr(t)
    assert sk.SeKronTensor([A, B], error_bound=0.0, reference_norm=0.0).relative_error_bound == 0.0
    assert sk.SeKronTensor([A, B], error_bound=1.0, reference_norm=4.0).relative_error_bound == 0.25


def test_factors_are_read_only_copies_and_dtypes_are_unified():
    A = np.ones((2, 2, 2), dtype=np.float32)
    B = np.ones((2, 3, 3), dtype=np.float64)
    t = sk.SeKronTensor([A, B])
    assert t.dtype == np.float64 and all(f.dtype == np.float64 for f in t.factors)
    A32 = np.ones((2, 2, 2), dtype=np.float32)
    t32 = sk.SeKronTensor([A32, np.ones((2, 3, 3), dtype=np.float32)])
    assert t32.dtype == np.float32
    A32[0, 0, 0] = 5.0  # changing the input afterwards does not reach the tensor
    assert t32.factors[0][0, 0, 0] == 1.0
    with pytest.raises(ValueError):
        t32.factors[0][0, 0, 0] = 2.0
    assert (
        sk.SeKronTensor([np.ones((1, 2), dtype=int), np.ones((1, 2), dtype=int)]).dtype
        == np.float64
    )
    assert t.astype(np.float32).dtype == np.float32


def test_constructor_rejects_bad_factors():
    ok = np.ones((2, 2, 2))
    with pytest.raises(ShapeError, match=r"factors\[0\]"):  # ranks are read from the last factor
        sk.SeKronTensor([ok, np.ones((3, 2, 2))])
    with pytest.raises(ShapeError, match="factors"):
        sk.SeKronTensor([ok])
    with pytest.raises(ShapeError, match="factors"):
        sk.SeKronTensor(np.ones((2, 2, 2, 2)))
    with pytest.raises(ShapeError, match=r"factors\[1\]"):
        sk.SeKronTensor([ok, np.ones((2, 2, 2, 2))])
    with pytest.raises(ShapeError, match="structure"):
        sk.SeKronTensor([ok, ok], structure=sk.Structure([(2, 2), (2, 2)], 1))
    bad = ok.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError, match=r"factors\[0\]"):
        sk.SeKronTensor([bad, ok])
    with pytest.raises(DTypeError, match=r"factors\[1\]"):
        sk.SeKronTensor([ok, ok.astype(complex)])
    with pytest.raises(DTypeError, match=r"factors\[0\]"):
        sk.SeKronTensor([np.array([["a", "b"]]), ok])


# -- files -----------------------------------------------------------------------------------


@settings(deadline=None, max_examples=20)
@given(sekron_tensors(max_size=64), st.one_of(st.none(), st.floats(0, 10)))
def test_save_load_round_trip_is_bit_exact(tmp_path_factory, t, bound):
    t = sk.SeKronTensor(
        list(t.factors), error_bound=bound, reference_norm=None if bound is None else 3.0
    )
    path = tmp_path_factory.mktemp("rt") / "t.npz"
    t.save(path)
    u = sk.load(path)
    assert u.structure == t.structure and u.dtype == t.dtype
    assert all(
        np.array_equal(a, b) and a.dtype == b.dtype
        for a, b in zip(u.factors, t.factors, strict=True)
    )
    assert u.error_bound == t.error_bound and u.reference_norm == t.reference_norm
    assert np.array_equal(u.to_dense(), t.to_dense())


@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(0)
    s = sk.Structure([(2, 2), (2, 2), (2, 1)], (2, 2))
    t = sk.SeKronTensor(random_sekron_factors(s, rng, dtype=np.float32))
    path = tmp_path / "t.npz"
    t.save(path)
    return path, t


def _contents(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def test_float32_round_trip_keeps_dtype(saved):
    path, t = saved
    u = sk.load(str(path))
    assert u.dtype == np.float32
    assert np.array_equal(u.to_dense(), t.to_dense())


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        sk.load(tmp_path / "nope.npz")


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9])
def test_load_rejects_truncated_files(saved, tmp_path, cut):
    path, _ = saved
    data = path.read_bytes()
    bad = tmp_path / "cut.npz"
    bad.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(FormatError, match="path"):
        sk.load(bad)


def test_load_rejects_garbage_and_flipped_bytes(saved, tmp_path):
    path, _ = saved
    bad = tmp_path / "garbage.npz"
    bad.write_bytes(os.urandom(300))
    with pytest.raises(FormatError):
        sk.load(bad)
    data = bytearray(path.read_bytes())
    # overwrite the middle of the archive (a member's payload or its CRC no longer matches)
    mid = len(data) // 2
    data[mid : mid + 16] = b"\xff" * 16
    bad.write_bytes(bytes(data))
    with pytest.raises(FormatError):
        sk.load(bad)


def test_load_rejects_foreign_npz(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, weights=np.ones((3, 3)))
    with pytest.raises(FormatError, match="format"):
        sk.load(path)
    np.savez(path, format=np.array("something.else"), factor_0=np.ones((1, 2)))
    with pytest.raises(FormatError, match="format"):
        sk.load(path)
    np.save(tmp_path / "plain.npy", np.ones(3))
    with pytest.raises(FormatError):
        sk.load(tmp_path / "plain.npy")


def test_load_rejects_pickle_files(tmp_path):
    path = tmp_path / "pickle.npz"
    with open(path, "wb") as fh:
        pickle.dump({"format": "sekron.SeKronTensor"}, fh)
    with pytest.raises(FormatError):
        sk.load(path)
    # an npz whose members need pickle (object arrays) is refused, not unpickled
    obj = np.empty(2, dtype=object)
    obj[0], obj[1] = np.ones((1, 2)), np.ones((1, 2))
    np.savez(
        path,
        format=np.array("sekron.SeKronTensor"),
        version=np.array(1),
        n_factors=np.array(2),
        factor_0=obj,
        factor_1=obj,
        error_bound=np.array(np.nan),
        reference_norm=np.array(np.nan),
    )
    with pytest.raises(FormatError):
        sk.load(path)


def test_load_rejects_wrong_version_and_missing_entries(saved, tmp_path):
    path, _ = saved
    contents = _contents(path)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{**contents, "version": np.array(99)})
    with pytest.raises(FormatError, match="version"):
        sk.load(bad)
    for key in ("version", "n_factors", "factor_2", "error_bound"):
        np.savez(bad, **{k: v for k, v in contents.items() if k != key})
        with pytest.raises(FormatError):
            sk.load(bad)


def test_load_rejects_wrong_factor_shapes_and_values(saved, tmp_path):
    path, _ = saved
    contents = _contents(path)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{**contents, "factor_1": np.ones((3, 2, 2, 2), dtype=np.float32)})
    with pytest.raises(FormatError, match="factors"):
        sk.load(bad)
    nan = contents["factor_0"].copy()
    nan[0, 0, 0] = np.nan
    np.savez(bad, **{**contents, "factor_0": nan})
    with pytest.raises(FormatError):
        sk.load(bad)
    np.savez(bad, **{**contents, "factor_0": np.array([["x"]])})
    with pytest.raises(FormatError):
        sk.load(bad)
    np.savez(bad, **{**contents, "n_factors": np.array(1)})
    with pytest.raises(FormatError):
        sk.load(bad)


def test_saved_file_is_a_plain_zip_of_npy_members(saved):
    path, _ = saved
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
    assert {"format.npy", "version.npy", "n_factors.npy", "factor_0.npy", "factor_2.npy"} <= names
