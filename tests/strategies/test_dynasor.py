"""Dynasor-CoT (probe every T tokens, exit when w probes agree and none hedges) and
certaindex (answer entropy; reward) as self-consistency's early stop."""

from __future__ import annotations

import math

import pytest

from ttc.engine.backends.simulated import SimulatedBackendConfig, SimulatedGenerator
from ttc.strategies.certaindex import answer_certaindex, reward_certaindex
from ttc.strategies.dynasor import Dynasor, DynasorConfig, probed_answer, should_exit
from ttc.strategies.self_consistency import SelfConsistency, SelfConsistencyConfig
from ttc.types import Problem
from ttc.verifiers.none import NoVerifier

PROBLEM = Problem(id="dy", question="Simulated Dynasor problem.", answer="321",
                  metadata={"difficulty": 0.3, "num_steps": 7})
HEDGES = ("wait", "hold", "but", "okay", "no", "hmm")


def test_probed_answer_stops_at_the_first_unmatched_brace():
    assert probed_answer("42}.") == "42"
    assert probed_answer("\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert probed_answer("no brace here") == ""


def test_exit_needs_agreement_not_just_w_probes():
    # the reference servers' bug: w probes exist and the last does not hedge -> exit
    assert not should_exit(["5", "7", "9"], ["5}", "7}", "9}"], window=3, hedge_words=HEDGES)
    assert should_exit(["1", "9", "9", "9"], ["1}", "9}", "9}", "9}"], window=3,
                       hedge_words=HEDGES)
    assert not should_exit(["9", "9", "9"], ["9}", "hmm 9}", "9}"], window=3,
                           hedge_words=HEDGES)
    assert not should_exit(["", "", ""], ["", "", ""], window=3, hedge_words=HEDGES)
    assert not should_exit(["9", "9"], ["9}", "9}"], window=3, hedge_words=HEDGES)


def _sim(seed=0):
    return SimulatedGenerator(SimulatedBackendConfig(world_seed=seed, probe_exponent=1.0))


def test_dynasor_exits_early_and_charges_probes():
    gen = _sim()
    r = Dynasor(DynasorConfig(chunk_tokens=16, window=2)).run(
        PROBLEM, generator=gen, verifier=NoVerifier())
    chain = r.info["dynasor"][0]
    assert chain["end"] == "probe_exit"
    assert chain["probes"][-1] == chain["probes"][-2] == r.answer
    # chain tokens and one probe answer per chunk, all charged; suffix tokens prefilled
    probes = len(chain["probes"])
    assert r.ledger.generated_tokens == chain["tokens"] + sum(
        len(t.split()) for t in chain["texts"])
    assert r.ledger.generated_tokens == gen.decode_tokens_run
    suffix = len(DynasorConfig().probe_suffix.split())
    question = len(PROBLEM.question.split())
    assert r.ledger.prefill_tokens == gen.prefill_tokens_run == 120 + question + probes * suffix
    # probe tokens are counted where they run and again in their own counters
    assert r.ledger.probe_prefill_tokens == probes * suffix
    assert r.ledger.probe_generated_tokens == sum(len(t.split()) for t in chain["texts"])
    # a full chain of the same problem is longer than the exit point
    full = SelfConsistency(SelfConsistencyConfig(n=1)).run(
        PROBLEM, generator=_sim(), verifier=NoVerifier())
    assert chain["tokens"] < full.ledger.generated_tokens


def test_dynasor_without_agreement_runs_to_the_end():
    # w larger than any chain's probe count: never exits, every chain ends by itself
    r = Dynasor(DynasorConfig(n=3, chunk_tokens=16, window=1000)).run(
        PROBLEM, generator=_sim(), verifier=NoVerifier())
    assert [c["end"] for c in r.info["dynasor"]] == ["finished"] * 3
    assert len(r.candidates) == 3


def test_certaindex_by_hand():
    assert answer_certaindex(["3", "3", "3"]) == 1.0
    assert answer_certaindex(["1", "2", "3", "4"]) == pytest.approx(0.0)
    h = -(0.5 * math.log(0.5) * 2)
    assert answer_certaindex(["1", "1", "2", "2"]) == pytest.approx((math.log(4) - h) / math.log(4))
    assert answer_certaindex([None, None]) == 0.0
    assert reward_certaindex([0.2, 0.6]) == pytest.approx(0.4)
    assert reward_certaindex([0.2, 0.6], "max") == 0.6
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        reward_certaindex([1.5])


def test_self_consistency_stops_at_the_certaindex_check():
    easy = Problem(id="e", question="Easy.", answer="5", metadata={"difficulty": 0.0})
    hard = Problem(id="h", question="Hard.", answer="5", metadata={"difficulty": 1.0})
    cfg = SelfConsistencyConfig(n=16, certaindex_at=4, certaindex_threshold=0.9)
    r = SelfConsistency(cfg).run(easy, generator=_sim(), verifier=NoVerifier())
    assert r.info["certaindex"] == {"at": 4, "value": 1.0, "stopped": True}
    assert len(r.candidates) == 4
    r = SelfConsistency(cfg).run(hard, generator=_sim(), verifier=NoVerifier())
    assert not r.info["certaindex"]["stopped"] and len(r.candidates) == 16
    with pytest.raises(ValueError, match="certaindex_at"):
        SelfConsistencyConfig(n=4, certaindex_at=4)


def test_probe_answers_agree_through_answer_equivalence():
    from ttc.strategies.dynasor import HEDGE_WORDS, should_exit

    texts = ["x}", "y}", "z}"]
    assert should_exit(["\\frac{1}{2}", "0.5", "1/2"], texts, window=3,
                       hedge_words=HEDGE_WORDS)
    assert not should_exit(["\\frac{1}{2}", "0.5", "2"], texts, window=3,
                           hedge_words=HEDGE_WORDS)


def test_the_exit_closes_an_open_thinking_block_and_states_the_answer():
    from ttc.answers import extract_answer
    from ttc.strategies.dynasor import PROBE_SUFFIX, exit_text

    trace = "<think>Step 1: we add.\n\n"
    text = exit_text(PROBE_SUFFIX, "8", trace, ("<think>", "</think>"))
    assert text.count("</think>") == 1
    after = text.split("</think>", 1)[1]
    assert extract_answer(after) == "8"
    # closed already, or no thinking delimiters: nothing is closed
    assert "</think>" not in exit_text(PROBE_SUFFIX, "8", trace + "</think>",
                                       ("<think>", "</think>"))
    assert "</think>" not in exit_text(PROBE_SUFFIX, "8", trace, None)
