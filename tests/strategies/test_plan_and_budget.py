"""Plan-and-Budget (docs/algorithms.md#plan-and-budget): a planner's sub-questions with complexities, token caps from
complexity x decay, unused tokens rolled over, each part answered under its cap."""

from __future__ import annotations

import pytest

from fakes import PromptGenerator, StepVerifier
from fakes import problems, world
from ttc.ledger import Budget
from ttc.strategies.plan_and_budget import (Part, PlanAndBudget, PlanAndBudgetConfig,
                                            decay, parse_plan)
from ttc.types import FinishReason, Problem

PROBLEM = Problem(id="pb", question="A shop sells pens at 3 each; how much are 4 pens?")


def scripted(plan: str, *, used: dict[int, int] | None = None):
    """Planner replies ``plan``; part i replies with ``used[i]`` words, or runs long
    (every part then spends its whole cap); the last part states \\boxed{12}."""
    used = used or {}

    def reply(prompt, i, params):
        if "Break the problem into" in prompt:
            return plan
        k = prompt.count("\nA: ")                 # answers already given = part index
        if "Now answer the original question" in prompt:
            return "So the total is \\boxed{12} " + "pad " * 5000, FinishReason.EOS
        n = used.get(k, 5000)
        return " ".join(f"w{k}" for _ in range(n)), FinishReason.EOS
    return reply


def caps_asked(gen: PromptGenerator) -> list[int]:
    return [mt for call in gen.calls[1:] for _, mt, _ in call]


def test_plan_parsing():
    text = ("Plan:\n1. Price of one pen (complexity: 2)\n2) Multiply by four\n"
            "3. Check units (complexity=0.5)\nThat is all.")
    assert parse_plan(text, 5) == [Part("Price of one pen", 2.0),
                                   Part("Multiply by four", 1.0), Part("Check units", 0.5)]
    assert len(parse_plan(text, 2)) == 2
    assert parse_plan("no numbered lines here", 5) == []


def test_caps_are_proportional_to_complexity_without_decay():
    # weights 4, 1, 1 and the question's mean 2: B = 800 -> 400, 100, 100, 200
    gen = PromptGenerator(scripted("1. a (complexity: 4)\n2. b (complexity: 1)\n"
                                   "3. c (complexity: 1)"))
    res = PlanAndBudget(PlanAndBudgetConfig(total_tokens=800, schedule="weighted")).run(
        PROBLEM, generator=gen, verifier=StepVerifier(lambda s: True))
    assert res.info["caps"] == [400, 100, 100, 200]
    assert caps_asked(gen) == [400, 100, 100, 200]      # what the engine was capped at
    assert res.info["used"] == [400, 100, 100, 200]
    assert res.answer == "12"


def test_decay_favours_early_parts_of_equal_complexity():
    """linear decay, floor 0.25, four equal parts: weights 1, .75, .5, .25 (sum 2.5);
    B = 1000 -> 400, 300, 200, 100.
    Mutation check: a uniform split (every cap B / 4 = 250) fails this test."""
    gen = PromptGenerator(scripted("1. a\n2. b\n3. c"))
    res = PlanAndBudget(PlanAndBudgetConfig(total_tokens=1000, schedule="linear",
                                            decay_floor=0.25)).run(
        PROBLEM, generator=gen, verifier=StepVerifier(lambda s: True))
    assert res.info["caps"] == [400, 300, 200, 100]
    assert decay(0.0, "cosine", floor=0.25, power=2) == 1.0
    assert decay(1.0, "cosine", floor=0.25, power=2) == pytest.approx(0.25)
    assert decay(0.5, "polynomial", floor=0.0, power=2) == pytest.approx(0.25)


def test_unused_tokens_roll_over_and_parts_see_earlier_answers():
    gen = PromptGenerator(scripted("1. a\n2. b\n3. c", used={0: 10}))
    res = PlanAndBudget(PlanAndBudgetConfig(total_tokens=1000, schedule="linear",
                                            decay_floor=0.25)).run(
        PROBLEM, generator=gen, verifier=StepVerifier(lambda s: True))
    # part 0 used 10 of its 400: part 1 gets floor(990 * .75 / 1.5) = 495
    assert res.info["caps"][:2] == [400, 495]
    prompts = [p for call in gen.calls[1:] for p, _, _ in call]
    assert "Q: a\nA: " + " ".join(["w0"] * 10) in prompts[1]
    assert "Now answer only this sub-question, briefly: b" in prompts[1]
    assert "Now answer the original question" in prompts[-1]
    assert prompts[-1].count("\nA: ") == 3                  # every part's answer
    assert sum(res.info["used"]) <= 1000
    assert not gen.live


def test_without_a_plan_the_question_gets_the_whole_budget():
    for p in problems(3, seed=40):
        gen, prm = world()
        res = PlanAndBudget(PlanAndBudgetConfig(total_tokens=300, plan_tokens=50)).run(
            p, generator=gen, verifier=prm)
        assert res.info["parts"] == [p.question] and res.info["caps"] == [300]
        assert res.ledger.generated_tokens <= 50 + 300
        assert res.ledger.verifier_calls == 1
        assert gen.live_handles == 0 and gen.resident_tokens() == 0


@pytest.mark.parametrize("limit", [20, 200, 800])
def test_budget_is_exact(limit):
    gen, prm = world()
    res = PlanAndBudget(PlanAndBudgetConfig()).run(
        problems(1, seed=41)[0], generator=gen, verifier=prm,
        budget=Budget(max_generated_tokens=limit))
    assert res.ledger.generated_tokens <= limit
    assert gen.live_handles == 0
