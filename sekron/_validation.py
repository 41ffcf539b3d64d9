"""Argument checks used at sekron's public boundary.

Every public function validates its arguments here, once; the messages follow one
pattern: the argument's name, what was expected, and what was received. Nothing here
modifies its input: arrays are converted into new arrays when a conversion is needed.
"""

from __future__ import annotations

import contextlib
import numbers
import os
from collections.abc import Iterator, Sequence
from typing import Any, Literal, cast

import numpy as np

from .errors import (
    ArgumentError,
    ArgumentTypeError,
    DTypeError,
    NonFiniteError,
    RankError,
    SekronError,
    ShapeError,
)

__all__ = [
    "SVD_FULL_BELOW",
    "as_float_array",
    "as_generator",
    "as_pair",
    "as_path",
    "renamed",
    "as_nonnegative_float",
    "as_positive_int",
    "as_rank",
    "as_shape",
    "as_shapes",
    "check_bits",
    "check_exactly_one",
    "check_finite",
    "check_has_data",
    "check_instance",
    "check_option",
    "check_ratio",
    "check_rounding",
    "check_tol",
    "svd_method",
]

_FLOAT_DTYPES = (np.float32, np.float64)


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"array of shape {x.shape} and dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"


def working_dtype(dtype: Any, name: str) -> np.dtype:
    """The float dtype an input of ``dtype`` is fitted in.

    float32 and float64 stay, float16 becomes float32, integers, booleans and other
    floats float64 (the one rule of :func:`as_float_array` and of dask inputs).

    Raises
    ------
    DTypeError
        For complex, object, string and other non-real dtypes.
    """
    dt = np.dtype(dtype)
    if dt.kind == "f":
        if dt == np.float16:
            return np.dtype(np.float32)
        return dt if dt in _FLOAT_DTYPES else np.dtype(np.float64)
    if dt.kind in "iub":
        return np.dtype(np.float64)
    raise DTypeError(
        f"{name}: expected a real numeric array (float32, float64 or integer), got dtype {dt}"
    )


def as_float_array(
    x: Any,
    name: str,
    *,
    ndim: int | None = None,
    min_ndim: int | None = None,
    finite: bool = True,
) -> np.ndarray:
    """Return ``x`` as a float32 or float64 ndarray, validated.

    float32 and float64 inputs keep their dtype; integer and boolean inputs become
    float64; float16 becomes float32. Complex, object and string data are rejected.
    The input is never modified (a view is returned only when no conversion happens,
    and sekron never writes into it).
    """
    try:
        arr = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic array-likes
        raise DTypeError(f"{name}: expected a numeric array, got {_describe(x)}") from exc
    target = working_dtype(arr.dtype, name)
    if arr.dtype != target:
        arr = arr.astype(target)
    if ndim is not None and arr.ndim != ndim:
        raise ShapeError(f"{name}: expected a {ndim}-d array, got shape {arr.shape}")
    if min_ndim is not None and arr.ndim < min_ndim:
        raise ShapeError(
            f"{name}: expected an array with at least {min_ndim} dimensions, got shape {arr.shape}"
        )
    if finite:
        check_finite(arr, name)
    return arr


def check_finite(arr: np.ndarray, name: str) -> None:
    """Raise :class:`NonFiniteError` if ``arr`` holds NaN or infinity."""
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise NonFiniteError(
            f"{name}: expected finite values, got {n_bad} NaN or infinite entries "
            f"in an array of shape {arr.shape}"
        )


