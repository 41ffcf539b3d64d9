"""nkp and sekron on dask arrays: the blocked rearrangement, certificates, out of core."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sekron as sk
from sekron._blocked import BlockedRearrangement
from sekron.errors import ArgumentError, DTypeError, NonFiniteError, RankError
from sekron.testing.strategies import factorable_shapes, float_dtypes

dask = pytest.importorskip("dask")
da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")


@pytest.fixture(autouse=True)
def _synchronous():
    """Outside the cluster test, dask runs in this thread (fast, deterministic)."""
    with dask.config.set(scheduler="synchronous"):
        yield


def _eps(dtype) -> float:
    return float(np.finfo(dtype).eps)


def _true_error(W, t) -> float:
    return float(np.linalg.norm((W.astype(np.float64) - t.to_dense().astype(np.float64)).ravel()))


@st.composite
def _chunked(draw, max_size=256):
    """A random tensor W, an NKP split (a, b) and chunk sizes: b-aligned or not."""
    shape, (a, b) = draw(factorable_shapes(n_factors=2, max_size=max_size))
    dtype = draw(float_dtypes())
    seed = draw(st.integers(0, 2**32 - 1))
    W = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    chunks = tuple(draw(st.integers(1, w)) for w in shape)
    return W, a, b, chunks


@settings(deadline=None, max_examples=15)
@given(_chunked(), st.data())
def test_blocked_operator_is_the_rearranged_matrix(case, data):
    W, a, b, chunks = case
    R = sk.rearrange(W, [a, b]).reshape(math.prod(a), math.prod(b)).astype(np.float64)
    op = BlockedRearrangement(da.from_array(W, chunks=chunks), a, b)
    k = data.draw(st.integers(1, 3))
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((R.shape[1], k)), rng.standard_normal((R.shape[0], k))
    tol = 8 * max(R.shape) * _eps(W.dtype) * (np.linalg.norm(R) + 1)
    assert np.abs(op.matmat(X) - R @ X.astype(W.dtype)).max() <= tol
    assert np.abs(op.rmatmat(Y) - R.T @ Y.astype(W.dtype)).max() <= tol
    assert math.isclose(op.squared_norm(), float(np.sum(R**2)), rel_tol=1e-12, abs_tol=1e-300)


@settings(deadline=None, max_examples=15)
@given(_chunked(), st.data())
def test_dask_nkp_is_the_in_memory_randomized_nkp(case, data):
    W, a, b, chunks = case
    max_rank = min(math.prod(a), math.prod(b))
    rank = data.draw(st.integers(1, max_rank))
    t = sk.nkp(da.from_array(W, chunks=chunks), a, rank=rank, random_state=3)
    ref = sk.nkp(W, a, rank=rank, method="randomized", random_state=3)
    assert all(isinstance(f, np.ndarray) for f in t.factors)
    assert [f.shape for f in t.factors] == [f.shape for f in ref.factors]
    assert t.dtype == ref.dtype
    norm_sq = float(np.sum(W.astype(np.float64) ** 2))
    slack = 4 * (math.prod(a) + math.prod(b)) * _eps(W.dtype) * norm_sq
    # the certificate has the in-memory meaning: the error of the returned factors ...
    assert abs(t.error_bound**2 - _true_error(W, t) ** 2) <= slack
    # ... and agrees with the in-memory fit of the same matrix and seed
    assert abs(t.error_bound**2 - ref.error_bound**2) <= slack
    assert t.reference_norm == pytest.approx(math.sqrt(norm_sq), rel=1e-12)


def test_dask_nkp_factors_match_the_in_memory_fit():
    """A well-separated spectrum: the factors themselves agree (float32, chunks misaligned)."""
    rng = np.random.default_rng(0)
    terms = [(rng.normal(size=(12, 10)), rng.normal(size=(9, 7))) for _ in range(3)]
    W = sum(c * np.kron(A, B) for c, (A, B) in zip((4.0, 2.0, 1.0), terms, strict=True))
    W = (W + 1e-3 * rng.normal(size=W.shape)).astype(np.float32)
    t = sk.nkp(da.from_array(W, chunks=(50, 31)), (12, 10), rank=2, random_state=0)
    ref = sk.nkp(W, (12, 10), rank=2, method="randomized", random_state=0)
    for f, g in zip(t.factors, ref.factors, strict=True):
        assert np.abs(f - g).max() <= 1e3 * _eps(np.float32) * np.abs(g).max()


def test_dask_sekron_first_level_out_of_core():
    """Same ranks, same seed: the in-memory fit through the randomized first level."""
    rng = np.random.default_rng(1)
    shapes = [(24, 24), (2, 2), (2, 2)]
    W = sk.kron(*[rng.normal(size=s) for s in shapes]) + 0.3 * sk.kron(
        *[rng.normal(size=s) for s in shapes]
    )
    W = W + 1e-6 * rng.normal(size=W.shape)
    t = sk.sekron(da.from_array(W, chunks=20), shapes, ranks=(2, 2), random_state=0)
    # in memory the first level of a 576 x 16 rearrangement is a full SVD; the
    # reference is the exact fit, which a rank-2 level 1 reaches here
    ref = sk.sekron(W, shapes, ranks=(2, 2), random_state=0)
    assert t.structure == ref.structure
    assert abs(t.error_bound - _true_error(W, t)) <= 1e-9 * np.linalg.norm(W)
    # the randomized level 1 is optimal up to the noise floor's share of ‖W‖
    assert abs(t.error_bound - ref.error_bound) <= 1e-8 * np.linalg.norm(W)
    assert np.allclose(t.to_dense(), ref.to_dense(), atol=1e-8 * np.abs(W).max())
    # level-1 factors are orthonormal, as in memory
    A1 = t.factors[0].reshape(2, -1)
    assert np.allclose(A1 @ A1.T, np.eye(2), atol=1e-12)


def test_dask_nkp_two_factor_sekron_matches_nkp():
    W = np.random.default_rng(2).normal(size=(30, 24))
    Wd = da.from_array(W, chunks=(10, 8))
    t = sk.sekron(Wd, [(6, 4), (5, 6)], ranks=3, random_state=5)
    u = sk.nkp(Wd, (6, 4), rank=3, random_state=5)
    assert t.error_bound == pytest.approx(u.error_bound, rel=1e-12)
    assert np.allclose(t.to_dense(), u.to_dense(), atol=1e-12 * np.abs(W).max())


def test_dask_input_is_not_computed_into_memory_options_refused():
    Wd = da.from_array(np.ones((8, 8)), chunks=4)
    with pytest.raises(ArgumentError, match="tol"):
        sk.nkp(Wd, (2, 2), tol=0.1)
    with pytest.raises(ArgumentError, match="gram"):
        sk.nkp(Wd, (2, 2), gram=np.eye(8))
    with pytest.raises(ArgumentError, match="method"):
        sk.nkp(Wd, (2, 2), method="full")
    with pytest.raises(ArgumentError, match="refine"):
        sk.sekron(Wd, [(2, 2), (2, 2), (2, 2)], ranks=(1, 1), refine=2)
    with pytest.raises(RankError, match="ranks"):
        sk.sekron(Wd, [(2, 2), (2, 2), (2, 2)])
    with pytest.raises(DTypeError):
        sk.nkp(da.from_array(np.ones((4, 4), dtype=complex), chunks=2), (2, 2))


def test_dask_nonfinite_is_an_error():
    W = np.ones((8, 8))
    W[3, 5] = np.nan
    with pytest.raises(NonFiniteError, match="1 NaN"):
        sk.nkp(da.from_array(W, chunks=4), (2, 2))


def test_integer_dask_array_becomes_float64():
    W = np.arange(36).reshape(6, 6)
    t = sk.nkp(da.from_array(W, chunks=3), (3, 2), rank=2, random_state=0)
    assert t.dtype == np.float64
    # norm² − Σσ² cancels: the certificate holds to eps·‖W‖², as in memory
    slack = 4 * 12 * _eps(np.float64) * float(np.sum(W.astype(float) ** 2))
    assert abs(t.error_bound**2 - _true_error(W, t) ** 2) <= slack


def _kron_sum_lazy(terms, rows):
    """``Σ_r A_r ⊗ B_r`` (float32) as a dask array of full-width chunks of ``rows`` rows,
    each built from the small factors alone."""
    terms = [(A.astype(np.float32), B.astype(np.float32)) for A, B in terms]
    m2 = terms[0][1].shape[0]
    m, n = (terms[0][0].shape[k] * terms[0][1].shape[k] for k in (0, 1))

    def make(block_info=None):
        r0, r1 = block_info[None]["array-location"][0]
        out = np.kron(terms[0][0][r0 // m2 : r1 // m2], terms[0][1])
        for A, B in terms[1:]:
            out += np.kron(A[r0 // m2 : r1 // m2], B)
        return out

    return da.map_blocks(make, dtype=np.float32, chunks=((rows,) * (m // rows), (n,)))


@pytest.mark.slow  # a cluster start and ten passes over 384 MiB: 15-45 s on 2 loaded cores
def test_matrix_larger_than_a_worker_memory_limit():
    """384 MiB of float32 through workers limited to 256 MiB each: no worker restarts."""
    rng = np.random.default_rng(0)
    terms = [(c * rng.normal(size=(128, 96)), rng.normal(size=(64, 128))) for c in (3, 2, 1)]
    W = _kron_sum_lazy(terms, rows=128)  # 8192 x 12288, chunks of 6 MiB
    assert W.nbytes == 384 * 2**20
    # independent reference: R(W) = Σ vec(A_r) vec(B_r)ᵀ, whose spectrum the QRs give
    _, Ra = np.linalg.qr(np.stack([A.ravel() for A, _ in terms], axis=1))
    _, Rb = np.linalg.qr(np.stack([B.ravel() for _, B in terms], axis=1))
    sigma = np.linalg.svd(Ra @ Rb.T, compute_uv=False)
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            memory_limit="256MiB",
            processes=True,
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
        dask.config.set(scheduler=client.get),
    ):
        workers = set(client.scheduler_info()["workers"])
        assert W.nbytes > max(
            w["memory_limit"] for w in client.scheduler_info()["workers"].values()
        )
        t = sk.nkp(W, (128, 96), rank=2, random_state=0)
        assert set(client.scheduler_info()["workers"]) == workers  # nobody was restarted
    assert [f.shape for f in t.factors] == [(2, 128, 96), (2, 64, 128)]
    assert t.error_bound == pytest.approx(sigma[2], rel=1e-3)
    assert t.reference_norm == pytest.approx(np.linalg.norm(sigma), rel=1e-5)


def test_import_sekron_imports_no_dask():
    import subprocess
    import sys

    code = (
        "import sys, sekron, sekron.decompose; "
        "print(any(m == 'distributed' or m.split('.')[0] == 'dask' for m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr
