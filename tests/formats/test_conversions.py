"""Exact conversions between SeKron tensors and TT, TR, CP, Tucker and TT-matrices.

References are tensorly's own reconstructions (``tt_to_tensor`` etc.) evaluated in float64
on the same numbers. Tolerances: a contraction that sums products of N numbers over m
terms has a rounding error of at most ``γ_m Σ|terms|`` with ``γ_m ≈ m eps``; the bound
used is normwise, ``||ours − ref|| <= 4 m eps ||ref(|cores|)||`` with m the order plus
all bond and mode sizes (the latter cover the QR of the exact fall-backs).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tensorly as tl
from hypothesis import given, settings
from hypothesis import strategies as st

import sekron as sk
from sekron.formats import (
    from_cp,
    from_tr,
    from_tt,
    from_tt_matrix,
    from_tucker,
    to_tr,
    to_tt,
    to_tt_matrix,
)
from sekron.testing import strategies as sks

SETTINGS = settings(max_examples=30, deadline=None)


def _eps(dtype) -> float:
    return float(np.finfo(dtype).eps)


def _assert_close(ours: np.ndarray, ref: np.ndarray, absref: np.ndarray, m: int, dtype) -> None:
    assert ours.shape == ref.shape
    err = float(np.linalg.norm((ours.astype(np.float64) - ref).ravel()))
    bound = 4 * m * _eps(dtype) * float(np.linalg.norm(absref.ravel())) + np.finfo(np.float64).tiny
    assert err <= bound, (err, bound)


def _abs64(cores):
    return [np.abs(np.asarray(c, dtype=np.float64)) for c in cores]


def _m_chain(cores) -> int:
    return len(cores) + sum(int(np.prod(c.shape)) for c in cores)


# -- formats -> SeKron ----------------------------------------------------------------


@SETTINGS
@given(sks.tt_tensors())
def test_from_tt_reconstructs_tt_to_tensor(tt):
    cores = list(tt.factors)
    dtype = cores[0].dtype
    t = from_tt(tt)
    assert t.dtype == dtype
    ref = tl.tt_to_tensor([c.astype(np.float64) for c in cores])
    dense = t.to_dense()
    assert dense.shape == ref.shape == tt.shape
    _assert_close(dense, ref, tl.tt_to_tensor(_abs64(cores)), _m_chain(cores), dtype)


@pytest.mark.parametrize(
    "shape,rank", [((3, 4, 5), (1, 2, 3, 1)), ((4, 4, 4, 4), (1, 3, 4, 2, 1)), ((5, 6), (1, 4, 1))]
)
def test_from_tt_mirrors_cores_entry_for_entry(shape, rank):
    tt = tl.random.random_tt(shape, rank=rank, random_state=1)
    t = from_tt(tt)
    assert t.structure.ranks == tuple(rank[1:-1])
    assert t.structure.shapes == tuple(
        tuple(n if j == k else 1 for j in range(len(shape))) for k, n in enumerate(shape)
    )
    N = len(shape)
    for k, (G, A) in enumerate(zip(tt.factors, t.factors, strict=True)):
        A = A.reshape((*A.shape[: min(k + 1, N - 1)], shape[k]))
        if k == 0:
            assert np.array_equal(A, G[0].T)
        elif k < N - 1:
            # A_k[r_1..r_k] = G_k[r_{k-1}, :, r_k] for every earlier prefix
            assert np.array_equal(
                A.reshape(-1, rank[k], rank[k + 1], shape[k]),
                np.broadcast_to(
                    G.transpose(0, 2, 1), (A.size // G.size, *G.transpose(0, 2, 1).shape)
                ),
            )
        else:
            assert np.array_equal(
                A.reshape(-1, rank[k], shape[k]),
                np.broadcast_to(G[:, :, 0], (A.size // G[:, :, 0].size, *G[:, :, 0].shape)),
            )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape,rank",
    [
        ((2, 2, 2, 2), (1, 2, 4, 2, 1)),
        ((2, 3), (1, 5, 1)),
        ((3, 2, 2), (1, 3, 4, 1)),
        ((4,), (1, 1)),
    ],
)
def test_from_tt_ranks_above_mode_size_are_exact(shape, rank, dtype):
    """TT ranks above n_k (or above the later modes' size) take the exact fall-back."""
    tt = tl.random.random_tt(shape, rank=rank, random_state=2)
    cores = [c.astype(dtype) for c in tt.factors]
    t = from_tt(cores)
    assert t.dtype == dtype
    assert all(r <= m for r, m in zip(t.structure.ranks, t.structure.max_ranks, strict=True))
    ref = tl.tt_to_tensor([c.astype(np.float64) for c in cores])
    _assert_close(t.to_dense(), ref, tl.tt_to_tensor(_abs64(cores)), _m_chain(cores), dtype)


@SETTINGS
@given(sks.tr_tensors())
def test_from_tr_reconstructs_tr_to_tensor(tr):
    cores = list(tr.factors)
    t = from_tr(tr)
    assert t.dtype == cores[0].dtype
    ref = tl.tr_to_tensor([c.astype(np.float64) for c in cores])
    _assert_close(
        t.to_dense(), ref, tl.tr_to_tensor(_abs64(cores)), _m_chain(cores) * 2, cores[0].dtype
    )


def test_from_tr_folds_the_loop_into_the_first_level():
    tr = tl.random.random_tr((6, 3, 4), rank=(2, 3, 2, 2), random_state=0)
    t = from_tr(tr)
    assert t.structure.ranks == (6, 2)
    G1, _, G3 = tr.factors
    A1 = t.factors[0].reshape(2, 3, 6)  # (a, r_1, n_1)
    assert np.array_equal(A1, G1.transpose(0, 2, 1))
    A3 = t.factors[2].reshape(2, 3, 2, 4)  # (a, r_1, r_2, n_3)
    for a in range(2):
        assert np.array_equal(A3[a, 0], G3[:, :, a])


@SETTINGS
@given(sks.cp_tensors())
def test_from_cp_reconstructs_cp_to_tensor(cp):
    w, factors = cp.weights, list(cp.factors)
    t = from_cp(cp)
    assert t.dtype == factors[0].dtype
    ref = tl.cp_to_tensor((w.astype(np.float64), [f.astype(np.float64) for f in factors]))
    absref = tl.cp_to_tensor((np.abs(w.astype(np.float64)), _abs64(factors)))
    m = len(factors) + cp.rank * (2 + len(factors)) + sum(f.size for f in factors)
    _assert_close(t.to_dense(), ref, absref, m, factors[0].dtype)


def test_from_cp_structure_and_weights():
    cp = tl.random.random_cp((5, 4, 3), rank=3, random_state=0)
    cp.weights = np.array([1.0, -2.0, 0.5])
    t = from_cp(cp)
    assert t.structure.ranks == (3, 1)
    assert np.array_equal(t.factors[0].reshape(3, 5), (cp.factors[0] * cp.weights).T)
    assert np.array_equal(t.factors[2].reshape(3, 3), cp.factors[2].T)
    # weights=None means ones, a 1-d factor means rank 1
    t1 = from_cp((None, [np.arange(3.0), np.arange(2.0)]))
    assert np.array_equal(t1.to_dense(), np.outer(np.arange(3.0), np.arange(2.0)))


@SETTINGS
@given(sks.tucker_tensors())
def test_from_tucker_reconstructs_tucker_to_tensor(tk):
    core, factors = tk.core, list(tk.factors)
    t = from_tucker(tk)
    assert t.dtype == core.dtype
    ref = tl.tucker_to_tensor((core.astype(np.float64), [f.astype(np.float64) for f in factors]))
    absref = tl.tucker_to_tensor((np.abs(core.astype(np.float64)), _abs64(factors)))
    m = len(factors) + core.size + sum(f.size for f in factors)
    _assert_close(t.to_dense(), ref, absref, m, core.dtype)


def test_from_tucker_copies_factors_and_absorbs_core_in_last():
    tk = tl.random.random_tucker((5, 4, 3), rank=(2, 3, 2), random_state=3)
    t = from_tucker(tk)
    assert t.structure.ranks == (2, 3)
    assert np.array_equal(t.factors[0].reshape(2, 5), tk.factors[0].T)
    assert np.array_equal(t.factors[1].reshape(2, 3, 4)[1], tk.factors[1].T)
    np.testing.assert_allclose(
        t.factors[2].reshape(2, 3, 3),
        np.einsum("abc,kc->abk", tk.core, tk.factors[2]),
        rtol=0,
        atol=8 * _eps(np.float64) * float(np.abs(tk.core).sum() * np.abs(tk.factors[2]).max()),
    )


@SETTINGS
@given(sks.tt_matrices())
def test_from_tt_matrix_reconstructs_tt_matrix_to_matrix(ttm):
    cores = list(ttm.factors)
    t = from_tt_matrix(ttm)
    assert t.dtype == cores[0].dtype and t.ndim == 2
    ref = tl.tt_matrix_to_matrix([c.astype(np.float64) for c in cores])
    _assert_close(
        t.to_dense(), ref, tl.tt_matrix_to_matrix(_abs64(cores)), _m_chain(cores), cores[0].dtype
    )


def test_from_tt_matrix_is_a_kronecker_product_at_rank_one():
    ttm = tl.random.random_tt_matrix((2, 3, 4, 2), rank=1, random_state=0)
    A, B = ttm.factors[0][0, :, :, 0], ttm.factors[1][0, :, :, 0]
    t = from_tt_matrix(ttm)
    assert t.structure.shapes == ((2, 4), (3, 2))
    np.testing.assert_allclose(t.to_dense(), np.kron(A, B), rtol=0, atol=0)


# -- SeKron -> TT / TT-matrix ---------------------------------------------------------


@st.composite
def sekron_tensors(draw, ndim=None):
    """Random SeKron tensors: S factors of small shapes, ranks up to the useful maximum."""
    N = draw(st.integers(1, 3)) if ndim is None else ndim
    S = draw(st.integers(2, 4))
    shapes = [tuple(draw(st.integers(1, 3)) for _ in range(N)) for _ in range(S)]
    if all(np.prod(s) == 1 for s in shapes):
        shapes[0] = (2, *shapes[0][1:])
    base = sk.Structure(shapes)
    ranks = tuple(draw(st.integers(1, m)) for m in base.max_ranks)
    st_ = base.with_ranks(ranks)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return sk.SeKronTensor([rng.standard_normal(s).astype(dtype) for s in st_.factor_shapes])


def _sekron_abs(t: sk.SeKronTensor) -> np.ndarray:
    return sk.SeKronTensor([np.abs(f.astype(np.float64)) for f in t.factors]).to_dense()


def _m_sekron(t: sk.SeKronTensor) -> int:
    return t.structure.n_factors + sum(t.structure.instances) + sum(t.structure.sizes)


@SETTINGS
@given(sekron_tensors())
def test_to_tt_rearranged_reconstructs_the_sekron_tensor(t):
    tt = to_tt(t)
    assert all(c.dtype == t.dtype for c in tt.factors)
    st_ = t.structure
    assert tt.rank == (1, *st_.instances[:-1], 1)
    assert sum(np.count_nonzero(c) for c in tt.factors) <= st_.n_params
    ref = sk.SeKronTensor([f.astype(np.float64) for f in t.factors]).to_dense()
    dense = sk.unrearrange(tl.tt_to_tensor(tt), st_.shapes)
    _assert_close(dense, ref, _sekron_abs(t), _m_sekron(t), t.dtype)


@SETTINGS
@given(sekron_tensors())
def test_to_tt_modes_reconstructs_the_dense_tensor(t):
    tt = to_tt(t, layout="modes")
    assert all(c.dtype == t.dtype for c in tt.factors)
    ref = sk.SeKronTensor([f.astype(np.float64) for f in t.factors]).to_dense()
    assert tt.shape == t.shape
    # The dense fall-back (TT-SVD) drops singular values below eps * size * σ_1 per step.
    m = _m_sekron(t) + t.ndim * int(np.prod(t.shape))
    _assert_close(tl.tt_to_tensor(tt), ref, _sekron_abs(t), m, t.dtype)


def test_to_tt_modes_is_structured_for_mode_ordered_factors():
    rng = np.random.default_rng(0)
    # factors on modes 0, 0, 1, (trivial), 2: cores merge per mode with bonds P_k
    shapes = [(2, 1, 1), (3, 1, 1), (1, 4, 1), (1, 1, 1), (1, 1, 2)]
    st_ = sk.Structure(shapes, (2, 3, 2, 1))
    t = sk.SeKronTensor([rng.standard_normal(s) for s in st_.factor_shapes])
    tt = to_tt(t, layout="modes")
    assert tt.shape == (6, 4, 2)
    assert tt.rank == (1, 6, 12, 1)
    np.testing.assert_allclose(
        tl.tt_to_tensor(tt),
        t.to_dense(),
        rtol=0,
        atol=4 * _m_sekron(t) * _eps(np.float64) * float(np.linalg.norm(_sekron_abs(t))),
    )


@SETTINGS
@given(sekron_tensors(ndim=2))
def test_to_tt_matrix_reconstructs_the_sekron_matrix(t):
    ttm = to_tt_matrix(t)
    assert all(c.dtype == t.dtype for c in ttm.factors)
    ref = sk.SeKronTensor([f.astype(np.float64) for f in t.factors]).to_dense()
    _assert_close(tl.tt_matrix_to_matrix(ttm), ref, _sekron_abs(t), _m_sekron(t), t.dtype)


@SETTINGS
@given(sekron_tensors())
def test_to_tr_is_the_tt_as_a_ring(t):
    tr = to_tr(t)
    ref = sk.SeKronTensor([f.astype(np.float64) for f in t.factors]).to_dense()
    dense = tl.tr_to_tensor(tr)
    if len(tr.factors) > t.structure.n_factors:  # the padded trailing mode of size 1
        dense = dense[..., 0]
    _assert_close(
        sk.unrearrange(dense.reshape(t.structure.sizes), t.structure.shapes),
        ref,
        _sekron_abs(t),
        _m_sekron(t),
        t.dtype,
    )


# -- round trips ------------------------------------------------------------------------


@SETTINGS
@given(
    st.one_of(
        sks.tt_tensors(min_order=2).map(lambda x: (from_tt, tl.tt_to_tensor, x)),
        sks.tr_tensors().map(lambda x: (from_tr, tl.tr_to_tensor, x)),
        sks.cp_tensors(min_order=2).map(lambda x: (from_cp, tl.cp_to_tensor, x)),
        sks.tucker_tensors().map(lambda x: (from_tucker, tl.tucker_to_tensor, x)),
    )
)
def test_format_to_sekron_to_tt_round_trip(case):
    """X -> SeKron -> TT: the TT of the mode-wise SeKron is the TT of the dense tensor."""
    conv, to_tensor, x = case
    t = conv(x)
    tt = to_tt(t)
    assert tt.shape == t.shape  # factor k lives on mode k: T is the dense tensor
    ref = to_tensor(x)
    absref = _sekron_abs(t)
    _assert_close(
        tl.tt_to_tensor(tt),
        ref.astype(np.float64),
        absref,
        4 * _m_sekron(t) + int(np.prod(t.shape)),
        t.dtype,
    )
    back = from_tt(tt)
    _assert_close(
        back.to_dense(),
        ref.astype(np.float64),
        absref,
        8 * _m_sekron(t) + int(np.prod(t.shape)),
        t.dtype,
    )


@SETTINGS
@given(sks.tt_matrices(min_order=2))
def test_tt_matrix_round_trip(ttm):
    t = from_tt_matrix(ttm)
    back = to_tt_matrix(t)
    ref = tl.tt_matrix_to_matrix([c.astype(np.float64) for c in ttm.factors])
    _assert_close(tl.tt_matrix_to_matrix(back), ref, _sekron_abs(t), 4 * _m_sekron(t), t.dtype)


# -- dtype, inputs untouched, import hygiene ------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept_everywhere(dtype):
    tt = [c.astype(dtype) for c in tl.random.random_tt((3, 4, 2), rank=2, random_state=0).factors]
    cp = tl.random.random_cp((3, 4, 2), rank=2, random_state=0)
    cp = ((cp.weights.astype(dtype)), [f.astype(dtype) for f in cp.factors])
    tk = tl.random.random_tucker((3, 4, 2), rank=(2, 2, 2), random_state=0)
    tk = (tk.core.astype(dtype), [f.astype(dtype) for f in tk.factors])
    tr = [
        c.astype(dtype)
        for c in tl.random.random_tr((3, 4, 2), rank=(2, 2, 2, 2), random_state=0).factors
    ]
    ttm = [
        c.astype(dtype)
        for c in tl.random.random_tt_matrix((2, 2, 3, 2), rank=2, random_state=0).factors
    ]
    for t in (from_tt(tt), from_cp(cp), from_tucker(tk), from_tr(tr), from_tt_matrix(ttm)):
        assert t.dtype == dtype
        assert all(c.dtype == dtype for c in to_tt(t).factors)
        assert all(c.dtype == dtype for c in to_tt(t, layout="modes").factors)
        assert all(c.dtype == dtype for c in to_tr(t).factors)
    assert all(c.dtype == dtype for c in to_tt_matrix(from_tt_matrix(ttm)).factors)


def test_integer_cores_become_float64():
    t = from_tt([np.ones((1, 2, 2), dtype=np.int32), np.ones((2, 3, 1), dtype=np.int64)])
    assert t.dtype == np.float64
    assert np.array_equal(t.to_dense(), np.full((2, 3), 2.0))


def test_inputs_are_not_modified():
    tt = tl.random.random_tt((2, 2, 2, 2), rank=(1, 2, 4, 2, 1), random_state=0)  # QR fall-back
    before = [c.copy() for c in tt.factors]
    from_tt(tt)
    assert all(np.array_equal(a, b) for a, b in zip(before, tt.factors, strict=True))
    tk = tl.random.random_tucker((2, 3), rank=(3, 2), random_state=0)  # train fall-back
    before = [tk.core.copy(), *[f.copy() for f in tk.factors]]
    from_tucker(tk)
    assert all(np.array_equal(a, b) for a, b in zip(before, [tk.core, *tk.factors], strict=True))


def test_import_sekron_does_not_import_tensorly():
    code = "import sys, sekron; sekron.Structure; assert 'tensorly' not in sys.modules; sekron.formats; assert 'tensorly' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_names():
    import sekron.formats as fm

    assert set(fm.__all__) == {
        "from_tt",
        "to_tt",
        "from_tr",
        "to_tr",
        "from_cp",
        "to_cp",
        "from_tucker",
        "to_tucker",
        "from_tt_matrix",
        "to_tt_matrix",
        "tt_structure",
        "tr_structure",
        "cp_structure",
        "tucker_structure",
    }
    assert sk.formats.from_tt is fm.from_tt