def as_positive_int(x: Any, name: str, *, minimum: int = 1) -> int:
    """Return ``x`` as a Python int ``>= minimum`` (bools are rejected)."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral):
        raise ArgumentTypeError(f"{name}: expected an integer >= {minimum}, got {_describe(x)}")
    value = int(x)
    if value < minimum:
        raise ArgumentError(f"{name}: expected an integer >= {minimum}, got {value}")
    return value


def as_shape(x: Any, name: str) -> tuple[int, ...]:
    """Return ``x`` (an int or a sequence of ints, each >= 1) as a tuple of ints."""
    if isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_)):
        x = (x,)
    if isinstance(x, np.ndarray):
        x = x.tolist()
    if not isinstance(x, Sequence) or isinstance(x, str):
        raise ShapeError(
            f"{name}: expected a shape (a sequence of positive ints), got {_describe(x)}"
        )
    out = []
    for i, d in enumerate(x):
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, numbers.Integral) or int(d) < 1:
            raise ShapeError(
                f"{name}: expected a shape of positive ints, got {tuple(x)!r} (entry {i} is {d!r})"
            )
        out.append(int(d))
    if not out:
        raise ShapeError(f"{name}: expected a non-empty shape, got ()")
    return tuple(out)


def as_shapes(
    x: Any, name: str, *, target: tuple[int, ...] | None = None
) -> tuple[tuple[int, ...], ...]:
    """Validate a list of S >= 2 factor shapes of equal ndim.

    With ``target`` given, the per-mode products must equal ``target``.
    """
    if isinstance(x, np.ndarray):
        x = x.tolist()
    if not isinstance(x, Sequence) or isinstance(x, str) or len(x) < 2:
        raise ShapeError(f"{name}: expected a sequence of at least 2 factor shapes, got {x!r}")
    shapes = tuple(as_shape(s, f"{name}[{k}]") for k, s in enumerate(x))
    nd = {len(s) for s in shapes}
    if len(nd) != 1:
        raise ShapeError(
            f"{name}: expected factor shapes of equal ndim, got {shapes!r} "
            f"(ndims {[len(s) for s in shapes]})"
        )
    if target is not None:
        if len(shapes[0]) != len(target):
            raise ShapeError(
                f"{name}: expected factor shapes with {len(target)} modes to factor a tensor of "
                f"shape {target}, got {shapes!r}"
            )
        prod = tuple(int(np.prod([s[n] for s in shapes])) for n in range(len(target)))
        if prod != tuple(target):
            raise ShapeError(
                f"{name}: per-mode products of the factor shapes must equal the tensor shape "
                f"{tuple(target)}, got {shapes!r} whose products are {prod}"
            )
    return shapes


def as_generator(random_state: Any) -> np.random.Generator:
    """Turn ``None``, an int, a ``Generator`` or a ``RandomState`` into a ``Generator``."""
    if random_state is None:
        return np.random.default_rng()
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if int(random_state) < 0:
            raise ArgumentError(f"random_state: expected a non-negative int, got {random_state}")
        return np.random.default_rng(int(random_state))
    raise ArgumentTypeError(
        f"random_state: expected None, an int, a numpy Generator or RandomState, got {_describe(random_state)}"
    )


def check_bits(bits: Any, name: str = "bits") -> int:
    """Return ``bits`` as an int in 2..16 (sign bit included)."""
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, numbers.Integral):
        raise ArgumentTypeError(f"{name}: expected an int in 2..16, got {_describe(bits)}")
    if not 2 <= int(bits) <= 16:
        raise ArgumentError(f"{name}: expected an int in 2..16, got {int(bits)}")
    return int(bits)


def check_tol(tol: Any, name: str = "tol") -> float:
    """Return ``tol`` as a float in [0, 1) (a relative Frobenius error target)."""
    if isinstance(tol, (bool, np.bool_)) or not isinstance(tol, numbers.Real):
        raise ArgumentTypeError(f"{name}: expected a float in [0, 1), got {_describe(tol)}")
    t = float(tol)
    if not (0.0 <= t < 1.0) or not np.isfinite(t):
        raise ArgumentError(f"{name}: expected a relative error in [0, 1), got {t}")
    return t


def rank_error(name: str, rank: Any, maximum: int, detail: str = "") -> RankError:
    """Build the :class:`RankError` for a rank outside ``1..maximum``."""
    extra = f" ({detail})" if detail else ""
    return RankError(f"{name}: expected a rank in 1..{maximum}{extra}, got {rank!r}")


def as_rank(x: Any, name: str = "rank", *, maximum: int | None = None, detail: str = "") -> int:
    """Return ``x`` as an int rank ``>= 1`` (and ``<= maximum`` if given), else :class:`RankError`.

    Examples
    --------
    >>> from sekron._validation import as_rank
    >>> as_rank(3, maximum=4)
    3
    >>> as_rank(0)
    Traceback (most recent call last):
    ...
    sekron.errors.RankError: rank: expected an integer >= 1, got 0
    """
    try:
        value = as_positive_int(x, name)
    except (TypeError, ValueError) as exc:
        raise RankError(str(exc)) from None
    if maximum is not None and value > maximum:
        raise rank_error(name, value, maximum, detail)
    return value


def as_pair(x: Any, name: str, *, minimum: int = 1) -> tuple[int, int]:
    """Return an int or a pair of ints, each ``>= minimum``, as a pair of ints.

    A wrong type (a float, a bool, a triple, a string) raises :class:`ArgumentTypeError`;
    a value below ``minimum`` raises :class:`ArgumentError`.

    Examples
    --------
    >>> from sekron._validation import as_pair
    >>> as_pair(3, "stride"), as_pair((1, 2), "padding", minimum=0)
    ((3, 3), (1, 2))
    """
    # plain ints and int pairs (every call of a layer or conv2d) skip the ABC checks below,
    # which took 4 us per argument
    if type(x) is int and x >= minimum:
        return x, x
    if type(x) is tuple and len(x) == 2 and type(x[0]) is int and type(x[1]) is int:
        if x[0] >= minimum and x[1] >= minimum:
            return x
    items = (x, x) if isinstance(x, numbers.Integral) else x
    try:
        pair = tuple(items)
    except TypeError:
        pair = ()
    if len(pair) != 2 or any(
        isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) for v in pair
    ):
        raise ArgumentTypeError(f"{name}: expected an int or a pair of ints, got {_describe(x)}")
    if any(int(v) < minimum for v in pair):
        raise ArgumentError(f"{name}: expected ints >= {minimum}, got {_describe(x)}")
    return int(pair[0]), int(pair[1])


def check_ratio(ratio: Any, name: str = "ratio") -> float:
    """Return ``ratio`` as a finite float ``>= 1`` (a compression ratio).

    Examples
    --------
    >>> from sekron._validation import check_ratio
    >>> check_ratio(4)
    4.0
    """
    if isinstance(ratio, (bool, np.bool_)) or not isinstance(ratio, numbers.Real):
        raise ArgumentTypeError(f"{name}: expected a number >= 1, got {_describe(ratio)}")
    r = float(ratio)
    if not np.isfinite(r) or r < 1.0:
        raise ArgumentError(f"{name}: expected a compression ratio >= 1, got {r}")
    return r


Rounding = Literal["stochastic", "nearest"]


def check_rounding(rounding: Any, name: str = "rounding") -> Rounding:
    """Return ``rounding`` if it is ``"stochastic"`` or ``"nearest"``.

    Examples
    --------
    >>> from sekron._validation import check_rounding
    >>> check_rounding("nearest")
    'nearest'
    """
    return cast(Rounding, check_option(rounding, name, ("stochastic", "nearest")))


def check_exactly_one(**given: Any) -> str:
    """Return the name of the one argument that is not None; raise :class:`ArgumentError` otherwise.

    Examples
    --------
    >>> from sekron._validation import check_exactly_one
    >>> check_exactly_one(ratio=None, tol=0.1)
    'tol'
    >>> check_exactly_one(ratio=4, tol=0.1)
    Traceback (most recent call last):
    ...
    sekron.errors.ArgumentError: expected exactly one of ratio= and tol=, got ratio= and tol=
    """
    names = list(given)
    chosen = [k for k, v in given.items() if v is not None]
    if len(chosen) == 1:
        return chosen[0]
    listed = ", ".join(f"{k}=" for k in names[:-1]) + f" and {names[-1]}="
    got = " and ".join(f"{k}=" for k in chosen) if chosen else "none"
    raise ArgumentError(f"expected exactly one of {listed}, got {got}")


# Below this many rows or columns LAPACK's full SVD is faster than a randomized range
# finder; so it is when the rank is over a tenth of the short side.
SVD_FULL_BELOW = 512

SVDSolver = Literal["full", "arpack", "randomized"]


def svd_method(method: Any, shape: tuple[int, ...], rank: int) -> SVDSolver:
    """Validate an SVD ``method`` and resolve ``"auto"`` for a matrix of ``shape`` and ``rank``.

    ``"auto"`` is full LAPACK when the short side is at most :data:`SVD_FULL_BELOW` or
    ``rank`` exceeds a tenth of it, the randomized range finder otherwise. This is the
    one place that rule lives.

    Examples
    --------
    >>> from sekron._validation import svd_method
    >>> svd_method("auto", (600, 800), 5), svd_method("auto", (100, 800), 5)
    ('randomized', 'full')
    """
    check_option(method, "method", ("auto", "full", "arpack", "randomized"))
    if method != "auto":
        return cast(SVDSolver, method)
    k = min(shape)
    return "full" if k <= SVD_FULL_BELOW or rank > k // 10 else "randomized"


def check_option(value: Any, name: str, options: Sequence[Any]) -> Any:
    """Return ``value`` if it is one of ``options`` (compared by type and value).

    A value of another type than every option (``method=3`` where strings are expected)
    raises :class:`ArgumentTypeError`; one of the right type but not listed raises
    :class:`ArgumentError`. Both messages list the options.

    Examples
    --------
    >>> from sekron._validation import check_option
    >>> check_option("full", "method", ("auto", "full"))
    'full'
    >>> check_option("fast", "method", ("auto", "full"))
    Traceback (most recent call last):
    ...
    sekron.errors.ArgumentError: method: expected 'auto' or 'full', got 'fast'
    """
    names = [repr(o) for o in options]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    if not any(type(value) is type(o) for o in options):
        raise ArgumentTypeError(f"{name}: expected {listed}, got {_describe(value)}")
    if value not in options:
        raise ArgumentError(f"{name}: expected {listed}, got {value!r}")
    return value


def check_instance(value: Any, name: str, cls: type | tuple[type, ...], what: str) -> Any:
    """Return ``value`` if it is an instance of ``cls``, else :class:`ArgumentTypeError`.

    Examples
    --------
    >>> from sekron._validation import check_instance
    >>> check_instance(3, "n", int, "an int")
    3
    """
    if not isinstance(value, cls):
        raise ArgumentTypeError(f"{name}: expected {what}, got {_describe(value)}")
    return value


def as_nonnegative_float(
    x: Any, name: str, *, positive: bool = False, upper: float | None = None
) -> float:
    """Return ``x`` as a finite float ``>= 0`` (``> 0`` if ``positive``, ``< upper`` if given).

    Examples
    --------
    >>> from sekron._validation import as_nonnegative_float
    >>> as_nonnegative_float(2, "temperature", positive=True)
    2.0
    """
    rng = ("> 0" if positive else ">= 0") + ("" if upper is None else f" and < {upper}")
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise ArgumentTypeError(f"{name}: expected a finite float {rng}, got {_describe(x)}")
    f = float(x)
    if not np.isfinite(f) or f < 0 or (positive and f == 0) or (upper is not None and f >= upper):
        raise ArgumentError(f"{name}: expected a finite float {rng}, got {f}")
    return f


def check_has_data(t: Any, name: str) -> None:
    """Refuse a tensor on torch's ``meta`` device (a shape without values) by name.

    Duck-typed on ``is_meta``, so the core needs no torch import.

    Examples
    --------
    >>> import numpy as np
    >>> from sekron._validation import check_has_data
    >>> check_has_data(np.ones(2), "layer.weight")
    """
    if getattr(t, "is_meta", False):
        raise ArgumentError(
            f"{name}: expected a tensor with values, got one on the meta device (a shape "
            "only); materialize it first (model.to_empty(device=...) and load_state_dict)"
        )


def as_path(path: Any, name: str = "path") -> str:
    """Return ``path`` (a ``str`` or ``os.PathLike``) as a ``str``, else :class:`ArgumentTypeError`.

    An int would be read as a file descriptor by ``open`` and ``os.path.exists``; it is
    refused here rather than opening whatever descriptor it names.

    Examples
    --------
    >>> from pathlib import Path
    >>> from sekron._validation import as_path
    >>> as_path(Path("a") / "b.npz")
    'a/b.npz'
    """
    if isinstance(path, str) or (isinstance(path, os.PathLike) and not isinstance(path, bytes)):
        out = os.fspath(path)
        if isinstance(out, str):
            return out
    raise ArgumentTypeError(f"{name}: expected a str or os.PathLike path, got {_describe(path)}")


@contextlib.contextmanager
def renamed(inner: str, name: str) -> Iterator[None]:
    """Inside, a sekron error about argument ``inner`` is re-raised about ``name``.

    For a public function that passes its argument ``name`` on to another public
    function, where it is called ``inner``: the user sees the argument they passed.

    Examples
    --------
    >>> from sekron._validation import as_positive_int, renamed
    >>> with renamed("x", "grad"):
    ...     as_positive_int(0, "x")
    Traceback (most recent call last):
    ...
    sekron.errors.ArgumentError: grad: expected an integer >= 1, got 0
    """
    try:
        yield
    except SekronError as exc:
        msg = str(exc)
        if not msg.startswith(inner + ": "):
            raise
        raise type(exc)(name + msg[len(inner) :]) from None
