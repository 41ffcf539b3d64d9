"""Knowledge distillation as in KroneckerBERT: hidden states, attention scores, logits.

A compressed student keeps the teacher's widths, so its intermediate outputs can be
matched to the teacher's directly, without projections: MSE on hidden states, MSE on
the pre-softmax attention scores ``QK^T/sqrt(d_k)``, and a soft cross-entropy on the
logits at a temperature. :class:`Capture` records module outputs with forward hooks;
:func:`distill` is a small training loop that sums these losses.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._validation import (
    as_generator,
    as_nonnegative_float,
    as_positive_int,
    check_instance,
)
from ..errors import ArgumentError, ArgumentTypeError, ShapeError

__all__ = ["Capture", "attention_loss", "distill", "hidden_loss", "logit_loss"]


def hidden_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error between hidden states of equal shape (teacher detached).

    Examples
    --------
    >>> import torch
    >>> from sekron.torch import hidden_loss
    >>> float(hidden_loss(torch.ones(2, 3), torch.zeros(2, 3)))
    1.0
    """
    check_instance(student, "student", torch.Tensor, "a tensor")
    check_instance(teacher, "teacher", torch.Tensor, "a tensor")
    if student.shape != teacher.shape:
        raise ArgumentError(
            f"student: expected the teacher's shape {tuple(teacher.shape)}, got {tuple(student.shape)}"
        )
    return F.mse_loss(student, teacher.detach())


def attention_loss(student_scores: torch.Tensor, teacher_scores: torch.Tensor) -> torch.Tensor:
    """MSE between pre-softmax attention scores ``QK^T/sqrt(d_k)``, shape (..., L, L).

    KroneckerBERT matches the scores before the softmax: they carry the same information
    as the attention map with a better-conditioned gradient.

    Examples
    --------
    >>> import torch
    >>> from sekron.torch import attention_loss
    >>> s = torch.zeros(2, 4, 5, 5, requires_grad=True)  # (batch, heads, L, L) scores
    >>> t = torch.full((2, 4, 5, 5), 0.5, requires_grad=True)
    >>> loss = attention_loss(s, t)
    >>> loss.backward()
    >>> loss.item(), s.grad is not None, t.grad is None
    (0.25, True, True)
    """
    return hidden_loss(student_scores, teacher_scores)


def logit_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    r"""Soft cross-entropy ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` over the last axis.

    The ``T²`` factor keeps the gradient scale independent of the temperature (Hinton et
    al.); the result is averaged over all leading positions.

    Examples
    --------
    >>> import torch
    >>> from sekron.torch import logit_loss
    >>> z = torch.randn(4, 10)
    >>> float(logit_loss(z, z, temperature=2.0)) < 1e-6
    True
    """
    t = as_nonnegative_float(temperature, "temperature", positive=True)
    check_instance(student_logits, "student_logits", torch.Tensor, "a tensor")
    check_instance(teacher_logits, "teacher_logits", torch.Tensor, "a tensor")
    if student_logits.shape != teacher_logits.shape:
        raise ShapeError(
            f"student_logits: expected the teacher's shape {tuple(teacher_logits.shape)}, "
            f"got {tuple(student_logits.shape)}"
        )
    s = F.log_softmax(student_logits / t, dim=-1).reshape(-1, student_logits.shape[-1])
    p = F.log_softmax(teacher_logits.detach() / t, dim=-1).reshape(-1, teacher_logits.shape[-1])
    return F.kl_div(s, p, log_target=True, reduction="batchmean") * (t * t)


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, Mapping):
        for v in out.values():
            if isinstance(v, torch.Tensor):
                return v
    raise ArgumentTypeError(f"cannot find a tensor in a module output of type {type(out).__name__}")


