"""SeKronTensor: a tensor stored as a sequence of Kronecker factors.

Factor k is one array of shape ``(R_1, ..., R_{min(k, S−1)}, *a^(k))``; the dense tensor
is the nested sum of DESIGN.md section 2.4. Containers check themselves once, when
built, and trust their invariants afterwards.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ._kron import unrearrange
from ._validation import as_float_array, as_nonnegative_float, as_path
from .contraction import matmul_factors, rmatmul_factors
from .errors import SekronError, ShapeError
from .files import NpzReader, save_npz
from .structure import Structure

__all__ = ["FILE_FORMAT", "FILE_VERSION", "SeKronTensor", "load", "read_tensor"]

FILE_FORMAT = "sekron.SeKronTensor"
FILE_VERSION = 1


def _infer_structure(factors: Sequence[np.ndarray]) -> Structure:
    S = len(factors)
    n_modes = factors[0].ndim - 1
    if n_modes < 1:
        raise ShapeError(
            f"factors[0]: expected shape (R_1, *a^(1)) with at least one mode, got {factors[0].shape}"
        )
    ranks = tuple(int(r) for r in factors[-1].shape[: S - 1])
    if factors[-1].ndim != S - 1 + n_modes:
        raise ShapeError(
            f"factors[{S - 1}]: expected {S - 1} rank axes and {n_modes} modes "
            f"(ndim {S - 1 + n_modes}), got shape {factors[-1].shape}"
        )
    shapes = []
    for k, f in enumerate(factors):
        n_rank = min(k + 1, S - 1)
        if f.ndim != n_rank + n_modes or tuple(f.shape[:n_rank]) != ranks[:n_rank]:
            raise ShapeError(
                f"factors[{k}]: expected shape (ranks {ranks[:n_rank]}, then {n_modes} modes), "
                f"got {f.shape}"
            )
        shapes.append(tuple(int(d) for d in f.shape[n_rank:]))
    try:
        return Structure(shapes, ranks)
    except Exception as exc:
        raise ShapeError(
            f"factors: shapes {shapes} with ranks {ranks} are not a valid structure: {exc}"
        ) from None


def _certificate(x: Any, name: str) -> float | None:
    """None, or a finite float >= 0 (a norm or a distance)."""
    return None if x is None else as_nonnegative_float(x, name)


class SeKronTensor:
    """A tensor held as a sequence of Kronecker factors (a SeKron decomposition).

    Parameters
    ----------
    factors : sequence of S >= 2 arrays
        Factor k has shape ``(R_1, ..., R_{min(k, S−1)}, *a^(k))`` (k counted from 1).
        They are converted to one common float dtype (float32 or float64) and copied.
    structure : Structure, optional
        If given, it must match the factors' shapes.
    error_bound : float, optional
        A certified Frobenius-norm distance to the tensor this decomposition approximates
        (set by :func:`sekron.sekron` and :func:`sekron.nkp`).
    reference_norm : float, optional
        Frobenius norm of that tensor, so that a relative error can be reported.
    data_error_bound : float, optional
        For a data-aware fit (``gram=`` of :func:`sekron.nkp`, :func:`sekron.sekron`): the
        data-weighted error ``‖(W − Ŵ) L‖_F = sqrt(tr((W − Ŵ) C (W − Ŵ)ᵀ))`` for the Gram
        matrix ``C = L Lᵀ`` of the inputs, computed exactly.
    data_reference_norm : float, optional
        ``‖W L‖_F``, so that a relative data error can be reported.

    Attributes
    ----------
    factors : tuple of ndarray
    structure : Structure
    shape, dtype, ndim, n_params, compression_ratio, error_bound, relative_error_bound,
    data_error_bound, data_reference_norm, data_relative_error

    Raises
    ------
    ShapeError
        If the factors' shapes do not form a structure.
    NonFiniteError, DTypeError
        For non-finite or non-numeric factors.

    Examples
    --------
    >>> import numpy as np
    >>> import sekron as sk
    >>> A, B = np.arange(4.0).reshape(1, 2, 2), np.ones((1, 3, 3))
    >>> t = sk.SeKronTensor([A, B])
    >>> t.shape, t.n_params
    ((6, 6), 13)
    >>> np.array_equal(t.to_dense(), np.kron(A[0], B[0]))
    True
    """

    __slots__ = (
        "_data_error_bound",
        "_data_reference_norm",
        "_error_bound",
        "_factors",
        "_reference_norm",
        "_structure",
    )
    # numpy must defer ``ndarray @ op`` to __rmatmul__ instead of densifying through
    # __array__; np.asarray(op) still builds the dense tensor.
    __array_ufunc__ = None

    def __init__(
        self,
        factors: Sequence[Any],
        structure: Structure | None = None,
        *,
        error_bound: float | None = None,
        reference_norm: float | None = None,
        data_error_bound: float | None = None,
        data_reference_norm: float | None = None,
    ):
        if isinstance(factors, np.ndarray) or not isinstance(factors, Sequence) or len(factors) < 2:
            raise ShapeError(
                f"factors: expected a sequence of at least 2 arrays, got {type(factors).__name__}"
            )
        arrays = [as_float_array(f, f"factors[{k}]", min_ndim=2) for k, f in enumerate(factors)]
        dtype = np.result_type(*arrays)
        arrays = [np.array(a, dtype=dtype, copy=True) for a in arrays]
        for a in arrays:
            a.flags.writeable = False
        inferred = _infer_structure(arrays)
        if structure is not None and structure != inferred:
            raise ShapeError(
                f"structure: expected {inferred!r} (from the factors), got {structure!r}"
            )
        self._factors = tuple(arrays)
        self._structure = inferred
        self._error_bound = _certificate(error_bound, "error_bound")
        self._reference_norm = _certificate(reference_norm, "reference_norm")
        self._data_error_bound = _certificate(data_error_bound, "data_error_bound")
        self._data_reference_norm = _certificate(data_reference_norm, "data_reference_norm")

    # -- facts --------------------------------------------------------------------------
    @property
    def factors(self) -> tuple[np.ndarray, ...]:
        """The factor arrays (read-only)."""
        return self._factors

    @property
    def structure(self) -> Structure:
        """The :class:`Structure` (shapes and ranks) of the factors."""
        return self._structure

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the dense tensor."""
        return self._structure.shape

    @property
    def ndim(self) -> int:
        """The number of modes of the dense tensor."""
        return self._structure.ndim

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the factors."""
        return self._factors[0].dtype

    @property
    def n_params(self) -> int:
        """The total number of stored parameters over all factors."""
        return self._structure.n_params

    @property
    def compression_ratio(self) -> float:
        """Dense size divided by the number of stored parameters."""
        return self._structure.compression_ratio

    @property
    def error_bound(self) -> float | None:
        """Certified Frobenius distance to the tensor that was fitted (None if unknown)."""
        return self._error_bound

    @property
    def reference_norm(self) -> float | None:
        """Frobenius norm of the fitted tensor (None if unknown)."""
        return self._reference_norm

    @property
    def relative_error_bound(self) -> float | None:
        """``error_bound / ||W||_F`` (None if either is unknown; 0 for a zero tensor)."""
        if self._error_bound is None or self._reference_norm is None:
            return None
        if self._reference_norm == 0.0:
            return 0.0
        return self._error_bound / self._reference_norm

    @property
    def data_error_bound(self) -> float | None:
        """Data-weighted error ``‖(W − Ŵ) L‖_F`` of a data-aware fit (None if not one)."""
        return self._data_error_bound

    @property
    def data_reference_norm(self) -> float | None:
        """``‖W L‖_F`` of a data-aware fit (None if not one)."""
        return self._data_reference_norm

    @property
    def data_relative_error(self) -> float | None:
        """``data_error_bound / data_reference_norm`` (None if unknown; 0 if ``W L = 0``)."""
        if self._data_error_bound is None or self._data_reference_norm is None:
            return None
        if self._data_reference_norm == 0.0:
            return 0.0
        return self._data_error_bound / self._data_reference_norm

    # -- dense -------------------------------------------------------------------------
    def rearranged(self) -> np.ndarray:
        """The S-way rearranged tensor ``T`` (DESIGN.md 2.2), shape ``(|a^(1)|, ..., |a^(S)|)``.

        Contracted from the last factor backwards: level k is a batched GEMM over the
        prefix ranks ``(r_1..r_{k−1})``, summing ``r_k``.
        """
        st = self._structure
        S, sizes, ranks = st.n_factors, st.sizes, st.ranks
        # Y holds sum over r_k.. of the tail, indexed by (r_1..r_{k-1}, prefix-free tail)
        Y = self._factors[-1].reshape((*ranks, sizes[-1]))
        for k in range(S - 2, -1, -1):
            A = self._factors[k].reshape((*ranks[:k], ranks[k], sizes[k]))
            # Y: (*ranks[:k], R_k, tail) ; A: (*ranks[:k], R_k, |a^k|)
            P = int(np.prod(ranks[:k], dtype=np.int64))
            tail = Y.shape[-1]
            Y = np.matmul(
                A.reshape(P, ranks[k], sizes[k]).transpose(0, 2, 1),
                Y.reshape(P, ranks[k], tail),
            ).reshape((*ranks[:k], sizes[k] * tail))
        return Y.reshape(sizes)

    def to_dense(self) -> np.ndarray:
        """Build the dense tensor (shape :attr:`shape`, dtype :attr:`dtype`).

        Examples
        --------
        >>> import numpy as np
        >>> import sekron as sk
        >>> rng = np.random.default_rng(0)
        >>> A, B = rng.normal(size=(2, 3, 2)), rng.normal(size=(2, 4, 5))
        >>> t = sk.SeKronTensor([A, B])
        >>> np.allclose(t.to_dense(), np.kron(A[0], B[0]) + np.kron(A[1], B[1]))
        True
        """
        return np.ascontiguousarray(unrearrange(self.rearranged(), self._structure.shapes))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        dense = self.to_dense()
        return dense if dtype is None else dense.astype(dtype)

    def norm(self) -> float:
        """Frobenius norm of the dense tensor (computed without the inverse rearrangement)."""
        return float(np.linalg.norm(self.rearranged().ravel()))

    # -- algebra -----------------------------------------------------------------------
    def transpose(self, axes: Sequence[int] | None = None) -> SeKronTensor:
        """Permute the modes of every factor (a mode-wise Kronecker product commutes with it).

        ``axes=None`` reverses the modes, so for a 2-D operator this is the transpose.

        Examples
        --------
        >>> import numpy as np
        >>> import sekron as sk
        >>> t = sk.SeKronTensor([np.ones((1, 2, 3)), np.arange(20.0).reshape(1, 4, 5)])
        >>> np.array_equal(t.T.to_dense(), t.to_dense().T)
        True
        """
        N = self.ndim
        if axes is None:
            perm = tuple(range(N))[::-1]
        elif isinstance(axes, (str, bytes)) or not isinstance(axes, Sequence):
            raise ShapeError(f"axes: expected a permutation of range({N}), got {axes!r}")
        else:
            perm = tuple(int(a) if isinstance(a, numbers.Integral) else -1 for a in axes)
        if sorted(perm) != list(range(N)):
            raise ShapeError(f"axes: expected a permutation of range({N}), got {axes!r}")
        S = self._structure.n_factors
        new = []
        for k, f in enumerate(self._factors):
            nr = min(k + 1, S - 1)
            new.append(f.transpose(tuple(range(nr)) + tuple(nr + p for p in perm)))
        return SeKronTensor(new, error_bound=self._error_bound, reference_norm=self._reference_norm)

    @property
    def T(self) -> SeKronTensor:
        """The transpose (axes reversed), as :meth:`transpose` with no arguments."""
        return self.transpose()

    def astype(self, dtype: Any) -> SeKronTensor:
        """Return a copy with factors cast to ``dtype`` (float32 or float64)."""
        return SeKronTensor(
            [f.astype(dtype) for f in self._factors],
            error_bound=self._error_bound,
            reference_norm=self._reference_norm,
        )

    def __matmul__(self, other: Any) -> np.ndarray:
        return matmul_factors(self._factors, other)

    def __rmatmul__(self, other: Any) -> np.ndarray:
        return rmatmul_factors(other, self._factors)

    def __repr__(self) -> str:
        eb = "" if self._error_bound is None else f", error_bound={self._error_bound:.3g}"
        return (
            f"SeKronTensor(shape={self.shape}, structure={self._structure}, dtype={self.dtype}{eb})"
        )

    # -- files ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Save to a versioned ``.npz`` file, readable by :func:`sekron.load` without pickle.

        Examples
        --------
        >>> import numpy as np, tempfile, os
        >>> import sekron as sk
        >>> t = sk.SeKronTensor([np.ones((1, 2, 2)), np.ones((1, 3, 3))])
        >>> path = os.path.join(tempfile.mkdtemp(), "t.npz")
        >>> t.save(path)
        >>> np.array_equal(sk.load(path).to_dense(), t.to_dense())
        True
        """
        arrays: dict[str, Any] = {
            "format": np.array(FILE_FORMAT),
            "version": np.array(FILE_VERSION, dtype=np.int64),
            "n_factors": np.array(len(self._factors), dtype=np.int64),
            "error_bound": np.array(np.nan if self._error_bound is None else self._error_bound),
            "reference_norm": np.array(
                np.nan if self._reference_norm is None else self._reference_norm
            ),
            # optional entries: files without them (older ones) load with None
            "data_error_bound": np.array(
                np.nan if self._data_error_bound is None else self._data_error_bound
            ),
            "data_reference_norm": np.array(
                np.nan if self._data_reference_norm is None else self._data_reference_norm
            ),
        }
        for k, f in enumerate(self._factors):
            arrays[f"factor_{k}"] = f
        if hasattr(path, "write"):  # a file object (in-memory checkpoints)
            np.savez(path, **arrays)  # type: ignore[arg-type]
        else:
            save_npz(as_path(path), arrays)


