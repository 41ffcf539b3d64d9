"""``sekron adapter``: extract LoKr adapters from a fine-tuned checkpoint, convert LoKr ↔ LoRA.

::

    sekron adapter extract BASE TUNED -o OUT [--format lycoris|peft] [--rank R] [--tol T] [--factor F]
    sekron adapter convert IN -o OUT --to lora|lokr [--rank R] [--base BASE]

``BASE`` and ``TUNED`` are safetensors state dicts (a ``.safetensors`` file, or a directory
holding ``model.safetensors``). ``IN`` is a LyCORIS ``.safetensors`` file or a PEFT
adapter directory; ``convert`` writes the same kind. Nothing is unpickled, and ``OUT``
may not be one of the inputs. Both commands print one line per layer.

The command-line entry point wires this in through :func:`add_parser` and :func:`run`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from sekron.errors import SekronError

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``adapter`` and its ``extract`` / ``convert`` sub-commands.

    Parameters
    ----------
    subparsers : argparse sub-parsers action
        What ``parser.add_subparsers()`` returned.

    Returns
    -------
    argparse.ArgumentParser
        The ``adapter`` parser (its ``func`` default is :func:`run`).

    Examples
    --------
    >>> import argparse
    >>> from sekron.cli.adapter import add_parser
    >>> parser = argparse.ArgumentParser(prog="sekron")
    >>> _ = add_parser(parser.add_subparsers(dest="command"))
    >>> args = parser.parse_args(["adapter", "convert", "in.safetensors", "-o", "out.safetensors", "--to", "lora"])
    >>> args.action, args.to, args.rank
    ('convert', 'lora', None)
    """
    p = subparsers.add_parser(
        "adapter", help="LoKr / LoRA adapters: extract from a fine-tune, convert"
    )
    sub = p.add_subparsers(dest="action", required=True)
    e = sub.add_parser("extract", help="optimal LoKr adapter of TUNED - BASE, layer by layer")
    e.add_argument(
        "base", help="base checkpoint (.safetensors, or a directory with model.safetensors)"
    )
    e.add_argument("tuned", help="fine-tuned checkpoint, same layout")
    e.add_argument("-o", "--output", required=True, help="LyCORIS file or PEFT directory to write")
    e.add_argument("--format", choices=("lycoris", "peft"), default="lycoris")
    e.add_argument("--rank", type=int, default=None, help="rank of w2 (default: full)")
    e.add_argument(
        "--tol", type=float, default=None, help="pick each layer's rank for this relative error"
    )
    e.add_argument(
        "--factor", type=int, default=-1, help="LyCORIS factorization factor (-1: balanced)"
    )
    e.add_argument("--targets", nargs="*", default=None, help="glob patterns of layer names")
    c = sub.add_parser(
        "convert", help="LoKr -> LoRA (exact SVD) or LoRA -> LoKr (nearest Kronecker)"
    )
    c.add_argument("input", help="LyCORIS .safetensors file or PEFT adapter directory")
    c.add_argument("-o", "--output", required=True)
    c.add_argument("--to", choices=("lora", "lokr"), required=True)
    c.add_argument(
        "--rank",
        type=int,
        default=None,
        help="LoRA rank (default: exact) or w2 rank of the LoKr (default: full)",
    )
    c.add_argument("--factor", type=int, default=-1, help="factor of the LoKr shapes (--to lokr)")
    c.add_argument(
        "--base",
        default=None,
        help="base checkpoint: layer names and the kernel shapes of convs stored flattened",
    )
    p.set_defaults(func=run)
    return p


