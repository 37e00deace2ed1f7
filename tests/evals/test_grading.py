"""Eval grading: an ungradable gold is recorded as such, never a silent "wrong"."""

import pytest

from ttc.evals.grading import is_correct, ungradable
from ttc.evals.metrics import summarize
from ttc.evals.records import make_record
from ttc.types import Candidate, Problem, Result


def _record(gold):
    problem = Problem(id="p", question="q?", answer=gold)
    result = Result(problem_id="p", strategy="best_of_n", answer="3",
                    candidates=(Candidate(steps=("3",), answer="3"),))
    return make_record(problem, 0, result, dataset="d", seed=0, wall=0.0, save_tree=False)


def test_gradable_gold_records_no_reason():
    rec = _record("3")
    assert rec["correct"] is True and rec["ungradable"] is None
    assert rec["candidate_correct"] == [True]


@pytest.mark.parametrize("gold, reason", [("", "empty"), ("  ", "empty"),
                                          ("???", "cannot be parsed"),
                                          ("\\frac{3}{", "cannot be parsed"),
                                          (None, "no gold answer")])
def test_ungradable_gold_is_recorded(gold, reason):
    rec = _record(gold)
    assert reason in rec["ungradable"]
    assert rec["correct"] is False and rec["candidate_correct"] == [False]
    assert summarize([rec, _record("3")])["ungradable_problems"] == 1


def test_is_correct_and_ungradable_agree_on_good_golds():
    assert ungradable("\\frac{1}{2}") is None
    assert is_correct("\\frac{1}{2}", "0.5") and not is_correct("\\frac{1}{2}", "0.51")
    assert not is_correct("\\frac{1}{2}", None) and not is_correct("\\frac{1}{2}", " ")
