"""Data-aware fits (``gram=``): optimality against separately written references,
monotone ALS, certificates, ridge, bad Gram matrices, files, a real layer."""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sekron as sk
from sekron import _datafit
from sekron.errors import DTypeError, NonFiniteError, ShapeError

EPS = float(np.finfo(np.float64).eps)


# -- independent references -----------------------------------------------------------------
def data_err(W, What, C) -> float:
    """sqrt(tr(E C Eᵀ)) through a symmetric square root of C (not the code's formula)."""
    w, V = np.linalg.eigh(C)
    L = V * np.sqrt(np.clip(w, 0.0, None))
    E = (np.asarray(W, np.float64) - np.asarray(What, np.float64)).reshape(W.shape[0], -1)
    return float(np.linalg.norm(E @ L))


def whitened_svd_optimum(W2, C, R):
    """min over rank-R Ŵ of ‖(W − Ŵ) L‖ by an SVD of W L with L the Cholesky factor."""
    L = np.linalg.cholesky(C)
    U, s, _ = np.linalg.svd(W2 @ L, full_matrices=False)
    return math.sqrt(float(np.sum(s[R:] ** 2))), U[:, :R] @ (U[:, :R].T @ W2)


def kron_rearrange(M, m1, n1, m2, n2):
    """R[(i1, j1), (i2, j2)] = M[i1 m2 + i2, j1 n2 + j2], written with explicit loops."""
    out = np.empty((m1 * n1, m2 * n2))
    for i1 in range(m1):
        for j1 in range(n1):
            block = M[i1 * m2 : (i1 + 1) * m2, j1 * n2 : (j1 + 1) * n2]
            out[i1 * n1 + j1] = block.ravel()
    return out


def kron_c_optimum(W2, C1, C2, m1, n1, m2, n2, R):
    """Exact optimum for C = C1 ⊗ C2: truncated SVD of the rearranged W (L1 ⊗ L2)."""
    L = np.kron(np.linalg.cholesky(C1), np.linalg.cholesky(C2))
    s = np.linalg.svd(kron_rearrange(W2 @ L, m1, n1, m2, n2), compute_uv=False)
    return math.sqrt(float(np.sum(s[R:] ** 2)))


def spd(rng, n, samples=None, spread=2.0):
    """A Gram X Xᵀ of correlated inputs with unequal feature scales."""
    samples = 3 * n if samples is None else samples
    X = rng.normal(size=(n, samples)) * np.exp(spread * rng.normal(size=(n, 1)))
    X = rng.normal(size=(n, n)) @ X / math.sqrt(n)
    return X @ X.T


def dense_kron_sum(A, B):
    return sum(np.kron(a, b) for a, b in zip(A, B, strict=True))


problems = st.tuples(
    st.integers(1, 4),  # m1
    st.integers(1, 4),  # n1
    st.integers(1, 4),  # m2
    st.integers(1, 4),  # n2
    st.integers(0, 2**32 - 1),
)


# -- low rank ---------------------------------------------------------------------------------
@settings(max_examples=20)
@given(st.integers(2, 12), st.integers(2, 12), st.integers(0, 2**32 - 1), st.booleans())
def test_low_rank_equals_whitened_svd(m, n, seed, mirror):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(m, n))
    C = spd(rng, n)
    R = int(rng.integers(1, min(m, n) + 1))
    shape_a = (1, n) if mirror else (m, 1)
    t = sk.nkp(W, shape_a, rank=R, gram=C, ridge=0.0)
    opt, What = whitened_svd_optimum(W, C, R)
    scale = data_err(W, 0 * W, C)
    assert t.data_error_bound == pytest.approx(opt, abs=1e4 * n * EPS * scale)
    # the optimum is unique when the spectrum has a gap at R: compare Ŵ in the data norm
    assert data_err(What, t.to_dense(), C) <= 1e-5 * scale + 1e3 * math.sqrt(EPS) * opt


def test_low_rank_conv_kernel_uses_im2col_order():
    rng = np.random.default_rng(1)
    W = rng.normal(size=(6, 3, 2, 2))  # (F, C, Kh, Kw): input features in (C, Kh, Kw) order
    C = spd(rng, 12)
    t = sk.nkp(W, (6, 1, 1, 1), rank=3, gram=C, ridge=0.0)
    opt, _ = whitened_svd_optimum(W.reshape(6, 12), C, 3)
    assert t.data_error_bound == pytest.approx(opt, rel=1e-8)
    assert t.data_error_bound == pytest.approx(data_err(W, t.to_dense(), C), rel=1e-10)


