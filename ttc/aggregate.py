"""Answer aggregation over candidates, and step-score aggregation.

Contract: pure functions over :class:`~ttc.types.Candidate` values. Voting groups
candidates by :func:`ttc.answers.answer_key`; ties go to the class seen first.

    rule                 picks
    -------------------  -----------------------------------------------------------
    majority             the most frequent answer class
    weighted_majority    the class with the largest sum of scores (weight = score,
                         or exp(score / T) with a temperature)
    best (top_candidate) the single candidate with the highest score
Must NOT know: where candidates or scores came from.
"""

from __future__ import annotations

import enum
import math
from typing import Sequence

from ttc.answers import answer_key
from ttc.types import Candidate


class StepAggregation(enum.Enum):
    LAST = "last"
    MIN = "min"
    PROD = "prod"
    MEAN = "mean"


def aggregate_steps(scores: Sequence[float], how: StepAggregation | str = "last") -> float:
    """Reduce per-step scores to one number (docs/algorithms.md#step-score-aggregation)."""
    how = StepAggregation(how)
    if not scores:
        raise ValueError("cannot aggregate an empty list of step scores.")
    if how is StepAggregation.LAST:
        return float(scores[-1])
    if how is StepAggregation.MIN:
        return float(min(scores))
    if how is StepAggregation.PROD:
        return float(math.prod(scores))
    return float(sum(scores) / len(scores))


class Selection(enum.Enum):
    MAJORITY = "majority"
    WEIGHTED = "weighted"
    BEST = "best"


def vote_totals(candidates: Sequence[Candidate], *, weighted: bool,
                temperature: float | None = None) -> dict[str, float]:
    """Total weight per answer class (insertion order = first seen)."""
    totals: dict[str, float] = {}
    for cand in candidates:
        key = answer_key(cand.answer)
        if key is None:
            continue
        if weighted:
            score = cand.score if cand.score is not None else 0.0
            weight = math.exp(score / temperature) if temperature else score
        else:
            weight = 1.0
        totals[key] = totals.get(key, 0.0) + weight
    return totals


def _winner(candidates: Sequence[Candidate], totals: dict[str, float]) -> Candidate | None:
    if not totals:
        return None
    best_key = max(totals, key=lambda k: totals[k])   # max keeps the first of equals
    members = [c for c in candidates if answer_key(c.answer) == best_key]
    return max(members, key=lambda c: c.score if c.score is not None else -math.inf)


def majority(candidates: Sequence[Candidate]) -> Candidate | None:
    return _winner(candidates, vote_totals(candidates, weighted=False))


def weighted_majority(candidates: Sequence[Candidate], *,
                      temperature: float | None = None) -> Candidate | None:
    return _winner(candidates, vote_totals(candidates, weighted=True, temperature=temperature))


def top_candidate(candidates: Sequence[Candidate]) -> Candidate | None:
    scored = [c for c in candidates if c.answer is not None] or list(candidates)
    if not scored:
        return None
    return max(scored, key=lambda c: c.score if c.score is not None else -math.inf)


def select(candidates: Sequence[Candidate], rule: Selection | str) -> Candidate | None:
    rule = Selection(rule)
    if rule is Selection.MAJORITY:
        return majority(candidates)
    if rule is Selection.WEIGHTED:
        return weighted_majority(candidates)
    return top_candidate(candidates)