def _read_bound(z: NpzReader, key: str, what: str, *, optional: bool = False) -> float | None:
    """A stored certificate: NaN means unknown (None); else finite and >= 0."""
    if optional and key not in z.members:
        return None
    value = float(z.read_scalar(key, "f", what))
    if np.isnan(value):
        return None
    if not np.isfinite(value) or value < 0:
        raise z.error(
            f"expected {what} (finite, >= 0, or NaN for unknown), got {value}", key + ".npy"
        )
    return value


def read_tensor(z: NpzReader, prefix: str = "") -> tuple[SeKronTensor, set[str]]:
    """Read the :class:`SeKronTensor` stored under ``prefix`` in an opened ``.npz``.

    The layout is the one :meth:`SeKronTensor.save` writes (members ``format``,
    ``version``, ``n_factors``, ``factor_<k>``, the certificates), each key prefixed.
    The metadata is read and checked first, then the factors' declared shapes and dtypes
    (from their ``.npy`` headers) must form a structure, and only then is factor data
    read. Used by :func:`load` and by the compressed-checkpoint reader.

    Parameters
    ----------
    z : NpzReader
        The opened file (its headers already checked).
    prefix : str, default ""
        The key prefix of the tensor's members.

    Returns
    -------
    tensor : SeKronTensor
    keys : set of str
        The member keys the tensor was read from (so a caller can refuse the others).

    Raises
    ------
    FormatError
        For a missing or malformed member, naming the file and the member.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> import sekron as sk
    >>> from sekron.files import NpzReader
    >>> from sekron.tensor import read_tensor
    >>> path = os.path.join(tempfile.mkdtemp(), "t.npz")
    >>> sk.nkp(np.eye(4), (2, 2), rank=2).save(path)
    >>> with NpzReader(path) as z:
    ...     t, keys = read_tensor(z)
    >>> t.shape, len(keys)
    ((4, 4), 9)
    """
    key = prefix + "format"
    fmt = z.read_scalar(key, "U", f"the format name {FILE_FORMAT!r}")
    if fmt != FILE_FORMAT:
        raise z.error(f"expected format {FILE_FORMAT!r}, got {fmt!r}", key + ".npy")
    key = prefix + "version"
    version = z.read_scalar(key, "iu", "the file version (an int)")
    if version != FILE_VERSION:
        raise z.error(f"expected file version {FILE_VERSION}, got {version!r}", key + ".npy")
    key = prefix + "n_factors"
    n = z.read_scalar(key, "iu", "the number of factors (an int)")
    stored = sum(1 for k in z.members if k.startswith(prefix + "factor_"))
    if not 2 <= n <= stored:
        raise z.error(
            f"expected a number of factors in 2..{stored} (the factor members stored), got {n}",
            key + ".npy",
        )
    keys = [f"{prefix}factor_{k}" for k in range(n)]
    for k in keys:
        m = z.members.get(k)
        if m is None:
            raise z.error("expected this factor, it is missing", k + ".npy")
        if m.dtype not in (np.float32, np.float64) or len(m.shape) < 2:
            raise z.error(
                f"expected a float32 or float64 factor with at least 2 axes, got shape "
                f"{m.shape} of {m.dtype}",
                k + ".npy",
            )
    # the declared shapes must form a structure before any factor data is read
    try:
        _infer_structure(
            [np.broadcast_to(np.zeros((), z.members[k].dtype), z.members[k].shape) for k in keys]
        )
    except ShapeError as exc:
        raise z.error(f"the factors' declared shapes are not a structure: {exc}") from None
    bounds = {
        b: _read_bound(z, prefix + b, b.replace("_", " "), optional=b.startswith("data_"))
        for b in ("error_bound", "reference_norm", "data_error_bound", "data_reference_norm")
    }
    factors = [z.read(k) for k in keys]
    try:
        t = SeKronTensor(
            factors,
            error_bound=bounds["error_bound"],
            reference_norm=bounds["reference_norm"],
            data_error_bound=bounds["data_error_bound"],
            data_reference_norm=bounds["data_reference_norm"],
        )
    except SekronError as exc:
        raise z.error(f"holds invalid factors: {exc}") from None
    used = {prefix + k for k in ("format", "version", "n_factors", *bounds)} | set(keys)
    return t, used & set(z.members)