# -- Kronecker-product C ----------------------------------------------------------------------
@settings(max_examples=20)
@given(problems)
def test_kronecker_gram_gives_exact_optimum(p):
    m1, n1, m2, n2, seed = p
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(m1 * m2, n1 * n2))
    C1, C2 = spd(rng, n1), spd(rng, n2)
    R = int(rng.integers(1, min(m1 * n1, m2 * n2) + 1))
    t = sk.nkp(W, (m1, n1), rank=R, gram=np.kron(C1, C2), ridge=0.0, sweeps=0)
    opt = kron_c_optimum(W, C1, C2, m1, n1, m2, n2, R)
    scale = data_err(W, 0 * W, np.kron(C1, C2))
    assert t.data_error_bound <= opt + 1e-7 * scale
    assert t.data_error_bound >= opt - 1e-7 * scale  # an optimum cannot be beaten


def test_kronecker_gram_of_a_3d_tensor_in_interleaved_order():
    """W (m, p, q) with input index (x2, x3), x_k = i_k b_k + j_k: C = kron(C1, C2) in
    the (i2, i3 | j2, j3) order, mapped back to C-order."""
    rng = np.random.default_rng(3)
    a, b = (2, 2, 3), (3, 2, 2)
    W = rng.normal(size=(6, 4, 6))
    n1, n2 = 2 * 3, 2 * 2
    C1, C2 = spd(rng, n1), spd(rng, n2)
    Ct = np.kron(C1, C2)
    pos = np.empty(24, dtype=int)
    for x2 in range(4):
        for x3 in range(6):
            i2, j2, i3, j3 = x2 // 2, x2 % 2, x3 // 2, x3 % 2
            pos[x2 * 6 + x3] = (i2 * 3 + i3) * n2 + (j2 * 2 + j3)
    C = Ct[np.ix_(pos, pos)]
    W2 = np.empty((6, 24))
    W2[:, pos] = W.reshape(6, 24)
    t = sk.nkp(W, a, rank=3, gram=C, ridge=0.0, sweeps=0)
    opt = kron_c_optimum(W2, C1, C2, a[0], n1, b[0], n2, 3)
    assert t.data_error_bound == pytest.approx(opt, rel=1e-7)
    assert t.shape == W.shape


# -- general C: ALS ---------------------------------------------------------------------------
def _monotone_trace(p, direct: bool, monkeypatch):
    m1, n1, m2, n2, seed = p
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(m1 * m2, n1 * n2))
    C = spd(rng, n1 * n2)
    R = int(rng.integers(1, min(m1 * n1, m2 * n2) + 1))
    lam = 1e-6 * np.trace(C) / C.shape[0]
    Cr = C + lam * np.eye(C.shape[0])
    if not direct:
        monkeypatch.setattr(_datafit, "_DIRECT_FLOPS", -1.0)  # force the CG path
    P = _datafit._Problem(W, (m1, n1), (m2, n2), C, lam)
    plain = sk.nkp(W, (m1, n1), rank=R)
    A0, B0 = plain.factors
    values = [data_err(W, dense_kron_sum(A0, B0), Cr)]
    _datafit.als(
        P,
        A0.copy(),
        B0.copy(),
        10,
        rtol=0.0,
        callback=lambda A, B: values.append(data_err(W, dense_kron_sum(A, B), Cr)),
    )
    return values, data_err(W, 0 * W, Cr)


@settings(max_examples=15)
@given(problems, st.booleans())
def test_als_objective_never_increases(p, direct):
    with pytest.MonkeyPatch.context() as mp:
        values, scale = _monotone_trace(p, direct, mp)
    # squared objectives, to the rounding of their evaluation, eps relative to ‖W L‖²
    slack = 1e3 * EPS * scale**2
    assert all(b**2 <= a**2 + slack for a, b in itertools.pairwise(values)), values


