"""Parallel threads (docs/algorithms.md#threads): distinct goals from a planner, rounds, pruning by the
verifier, summaries, the join into the parent context, and the final pass."""

from __future__ import annotations

import re

import pytest

from fakes import PromptGenerator, StepVerifier
from fakes import problems, world
from ttc.ledger import Budget
from ttc.strategies.threads import Threads, ThreadsConfig, parse_goals
from ttc.types import Problem

PROBLEM = Problem(id="t", question="What is 3 + 4?", answer="7")
GOALS = ["Use algebra", "Draw a picture", "Work backwards"]


def scripted(*, plan: str | None = None, good_goal: str = "Draw a picture",
             final: str = "Combining the threads, \\boxed{7}"):
    """Planner lists GOALS; the thread on ``good_goal`` is the one the verifier likes."""
    def reply(prompt: str, i: int, params) -> str:
        if "distinct approaches" in prompt:
            return plan if plan is not None else "\n".join(
                f"{k + 1}. {g}" for k, g in enumerate(GOALS))
        if "Summarise what it established" in prompt:
            goal = re.search(r'goal "([^"]+)"', prompt).group(1)
            return f"SUMMARY-OF {goal}"
        if "Combine the threads" in prompt:
            return final
        goal = re.findall(r"\[Thread \d+: ([^\]]+)\]\nPursue", prompt)[-1]
        if goal == good_goal:
            return f"good: following {goal} gives \\boxed{{7}}"
        return f"weak: following {goal} gives \\boxed{{3}}"
    return reply


def thread_calls(gen: PromptGenerator) -> list[list[str]]:
    return [[p for p, _, _ in call] for call in gen.calls
            if any("Pursue only this goal" in p for p, _, _ in call)]


def test_each_thread_gets_its_own_goal_from_the_planner():
    gen = PromptGenerator(scripted())
    res = Threads(ThreadsConfig(n_threads=3, keep=1)).run(
        PROBLEM, generator=gen, verifier=StepVerifier(lambda s: "good" in s))
    assert res.info["goals"] == GOALS and res.info["goals_parsed"]
    (call,) = thread_calls(gen)                    # all threads of a round: ONE call
    assert len(call) == 3
    pursued = [re.findall(r"\[Thread (\d+): ([^\]]+)\]\nPursue", p) for p in call]
    assert pursued == [[(str(i + 1), g)] for i, g in enumerate(GOALS)]   # one each, distinct
    # without a parseable plan, the spec's fallback goals
    gen2 = PromptGenerator(scripted(plan="I will think about it."))
    res2 = Threads(ThreadsConfig(n_threads=3, keep=1)).run(
        PROBLEM, generator=gen2, verifier=StepVerifier(lambda s: "good" in s))
    assert res2.info["goals"] == ["Approach 1", "Approach 2", "Approach 3"]
    assert not res2.info["goals_parsed"]
    assert parse_goals("Plan:\n1) a\n2. b\n- 3: c\n2. b", 5) == ["a", "b", "c"]


def test_rounds_join_only_the_survivors_summaries_into_the_next_context():
    gen = PromptGenerator(scripted())
    verifier = StepVerifier(lambda s: "good" in s)
    cfg = ThreadsConfig(n_threads=3, keep=1, rounds=2, summary_threshold=0,
                        summary_tokens=5, thread_tokens=40)
    res = Threads(cfg).run(PROBLEM, generator=gen, verifier=verifier)
    first, second = thread_calls(gen)
    assert all("SUMMARY-OF" not in p for p in first)
    # round 2 sees the summary of the survivor (the verifier's pick), not the others
    for p in second:
        assert "[Thread 1: Draw a picture]\nSUMMARY-OF Draw a picture" in p
        assert "SUMMARY-OF Use algebra" not in p and "weak:" not in p
    assert [r["kept"] for r in res.info["rounds"]] == [[1], [1]]
    # caps: threads at thread_tokens, summaries at summary_tokens
    for call in gen.calls:
        for prompt, max_tokens, _ in call:
            if "Pursue only this goal" in prompt:
                assert max_tokens == 40
            if "Summarise what it established" in prompt:
                assert max_tokens == 5
    final_prompt = gen.calls[-1][0][0]
    assert "Combine the threads" in final_prompt
    assert final_prompt.count("SUMMARY-OF Draw a picture") == 2     # both rounds joined
    # the verifier scored context + thread: the plan's text came first
    thread_trajectories = [t for t in verifier.seen if any("following" in s for s in t)]
    assert len(thread_trajectories) == 6 and all("1. Use algebra" in t[0]
                                                 for t in thread_trajectories)
    assert res.answer == "7" and res.info["joined_answer"] == "7"
    assert res.ledger.verifier_calls == 3 * 2 + 1                   # threads per round + final
    assert not gen.live                        # every prompt and thread released


