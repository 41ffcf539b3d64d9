"""A real English corpus that needs no download: the documentation shipped with Python.

Every CPython installation carries edited technical English in two places:
:mod:`pydoc_data.topics` (the language reference topics that ``help("assert")`` prints,
about 80 topics, half a million characters) and the docstrings of the standard library
(read here from the top-level ``Lib/*.py`` files with :mod:`ast`, never imported; about
900,000 characters). This module turns both into sentences for calibrating and
distilling compressed language models:

* **cleaning** -- a text is cut into paragraphs at blank lines. A paragraph is kept only
  when it reads as prose: every line at the same indentation (a bullet's continuation
  two columns right of its ``* ``), no heading underline, no table row, and not starting
  like an interactive session or a comment (``>>>``, ``...``, ``#``, ``$``). The text
  loses its reST leftovers (roles such as ``:exc:`X```, literals in back-quotes,
  ``*emphasis*``, footnote marks ``[1]``) and is split into sentences after ``.``, ``?``
  or ``!`` followed by a capital letter or an opening quote (``e.g.``, ``i.e.`` and a
  few other abbreviations do not end a sentence). A sentence is kept when it starts with
  a capital letter, ends with ``.``, ``?`` or ``!``, has between ``min_words`` and
  ``max_words`` words, holds no ``>>>`` or ``::=`` and at least 3/4 of its characters
  are letters or spaces (this removes what is mostly code).
* **deduplication** -- sentences equal after lower-casing and collapsing white space are
  kept once (the first occurrence: topics before docstrings, each sorted by name).
* **split** -- each sentence goes to a set by a hash of its normalized text (BLAKE2b,
  8 bytes, modulo 20): buckets 0-13 train (70 %), 14-16 calibration (15 %), 17-19
  held-out (15 %). The rule depends on the sentence alone, so the sets are disjoint,
  and a sentence stays in its set across Python versions whose documentation differs
  elsewhere.

On CPython 3.11.7 (the development machine), with the default bounds of 6 to 40 words:
7,537 sentences (1,862 from the topics), of which 5,313 train, 1,080 calibration and
1,144 held-out. The numbers depend on the Python version, since the documentation does.
Building the list takes about 3 s (parsing the library's sources) and is cached.

Only the standard library is imported, and the sources are read only on first use.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Literal

from sekron.errors import ShapeError

__all__ = ["SPLITS", "TOPIC_CLASSES", "python_doc_sentences", "python_doc_topics"]

Split = Literal["train", "calibration", "held_out", "all"]
Source = Literal["topics", "docstrings"]

#: Hash buckets (of 20) of each set: the split rule, documented in the module docstring.
SPLITS: dict[str, range] = {
    "train": range(0, 14),
    "calibration": range(14, 17),
    "held_out": range(17, 20),
}
_N_BUCKETS = 20

_UNDERLINE = re.compile(r"^[*=\-~^\"'`#+]{3,}$")
_TABLE = re.compile(r"^[+|]")
_BULLET = re.compile(r"^[*\-] ")
_CODE_START = re.compile(r"^(>>>|\.\.\.|#|\$ )")
_EMPHASIS = re.compile(r"\*{1,2}([^*\s][^*]*?)\*{1,2}")
_FOOTNOTE = re.compile(r"\s*\[\d+\]")
_ROLE = re.compile(r":\w+(?::\w+)?:`~?([^`]*)`")
_LITERAL = re.compile(r"`{1,2}([^`]+)`{1,2}")
# a sentence ends at .?! followed by white space and a capital letter or an opening quote
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"(])")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "cf.", "vs.", "Mr.", "Dr.", "No.", "approx.")


def _prose(lines: list[str]) -> str | None:
    """One paragraph's text, or None when the block is not prose.

    Prose in these topics is either flush or uniformly indented (the body of a method's
    description); a bullet's continuation lines sit two columns right of its ``* ``.
    Code and grammar rules are indented deeper than the text that introduces them and
    are mostly filtered at the sentence level (lower-case starts, symbols); what is
    dropped here are the blocks that are surely not prose.
    """
    first = lines[0]
    indent = len(first) - len(first.lstrip())
    head = first.strip()
    if (
        _UNDERLINE.match(head)
        or _CODE_START.match(head)
        or (len(lines) > 1 and _UNDERLINE.match(lines[1].strip()))
    ):
        return None
    step = 2 if _BULLET.match(head) else 0
    for ln in lines[1:]:
        if len(ln) - len(ln.lstrip()) != indent + step or _UNDERLINE.match(ln.strip()):
            return None
    if any(_TABLE.match(ln.strip()) for ln in lines):
        return None
    return " ".join(ln.strip() for ln in lines)[step:]


def _paragraphs(text: str) -> list[str]:
    """Prose paragraphs of one topic, each joined into one line."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [ln.rstrip() for ln in block.split("\n") if ln.strip()]
        if lines and (para := _prose(lines)):
            out.append(para)
    return out


