"""Exceptions raised by sekron.

Every error derives from :class:`SekronError` and also from the builtin exception a
user would naturally catch (``ValueError``, ``OverflowError``), so ``except ValueError``
keeps working in code that does not know about sekron.

An argument of the wrong type raises :class:`ArgumentTypeError`, which is an
:class:`ArgumentError` (so ``except ArgumentError`` catches every bad argument) and a
``TypeError``; a value out of range raises :class:`ArgumentError`, a ``ValueError``. The
same mistake raises the same class wherever it is made.
"""

from __future__ import annotations

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "DTypeError",
    "FormatError",
    "NonFiniteError",
    "OverflowRiskError",
    "RankError",
    "SekronError",
    "ShapeError",
]


class SekronError(Exception):
    """Base class of every error sekron raises on purpose."""


class ShapeError(SekronError, ValueError):
    """A shape, ndim or per-mode factorization does not match what was expected."""


class RankError(SekronError, ValueError):
    """A rank is below 1 or above the largest useful rank."""


class OverflowRiskError(SekronError, OverflowError):
    """An integer accumulator could wrap around for the requested operation."""


class NonFiniteError(SekronError, ValueError):
    """An input holds NaN or infinity where finite values are required."""


class FormatError(SekronError, ValueError):
    """A file, or a tensor in another format, is malformed or foreign."""


class DTypeError(SekronError, TypeError):
    """An array has a dtype sekron does not compute with (object, string, complex...)."""


class ArgumentError(SekronError, ValueError):
    """An argument's value is outside what the function accepts (an option, a range)."""


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument has the wrong type (a string for an int, a float for a count...).

    Also a ``TypeError``; being an :class:`ArgumentError` it is a ``ValueError`` too, so
    code written against either builtin keeps catching it.
    """
