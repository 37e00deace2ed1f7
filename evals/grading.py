"""Grading a predicted answer against a gold answer: the one place evals decide "correct".

Contract: :func:`is_correct` uses ``ttc.verifiers.is_equivalent`` (math-verify plus the
rules in ``ttc.verifiers.answer_check``) when the installed ``ttc.verifiers`` provides it,
and otherwise canonical-key equality (:func:`ttc.answers.answer_key`: ``1/2`` = ``0.5``,
``033`` = ``33``, ``1,000`` = ``1000``). :func:`grader_name` says which one graded, and
every eval record stores it. A gold that cannot be graded (missing, empty, or unreadable)
is never a silent "wrong": :func:`ungradable` gives the reason, which every record stores
in ``ungradable`` (None when the gold is fine), and :func:`is_correct` is False there.
Must NOT know: strategies, engines.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

from ttc.answers import answer_key


def _key_equal(gold: str, pred: str) -> bool:
    return answer_key(gold) == answer_key(pred)


def _key_check_gold(gold: str) -> str:
    if not gold.strip():
        raise ValueError(f"the gold answer {gold!r} is empty, so no prediction can be graded "
                         f"against it.")
    return gold


@lru_cache(maxsize=1)
def _grader() -> tuple[str, Callable[[str, str], bool], Callable[[str], str]]:
    try:
        from ttc.verifiers.answer_check import check_gold, is_equivalent
    except ImportError:
        return "answer_key", _key_equal, _key_check_gold
    return "is_equivalent", is_equivalent, check_gold


def grader_name() -> str:
    return _grader()[0]


@lru_cache(maxsize=4096)
def ungradable(gold: str | None) -> str | None:
    """Why ``gold`` cannot be graded (one sentence), or None when it can."""
    if gold is None:
        return "the problem has no gold answer."
    try:
        _grader()[2](str(gold))
    except ValueError as err:   # the checker's UngradableGold, or the key grader's error
        return str(err)
    return None


@lru_cache(maxsize=65536)
def is_correct(gold: str | None, pred: str | None) -> bool:
    """True when ``pred`` states the gold answer; no answer (None) is never correct, and
    neither is any answer to an ungradable gold (see :func:`ungradable`)."""
    if gold is None or pred is None or not str(pred).strip() or ungradable(gold):
        return False
    return bool(_grader()[1](str(gold), str(pred)))
