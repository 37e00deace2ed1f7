"""Generated tasks and their exact step checkers."""

import pytest

from ttc.registry import VERIFIERS
from ttc.types import Problem
from ttc.evals.tasks import arithmetic_chain_problem, countdown_problem, reference_steps
from ttc.verifiers.programmatic import check_steps_exact, parse_equation


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
    # an unchecked step is not good, and does not undo the valid move before it
    assert check_steps_exact(p, ["1 * 1 = 1\n\n", "Now multiply."]) == [True, False]
    assert check_steps_exact(p, ["Now multiply.", "4 * 6 = 24", "\\boxed{24}"]) == \
        [False, True, True]
    assert check_steps_exact(p, ["The answer is 24."]) == [False]     # target not reached
    # ended by the model (no trailing delimiter): its last number is its answer
    assert check_steps_exact(p, ["4 * 6 = 24"]) == [True]
    assert check_steps_exact(p, ["1 * 1 = 1"]) == [False]
    # an invalid move then the (given) target: stating it proves nothing
    assert check_steps_exact(p, ["4 * 4 = 16\n\n", "The answer is 24."]) == [False, False]


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
    out = v.score(p, [good, ["1 + 1 = 3\n\n"]])
    assert out.scores == ((1.0,) * len(good), (0.0,))
    assert (out.usage.calls, out.usage.tokens) == (2, 0)


def test_bad_input():
    v = VERIFIERS.build("programmatic")
    with pytest.raises(ValueError, match="not a generated task"):
        v.score(Problem(question="2+2?"), [["4"]])
    with pytest.raises(ValueError, match="step 0 is empty"):
        v.score(arithmetic_chain_problem(1), [[""]])
    assert parse_equation("so 3 × 4 = 12 and 12 ÷ 2 = 6") == (12, "/", 2, 6)


CHAIN = Problem(question="q", answer="33", metadata={"task": "arithmetic_chain", "start": 7,
                                                     "ops": [["+", 4], ["*", 3]]})


def test_unparseable_steps_are_not_good_and_a_wrong_answer_scores_zero():
    # the repro: no step parses as 'a op b = c' and the final answer is wrong
    steps = ["First we add four to seven.\n\n", "Then we triple it.\n\n",
             "The answer is \\boxed{36}."]
    assert check_steps_exact(CHAIN, steps) == [False, False, False]
    out = VERIFIERS.build("programmatic").score(CHAIN, [steps, steps[:2]])
    assert out.scores == ((0.0, 0.0, 0.0), (0.0, 0.0))


def test_an_answer_step_is_scored_by_its_answer():
    # a valid equation does not excuse a premature answer in the same step
    assert check_steps_exact(CHAIN, ["7 + 4 = 11, so the answer is \\boxed{11}"]) == [False]
    assert check_steps_exact(CHAIN, ["7 + 4 = 11", "11 * 3 = 33 so \\boxed{33}"]) == [True] * 2
    # unchecked steps before it are not good, but a right answer is
    assert check_steps_exact(CHAIN, ["Let me think.", "7 + 4 = 11", "11 * 3 = 33",
                                     "\\boxed{33}"]) == [False, True, True, True]
    # later steps carry the latest answer's verdict
    assert check_steps_exact(CHAIN, ["7 + 4 = 11", "11 * 3 = 33", "\\boxed{33}",
                                     "Check: 33 / 3 = 11.", "Hope this helps!"]) == [True] * 5
    assert check_steps_exact(CHAIN, ["\\boxed{33}", "Sorry, the answer is 34."]) == \
        [True, False]


def test_a_trajectory_the_model_ended_answers_its_last_number():
    # no trailing step delimiter: the model ended here, and strategies take the last
    # number as its answer (the native repro: a valid first step, then EOS, answer 12)
    assert check_steps_exact(CHAIN, ["7 + 4 = 11"]) == [False]
    assert check_steps_exact(CHAIN, ["7 + 4 = 11\n\n"]) == [True]      # paused: a prefix
    assert check_steps_exact(CHAIN, ["7 + 4 = 11\n\n", "11 * 3 = 33"]) == [True, True]
    assert check_steps_exact(CHAIN, ["We think hard."]) == [False]
    p = Problem(question="q", answer="21", metadata={"task": "arithmetic_chain", "start": 6,
                                                   "ops": [["+", 6], ["+", 9]]})
    assert check_steps_exact(p, ["For example, 6 + 6 = 12 in your answer."]) == [False]


def _finished_variants(problem):
    ref = reference_steps(problem)
    work, answer = ref[:-1], ref[-1]
    wrong = f"The answer is \\boxed{{{int(problem.answer) + 1}}}."
    flawed = ["1 + 1 = 3\n\n", *work[1:]]
    ended = [s.rstrip() for s in work]          # last steps without the delimiter
    return [ref, [*work, wrong], ["We compute it all.\n\n", answer],
            ["We compute it all.\n\n", wrong], [*flawed, answer], [*flawed, wrong],
            [*work[:1], answer], [*ref, "Hope this helps!"], [*ref, wrong, "Done."],
            [*work[:1], f"{work[0].strip()} so {answer}"], [*work[:-1], ended[-1]],
            [ended[0]], [*work, "So that is it."], ["We compute it all."],
            [*flawed[:-1], ended[-1]]]


@pytest.mark.parametrize("seed", range(6))
def test_a_finished_trajectory_scores_whether_its_final_answer_is_right(seed):
    from ttc.answers import extract_answer
    from ttc.verifiers.answer_check import is_equivalent

    problem = arithmetic_chain_problem(seed, length=3)
    trajectories = _finished_variants(problem)
    out = VERIFIERS.build("programmatic").score(problem, trajectories)
    for steps, scores in zip(trajectories, out.scores):
        # the answer a strategy takes from a solution the model ended
        final = extract_answer("".join(steps), fallback_last_number=True)
        right = final is not None and is_equivalent(problem.answer, final)
        assert scores[-1] == (1.0 if right else 0.0), steps
