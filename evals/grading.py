"""Grading a predicted answer against a gold answer: the one place evals decide "correct".

Contract: :func:`is_correct` uses ``ttc.verifiers.answer_check.is_equivalent`` (symbolic
equivalence) when the installed ``ttc.verifiers`` provides it, and otherwise canonical-key equality
(:func:`ttc.answers.answer_key`: ``1/2`` = ``0.5``, ``033`` = ``33``, ``1,000`` = ``1000``).
:func:`grader_name` says which one graded, and every eval record stores it.
Must NOT know: strategies, engines.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

from ttc.answers import answer_key


def _key_equal(gold: str, pred: str) -> bool:
    return answer_key(gold) == answer_key(pred)


@lru_cache(maxsize=1)
def _grader() -> tuple[str, Callable[[str, str], bool]]:
    try:
        from ttc.verifiers.answer_check import is_equivalent
    except ImportError:
        return "answer_key", _key_equal
    return "is_equivalent", is_equivalent


def grader_name() -> str:
    return _grader()[0]


@lru_cache(maxsize=65536)
def is_correct(gold: str | None, pred: str | None) -> bool:
    """True when ``pred`` states the gold answer; no answer (None) is never correct."""
    if gold is None or pred is None or not str(pred).strip():
        return False
    return bool(_grader()[1](str(gold), str(pred)))