def _state_dict(path: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    from sekron.errors import FormatError

    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    if not p.is_file() or p.suffix != ".safetensors":
        raise FormatError(
            f"checkpoint: expected a .safetensors file or a directory with model.safetensors, got {path!r}"
        )
    try:
        return dict(load_file(str(p)))
    except Exception as exc:  # safetensors raises its own error type and OSError
        raise FormatError(
            f"checkpoint: expected a safetensors file, got {path!r} ({exc})"
        ) from None


def _same(a: str, b: str) -> bool:
    pa, pb = Path(a).resolve(), Path(b).resolve()
    return pa == pb or (pa.exists() and pb.exists() and os.path.samefile(pa, pb))


def _is_peft(path: str) -> bool:
    return Path(path).is_dir()


def _write(path: str, adapters: dict[str, Any], peft: bool) -> None:
    from sekron.torch import adapters as ad

    if peft:
        ad.save_peft(path, adapters)
    else:
        ad.save_lycoris(path, adapters)


def _extract(args: argparse.Namespace, out: TextIO) -> int:
    from sekron.torch import adapters as ad

    ex = ad.extract(
        _state_dict(args.base),
        _state_dict(args.tuned),
        rank=args.rank,
        tol=args.tol,
        factor=args.factor,
        targets=args.targets,
    )
    if not ex.adapters:
        print("no layer changed between BASE and TUNED; nothing written", file=out)
        return 1
    _write(args.output, ex.adapters, args.format == "peft")
    print(ex.format_report(), file=out)
    print(
        f"wrote {len(ex.adapters)} LoKr layers ({sum(f.n_params for f in ex.report):,} values) "
        f"to {args.output} [{args.format}]",
        file=out,
    )
    return 0


def _convert(args: argparse.Namespace, out: TextIO) -> int:
    import numpy as np

    from sekron.torch import adapters as ad

    peft = _is_peft(args.input)
    base = _state_dict(args.base) if getattr(args, "base", None) else None
    src = ad.load_peft(args.input, base) if peft else ad.load_lycoris(args.input, base)
    result: dict[str, Any] = {}
    print(
        f"{'layer':<28} {'from':<6} {'to':<6} {'rank':>5} {'rel.err':>10} {'params':>9}", file=out
    )
    for name, upd in src.items():
        norm = float(np.linalg.norm(upd.delta()))
        if args.to == "lora":
            if not isinstance(upd, ad.LoKr):
                result[name], err, kind = upd, 0.0, "LoRA"
            else:
                rank = args.rank if args.rank is not None else 10**9
                result[name], err = ad.lokr_to_lora(upd, rank, clip=True)
                kind = "LoKr"
            r = result[name].rank
        else:
            if not isinstance(upd, ad.LoRA):
                result[name], err, kind = upd, 0.0, "LoKr"
            else:
                result[name], err = ad.lora_to_lokr(upd, rank=args.rank, factor=args.factor)
                kind = "LoRA"
            r = result[name].rank or "full"
        rel = err / norm if norm > 0 else 0.0
        print(
            f"{name:<28} {kind:<6} {args.to:<6} {r!s:>5} {rel:>10.3e} {result[name].n_params:>9}",
            file=out,
        )
    _write(args.output, result, peft)
    print(
        f"wrote {len(result)} layers to {args.output} [{'peft' if peft else 'lycoris'}]", file=out
    )
    return 0


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Run ``sekron adapter extract`` or ``sekron adapter convert`` on parsed arguments.

    Parameters
    ----------
    args : argparse.Namespace
        From the parser :func:`add_parser` built.
    out : text stream
        Where the per-layer report goes; errors go to stderr.

    Returns
    -------
    int
        0 on success, 1 when there was nothing to do, 2 for bad input.

    Examples
    --------
    >>> import argparse, io
    >>> from sekron.cli.adapter import run
    >>> args = argparse.Namespace(action="convert", input="same", output="same", to="lora", rank=None)
    >>> run(args, io.StringIO())
    2
    """
    if args.action == "extract":
        inputs = [args.base, args.tuned]
    else:
        inputs = [args.input] + ([args.base] if getattr(args, "base", None) else [])
    if any(_same(args.output, i) for i in inputs):
        print(
            f"error: output: expected a path other than the inputs, got {args.output!r}",
            file=sys.stderr,
        )
        return 2
    try:
        return _extract(args, out) if args.action == "extract" else _convert(args, out)
    except (SekronError, ValueError, TypeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
