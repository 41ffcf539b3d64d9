"""Writing sekron's files safely: exactly the path named, atomically, never over an input.

Every ``.npz`` sekron writes (:meth:`sekron.SeKronTensor.save`, compressed checkpoints,
input Grams) goes through :func:`save_npz`: the arrays are written to a temporary file in
the target's directory and renamed over the target only when complete, so a crash never
leaves half a file and a reader never sees one; the name is kept as given (numpy's own
``savez`` would add ``.npz`` to ``out.bin``); and a path that is a directory, or the
same file as one of the inputs the caller names, is refused before anything is written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import FormatError

__all__ = ["check_output_path", "save_npz"]

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
    p = Path(path)
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
