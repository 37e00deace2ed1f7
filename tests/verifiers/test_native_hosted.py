"""Scoring hosted by the native engine (extend_batch) equals the transformers path."""

from __future__ import annotations

import pytest
import torch

from ttc.types import Problem
from ttc.verifiers.judge import Judge
from ttc.verifiers.math_shepherd import MathShepherdFormat, plus_minus_ids
from ttc.verifiers.prm_core import NativeHost, StepScorer

from fakes import char_tokenizer, tiny_causal_lm

PROBLEM = Problem(id="n", question="What is 6*7?")
TRAJ = [["6*7 = 42.\n\n", "The answer is 42."], ["6*7 = 42.\n\n"], ["6*7 = 48.\n\n", "So 48."]]


def _engine(model, tok):
    from ttc.engine.native.engine import NativeEngine

    return NativeEngine.from_hf(model.config, model.state_dict(), tok, dtype=torch.float32,
                                device="cpu", attention="torch", kv_memory_gb=0.05)


@pytest.mark.parametrize("incremental", [True, False])
def test_native_judge_matches_transformers_judge(incremental):
    tok = char_tokenizer()
    model = tiny_causal_lm("llama", tok, seed=11)
    engine = _engine(model, tok)
    native = Judge(tokenizer=tok, engine=engine, incremental=incremental)
    hf = Judge(tokenizer=tok, model=model, incremental=incremental)
    before = engine.stats()["prefill_tokens_run"]
    a, b = native.score(PROBLEM, TRAJ), hf.score(PROBLEM, TRAJ)
    for x, y in zip(a.scores, b.scores):
        assert x == pytest.approx(y, abs=1e-4)
    assert a.usage.calls == b.usage.calls
    # charged = what the engine ran: a token-id prefix reuses whole cached pages only, so
    # the native engine may run a few prefix tokens again; those are charged too
    assert a.usage.tokens == engine.stats()["prefill_tokens_run"] - before >= b.usage.tokens
    again = native.score(PROBLEM, TRAJ)
    assert again.scores == a.scores
    if incremental:
        assert again.usage.tokens == 0 and again.usage.cached_tokens > 0


def test_native_tag_prm_incremental_extends_the_parent_handle():
    tok = char_tokenizer()
    model = tiny_causal_lm("llama", tok, seed=12)
    engine = _engine(model, tok)
    fmt = MathShepherdFormat(tok)
    plus, minus = plus_minus_ids(tok)
    readout = lambda h: engine.logits(h)[:, [plus, minus]].float().softmax(-1)[:, 0]  # noqa: E731
    inc = StepScorer(fmt, NativeHost(engine), readout, incremental=True)
    full = StepScorer(fmt, NativeHost(engine), readout, incremental=False)
    first = inc.score(PROBLEM, [TRAJ[1]])
    longer = inc.score(PROBLEM, [TRAJ[0]])
    assert longer.usage.tokens == len(fmt.step_ids(TRAJ[0][1], 1))
    ref = full.score(PROBLEM, [TRAJ[0]])
    assert longer.scores[0] == pytest.approx(ref.scores[0], abs=1e-4)
    assert first.scores[0] == pytest.approx(ref.scores[0][:1], abs=1e-4)
    inc.clear()      # releasing every handle frees the engine's pinned KV
    assert engine.kv_bytes() >= 0


def test_judge_factory_shares_a_native_policy_engine():
    from ttc.registry import VERIFIERS

    tok = char_tokenizer()
    engine = _engine(tiny_causal_lm("llama", tok, seed=13), tok)
    judge = VERIFIERS.build({"name": "judge"}, generator=engine)
    assert judge.shares == "native" and judge.scorer.host.engine is engine
    assert len(judge.score(PROBLEM, TRAJ[:1]).scores[0]) == 2
