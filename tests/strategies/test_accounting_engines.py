"""One accounting convention on every engine: the ledger adds up to what the engine ran.

For budget forcing, Dynasor and SpecReason, on the simulated engine and on the native
engine (a tiny random-weight Llama with a byte tokenizer), the ledger's prefill and
generated tokens equal the engine's own counters of tokens it prefilled and decoded over
the run; forced tokens are generated tokens and are counted again in ``forced_tokens``;
probe tokens are counted where they ran and again in the probe counters.
"""

from __future__ import annotations

import pytest
import torch

from fakes import ByteTokenizer, model_pair, thinking_engine, tiny_hf_model
from ttc.config import GenerationConfig
from ttc.registry import STRATEGIES
from ttc.types import Problem
from ttc.verifiers.none import NoVerifier

SIM_PROBLEM = Problem(id="acc", question="Simulated accounting problem.", answer="77",
                      metadata={"difficulty": 0.4, "num_steps": 5})
NATIVE_PROBLEM = Problem(id="acc", question="Add 3 and 5.")
SHORT = GenerationConfig(max_tokens=24, max_step_tokens=8, max_steps=3, temperature=0.0)


@pytest.fixture(scope="module")
def tiny():
    return tiny_hf_model("llama", seed=5)


def _native(tiny):
    from ttc.engine.native.engine import NativeGenerator

    class BytePrompt(NativeGenerator):
        # NOTE: the byte tokenizer has no chat template; the prompt is the question's bytes.
        def format(self, problem: Problem) -> list[int]:
            return list(problem.question.encode())

    cfg, hf = tiny
    eng = BytePrompt.from_hf(cfg, hf.state_dict(), ByteTokenizer(), dtype=torch.float32,
                             attention="torch", kv_memory_gb=0.004, page_size=8)
    eng.thinking_delimiters = ("[", "]")      # one byte token each
    return eng


class Counters:
    """Tokens an engine (or a pair) prefilled and decoded since it was made."""

    def __init__(self, *engines) -> None:
        self.engines = engines

    def __call__(self) -> tuple[int, int]:
        prefill = decode = 0
        for e in self.engines:
            if hasattr(e, "prefill_tokens_run"):            # the simulator
                prefill += e.prefill_tokens_run
                decode += e.decode_tokens_run
            else:                                            # the native engine
                s = e.stats()
                prefill += s["prefill_tokens_run"]
                decode += s["decode_tokens_run"]
        return prefill, decode


def _run(config: dict, gen, problem: Problem, *, draft=None, generation=None):
    strategy = STRATEGIES.build(config, generation=generation or GenerationConfig())
    return strategy.run(problem, generator=gen, verifier=NoVerifier(), draft=draft)


def _same_as_engine(result, counters: Counters) -> None:
    prefill, decode = counters()
    assert result.ledger.prefill_tokens == prefill
    assert result.ledger.generated_tokens == decode


# -- budget forcing -------------------------------------------------------------------------
def test_budget_forcing_ledger_matches_the_simulator():
    gen = thinking_engine()
    r = _run({"name": "budget_forcing", "n": 2, "cap": 20}, gen, SIM_PROBLEM)
    _same_as_engine(r, Counters(gen))
    # each branch: "</think>" + "\nFinal Answer:" forced at the cap, 3 words
    assert r.ledger.forced_tokens == 2 * 3
    assert r.info["waits"] == 0 and r.info["forced_ends"] == 2


def test_budget_forcing_ledger_matches_the_native_engine(tiny):
    eng = _native(tiny)
    r = _run({"name": "budget_forcing", "n": 2, "cap": 5, "extend": 0}, eng,
             NATIVE_PROBLEM, generation=SHORT)
    _same_as_engine(r, Counters(eng))
    forced = len(eng.encode("]")) + len(eng.encode("\nFinal Answer:"))
    assert r.ledger.forced_tokens == 2 * forced
    assert r.ledger.forced_tokens <= r.ledger.generated_tokens


# -- Dynasor ----------------------------------------------------------------------------------
def _probe_counts(r, suffix_tokens: int) -> None:
    probes = sum(len(c["probes"]) for c in r.info["dynasor"])
    assert probes > 0
    assert r.ledger.probe_prefill_tokens == probes * suffix_tokens
    chain = sum(c["tokens"] for c in r.info["dynasor"])
    assert r.ledger.generated_tokens == chain + r.ledger.probe_generated_tokens


def test_dynasor_ledger_matches_the_simulator():
    from ttc.engine.backends.simulated import SimulatedBackendConfig, SimulatedGenerator

    gen = SimulatedGenerator(SimulatedBackendConfig(probe_exponent=1.0))
    r = _run({"name": "dynasor", "chunk_tokens": 16, "window": 2}, gen, SIM_PROBLEM)
    _same_as_engine(r, Counters(gen))
    _probe_counts(r, len(gen.encode(r"... Oh, I suddenly got the answer to the whole "
                                    r"problem, **Final Answer**" "\n\n" r"\[ \boxed{")))


def test_dynasor_ledger_matches_the_native_engine(tiny):
    eng = _native(tiny)
    cfg = {"name": "dynasor", "chunk_tokens": 8, "window": 2, "probe_tokens": 4}
    r = _run(cfg, eng, NATIVE_PROBLEM, generation=SHORT)
    _same_as_engine(r, Counters(eng))
    from ttc.strategies.dynasor import PROBE_SUFFIX

    _probe_counts(r, len(eng.encode(PROBE_SUFFIX)))


# -- SpecReason -------------------------------------------------------------------------------
def _judge_counts(r) -> None:
    judged = r.info["drafted"]
    assert judged > 0
    assert r.ledger.probe_generated_tokens == judged           # one digit per judgement
    assert r.ledger.lines["target"]["probe_generated_tokens"] == judged


def test_spec_reason_ledger_matches_the_simulated_pair():
    large, small = model_pair()
    r = _run({"name": "spec_reason"}, large, SIM_PROBLEM, draft=small)
    _same_as_engine(r, Counters(large, small))
    _judge_counts(r)


def test_spec_reason_ledger_matches_the_native_engine(tiny):
    # one native engine plays both models (the draft continues the same handles)
    eng = _native(tiny)
    r = _run({"name": "spec_reason"}, eng, NATIVE_PROBLEM, draft=eng, generation=SHORT)
    _same_as_engine(r, Counters(eng))
    _judge_counts(r)


# -- embeddings ---------------------------------------------------------------------------------
def test_an_embedding_that_runs_the_model_is_charged_on_the_simulator():
    from ttc.ledger import ComputeLedger
    from ttc.metered import MeteredGenerator
    from ttc.types import ExpandRequest, SamplingParams

    large, small = model_pair()
    root = large.root(SIM_PROBLEM)
    (step,) = small.expand([ExpandRequest(prefix=root, n=1, params=SamplingParams(
        stop=("\n\n",), seed=0))]).continuations[0]
    ledger = ComputeLedger()
    before = large.prefill_tokens_run
    MeteredGenerator(large, ledger).embed([step.handle])
    # the large model never ran the prompt nor the small model's step: both are prefilled
    ran = large.prefill_tokens_run - before
    assert ran == len(large.problem_model(SIM_PROBLEM).prompt_words) + step.num_tokens
    assert ledger.prefill_tokens == ran
    MeteredGenerator(large, ledger).embed([step.handle])      # now resident: free
    assert ledger.prefill_tokens == ran