def test_summaries_by_conclusion_and_short_threads_verbatim():
    long_thread = "good: step one\n\ngood: step two\n\ngood: so \\boxed{7}"

    def reply(prompt, i, params):
        if "distinct approaches" in prompt:
            return "1. A\n2. B"
        if "Combine the threads" in prompt:
            return "\\boxed{7}"
        return long_thread if "[Thread 1: A]" in prompt else "good: short"

    gen = PromptGenerator(reply)
    Threads(ThreadsConfig(n_threads=2, keep=2, rounds=1, summarize="conclusion",
                          summary_threshold=4)).run(
        PROBLEM, generator=gen, verifier=StepVerifier(lambda s: "good" in s))
    final_prompt = gen.calls[-1][0][0]
    assert "[Thread 1: A]\ngood: so \\boxed{7}" in final_prompt     # last step only
    assert "step one" not in final_prompt
    assert "[Thread 2: B]\ngood: short" in final_prompt             # under S: verbatim
    assert not any("Summarise" in p for call in gen.calls for p, _, _ in call)


def test_the_final_pass_answers_and_survivors_are_the_fallback():
    gen = PromptGenerator(scripted(final="I am not sure."))
    res = Threads(ThreadsConfig(n_threads=3, keep=2)).run(
        PROBLEM, generator=gen, verifier=StepVerifier(lambda s: "good" in s))
    assert res.info["joined_answer"] is None
    assert res.answer == "7"                   # the best-scored survivor's answer
    gen = PromptGenerator(scripted(final="So \\boxed{9}"))
    res = Threads(ThreadsConfig(n_threads=3, keep=2)).run(
        PROBLEM, generator=gen, verifier=StepVerifier(lambda s: "good" in s))
    assert res.answer == "9"                   # the spec returns the final pass


def test_pruned_threads_free_kv_at_once_on_the_simulated_engine():
    for p in problems(3, seed=20):
        gen, prm = world()
        res = Threads(ThreadsConfig(n_threads=6, keep=2, rounds=2)).run(
            p, generator=gen, verifier=prm)
        log = res.info["kv_bytes"]
        assert len(log) == 2
        for cp in log:
            assert cp["after"] < cp["before"] and cp["live"] == 2
        nodes = res.tree["nodes"]
        assert sorted(n["extra"]["pruned_round"] for n in nodes
                      if "pruned_round" in n["extra"]) == [0] * 4 + [1] * 4
        assert res.ledger.prefill_tokens > 120          # every new prompt was prefilled
        assert gen.live_handles == 0 and gen.resident_tokens() == 0


@pytest.mark.parametrize("limit", [25, 300, 1200])
def test_budget_is_exact(limit):
    gen, prm = world()
    res = Threads(ThreadsConfig()).run(problems(1, seed=22)[0], generator=gen, verifier=prm,
                                       budget=Budget(max_generated_tokens=limit))
    assert res.ledger.generated_tokens <= limit
    assert gen.live_handles == 0


def test_keep_larger_than_threads_is_refused():
    with pytest.raises(ValueError, match="keep"):
        ThreadsConfig(n_threads=2, keep=3)
