"""SpecReason: the small model drafts, the large one judges each draft with a one-token
probe and rewrites the rejected ones; both models have their own ledger lines."""

import pytest

from fakes import model_pair as pair
from fakes import sim_problem as problem
from fakes import solve
from ttc.engine.backends.simulated import SimulatedBackendConfig, SimulatedGenerator
from ttc.registry import ConfigError
from ttc.strategies.spec_reason import judge_score


def _run(threshold=7, *, difficulty=0.8, pid="p", **kw):
    large, small = pair(**kw)
    result = solve({"name": "spec_reason", "threshold": threshold}, large, draft=small,
                   prob=problem(difficulty=difficulty, num_steps=6, pid=pid))
    return result, large, small


def test_drafts_below_the_threshold_are_rewritten_by_the_large_model():
    rewritten = accepted = 0
    for pid in "abcdef":
        result, _, _ = _run(pid=pid)
        nodes = result.tree["nodes"]
        drafts = [n for n in nodes if n["extra"].get("by") == "draft"]
        for n in drafts:                      # every decision follows the judge's digit
            assert n["extra"]["kept"] == (n["extra"]["judge"] >= 7), n
        path = {c.node_id for c in result.candidates}   # the kept trajectory's leaf
        leaf = next(n for n in nodes if n["id"] in path)
        while leaf["parent"] is not None:               # no rejected draft on the path
            assert leaf["extra"].get("kept", True), leaf
            leaf = next(n for n in nodes if n["id"] == leaf["parent"])
        by_target = [n for n in nodes if n["extra"].get("by") == "target"]
        assert len(by_target) == result.info["rewritten"]
        rewritten += result.info["rewritten"]
        accepted += result.info["accepted"]
    assert rewritten > 0 and accepted > 0


def test_threshold_zero_keeps_every_draft_and_the_large_model_only_judges():
    result, large, _ = _run(threshold=0)
    info, lines = result.info, result.ledger.lines
    assert info["rewritten"] == 0 and info["accepted"] == info["drafted"]
    assert lines["target"]["generated_tokens"] == info["drafted"]     # one digit per step
    assert lines["target"]["lm_calls"] == info["drafted"]             # one probe per step
    # The judge prefilled each drafted step and the suffix; nothing else.
    assert lines["target"]["prefill_tokens"] == large.prefill_tokens_run


def test_each_model_has_its_own_ledger_line_and_they_add_up():
    result, large, small = _run()
    led, lines = result.ledger, result.ledger.lines
    assert set(lines) == {"draft", "target"}
    for name in ("generated_tokens", "prefill_tokens", "lm_calls"):
        assert lines["draft"][name] + lines["target"][name] == getattr(led, name)
    # Each engine ran what its line says (the large one prefilled the small one's steps).
    assert lines["target"]["prefill_tokens"] == large.prefill_tokens_run
    assert lines["draft"]["prefill_tokens"] == small.prefill_tokens_run
    assert lines["target"]["generated_tokens"] == large.decode_tokens_run
    assert lines["draft"]["generated_tokens"] == small.decode_tokens_run


def test_judge_reads_a_digit_or_scores_zero():
    assert judge_score(" 8") == 8
    assert judge_score("nine") == 0
    assert judge_score("") == 0


def test_spec_reason_needs_a_draft_model_and_others_refuse_one():
    large, small = pair()
    with pytest.raises(ConfigError, match="needs a draft model"):
        solve({"name": "spec_reason"}, large)
    with pytest.raises(ConfigError, match="uses one model"):
        solve({"name": "best_of_n", "n": 2}, large, draft=small)


def test_a_pair_must_share_its_world():
    large = SimulatedGenerator(SimulatedBackendConfig(world_seed=1))
    with pytest.raises(ValueError, match="must share world_seed"):
        SimulatedGenerator(SimulatedBackendConfig(world_seed=2), peer=large)


def test_a_draft_that_cannot_continue_the_backends_handles_is_refused():
    from ttc.pipeline import Pipeline

    class Lone(SimulatedGenerator):
        def shares_handles_with(self, other):
            return False

    with pytest.raises(ConfigError, match="cannot continue the handles"):
        Pipeline(generator="simulated", verifier="none", strategy="spec_reason",
                 draft=Lone())
    pipe = Pipeline(generator="simulated", verifier="none", strategy="spec_reason",
                    draft={"name": "simulated", "max_step_error": 0.8})
    assert pipe.draft.shares_handles_with(pipe.generator)


def test_the_judge_asks_in_a_user_turn_and_opens_the_reply_with_the_score_prefix():
    from fakes import tiny_tokenizer
    from ttc.strategies.spec_reason import JUDGE_PREFIX, JUDGE_QUESTION
    from ttc.turns import follow_up_text

    tok = tiny_tokenizer()
    suffix = follow_up_text(tok, JUDGE_QUESTION, JUDGE_PREFIX)
    # the assistant turn is closed, the question is a user turn, the reply is opened
    assert suffix.startswith("<|im_end|>")
    assert f"<|im_start|>user\n{JUDGE_QUESTION}<|im_end|>" in suffix
    assert suffix.endswith("<|im_start|>assistant\n" + JUDGE_PREFIX)
    assert JUDGE_PREFIX.endswith("the quality score is: ")
    # without a chat template: the plain layout's turns
    plain = follow_up_text(None, JUDGE_QUESTION, JUDGE_PREFIX)
    assert plain == f"\n\nProblem: {JUDGE_QUESTION}\n\nSolution:\n{JUDGE_PREFIX}"