class Capture:
    """Record the outputs of named submodules during forward passes (a context manager).

    Parameters
    ----------
    model : nn.Module
    names : sequence of str
        Qualified module names (``model.named_modules()``); a tuple output keeps its first
        tensor (as the hidden state of a transformer block).

    Raises
    ------
    ArgumentTypeError
        If ``model`` is not a module, or ``names`` is a bare string or not a sequence of
        strings.
    ArgumentError
        If a name is not a module of ``model`` (the message suggests close names).

    Examples
    --------
    >>> import torch
    >>> from sekron.torch import Capture
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
    >>> with Capture(net, ["0"]) as cap:
    ...     _ = net(torch.ones(2, 3))
    >>> cap.outputs["0"].shape
    torch.Size([2, 4])
    """

    def __init__(self, model: nn.Module, names: Sequence[str]):
        check_instance(model, "model", nn.Module, "a torch.nn.Module")
        # a bare string would be taken character by character: Capture(model, "0")
        if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
            raise ArgumentTypeError(
                f"names: expected a list of module names, got {type(names).__name__} "
                f"{names!r}" + (f" (did you mean [{names!r}]?)" if isinstance(names, str) else "")
            )
        names = list(names)
        for n in names:
            if not isinstance(n, str):
                raise ArgumentTypeError(
                    f"names: expected module names (str), got {type(n).__name__} {n!r}"
                )
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            close = difflib.get_close_matches(missing[0], [k for k in modules if k], n=3)
            hint = f"; close names: {', '.join(map(repr, close))}" if close else ""
            raise ArgumentError(
                f"names: expected module names of the model (model.named_modules()), got "
                f"{missing[0]!r}, which it lacks{hint}"
            )
        self._modules = [(n, modules[n]) for n in names]
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> Capture:
        for name, mod in self._modules:

            def hook(m: nn.Module, args: Any, out: Any, name: str = name) -> None:
                self.outputs[name] = _first_tensor(out)

            self._handles.append(mod.register_forward_hook(hook))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _call(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _pairs(
    spec: Sequence[str] | Mapping[str, str] | None, name: str = "names"
) -> list[tuple[str, str]]:
    if spec is None:
        return []
    if isinstance(spec, str) or not isinstance(spec, (Sequence, Mapping)):
        raise ArgumentTypeError(f"{name}: expected module names (a list or a dict), got {spec!r}")
    if isinstance(spec, Mapping):
        return list(spec.items())
    return [(n, n) for n in spec]


def _collate(items: Sequence[Any]) -> Any:
    """Stack a list of samples into one batch: tensors stacked, tuples and dicts field-wise."""
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(list(items))
    if isinstance(first, Mapping):
        return {k: _collate([it[k] for it in items]) for k in first}
    if isinstance(first, (tuple, list)):
        return tuple(_collate(list(col)) for col in zip(*items, strict=True))
    return list(items)


def _epoch_batches(
    data: Iterable[Any],
    batch_size: int | None,
    collate: Callable[[list[Any]], Any],
    rng: np.random.Generator | None,
) -> Iterable[Any]:
    if batch_size is None:
        return data
    items = list(data)
    order = rng.permutation(len(items)) if rng is not None else np.arange(len(items))
    return (
        collate([items[i] for i in order[k : k + batch_size]])
        for k in range(0, len(items), batch_size)
    )


def _n_batches(data: Iterable[Any], batch_size: int | None) -> int | None:
    if not hasattr(data, "__len__"):
        return None
    n = len(data)  # type: ignore[arg-type]
    return n if batch_size is None else -(-n // batch_size)


def _positive(value: Any, name: str, integer: bool) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if value is not None and (isinstance(value, bool) or not ok or not value > 0):
        what = "a positive integer" if integer else "a positive number"
        raise ArgumentError(f"{name}: expected {what} or None, got {value!r}")


def _check_args(
    student: Any, teacher: Any, epochs: Any, lr: Any, temperature: Any, random_state: Any
) -> tuple[int, float, float]:
    """The arguments of :func:`distill`, validated once: (epochs, lr, temperature)."""
    check_instance(student, "student", nn.Module, "an nn.Module")
    check_instance(teacher, "teacher", nn.Module, "an nn.Module")
    if random_state is not None:
        as_generator(random_state)  # an int >= 0
    return (
        as_positive_int(epochs, "epochs"),
        as_nonnegative_float(lr, "lr", positive=True),
        as_nonnegative_float(temperature, "temperature", positive=True),
    )


def _check_names(student: nn.Module, teacher: nn.Module, hid: list[Any], att: list[Any]) -> None:
    s_mods, t_mods = dict(student.named_modules()), dict(teacher.named_modules())
    for arg, pairs in (("hidden", hid), ("attention", att)):
        for s_name, t_name in pairs:
            if s_name not in s_mods or t_name not in t_mods:
                raise ArgumentError(
                    f"{arg}: expected module names of the student and teacher, got "
                    f"{s_name!r} -> {t_name!r}, which one of them lacks"
                )


def distill(
    student: nn.Module,
    teacher: nn.Module,
    data: Iterable[Any],
    *,
    hidden: Sequence[str] | Mapping[str, str] | None = None,
    attention: Sequence[str] | Mapping[str, str] | None = None,
    logits: Callable[[Any], torch.Tensor] | bool | None = True,
    temperature: float = 1.0,
    weights: Mapping[str, float] | None = None,
    epochs: int = 1,
    lr: float = 1e-3,
    optimizer: torch.optim.Optimizer | None = None,
    max_steps: int | None = None,
    max_seconds: float | None = None,
    batch_size: int | None = None,
    collate: Callable[[list[Any]], Any] | None = None,
    shuffle: bool = False,
    random_state: int | None = None,
    progress: bool = False,
) -> list[float]:
    """Train ``student`` to match ``teacher`` on ``data`` (KroneckerBERT-style distillation).

    Parameters
    ----------
    student, teacher : nn.Module
        The teacher is put in eval mode and never updated; the student is trained.
    data : iterable of batches, or a sequence of samples with ``batch_size``
        Re-iterated every epoch; a batch is passed as ``model(*batch)`` (tuple/list),
        ``model(**batch)`` (dict) or ``model(batch)``. With ``batch_size``, ``data`` is a
        long list of single samples (thousands of sentences, say) that is grouped into
        mini-batches every epoch.
    hidden : list of names, or dict student name -> teacher name, optional
        Modules whose outputs (hidden states) are matched with MSE.
    attention : list or dict of names, optional
        Modules whose outputs are pre-softmax attention scores, matched with MSE.
    logits : callable, bool or None, default True
        True: the models' outputs are logits (first tensor of a tuple/dict output);
        a callable maps a model output to logits; False/None: no logit term.
    temperature : float, default 1.0
    weights : dict, optional
        Weights of the terms ``"hidden"``, ``"attention"``, ``"logits"`` (default 1 each).
    epochs : int, default 1
    lr : float, default 1e-3
        Adam's learning rate when no ``optimizer`` is given.
    optimizer : torch.optim.Optimizer, optional
    max_steps : int, optional
        Stop after this many steps.
    max_seconds : float, optional
        A time budget: stop before the next step once this much time has passed (checked
        between steps; at least one step runs).
    batch_size : int, optional
        Group the samples of ``data`` into mini-batches of this many (the last one may be
        smaller). Default: every item of ``data`` already is a batch.
    collate : callable, optional
        Turns a list of samples into a batch (for example a tokenizer with padding, for
        a list of sentences). Default: tensors are stacked, tuples and dicts field-wise.
    shuffle : bool, default False
        With ``batch_size``: draw a new order of the samples every epoch, seeded by
        ``random_state`` (same seed, same batches).
    random_state : int, optional
        Seed of the shuffling.
    progress : bool, default False
        Show a tqdm progress bar with the running loss (on stderr).

    Returns
    -------
    list of float
        The total loss of every step.

    Raises
    ------
    ValueError
        If no loss term is selected, or a limit or ``batch_size`` is not positive.

    Examples
    --------
    >>> import torch
    >>> from sekron.torch import distill
    >>> _ = torch.manual_seed(0)
    >>> teacher = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> student = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    >>> data = [torch.randn(16, 4) for _ in range(20)]
    >>> losses = distill(student, teacher, data, hidden=["1"], epochs=3, lr=1e-2)
    >>> losses[-1] < losses[0]
    True

    A long list of samples, mini-batched and shuffled, within a time budget:

    >>> samples = [torch.randn(4) for _ in range(320)]
    >>> losses = distill(student, teacher, samples, hidden=["1"], batch_size=32, shuffle=True,
    ...                  random_state=0, max_seconds=60)
    >>> len(losses)
    10
    """
    epochs, lr, temperature = _check_args(student, teacher, epochs, lr, temperature, random_state)
    w = {"hidden": 1.0, "attention": 1.0, "logits": 1.0, **(weights or {})}
    hid, att = _pairs(hidden, "hidden"), _pairs(attention, "attention")
    _check_names(student, teacher, hid, att)
    to_logits: Callable[[Any], torch.Tensor] | None
    if logits is True:
        to_logits = _first_tensor
    elif callable(logits):
        to_logits = logits
    else:
        to_logits = None
    if not hid and not att and to_logits is None:
        raise ArgumentError("distill: expected at least one of hidden=, attention= and logits=")
    _positive(max_steps, "max_steps", True)
    _positive(max_seconds, "max_seconds", False)
    _positive(batch_size, "batch_size", True)
    opt = optimizer or torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=lr)
    teacher.eval()
    student.train()
    s_names = [s for s, _ in hid + att]
    t_names = [t for _, t in hid + att]
    rng = np.random.default_rng(random_state) if shuffle and batch_size is not None else None
    per_epoch = _n_batches(data, batch_size)
    total_steps = None if per_epoch is None else per_epoch * int(epochs)
    if max_steps is not None:
        total_steps = max_steps if total_steps is None else min(total_steps, max_steps)
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, desc="distill", unit="step", disable=not progress, leave=False)
    losses: list[float] = []
    start = time.perf_counter()

    def out_of_budget() -> bool:
        if max_steps is not None and len(losses) >= max_steps:
            return True
        return (
            max_seconds is not None and bool(losses) and time.perf_counter() - start > max_seconds
        )

    try:
        for _ in range(int(epochs)):
            for batch in _epoch_batches(data, batch_size, collate or _collate, rng):
                if out_of_budget():
                    break
                with torch.no_grad(), Capture(teacher, t_names) as tcap:
                    t_out = _call(teacher, batch)
                with Capture(student, s_names) as scap:
                    s_out = _call(student, batch)
                total = torch.zeros((), dtype=torch.float32)
                for s, t in hid:
                    total = total + w["hidden"] * hidden_loss(scap.outputs[s], tcap.outputs[t])
                for s, t in att:
                    total = total + w["attention"] * attention_loss(
                        scap.outputs[s], tcap.outputs[t]
                    )
                if to_logits is not None:
                    total = total + w["logits"] * logit_loss(
                        to_logits(s_out), to_logits(t_out), temperature
                    )
                opt.zero_grad()
                total.backward()
                opt.step()
                losses.append(float(total.detach()))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.5f}", refresh=False)
            if out_of_budget():
                break
    finally:
        bar.close()
    return losses