@settings(max_examples=20)
@given(problems, st.sampled_from([np.float64, np.float32]))
def test_certificate_is_true_and_never_above_plain(p, dtype):
    m1, n1, m2, n2, seed = p
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(m1 * m2, n1 * n2)).astype(dtype)
    C = spd(rng, n1 * n2)
    R = int(rng.integers(1, min(m1 * n1, m2 * n2) + 1))
    plain = sk.nkp(W, (m1, n1), rank=R)
    t = sk.nkp(W, (m1, n1), rank=R, gram=C)
    assert t.dtype == dtype
    true = data_err(W, t.to_dense(), C)
    scale = data_err(W, 0 * W, C)
    # Ŵ evaluated in the factors' dtype (to_dense) or exactly differs by its rounding, and
    # tr(E C Eᵀ) itself is evaluated to about n·eps·‖C‖₂·‖E‖² (squared values compared)
    tol = 1e2 * n1 * n2 * float(np.finfo(dtype).eps) * scale
    E_sq = float(np.sum((W.astype(np.float64) - t.to_dense()) ** 2))
    slack = 1e2 * n1 * n2 * EPS * float(np.linalg.norm(C, 2)) * E_sq + 2 * tol * (true + tol)
    assert abs(t.data_error_bound**2 - true**2) <= slack
    assert t.data_reference_norm == pytest.approx(scale, rel=1e-10)
    weight_tol = 1e2 * n1 * n2 * float(np.finfo(dtype).eps) * float(np.linalg.norm(W))
    assert t.error_bound == pytest.approx(
        float(np.linalg.norm(W.astype(np.float64) - t.to_dense())), abs=weight_tol
    )
    assert t.data_error_bound <= data_err(W, plain.to_dense(), C) + tol
    assert t.data_relative_error == pytest.approx(t.data_error_bound / scale, rel=1e-12)


def test_general_gram_improves_over_plain_and_whitened_start():
    rng = np.random.default_rng(7)
    W = rng.normal(size=(16, 24))
    C = spd(rng, 24, spread=1.5)
    plain = sk.nkp(W, (4, 4), rank=3)
    start = sk.nkp(W, (4, 4), rank=3, gram=C, sweeps=0)
    fitted = sk.nkp(W, (4, 4), rank=3, gram=C, sweeps=30)
    p, s, f = (data_err(W, t.to_dense(), C) for t in (plain, start, fitted))
    assert f <= s <= p
    assert f < 0.9 * p  # correlated inputs: the plain fit is far from the data optimum


@settings(max_examples=15)
@given(problems, st.floats(0.5, 4.0))
def test_scaled_identity_gives_todays_fit(p, c):
    m1, n1, m2, n2, seed = p
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(m1 * m2, n1 * n2))
    R = int(rng.integers(1, min(m1 * n1, m2 * n2) + 1))
    plain = sk.nkp(W, (m1, n1), rank=R)
    t = sk.nkp(W, (m1, n1), rank=R, gram=c * np.eye(n1 * n2))
    norm = float(np.linalg.norm(W))
    np.testing.assert_allclose(t.to_dense(), plain.to_dense(), atol=1e-9 * norm)
    assert t.error_bound == pytest.approx(plain.error_bound, abs=1e-9 * norm)
    assert t.data_error_bound == pytest.approx(math.sqrt(c) * t.error_bound, abs=1e-9 * norm)


def test_identity_gives_todays_sekron_fit():
    rng = np.random.default_rng(11)
    W = rng.normal(size=(8, 12))
    shapes = [(2, 2), (2, 3), (2, 2)]
    plain = sk.sekron(W, shapes, ranks=(2, 2), refine=2)
    t = sk.sekron(W, shapes, ranks=(2, 2), refine=2, gram=np.eye(12))
    np.testing.assert_array_equal(t.to_dense(), plain.to_dense())
    assert t.error_bound == pytest.approx(plain.error_bound, rel=1e-10)


# -- SeKron with S = 2 and S = 3 -------------------------------------------------------------
def test_sekron_two_factors_is_nkp():
    rng = np.random.default_rng(5)
    W = rng.normal(size=(12, 20))
    C = spd(rng, 20)
    a = sk.nkp(W, (3, 4), rank=3, gram=C)
    b = sk.sekron(W, [(3, 4), (4, 5)], ranks=3, gram=C)
    assert b.data_error_bound == pytest.approx(a.data_error_bound, rel=1e-10)


