"""sekron's files, written safely and read without trust.

Writing: exactly the path named, atomically, never over an input.

Every ``.npz`` sekron writes (:meth:`sekron.SeKronTensor.save`, compressed checkpoints,
input Grams) goes through :func:`save_npz`: the arrays are written to a temporary file in
the target's directory and renamed over the target only when complete, so a crash never
leaves half a file and a reader never sees one; the name is kept as given (numpy's own
``savez`` would add ``.npz`` to ``out.bin``); and a path that is a directory, or the
same file as one of the inputs the caller names, is refused before anything is written.

Reading: :class:`NpzReader` opens an ``.npz`` and checks the zip directory and every
member's ``.npy`` header (shape, dtype, size) before a single byte of data is
decompressed, so a crafted archive (a member inflating to gigabytes, a header lying
about its size, object arrays needing pickle) is refused in milliseconds, as a
:class:`~sekron.errors.FormatError` naming the file and the member.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._validation import as_path
from .errors import FormatError

__all__ = [
    "INFLATION_SLACK",
    "MAX_HEADER_BYTES",
    "MAX_INFLATION",
    "MAX_MEMBERS",
    "NpyMember",
    "NpzReader",
    "check_output_path",
    "save_npz",
]

MAX_INFLATION = 100
"""Largest accepted ratio of a member's uncompressed to its compressed size.

sekron writes its members stored (ratio 1) and float weights deflate by well under 2×;
only crafted or degenerate content (runs of zeros deflate about 1000×) goes past 100×.
A member may exceed it by :data:`INFLATION_SLACK` bytes, so small members are never
refused for compressing well."""

INFLATION_SLACK = 1 << 20
"""Bytes a member may inflate beyond :data:`MAX_INFLATION` times its compressed size."""

MAX_MEMBERS = 1 << 16
"""Most members an archive may hold (each is opened once to read its header)."""

MAX_HEADER_BYTES = 10_000
"""Largest ``.npy`` header accepted (numpy's own default limit)."""

# zip format: the members we read are stored or deflated; anything else is foreign
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)

PathLike = str | os.PathLike[str]


def check_output_path(path: PathLike, inputs: Iterable[PathLike] = (), name: str = "path") -> Path:
    """Validate where a file will be written: not a directory, not one of ``inputs``.

    Parameters
    ----------
    path : str or PathLike
        The file to write.
    inputs : iterable of str or PathLike, default ()
        Files the output is computed from; writing over one would lose it.
    name : str, default "path"
        The argument name the error messages use.

    Returns
    -------
    Path
        ``path`` as given (no suffix added).

    Raises
    ------
    FormatError
        If ``path`` is a directory, its directory does not exist, or it is the same file
        as one of ``inputs``.

    Examples
    --------
    >>> import os, tempfile
    >>> from sekron.files import check_output_path
    >>> d = tempfile.mkdtemp()
    >>> check_output_path(os.path.join(d, "out.bin")).name
    'out.bin'
    >>> check_output_path(d)
    Traceback (most recent call last):
    ...
    sekron.errors.FormatError: path: expected a file to write, got the directory ...
    """
    p = Path(as_path(path, name))
    if p.is_dir():
        raise FormatError(f"{name}: expected a file to write, got the directory {str(p)!r}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise FormatError(
            f"{name}: expected an existing directory for {str(p)!r}, got {str(parent)!r}"
        )
    for src in inputs:
        s = Path(src)
        same = s.exists() and p.exists() and os.path.samefile(s, p)
        if same or s.resolve() == p.resolve():
            raise FormatError(
                f"{name}: expected an output other than the input {str(s)!r}; "
                "writing there would destroy it"
            )
    return p


