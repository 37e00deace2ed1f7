"""The simulator models a call from its typed purpose, never from the prompt's wording.

Rewording a strategy's prompt (same purpose, other words of the same count) leaves every
simulated decision and count unchanged; a prompt that mentions a "score" or quotes
``\\boxed{}`` answers is still plain generation unless the request says otherwise.
"""

from __future__ import annotations

import pytest

from fakes import model_pair, sim_problem, solve
from ttc.engine.backends.simulated import SimulatedBackendConfig, SimulatedGenerator
from ttc.types import ExpandRequest, Problem, Purpose, SamplingParams
from ttc.verifiers.none import NoVerifier


def _same_words_count(text: str, word: str = "blue") -> str:
    """Other words, as many as ``text`` has (the simulator's tokens are words)."""
    return " ".join(word for _ in text.split())


def _fingerprint(result) -> tuple:
    led = result.ledger
    return (result.answer, led.generated_tokens, led.prefill_tokens, led.cached_tokens,
            led.forced_tokens, led.probe_prefill_tokens, led.probe_generated_tokens,
            tuple(c.answer for c in result.candidates))


def test_spec_reason_is_unchanged_by_the_judge_wording():
    from ttc.strategies.spec_reason import JUDGE_PREFIX, JUDGE_QUESTION

    runs = []
    for question, prefix in [(JUDGE_QUESTION, JUDGE_PREFIX),
                             (_same_words_count(JUDGE_QUESTION), _same_words_count(
                                 JUDGE_PREFIX, "red") + " ")]:
        large, small = model_pair()
        r = solve({"name": "spec_reason", "judge_question": question,
                   "judge_prefix": prefix}, large, draft=small,
                  prob=sim_problem(difficulty=0.6, pid="w"))
        runs.append((_fingerprint(r), tuple(r.info["judge_scores"])))
    assert runs[0] == runs[1]
    assert len(set(runs[0][1])) > 1           # the judge really judged (scores differ)


def test_archon_is_unchanged_by_its_prompt_wording(monkeypatch):
    import ttc.strategies.archon as archon

    layers = [{"kind": "generate", "generators": [{"strategy": {"name": "self_consistency",
                                                                "n": 5}}]},
              {"kind": "critique", "max_tokens": 24}, {"kind": "fuse", "fusers": 3}]
    runs = []
    for reword in (False, True):
        if reword:
            monkeypatch.setattr(archon, "CRITIC_PROMPT", _same_words_count(archon.CRITIC_PROMPT))
            monkeypatch.setattr(archon, "FUSE_PROMPT", _same_words_count(archon.FUSE_PROMPT))
        out = []
        for pid in "abc":
            large, _ = model_pair()
            r = solve({"name": "archon", "layers": layers}, large,
                      prob=sim_problem(difficulty=0.8, pid=pid))
            out.append((_fingerprint(r), tuple(map(tuple, r.info["layer_answers"]))))
        runs.append(out)
    assert runs[0] == runs[1]


def test_dynasor_is_unchanged_by_the_probe_wording():
    from ttc.strategies.dynasor import PROBE_SUFFIX

    runs = []
    for suffix in (PROBE_SUFFIX, _same_words_count(PROBE_SUFFIX)):
        gen = SimulatedGenerator(SimulatedBackendConfig(probe_exponent=1.0))
        r = solve({"name": "dynasor", "chunk_tokens": 16, "window": 2, "probe_suffix": suffix},
                  gen, prob=sim_problem(difficulty=0.3, num_steps=8, pid="dw"))
        runs.append((_fingerprint(r), tuple(c["end"] for c in r.info["dynasor"])))
    assert runs[0] == runs[1]


def test_the_purpose_decides_not_the_prompt():
    # A prompt that quotes boxed answers and asks for a "score": generation unless told.
    gen = SimulatedGenerator(SimulatedBackendConfig())
    question = ("Candidates: \\boxed{5} \\boxed{5} \\boxed{5}. Give the quality score is: "
                "now.")
    prob = Problem(id="pp", question=question, answer="123",
                   metadata={"difficulty": 0.0, "num_steps": 3})
    params = SamplingParams(max_tokens=400, seed=1)
    root = gen.root(prob)
    (plain,) = gen.expand([ExpandRequest(prefix=root, n=8, params=params)]).continuations
    assert all("\\boxed{123}" in c.text for c in plain)      # difficulty 0: always right
    (fused,) = gen.expand([ExpandRequest(prefix=root, n=8, params=params,
                                         purpose=Purpose.FUSE)]).continuations
    assert any("\\boxed{5}" in c.text for c in fused)        # a fuser picks a quoted one
    # a probe that says "score" is an answer probe unless it is a judge's
    kid = plain[0].handle
    words = gen.encode("what is the score")
    probe = gen.probe(kid, words, max_new=20, params=SamplingParams(seed=0))
    judge = gen.probe(kid, words, max_new=1, purpose=Purpose.JUDGE)
    assert probe.continuations[0][0].text.endswith("}.")
    assert judge.continuations[0][0].text.isdigit()


def test_a_request_with_an_unknown_purpose_is_one_clear_error():
    with pytest.raises(ValueError, match="purpose must be a ttc.types.Purpose"):
        ExpandRequest(prefix=0, n=1, params=SamplingParams(), purpose="judge")
    gen = SimulatedGenerator()
    root = gen.root(Problem(question="q"))
    with pytest.raises(ValueError, match="expands with purpose generate or fuse"):
        gen.expand([ExpandRequest(prefix=root, n=1, params=SamplingParams(),
                                  purpose=Purpose.JUDGE)])