@settings(max_examples=10)
@given(st.integers(0, 2**32 - 1))
def test_sekron_three_factors_certificate_and_never_above_plain(seed):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(8, 12))
    C = spd(rng, 12)
    shapes = [(2, 2), (2, 3), (2, 2)]
    plain = sk.sekron(W, shapes, ranks=(2, 2))
    t = sk.sekron(W, shapes, ranks=(2, 2), gram=C)
    scale = data_err(W, 0 * W, C)
    assert t.data_error_bound == pytest.approx(data_err(W, t.to_dense(), C), abs=1e-9 * scale)
    assert t.data_error_bound <= data_err(W, plain.to_dense(), C) + 1e-9 * scale
    assert t.error_bound == pytest.approx(float(np.linalg.norm(W - t.to_dense())), rel=1e-10)


# -- ridge and rank-deficient C --------------------------------------------------------------
@pytest.mark.parametrize("ridge", [0.0, 1e-6])
@pytest.mark.parametrize("shape_a", [(4, 4), (16, 1), (1, 24)])
def test_rank_deficient_gram_stays_finite(ridge, shape_a):
    rng = np.random.default_rng(2)
    W = rng.normal(size=(16, 24))
    X = rng.normal(size=(24, 5))  # fewer samples than features
    X[3] = 0.0  # a dead feature
    C = X @ X.T
    rank = 3
    t = sk.nkp(W, shape_a, rank=rank, gram=C, ridge=ridge)
    for f in t.factors:
        assert np.all(np.isfinite(f))
    plain = sk.nkp(W, shape_a, rank=rank)
    scale = data_err(W, 0 * W, C)
    assert t.data_error_bound <= data_err(W, plain.to_dense(), C) + 1e-9 * scale
    assert t.data_error_bound == pytest.approx(data_err(W, t.to_dense(), C), abs=1e-7 * scale)


def test_default_ridge_does_not_bias_full_rank_gram():
    rng = np.random.default_rng(4)
    W = rng.normal(size=(10, 16))
    C = spd(rng, 16, spread=0.5)
    exact = sk.nkp(W, (10, 1), rank=4, gram=C, ridge=0.0).data_error_bound
    default = sk.nkp(W, (10, 1), rank=4, gram=C).data_error_bound
    assert default == pytest.approx(exact, rel=1e-4)


def test_zero_gram():
    W = np.arange(12.0).reshape(3, 4)
    t = sk.nkp(W, (3, 2), rank=1, gram=np.zeros((4, 4)))
    assert t.data_error_bound == 0.0 and t.data_relative_error == 0.0


# -- bad input ------------------------------------------------------------------------------
def _bad_grams():
    n = 6
    rng = np.random.default_rng(0)
    good = spd(rng, n)
    asym = good.copy()
    asym[0, 1] += 1e-3 * np.abs(good).max()
    not_psd = good - 2 * np.linalg.eigvalsh(good).max() * np.outer(np.ones(n), np.ones(n)) / n
    neg_diag = good.copy()
    neg_diag[2, 2] = -1.0
    nan = good.copy()
    nan[1, 1] = np.nan
    inf = good.copy()
    inf[0, 5] = inf[5, 0] = np.inf
    return [
        (np.ones((6, 5)), ShapeError),
        (np.eye(5), ShapeError),
        (np.ones(6), ShapeError),
        (asym, ShapeError),
        (not_psd, ShapeError),
        (neg_diag, ShapeError),
        (nan, NonFiniteError),
        (inf, NonFiniteError),
        (good.astype(complex), DTypeError),
    ]


@pytest.mark.parametrize("gram, error", _bad_grams())
@pytest.mark.parametrize("fit", ["nkp", "sekron"])
def test_bad_gram_is_rejected_and_left_unchanged(gram, error, fit):
    W = np.random.default_rng(1).normal(size=(4, 6))
    before_W, before_C = W.copy(), np.array(gram, copy=True)
    with pytest.raises(error, match="gram"):
        if fit == "nkp":
            sk.nkp(W, (2, 2), rank=1, gram=gram)
        else:
            sk.sekron(W, [(2, 2), (2, 3)], ranks=1, gram=gram)
    np.testing.assert_array_equal(W, before_W)
    np.testing.assert_array_equal(gram, before_C)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"ridge": -1.0}, ValueError),
        ({"ridge": np.nan}, ValueError),
        ({"ridge": "big"}, TypeError),
        ({"sweeps": -1}, ValueError),
        ({"sweeps": 1.5}, TypeError),
    ],
)
def test_bad_ridge_and_sweeps(kwargs, error):
    name = next(iter(kwargs))
    with pytest.raises(error, match=name):
        sk.nkp(np.eye(4), (2, 2), rank=1, gram=np.eye(4), **kwargs)


