"""Capability-aware self-evaluation (docs/algorithms.md#self-evaluation): stop once a sample is judged unbeatable,
growing batches, annealed temperature, early pruning of unpromising prefixes, and the
LM probe that reads P(no improvement) from one answer token."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from fakes import PromptGenerator, StepVerifier
from strategy_helpers import make_problem
from ttc.config import GenerationConfig
from ttc.engine.backends.simulated import SimulatedGenerator
from ttc.strategies.self_eval import (QUESTION, SelfEval, SelfEvalConfig,
                                      annealed_temperature, batch_sizes, p_no_from_token)
from ttc.types import FinishReason, Problem
from ttc.verifiers.simulated import SimulatedPRM, SimulatedPRMConfig


def samples_by_batch(r) -> list[list[dict]]:
    """The finished samples' nodes, grouped by the batches recorded in info."""
    tree = r.tree
    offered = [tree[c.node_id] for c in r.result.candidates]
    out, start = [], 0
    for size in r.result.info["batches"]:
        out.append(offered[start:start + size])
        start += size
    return out


def test_batches_double_and_anneal_by_hand():
    assert batch_sizes(1, 16) == [1, 2, 4, 8, 1]
    assert batch_sizes(3, 10) == [3, 6, 1]
    assert annealed_temperature(0, start=0.4, end=0.8, over=4) == pytest.approx(0.4)
    assert annealed_temperature(1, start=0.4, end=0.8, over=4) == pytest.approx(0.5)
    assert annealed_temperature(9, start=0.4, end=0.8, over=4) == pytest.approx(0.8)
    assert annealed_temperature(0, start=None, end=0.8, over=4) == 0.8
    assert p_no_from_token(" No.", math.log(0.9)) == pytest.approx(0.9)
    assert p_no_from_token("Yes", math.log(0.75)) == pytest.approx(0.25)
    assert p_no_from_token("Maybe", -0.1) is None


def test_sampling_stops_at_the_first_batch_with_a_confident_sample(run):
    """With a perfect verifier as the self-evaluator (P_no = 1 right, 0 wrong), sampling
    stops at the first batch holding a right sample, and returns it.
    Mutation check: ignoring the threshold (always max_samples) fails the easy-problem
    count (16 samples instead of 1) and the per-batch check."""
    drawn_easy, drawn_hard = [], []
    for pid in range(6):
        for difficulty, drawn in ((0.0, drawn_easy), (1.0, drawn_hard)):
            r = run({"name": "self_eval", "max_samples": 16}, difficulty=difficulty,
                    num_steps=5, auroc=1.0, pid=f"se{pid}")
            info = r.result.info
            batches = samples_by_batch(r)
            assert info["batches"] == batch_sizes(1, 16)[:len(batches)]
            for batch in batches[:-1]:
                assert all(n["extra"]["p_no"] < 0.9 for n in batch)
            if info["stopped_by"] == "threshold":
                assert any(n["extra"]["p_no"] >= 0.9 for n in batches[-1])
                assert r.result.answer == "123"          # the confident sample is right
            else:
                assert info["samples"] == 16
            drawn.append(info["samples"])
            assert r.gen.live_handles == 0
    assert drawn_easy == [1] * 6                  # an easy problem: one sample suffices
    assert sum(drawn_hard) > 2 * len(drawn_hard)  # a hard one needs more


class TemperatureLog(SimulatedGenerator):
    """The simulated engine, recording every call's sampling temperatures."""

    def __init__(self) -> None:
        super().__init__()
        self.temps: list[list[float]] = []

    def expand(self, requests, *, token_limit=None):
        self.temps.append([r.params.temperature for r in requests])
        return super().expand(requests, token_limit=token_limit)


def test_never_confident_draws_max_samples_at_annealed_temperatures():
    gen = TemperatureLog()
    res = SelfEval(SelfEvalConfig(max_samples=16, threshold=1.0),
                   generation=GenerationConfig(temperature=0.8)).run(
        make_problem(0.7, 5), generator=gen, verifier=SimulatedPRM(SimulatedPRMConfig(
            auroc=0.8)))
    info = res.info
    assert info["batches"] == [1, 2, 4, 8, 1] and info["samples"] == 16
    assert info["stopped_by"] == "max_samples"
    # each batch is sampled at 0.4 + 0.4 * min(1, drawn / 4): what the engine was asked
    assert [t for (t,) in gen.temps] == pytest.approx([0.4, 0.5, 0.7, 0.8, 0.8])
    assert len(res.candidates) == 16
    best = max(res.candidates, key=lambda c: c.score)
    assert res.answer == best.answer           # the most confident sample