def _split_sentences(paragraph: str) -> list[str]:
    text = _LITERAL.sub(r"\1", _ROLE.sub(r"\1", paragraph))
    # what is left of a back-quote is the old `quote' style: an apostrophe
    text = _FOOTNOTE.sub("", _EMPHASIS.sub(r"\1", text)).replace("`", "'")
    parts: list[str] = []
    for piece in _SENTENCE_END.split(text):
        if parts and parts[-1].endswith(_ABBREVIATIONS):
            parts[-1] = f"{parts[-1]} {piece}"  # "e.g. Foo" does not end a sentence
        else:
            parts.append(piece)
    return [" ".join(p.split()) for p in parts]


def _keep(sentence: str, min_words: int, max_words: int) -> bool:
    if not sentence[:1].isupper() or sentence[-1:] not in ".?!":
        return False
    if not min_words <= len(sentence.split()) <= max_words:
        return False
    letters = sum(c.isalpha() or c == " " for c in sentence)
    return letters >= 0.75 * len(sentence) and ">>>" not in sentence and "::=" not in sentence


def _normalize(sentence: str) -> str:
    return " ".join(sentence.lower().split())


def _bucket(sentence: str) -> int:
    digest = hashlib.blake2b(_normalize(sentence).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _N_BUCKETS


def _topic_texts() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[key] for key in sorted(topics)]


def _docstring_texts() -> list[str]:
    """Docstrings of the top-level standard-library modules, read with ``ast`` (not imported)."""
    import ast
    import sysconfig
    from pathlib import Path

    texts = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):  # pragma: no cover - odd installs
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    texts.append(doc)
    return texts


_SOURCES = {"topics": _topic_texts, "docstrings": _docstring_texts}


@lru_cache(maxsize=8)
def _all_sentences(sources: tuple[str, ...], min_words: int, max_words: int) -> tuple[str, ...]:
    seen: set[str] = set()
    out: list[str] = []
    for source in sources:
        for text in _SOURCES[source]():
            for paragraph in _paragraphs(text):
                for s in _split_sentences(paragraph):
                    norm = _normalize(s)
                    if norm not in seen and _keep(s, min_words, max_words):
                        seen.add(norm)
                        out.append(s)
    return tuple(out)


def _check_split(split: Any) -> None:
    if split != "all" and split not in SPLITS:
        raise ShapeError(
            f"split: expected one of 'all', {', '.join(map(repr, SPLITS))}, got {split!r}"
        )


def _check_word_range(min_words: Any, max_words: Any) -> None:
    if (
        not isinstance(min_words, int)
        or not isinstance(max_words, int)
        or not 1 <= min_words <= max_words
    ):
        raise ShapeError(
            "min_words, max_words: expected integers with 1 <= min_words <= max_words, "
            f"got {min_words!r} and {max_words!r}"
        )


def python_doc_sentences(
    split: Split = "all",
    *,
    sources: Sequence[Source] = ("topics", "docstrings"),
    min_words: int = 6,
    max_words: int = 40,
) -> list[str]:
    """Cleaned, deduplicated English sentences from the documentation shipped with Python.

    Parameters
    ----------
    split : {"all", "train", "calibration", "held_out"}, default "all"
        Which set: the three are disjoint and together make ``"all"`` (see the module
        docstring for the hash rule; 70 % / 15 % / 15 %).
    sources : sequence of {"topics", "docstrings"}, default both
        ``"topics"``: the language reference topics of :mod:`pydoc_data.topics`;
        ``"docstrings"``: the docstrings of the top-level standard-library modules,
        read from their source with :mod:`ast` (never imported).
    min_words, max_words : int, default 6 and 40
        Length bounds of a kept sentence, in white-space separated words.

    Returns
    -------
    list of str
        The sentences in a fixed order (sources in the given order, topics and modules
        sorted by name, then text order); the same on every call and every machine with
        the same Python version.

    Raises
    ------
    ShapeError
        If ``split`` or a source is not one of the names above, or the word bounds are
        not integers with ``1 <= min_words <= max_words``.

    Examples
    --------
    >>> from sekron.data.text import python_doc_sentences
    >>> train = python_doc_sentences("train")
    >>> held = python_doc_sentences("held_out")
    >>> len(train) > 1000 and not set(train) & set(held)
    True
    >>> all(s[0].isupper() and s[-1] in ".?!" for s in held)
    True
    """
    _check_split(split)
    srcs = (sources,) if isinstance(sources, str) else tuple(sources)
    if not srcs or any(src not in _SOURCES for src in srcs):
        raise ShapeError(
            f"sources: expected a non-empty sequence of {', '.join(map(repr, _SOURCES))}, "
            f"got {sources!r}"
        )
    _check_word_range(min_words, max_words)
    sentences = _all_sentences(srcs, min_words, max_words)
    if split == "all":
        return list(sentences)
    buckets = SPLITS[split]
    return [s for s in sentences if _bucket(s) in buckets]


