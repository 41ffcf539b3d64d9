"""The seed and stream scheme of the integer engine: every splitmix64 constant lives here.

Random bits are a function of (seed, stream, element index) only (DESIGN 2.7): element
``i`` of a draw keyed ``key`` gets ``splitmix64(key + (i + 1) * GAMMA)``, and stream ``j``
of seed ``s`` is keyed ``mix(mix(s + GAMMA) xor (j * M2 + GAMMA))``. The numba kernels,
the numpy references and the adapters (``sekron.torch``'s integer layers) all take their
constants and key derivations from this module, so the scheme is written once.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "GAMMA",
    "M1",
    "M2",
    "MASK62",
    "MASK64",
    "STREAM_BIAS",
    "STREAM_INPUT",
    "STREAM_WEIGHT",
    "call_key",
    "forward_backward_keys",
    "mix64",
    "splitmix64_outputs",
    "stage_key",
    "stream_key",
]

# splitmix64 constants (Steele, Lea & Flood 2014)
GAMMA = 0x9E3779B97F4A7C15
M1 = 0xBF58476D1CE4E5B9
M2 = 0x94D049BB133111EB
MASK64 = (1 << 64) - 1
# adapter keys stay below 2**62 so they are non-negative int64 values wherever they travel
MASK62 = (1 << 62) - 1

# streams of an adapter's forward mappings; the engine's backward functions use streams
# 1..4 of their own key and the element-wise ops 5..7, so these never collide with them
STREAM_INPUT = 11
STREAM_WEIGHT = 12
STREAM_BIAS = 13

# odd multipliers of the adapters' key derivations (distinct from the splitmix ones above)
_STAGE = 0xD6E8FEB86659FD93
_FWD = 0x632BE59BD9B4E019


def mix64(z: int) -> int:
    """splitmix64's output function on a Python int (taken modulo ``2**64``).

    Parameters
    ----------
    z : int
        Any Python int; only its low 64 bits matter.

    Returns
    -------
    int
        The mixed 64-bit word, in ``[0, 2**64)``.

    Examples
    --------
    >>> from sekron.fixed import mix64
    >>> mix64(0), mix64(1) != mix64(2)
    (0, True)
    """
    z &= MASK64
    z = ((z ^ (z >> 30)) * M1) & MASK64
    z = ((z ^ (z >> 27)) * M2) & MASK64
    return z ^ (z >> 31)


def stream_key(seed: int, stream: int) -> np.uint64:
    """The 64-bit key of random stream ``stream`` under ``seed`` (Python ints, any size).

    Parameters
    ----------
    seed : int
        A resolved seed (e.g. from :func:`split_seed` or an adapter key).
    stream : int
        Stream id (1..4 backward draws, 5..7 element-wise ops, 11..13 adapter mappings).

    Returns
    -------
    numpy.uint64
        ``mix64(mix64(seed + GAMMA) xor (stream * M2 + GAMMA))``; element ``i`` of the
        stream draws ``mix64(key + (i + 1) * GAMMA)``.

    Examples
    --------
    >>> from sekron.fixed import GAMMA, M2, mix64, stream_key
    >>> int(stream_key(7, 1)) == mix64(mix64(7 + GAMMA) ^ (M2 + GAMMA)), stream_key(7, 2).dtype
    (True, dtype('uint64'))
    """
    return np.uint64(mix64(mix64(seed + GAMMA) ^ ((stream * M2 + GAMMA) & MASK64)))


def splitmix64_outputs(seed: int, n: int) -> tuple[int, ...]:
    """The first ``n`` outputs ``mix64(seed + (i + 1) * GAMMA)`` of splitmix64 from ``seed``.

    Parameters
    ----------
    seed : int
        Start state (any Python int, taken modulo ``2**64``).
    n : int
        Number of outputs (>= 0); the caller validates it (:func:`split_seed` does).

    Returns
    -------
    tuple of int
        ``n`` 64-bit words.

    Examples
    --------
    >>> from sekron.fixed import splitmix64_outputs
    >>> splitmix64_outputs(7, 3)[:2] == splitmix64_outputs(7, 2)
    True
    """
    return tuple(mix64(seed + i * GAMMA) for i in range(1, int(n) + 1))


def call_key(seed: int, call: int) -> int:
    """The key of call number ``call`` of a layer seeded ``seed``: both packed into 62 bits.

    The low 32 bits of ``seed`` and the low 30 bits of ``call`` are kept, so keys repeat
    only after ``2**30`` calls of one layer.

    Parameters
    ----------
    seed : int
        The layer's base seed.
    call : int
        The call counter (0 for the first forward call).

    Returns
    -------
    int
        ``((seed mod 2**32) << 30 | (call mod 2**30))``, below ``2**62``.

    Examples
    --------
    >>> from sekron.fixed import call_key
    >>> call_key(7, 0) == 7 << 30, call_key(7, 1) == (7 << 30) + 1
    (True, True)
    """
    return ((seed & 0xFFFFFFFF) << 30 | (call & 0x3FFFFFFF)) & MASK62


def forward_backward_keys(key: int) -> tuple[int, int]:
    """Independent keys for the forward mappings and for the backward pass of one call.

    Parameters
    ----------
    key : int
        The call's key (:func:`call_key`, or :func:`stage_key` for one stage).

    Returns
    -------
    fwd, bwd : int
        ``(key * GAMMA + c) mod 2**62`` and ``(key * M1 + M2) mod 2**62`` (two affine
        maps with odd multipliers, so distinct keys give distinct results).

    Examples
    --------
    >>> from sekron.fixed import forward_backward_keys
    >>> fwd, bwd = forward_backward_keys(5)
    >>> fwd != bwd, 0 <= fwd < 2**62
    (True, True)
    """
    fwd = (key * GAMMA + _FWD) & MASK62
    bwd = (key * M1 + M2) & MASK62
    return fwd, bwd


def stage_key(key: int, stage: int) -> int:
    """The key of stage ``stage`` (one product of a multi-stage layer) of a call keyed ``key``.

    Parameters
    ----------
    key : int
        The call's key.
    stage : int
        Stage index (0 for the first product).

    Returns
    -------
    int
        ``(key * c + stage * GAMMA + 1) mod 2**62`` for a fixed odd ``c``.

    Examples
    --------
    >>> from sekron.fixed import stage_key
    >>> len({stage_key(3, s) for s in range(4)})
    4
    """
    return (key * _STAGE + stage * GAMMA + 1) & MASK62
