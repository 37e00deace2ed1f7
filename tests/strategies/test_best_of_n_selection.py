"""Best-of-N: naive, weighted (score or exp(score/T)) and majority selection
(docs/algorithms.md#best-of-n)."""

import math
from collections import defaultdict

import pytest
from pydantic import ValidationError

from ttc.answers import answer_key
from ttc.strategies.best_of_n import BestOfNConfig


def _totals(cands, weight):
    totals = defaultdict(float)
    for c in cands:
        if answer_key(c.answer) is not None:
            totals[answer_key(c.answer)] += weight(c)
    return totals


@pytest.mark.parametrize("pid", ["a", "b", "c", "d", "e"])
def test_each_selection_rule_picks_what_it_should(run, pid):
    kw = dict(difficulty=0.8, num_steps=5, auroc=0.7, pid=pid)
    naive = run({"name": "best_of_n", "n": 16, "selection": "best"}, **kw)
    cands = naive.result.candidates
    best = max(cands, key=lambda c: c.score)
    assert naive.result.answer == best.answer
    weighted = run({"name": "best_of_n", "n": 16, "selection": "weighted"}, **kw)
    t = _totals(weighted.result.candidates, lambda c: c.score)
    assert answer_key(weighted.result.answer) == max(t, key=t.get)
    hot = run({"name": "best_of_n", "n": 16, "weight_temperature": 0.1}, **kw)
    t = _totals(hot.result.candidates, lambda c: math.exp(c.score / 0.1))
    assert answer_key(hot.result.answer) == max(t, key=t.get)
    maj = run({"name": "best_of_n", "n": 16, "selection": "majority"}, **kw)
    t = _totals(maj.result.candidates, lambda c: 1.0)
    assert answer_key(maj.result.answer) == max(t, key=t.get)


def test_sharp_exp_weighting_tends_to_naive_best():
    # T -> 0 makes exp(score/T) voting pick the class of the single best score
    from ttc.aggregate import weighted_majority
    from ttc.types import Candidate

    cands = [Candidate(steps=("x",), answer="1", score=0.60),
             Candidate(steps=("y",), answer="1", score=0.60),
             Candidate(steps=("z",), answer="2", score=0.65)]
    assert weighted_majority(cands).answer == "1"
    assert weighted_majority(cands, temperature=0.01).answer == "2"


@pytest.mark.parametrize("t", [0.0, -0.5])
def test_non_positive_weight_temperature_is_refused(t):
    with pytest.raises(ValidationError, match="weight_temperature must be > 0"):
        BestOfNConfig(weight_temperature=t)