def test_rounding_asymmetry_and_tiny_negative_eigenvalues_are_accepted():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(8, 3)).astype(np.float32)
    C = X @ X.T  # float32, rank 3: eigenvalues ~ -eps32 and rounding asymmetry allowed
    C[0, 1] += 4 * float(np.finfo(np.float32).eps) * float(np.abs(C).max())
    t = sk.nkp(np.ones((4, 8)), (2, 2), rank=1, gram=C)
    assert np.isfinite(t.data_error_bound)


# -- files ----------------------------------------------------------------------------------
def test_data_fields_round_trip_and_old_files_load(tmp_path):
    rng = np.random.default_rng(0)
    W = rng.normal(size=(8, 8))
    t = sk.nkp(W, (2, 2), rank=2, gram=spd(rng, 8))
    path = os.path.join(tmp_path, "t.npz")
    t.save(path)
    back = sk.load(path)
    assert back.data_error_bound == t.data_error_bound
    assert back.data_reference_norm == t.data_reference_norm
    with np.load(path) as data:
        old = {k: data[k] for k in data.files if not k.startswith("data_")}
    old_path = os.path.join(tmp_path, "old.npz")
    np.savez(old_path, **old)
    legacy = sk.load(old_path)
    assert legacy.data_error_bound is None and legacy.data_relative_error is None
    assert legacy.error_bound == t.error_bound
    plain = sk.nkp(W, (2, 2), rank=2)
    assert plain.data_error_bound is None and plain.data_reference_norm is None


# -- a real layer ---------------------------------------------------------------------------
def test_real_layer_digits_mlp():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    path = os.path.join(os.path.dirname(sk.__file__), "data", "digits_mlp.npz")
    with np.load(path) as data:
        W = np.array(data["W1"], dtype=np.float64)  # (256 hidden, 64 pixels)
    X = sklearn_datasets.load_digits().data / 16.0  # (1797, 64) inputs of that layer
    C = X.T @ X
    assert W.shape[1] == C.shape[0]
    for shape_a, rank in [((16, 8), 4), ((256, 1), 8)]:
        plain = sk.nkp(W, shape_a, rank=rank)
        t = sk.nkp(W, shape_a, rank=rank, gram=C)
        out_err = float(np.linalg.norm((W - t.to_dense()) @ X.T))
        plain_err = float(np.linalg.norm((W - plain.to_dense()) @ X.T))
        assert t.data_error_bound == pytest.approx(out_err, rel=1e-6)
        assert out_err < 0.9 * plain_err  # dead corner pixels and correlated inputs


def test_conv_kernel_general_gram_and_three_factors():
    rng = np.random.default_rng(12)
    W = rng.normal(size=(8, 4, 3, 3))  # (F, C, Kh, Kw); im2col features (C, Kh, Kw)
    C = spd(rng, 36)
    scale = data_err(W, 0 * W, C)
    plain = sk.nkp(W, (4, 2, 3, 1), rank=4)
    t = sk.nkp(W, (4, 2, 3, 1), rank=4, gram=C)
    assert t.data_error_bound == pytest.approx(data_err(W, t.to_dense(), C), abs=1e-9 * scale)
    assert t.data_error_bound < data_err(W, plain.to_dense(), C)
    shapes = [(2, 2, 1, 3), (2, 2, 3, 1), (2, 1, 1, 1)]
    p3 = sk.sekron(W, shapes, ranks=(3, 2))
    t3 = sk.sekron(W, shapes, ranks=(3, 2), gram=C)
    assert t3.data_error_bound == pytest.approx(data_err(W, t3.to_dense(), C), abs=1e-9 * scale)
    assert t3.data_error_bound <= data_err(W, p3.to_dense(), C) + 1e-9 * scale