def test_early_pruning_finishes_only_the_most_confident_prefixes(run):
    cfg = {"name": "self_eval", "max_samples": 8, "first_batch": 8, "threshold": 1.0,
           "prune_after_tokens": 30, "prune_keep": 0.5}
    pruned_tokens = full_tokens = 0
    for pid in range(3):
        r = run(cfg, difficulty=0.6, num_steps=6, auroc=0.8, pid=f"pr{pid}")
        tree = r.tree
        prefixes = [n for n in tree.values() if "prefix_p_no" in n["extra"]]
        assert len(prefixes) == 8 and r.result.info["pruned"] == 4
        stopped = [n for n in prefixes if n["status"] == "pruned"]
        kept = [n for n in prefixes if n["status"] != "pruned"]
        assert len(stopped) == 4 and all(not n["children"] for n in stopped)
        assert max(n["extra"]["prefix_p_no"] for n in stopped) <= min(
            n["extra"]["prefix_p_no"] for n in kept)
        # only kept prefixes became samples (continued, or already finished at 30 tokens)
        for c in r.result.candidates:
            node = tree[c.node_id]
            root_child = node if node["parent"] == 0 else tree[node["parent"]]
            assert root_child in kept
        assert len(r.result.candidates) == 4
        pruned_tokens += r.result.ledger.generated_tokens
        full = run({**cfg, "prune_after_tokens": None}, difficulty=0.6, num_steps=6,
                   auroc=0.8, pid=f"pr{pid}")
        full_tokens += full.result.ledger.generated_tokens
        assert r.gen.live_handles == 0
    assert pruned_tokens < 0.8 * full_tokens


def lm_reply(token: str, logprob: float):
    def reply(prompt, i, params):
        if QUESTION in prompt:
            return token, FinishReason.STOP, logprob
        return f"so the answer is \\boxed{{{5 + i}}}"
    return reply


@pytest.mark.parametrize("token, p, samples", [("No.", 0.95, 1), ("Yes.", 0.7, 7),
                                               ("Maybe", 0.99, 7)])
def test_lm_probe_reads_p_no_from_one_greedy_token(token, p, samples):
    gen = PromptGenerator(lm_reply(token, math.log(p)))
    res = SelfEval(SelfEvalConfig(probe="lm", max_samples=7, first_batch=1)).run(
        Problem(id="q", question="What is 2 + 3?"), generator=gen,
        verifier=StepVerifier(lambda s: True))
    assert res.info["samples"] == samples
    probes = [(prompt, mt, t) for call in gen.calls for prompt, mt, t in call
              if QUESTION in prompt]
    assert len(probes) == samples                    # one probe per sample ...
    probe_calls = [c for c in gen.calls if any(QUESTION in pr for pr, _, _ in c)]
    assert len(probe_calls) == len(res.info["batches"])   # ... all of a batch in one call
    for prompt, max_tokens, temp in probes:
        assert max_tokens == 1 and temp == 0.0
        assert prompt.startswith("What is 2 + 3?") and "\\boxed{" in prompt
    want = {"No.": p, "Yes.": 1 - p, "Maybe": 0.0}[token]
    assert all(c.score == pytest.approx(want) for c in res.candidates)
    assert res.info["unreadable_probes"] == (samples if token == "Maybe" else 0)
    assert res.ledger.verifier_calls == 0            # the LM judged itself
    assert res.ledger.generated_tokens == sum(
        len(f"so the answer is \\boxed{{{5}}}".split()) for _ in range(samples)) + samples
    assert not gen.live


def test_first_batch_larger_than_max_is_refused():
    with pytest.raises(ValidationError, match="first_batch"):
        SelfEvalConfig(first_batch=9, max_samples=8)