def load(path: str | os.PathLike[str]) -> SeKronTensor:
    """Load a :class:`SeKronTensor` saved by :meth:`SeKronTensor.save`.

    The file is read without pickle, and nothing is decompressed before the zip
    directory, every member's ``.npy`` header (:class:`sekron.files.NpzReader`: sizes,
    dtypes, inflation), the metadata (format, an integer version equal to
    :data:`FILE_VERSION`, an integer ``n_factors`` >= 2, certificates finite and >= 0
    or NaN for unknown) and the factors' declared shapes (they must form a structure)
    are checked. Anything but a well-formed sekron file raises :class:`FormatError`
    naming the file and the member; a member the format does not know is refused too.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    SeKronTensor

    Raises
    ------
    FormatError
        If the file is not a sekron file, is of an unknown version, or is corrupted.
    FileNotFoundError, OSError
        If there is no such file, or it cannot be opened.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> import sekron as sk
    >>> path = os.path.join(tempfile.mkdtemp(), "w.npz")
    >>> sk.nkp(np.eye(4), (2, 2), rank=2).save(path)
    >>> sk.load(path).shape
    (4, 4)
    """
    path = as_path(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"path: no such file {path!r}")
    with NpzReader(path) as z:
        t, used = read_tensor(z)
        extra = sorted(set(z.members) - used)
        if extra:
            raise z.error(f"expected only the members of a {FILE_FORMAT}, got also {extra}")
    return t
