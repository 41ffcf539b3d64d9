"""The documentation corpus: determinism, disjoint splits, cleaning, argument checks."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sekron.data import text
from sekron.data.text import SPLITS, python_doc_sentences
from sekron.errors import ShapeError


def test_splits_partition_the_corpus_and_are_disjoint():
    everything = python_doc_sentences()
    parts = {name: python_doc_sentences(name) for name in SPLITS}
    assert len(everything) >= 3000  # "thousands of sentences", measured 7,537 on 3.11
    assert len(set(everything)) == len(everything)
    sets = {k: set(v) for k, v in parts.items()}
    assert not sets["train"] & sets["calibration"]
    assert not sets["train"] & sets["held_out"]
    assert not sets["calibration"] & sets["held_out"]
    assert sets["train"] | sets["calibration"] | sets["held_out"] == set(everything)
    # 70/15/15 by a hash: a binomial spread of a few standard deviations at most
    n = len(everything)
    for name, frac in (("train", 0.70), ("calibration", 0.15), ("held_out", 0.15)):
        sd = (n * frac * (1 - frac)) ** 0.5
        assert abs(len(parts[name]) - n * frac) < 5 * sd


def test_split_rule_depends_on_the_sentence_alone():
    # the bucket of a sentence is its own hash, whatever the rest of the corpus
    for name, buckets in SPLITS.items():
        for s in python_doc_sentences(name, sources=["topics"]):
            assert text._bucket(s) in buckets
    topics_held = set(python_doc_sentences("held_out", sources=["topics"]))
    assert topics_held <= set(python_doc_sentences("held_out"))


def test_deterministic_across_processes():
    code = (
        "import hashlib; from sekron.data.text import python_doc_sentences as p; "
        "print(hashlib.sha256('\\n'.join(p('calibration')).encode()).hexdigest())"
    )
    env_runs = [
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": ":".join(sys.path)},
        ).stdout
        for seed in ("1", "2")
    ]
    assert env_runs[0] == env_runs[1]
    assert python_doc_sentences("calibration") == python_doc_sentences("calibration")


def test_sentences_are_clean_prose():
    lo, hi = 6, 40
    for s in python_doc_sentences():
        assert s[0].isupper() and s[-1] in ".?!", s
        assert lo <= len(s.split()) <= hi, s
        assert ">>>" not in s and "::=" not in s and "`" not in s, s
        assert not any(ch in s for ch in "\n\t"), s
    short = python_doc_sentences(min_words=3, max_words=8)
    assert all(3 <= len(s.split()) <= 8 for s in short)


def test_cleaning_rules_on_synthetic_text():
    para = text._paragraphs(
        "Title\n=====\n\nA sentence about *objects* [1]. See :func:`len` for e.g. sizes.\n\n"
        "   >>> x = 1\n\n   def f():\n       return 1\n"
    )
    assert para == ["A sentence about *objects* [1]. See :func:`len` for e.g. sizes."]
    assert text._split_sentences(para[0]) == [
        "A sentence about objects.",
        "See len for e.g. sizes.",
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"split": "test"},
        {"sources": ["wiki"]},
        {"sources": []},
        {"min_words": 0},
        {"min_words": 9, "max_words": 8},
        {"max_words": 2.5},
    ],
)
def test_bad_arguments_name_the_argument(kwargs):
    with pytest.raises(ShapeError, match=next(iter(kwargs)).split("_")[0]):
        python_doc_sentences(**kwargs)


def test_import_is_light():
    code = "import sys, sekron.data.text; print('pydoc_data.topics' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": ":".join(sys.path)},
    ).stdout
    assert out.strip() == "False"


def test_topics_task_is_labelled_disjoint_and_covers_every_class():
    from pydoc_data.topics import topics

    from sekron.data.text import TOPIC_CLASSES, python_doc_topics

    # every topic of this Python is in exactly one class
    listed = [t for ts in TOPIC_CLASSES.values() for t in ts]
    assert len(listed) == len(set(listed))
    assert set(topics) <= set(listed)
    everything, labels = python_doc_topics()
    assert len(everything) == len(labels) >= 1500
    assert set(everything) <= set(python_doc_sentences(sources=["topics"]))
    k = len(TOPIC_CLASSES)
    parts = {name: python_doc_topics(name) for name in SPLITS}
    for name, (s, y) in parts.items():
        assert all(text._bucket(x) in SPLITS[name] for x in s)
        counts = [y.count(c) for c in range(k)]
        assert min(counts) >= 10, (name, counts)  # every class in every split
        assert max(counts) / len(y) < 0.45, (name, counts)  # no class dominates
    sets = [set(s) for s, _ in parts.values()]
    assert not sets[0] & sets[1] and not sets[0] & sets[2] and not sets[1] & sets[2]
    assert sum(len(x) for x in sets) == len(everything)
    # a label is the class of a topic the sentence is printed under
    cls = list(TOPIC_CLASSES.values())
    for s, y in list(zip(everything, labels, strict=True))[::50]:
        assert any(s.split()[0] in topics[t] for t in cls[y])
    assert python_doc_topics("held_out") == python_doc_topics("held_out")
    with pytest.raises(ShapeError):
        python_doc_topics("test")  # type: ignore[arg-type]
    with pytest.raises(ShapeError):
        python_doc_topics(min_words=0)
