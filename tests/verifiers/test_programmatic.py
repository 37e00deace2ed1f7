"""Generated tasks and their exact step checkers."""

import pytest

from ttc.registry import VERIFIERS
from ttc.types import Problem
from ttc.verifiers.programmatic import (arithmetic_chain_problem, check_steps_exact,
                                        countdown_problem, parse_equation, reference_steps)


@pytest.mark.parametrize("seed", range(8))
def test_reference_solutions_are_all_good(seed):
    for problem in (countdown_problem(seed), arithmetic_chain_problem(seed, length=4)):
        steps = reference_steps(problem)
        assert check_steps_exact(problem, steps) == [True] * len(steps)


def test_generators_are_deterministic():
    assert countdown_problem(3) == countdown_problem(3)
    assert arithmetic_chain_problem(3) == arithmetic_chain_problem(3)
    assert countdown_problem(3) != countdown_problem(4)


def test_countdown_errors_are_absorbing_and_exact():
    p = Problem(question="q", answer="24", metadata={"task": "countdown",
                                                   "numbers": [4, 6, 1, 1], "target": 24})
    assert check_steps_exact(p, ["4 * 6 = 24\n\n", "The answer is 24."]) == [True, True]
    assert check_steps_exact(p, ["4 * 6 = 25\n\n", "25 - 1 = 24"]) == [False, False]
    # 4 is used twice: invalid
    assert check_steps_exact(p, ["4 + 4 = 8\n\n"]) == [False]
    # valid arithmetic, but 24 is no longer reachable from {10, 1, 1}... it is not: 10+1+1=12
    assert check_steps_exact(p, ["4 + 6 = 10\n\n"]) == [False]
    # dead end vs still reachable
    assert check_steps_exact(p, ["1 * 1 = 1\n\n", "Now multiply."]) == [True, True]
    assert check_steps_exact(p, ["The answer is 24."]) == [False]     # target not reached


def test_chain_checks_each_operation():
    p = Problem(question="q", answer="33", metadata={"task": "arithmetic_chain", "start": 7,
                                                   "ops": [["+", 4], ["*", 3]]})
    assert check_steps_exact(p, ["7 + 4 = 11", "11 * 3 = 33", "\\boxed{33}"]) == [True] * 3
    assert check_steps_exact(p, ["7 + 4 = 12", "12 * 3 = 36"]) == [False, False]
    assert check_steps_exact(p, ["7 * 3 = 21"]) == [False]          # wrong order
    assert check_steps_exact(p, ["7 + 4 = 11", "\\boxed{11}"]) == [True, False]


def test_verifier_scores_and_usage():
    v = VERIFIERS.build("programmatic")
    p = arithmetic_chain_problem(1, length=3)
    good = reference_steps(p)
    out = v.score(p, [good, ["1 + 1 = 3"]])
    assert out.scores == ((1.0,) * len(good), (0.0,))
    assert (out.usage.calls, out.usage.tokens) == (2, 0)


def test_bad_input():
    v = VERIFIERS.build("programmatic")
    with pytest.raises(ValueError, match="not a generated task"):
        v.score(Problem(question="2+2?"), [["4"]])
    with pytest.raises(ValueError, match="step 0 is empty"):
        v.score(arithmetic_chain_problem(1), [[""]])
    assert parse_equation("so 3 × 4 = 12 and 12 ÷ 2 = 6") == (12, "/", 2, 6)