#: The labelled task of :func:`python_doc_topics`: each class is a chapter of Python's
#: documentation, made of the :mod:`pydoc_data.topics` entries that come from it (the
#: language reference's chapters 3-8 and the library's "Built-in Types" and ``pdb``).
#: Every one of the 79 topics of CPython 3.11 belongs to exactly one class.
TOPIC_CLASSES: dict[str, tuple[str, ...]] = {
    "data model": (
        "objects", "types", "specialnames", "customization", "attribute-access",
        "callable-types", "sequence-types", "numeric-types", "context-managers",
        "specialattrs",
    ),
    "built-in types": (
        "truth", "typesseq", "typesseq-mutable", "string-methods", "typesmapping",
        "typesmodules", "typesfunctions", "typesmethods", "bltin-code-objects",
        "bltin-type-objects", "bltin-null-object", "bltin-ellipsis-object", "formatstrings",
    ),
    "execution model and lexical analysis": (
        "execmodel", "naming", "dynamic-features", "exceptions", "identifiers",
        "id-classes", "strings", "numbers", "integers", "floating", "imaginary",
    ),
    "expressions": (
        "atom-identifiers", "atom-literals", "lists", "dict", "attribute-references",
        "subscriptions", "slicings", "calls", "await", "power", "unary", "binary",
        "shifting", "bitwise", "comparisons", "in", "booleans", "lambda", "exprlists",
        "conversions", "operator-summary",
    ),
    "simple statements": (
        "assignment", "augassign", "assert", "pass", "del", "return", "yield", "raise",
        "break", "continue", "import", "global", "nonlocal",
    ),
    "compound statements": (
        "compound", "if", "else", "while", "for", "try", "with", "function", "class",
        "async",
    ),
    "debugger": ("debugger",),
}  # fmt: skip


@lru_cache(maxsize=8)
def _labelled_topics(min_words: int, max_words: int) -> tuple[tuple[str, int], ...]:
    from pydoc_data.topics import topics

    label_of = {t: c for c, ts in enumerate(TOPIC_CLASSES.values()) for t in ts}
    found: dict[str, tuple[str, set[int]]] = {}  # normalized -> (first text, classes)
    for key in sorted(topics):
        if key not in label_of:  # a topic of a newer Python: not in the task
            continue
        for paragraph in _paragraphs(topics[key]):
            for s in _split_sentences(paragraph):
                if _keep(s, min_words, max_words):
                    found.setdefault(_normalize(s), (s, set()))[1].add(label_of[key])
    # a sentence printed under topics of two classes has no single label: dropped
    return tuple((s, next(iter(c))) for s, c in found.values() if len(c) == 1)


def python_doc_topics(
    split: Split = "all", *, min_words: int = 6, max_words: int = 40
) -> tuple[list[str], list[int]]:
    """Sentences of Python's language documentation labelled by the chapter they come from.

    A real text-classification task that needs no download: the sentences of
    :mod:`pydoc_data.topics` (cleaned as in :func:`python_doc_sentences`), each
    labelled with the class of :data:`TOPIC_CLASSES` its topic belongs to (7 classes:
    data model, built-in types, execution model and lexical analysis, expressions, simple
    statements, compound statements, debugger). Sentences are deduplicated; one found
    under topics of two different classes is dropped. The split is the hash rule of the
    module docstring (70 % train, 15 % calibration used as validation, 15 % held-out
    used as test), so it never changes with the seed of a run.

    On CPython 3.11.7: 1,862 sentences (none is shared by two classes), 1,322 train,
    255 calibration, 285 held-out. Per class (all splits): 547 data model, 392 built-in
    types, 128 execution model and lexical analysis, 242 expressions, 155 simple
    statements, 244 compound statements, 154 debugger; on the held-out set always
    answering "data model" scores 93 / 285 = 32.6 %.

    Parameters
    ----------
    split : {"all", "train", "calibration", "held_out"}, default "all"
    min_words, max_words : int, default 6 and 40
        Length bounds of a kept sentence, in words.

    Returns
    -------
    sentences : list of str
        In a fixed order (topics sorted by name, then text order).
    labels : list of int
        Index of each sentence's class in ``list(TOPIC_CLASSES)``.

    Raises
    ------
    ShapeError
        If ``split`` is not one of the names above or the word bounds are not integers
        with ``1 <= min_words <= max_words``.

    Examples
    --------
    >>> from sekron.data.text import TOPIC_CLASSES, python_doc_topics
    >>> train, y_train = python_doc_topics("train")
    >>> test, y_test = python_doc_topics("held_out")
    >>> len(train) == len(y_train) > 1000 and not set(train) & set(test)
    True
    >>> sorted(set(y_test)) == list(range(len(TOPIC_CLASSES)))
    True
    """
    _check_split(split)
    _check_word_range(min_words, max_words)
    pairs = _labelled_topics(min_words, max_words)
    if split != "all":
        pairs = tuple(p for p in pairs if _bucket(p[0]) in SPLITS[split])
    return [s for s, _ in pairs], [y for _, y in pairs]
