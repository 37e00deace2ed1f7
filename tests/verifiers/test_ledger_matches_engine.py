"""The ledger adds up to what the engine ran, for every strategy and verifier.

A native engine counts every token its model runs (extend forwards: prompts, verifier
extends, probe suffixes, recomputes; decode rows: sampled tokens). Each strategy runs
here on one tiny native engine with the policy model as its own judge, so generation and
verification share the engine: the ledger's prefill + verifier tokens must equal the
engine's prefill count, and its generated tokens the engine's decode count, exactly. A
PRM on its own engine is checked the same way against that engine.
"""

from __future__ import annotations

import pytest
import torch

from ttc.config import GenerationConfig
from ttc.ledger import Budget
from ttc.registry import STRATEGIES, VERIFIERS
from ttc.types import Problem

from fakes import char_tokenizer, tiny_causal_lm

PROBLEM = Problem(id="p", question="What is 6*7?", answer="42")
SMALL = {"n": 2, "k": 2, "max_n": 4, "num_particles": 2, "num_trees": 2, "num_threads": 2,
         "width": 2, "batch": 2, "num_iterations": 3, "max_expansions": 4, "max_depth": 3}


def _engine(seed: int):
    from ttc.engine.native.engine import NativeGenerator

    tok = char_tokenizer()
    model = tiny_causal_lm("llama", tok, seed=seed)
    gen = NativeGenerator.from_hf(model.config, model.state_dict(), tok, dtype=torch.float32,
                                  device="cpu", attention="torch", kv_memory_gb=0.05,
                                  page_size=16)
    gen.system_prompt = None
    return gen


def _config(name: str) -> dict:
    cls = STRATEGIES.config_class(name)
    cfg = {"name": name, "keep_tree": False}
    for key, value in SMALL.items():
        if key in cls.model_fields:
            cfg[key] = value
    if name == "budget_forcing":   # a cap inside max_tokens; "</think>" is several tokens here
        cfg.update(cap=4, extend=0)
    return cfg


def _build(name: str):
    gen_cfg = GenerationConfig(seed=3, max_tokens=12)
    try:
        return STRATEGIES.build(_config(name), generation=gen_cfg)
    except Exception:                    # a width rule (e.g. n multiple of width): defaults
        return STRATEGIES.build({"name": name, "keep_tree": False}, generation=gen_cfg)


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_ledger_equals_engine_counters_with_the_model_as_judge(name):
    engine = _engine(seed=21)
    strategy = _build(name)
    if strategy.needs_draft:
        pytest.skip("a draft model pairs only with a simulated engine today (the simulated "
                    "check below covers it)")
    if name == "budget_forcing":        # the cap forces "</think>" as text on this tokenizer
        engine.thinking_delimiters = ("<think>", "</think>")
    judge = VERIFIERS.build({"name": "judge"}, generator=engine)
    before = engine.stats()
    result = strategy.run(PROBLEM, generator=engine, verifier=judge,
                          budget=Budget(max_generated_tokens=120))
    after = engine.stats()
    led = result.ledger
    assert led.generated_tokens == after["decode_tokens_run"] - before["decode_tokens_run"]
    assert (led.prefill_tokens + led.verifier_tokens
            == after["prefill_tokens_run"] - before["prefill_tokens_run"])


def test_a_prm_on_its_own_engine_is_charged_what_that_engine_ran():
    from ttc.verifiers.math_shepherd import MathShepherdFormat, plus_minus_ids
    from ttc.verifiers.prm_core import NativeHost, StepScorer

    policy = _engine(seed=22)
    prm_engine = _engine(seed=23)
    fmt = MathShepherdFormat(prm_engine.tokenizer)
    plus, minus = plus_minus_ids(prm_engine.tokenizer)

    class PRM:
        incremental = True
        scorer = StepScorer(fmt, NativeHost(prm_engine), lambda h: prm_engine.logits(h)[
            :, [plus, minus]].float().softmax(-1)[:, 0], incremental=True)

        def score(self, problem, trajectories):
            return self.scorer.score(problem, trajectories)

    before = prm_engine.stats()["prefill_tokens_run"]
    result = _build("best_of_n").run(PROBLEM, generator=policy, verifier=PRM(),
                                     budget=Budget(max_generated_tokens=400))
    assert result.ledger.verifier_tokens == prm_engine.stats()["prefill_tokens_run"] - before
    assert result.ledger.verifier_calls > 0


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_ledger_equals_the_simulated_engine_and_prm(name):
    """The same check on the simulator: every token its engine and PRM ran is charged once
    (a call that bypassed the metered views would show up here)."""
    from ttc.engine.backends.simulated import (SimulatedBackendConfig, SimulatedGenerator,
                                               small_model_config)
    from ttc.verifiers.simulated import SimulatedPRM

    config = {"name": name, "keep_tree": False}
    if name == "budget_forcing":         # a cap inside max_tokens, one "Wait"
        config.update(cap=100, extend=1)
    strategy = STRATEGIES.build(config, generation=GenerationConfig(seed=5, max_tokens=200))
    gen, prm = SimulatedGenerator(SimulatedBackendConfig(
        thinking=name == "budget_forcing")), SimulatedPRM()
    engines, extra = [gen], {}
    if strategy.needs_draft:            # the small model of a pair: both engines add up
        extra["draft"] = SimulatedGenerator(small_model_config(gen.config), peer=gen)
        engines.append(extra["draft"])
    problem = Problem(id="s", question="q", answer="1", metadata={"difficulty": 0.4,
                                                                  "num_steps": 4})
    result = strategy.run(problem, generator=gen, verifier=prm,
                          budget=Budget(max_generated_tokens=3000), **extra)
    led = result.ledger
    assert led.generated_tokens == sum(e.decode_tokens_run for e in engines)
    assert led.prefill_tokens == sum(e.prefill_tokens_run for e in engines)
    assert led.verifier_tokens == prm.tokens_run
