"""The faces of sekron: the ``sekron`` command, its demo and checkpoint compression.

Each sub-command is a module with ``add_parser(subparsers)`` and ``run(args, out) -> int``,
listed in :data:`COMMANDS`; :func:`main` builds the parser from that list. Heavy engines
(torch, tensorly, scikit-learn) are imported by the commands that need them, when run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import TextIO

from ..errors import SekronError
from . import adapter, checkpoint, demo, structures
from .structures import kernel_matrix, load_tensor, pareto_front, rank_structures

__all__ = [
    "COMMANDS",
    "build_parser",
    "kernel_matrix",
    "load_tensor",
    "main",
    "pareto_front",
    "rank_structures",
]

# one line per sub-command, in the order ``sekron --help`` lists them
COMMANDS: tuple[ModuleType, ...] = (structures, checkpoint, demo, adapter)


def build_parser() -> argparse.ArgumentParser:
    """The ``sekron`` argument parser, with one sub-parser per module of :data:`COMMANDS`.

    Examples
    --------
    >>> from sekron.cli import build_parser
    >>> build_parser().parse_args(["compress", "w.npz", "--ratio", "4", "-o", "c.npz"]).ratio
    4.0
    """
    parser = argparse.ArgumentParser(
        prog="sekron", description="Kronecker decompositions from the command line."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub).set_defaults(func=command.run)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of the ``sekron`` command; returns the exit status.

    Examples
    --------
    >>> import io
    >>> from sekron.cli import main
    >>> buf = io.StringIO()
    >>> main(["structures", "--n-factors", "2", "--ranks", "1", "--top", "3"], out=buf)
    0
    >>> "compression" in buf.getvalue()
    True
    """
    out = sys.stdout if out is None else out
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args, out))
    except (SekronError, FileNotFoundError, ValueError) as exc:
        print(f"sekron: error: {exc}", file=sys.stderr)
        return 2