def save_npz(
    path: PathLike,
    arrays: Mapping[str, Any],
    *,
    inputs: Iterable[PathLike] = (),
    compressed: bool = False,
    name: str = "path",
) -> Path:
    """Write ``arrays`` to exactly ``path`` as an ``.npz``, atomically, never over an input.

    Parameters
    ----------
    path : str or PathLike
        Target file; its name is kept as given.
    arrays : mapping of str to array_like
        The members (saved without pickle: object arrays are refused by numpy's loader).
    inputs : iterable of str or PathLike, default ()
        Files the caller read to compute ``arrays`` (see :func:`check_output_path`).
    compressed : bool, default False
        Deflate the members (``numpy.savez_compressed``).
    name : str, default "path"
        The argument name error messages use.

    Returns
    -------
    Path
        The path written.

    Raises
    ------
    FormatError
        As :func:`check_output_path`.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from sekron.files import save_npz
    >>> p = save_npz(os.path.join(tempfile.mkdtemp(), "a.bin"), {"x": np.arange(3)})
    >>> p.name, np.load(p)["x"].tolist()
    ('a.bin', [0, 1, 2])
    """
    p = check_output_path(path, inputs, name)
    parent = p.parent if str(p.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "wb") as f:
            (np.savez_compressed if compressed else np.savez)(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


@dataclass(frozen=True)
class NpyMember:
    """What the zip directory and the ``.npy`` header of one member declare.

    Attributes
    ----------
    key : str
        The member's name without ``.npy`` (the key ``numpy.load`` would give).
    shape : tuple of int
    dtype : numpy.dtype
    fortran_order : bool
    nbytes : int
        Data bytes the header declares (``prod(shape) * itemsize``).
    file_size, compress_size : int
        Uncompressed and compressed sizes from the zip directory.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from sekron.files import NpzReader
    >>> p = os.path.join(tempfile.mkdtemp(), "a.npz")
    >>> np.savez(p, x=np.zeros((2, 3), np.float32))
    >>> with NpzReader(p) as z:
    ...     m = z.members["x"]
    >>> m.key, m.shape, str(m.dtype), m.nbytes
    ('x', (2, 3), 'float32', 24)
    """

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    nbytes: int
    file_size: int
    compress_size: int


class NpzReader:
    """An ``.npz`` opened for reading, every member's header checked first.

    Opening reads the zip directory and each member's ``.npy`` header only. A member is
    refused, before any data is decompressed, if its name is not ``<key>.npy``, its
    dtype holds Python objects (it would need pickle) or is structured, its uncompressed
    size is not exactly header plus the data its header declares, or it inflates more
    than :data:`MAX_INFLATION` times its compressed size (plus :data:`INFLATION_SLACK`).
    Data is then read member by member with :meth:`read`, never with pickle.

    Parameters
    ----------
    path : str or PathLike
    name : str, default "path"
        The argument name error messages use.

    Attributes
    ----------
    members : dict of str to NpyMember
        The checked headers, by key.

    Raises
    ------
    FileNotFoundError, OSError
        If the file cannot be opened (it does not exist, is a directory, is unreadable).
    FormatError
        If it is not a zip of ``.npy`` members, or a member is refused as above; the
        message names the file and the member.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from sekron.files import NpzReader
    >>> p = os.path.join(tempfile.mkdtemp(), "a.npz")
    >>> np.savez(p, x=np.arange(3.0))
    >>> with NpzReader(p) as z:
    ...     z.members["x"].shape, z.read("x").tolist()
    ((3,), [0.0, 1.0, 2.0])
    """

    def __init__(self, path: PathLike, name: str = "path"):
        self.path = as_path(path, name)
        self.name = name
        self._fh = open(self.path, "rb")  # closed by close()
        try:
            self._zip = zipfile.ZipFile(self._fh)
            self.members = self._read_headers()
        except FormatError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise self.error(
                f"expected an .npz (a zip of .npy members), could not read it: {exc}"
            ) from None

    # -- errors ---------------------------------------------------------------------------
    def error(self, message: str, member: str | None = None) -> FormatError:
        """A :class:`FormatError` naming the argument, the file and (if given) the member."""
        where = "" if member is None else f" member {member!r}"
        return FormatError(f"{self.name}: {self.path!r}{where}: {message}")

    # -- headers --------------------------------------------------------------------------
    def _read_headers(self) -> dict[str, NpyMember]:
        infos = self._zip.infolist()
        if len(infos) > MAX_MEMBERS:
            raise self.error(f"expected at most {MAX_MEMBERS} members, got {len(infos)}")
        out: dict[str, NpyMember] = {}
        for info in infos:
            m = self._check_member(info)
            if m.key in out:
                raise self.error("appears twice in the archive", info.filename)
            out[m.key] = m
        return out

    def _check_member(self, info: zipfile.ZipInfo) -> NpyMember:
        fname = info.filename
        if not fname.endswith(".npy") or info.is_dir():
            raise self.error("expected a .npy member", fname)
        if info.compress_type not in _METHODS:
            raise self.error(
                f"expected a stored or deflated member, got method {info.compress_type}", fname
            )
        if info.file_size > MAX_INFLATION * info.compress_size + INFLATION_SLACK:
            raise self.error(
                f"expected at most {MAX_INFLATION}x inflation (sekron.files.MAX_INFLATION), got "
                f"{info.file_size} bytes from {info.compress_size} compressed; refused unread",
                fname,
            )
        try:
            with self._zip.open(info) as fp:
                version = np.lib.format.read_magic(fp)
                if version == (1, 0):
                    header = np.lib.format.read_array_header_1_0(fp, MAX_HEADER_BYTES)
                elif version == (2, 0):
                    header = np.lib.format.read_array_header_2_0(fp, MAX_HEADER_BYTES)
                else:
                    raise self.error(f"expected .npy format 1.0 or 2.0, got {version}", fname)
                header_len = fp.tell()
        except FormatError:
            raise
        except Exception as exc:
            raise self.error(f"expected a .npy header, could not read it: {exc}", fname) from None
        shape, fortran_order, dtype = header
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
            raise self.error(f"expected a plain numeric or string dtype, got {dtype}", fname)
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if info.file_size != header_len + nbytes:
            raise self.error(
                f"header declares shape {shape} of {dtype} ({nbytes} data bytes) but the "
                f"member holds {info.file_size - header_len}",
                fname,
            )
        return NpyMember(
            fname[: -len(".npy")],
            tuple(int(d) for d in shape),
            dtype,
            bool(fortran_order),
            nbytes,
            info.file_size,
            info.compress_size,
        )

    # -- data -----------------------------------------------------------------------------
    def read(self, key: str) -> np.ndarray:
        """The array of member ``key`` (whose header was checked when the file was opened).

        Raises
        ------
        FormatError
            If there is no such member, or its data is corrupt (a bad CRC, a short stream).
        """
        if key not in self.members:
            raise self.error("expected this member, it is missing", key + ".npy")
        try:
            with self._zip.open(key + ".npy") as fp:
                arr = np.lib.format.read_array(
                    fp, allow_pickle=False, max_header_size=MAX_HEADER_BYTES
                )
                if fp.read(1):  # pragma: no cover - sizes were checked against the header
                    raise self.error("holds bytes past its data", key + ".npy")
        except FormatError:
            raise
        except Exception as exc:
            raise self.error(f"could not read its data: {exc}", key + ".npy") from None
        return np.asarray(arr)

    def read_scalar(self, key: str, kinds: str, what: str) -> Any:
        """A 0-d member whose dtype kind is one of ``kinds``, as a Python scalar.

        The header is checked before the data is read: shape ``()``, dtype kind in
        ``kinds`` (``"iu"`` for an integer, ``"f"`` for a float, ``"U"`` for a string).
        """
        m = self.members.get(key)
        if m is None:
            raise self.error(f"expected {what}, it is missing", key + ".npy")
        if m.shape != () or m.dtype.kind not in kinds or m.nbytes > 4096:
            raise self.error(
                f"expected {what} (a 0-d {kinds!r} array), got shape {m.shape} of {m.dtype}",
                key + ".npy",
            )
        return self.read(key).item()

    def close(self) -> None:
        """Close the archive and the file."""
        z = getattr(self, "_zip", None)
        if z is not None:
            z.close()
        self._fh.close()

    def __enter__(self) -> NpzReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
