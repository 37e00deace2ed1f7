import pytest

from ttc.aggregate import aggregate_steps, top_candidate, majority, weighted_majority
from ttc.answers import answer_key, extract_answer, last_boxed
from ttc.types import Candidate


@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
    ("first \\boxed{1} then \\boxed{x^{2}+1}", "x^{2}+1"),
    ("Natalia sold 72 clips.\n#### 72", "72"),
    ("The answer is 18.", "18"),
    ("The final answer is $\\boxed{7}$.", "7"),
    ("The answer is 4 * 3 = 12.", "12"),
    ("So the answer is: y = 2x + 3", "y = 2x + 3"),
    ("The final answer is x = -1.5", "-1.5"),
    ("no answer here", None),
    ("\\boxed{unclosed", None),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_last_boxed_matches_nested_braces():
    assert last_boxed("\\boxed{\\frac{a}{b}}") == "\\frac{a}{b}"


@pytest.mark.parametrize("a, b", [
    ("\\frac{1}{2}", "0.5"), ("\\dfrac12", "1/2"), ("1,000", "1000"), ("033", "33"),
    ("$5$", "5"), ("x = 3", "3"), ("10\\%", "10"), ("\\text{ 12 }", "12"),
])
def test_equivalent_forms_share_a_voting_key(a, b):
    assert answer_key(a) == answer_key(b)


def test_different_answers_have_different_keys():
    assert answer_key("0.33") != answer_key("1/3")
    assert answer_key("2") != answer_key("3")


def cand(answer, score=None):
    return Candidate(steps=("s",), answer=answer, score=score)


def test_votes():
    cands = [cand("1", 0.9), cand("2", 0.4), cand("2", 0.4), cand("0.5", 0.1), cand("1/2", 0.1)]
    assert answer_key(majority(cands).answer) == "2"       # 2 votes; "2" seen before "1/2"
    assert weighted_majority(cands).answer == "1"           # 0.9 > 0.8 > 0.2
    assert top_candidate(cands).answer == "1"
    assert majority([]) is None


@pytest.mark.parametrize("how, expected", [("last", 0.5), ("min", 0.2), ("prod", 0.08), ("mean", 0.5)])
def test_step_aggregation(how, expected):
    assert aggregate_steps([0.8, 0.2, 0.5], how) == pytest.approx(expected)
