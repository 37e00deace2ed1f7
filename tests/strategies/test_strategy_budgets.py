"""Every registered strategy respects its budget exactly and frees all KV at the end."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strategy_helpers import Run
from ttc.config import GenerationConfig
from ttc.engine.backends.simulated import (SimulatedBackendConfig, SimulatedGenerator,
                                           small_model_config)
from ttc.ledger import Budget
from ttc.registry import ConfigError, STRATEGIES
from ttc.types import Problem
from ttc.verifiers.simulated import SimulatedPRM

# non-default settings of this package's strategies, run next to every registered default
VARIANTS = [
    {"name": "beam", "n": 8, "width": 2, "lookahead": 1},
    {"name": "beam", "n": 4, "width": 4, "filter_duplicates": True},
    {"name": "dvts", "n": 8, "width": 2},
    {"name": "particle_filtering", "n": 6, "ess_threshold": 0.5, "resampling": "multinomial"},
    {"name": "particle_filtering", "n": 5, "gibbs_iterations": 2},
    {"name": "adaptive_consistency", "max_n": 12, "batch": 3},
    {"name": "best_of_n", "n": 6, "weight_temperature": 0.5, "selection": "weighted"},
]
# the options and strategies of issue 16's "missing algorithms"
NEW_VARIANTS = [
    {"name": "mcts", "n_simulations": 8, "tree_policy": "uct"},
    {"name": "mcts", "n_simulations": 8, "value": "rollout", "dirichlet_weight": 0.25},
    {"name": "particle_filtering", "n": 4, "tempering_ladder": [2.0, 4.0]},
    {"name": "threads", "n_threads": 3, "keep": 1, "rounds": 2, "summary_threshold": 0},
    {"name": "threads", "rounds": 2, "summarize": "conclusion", "summary_threshold": 0},
    {"name": "self_eval", "max_samples": 8, "first_batch": 4, "prune_after_tokens": 20},
    {"name": "self_eval", "probe": "lm", "max_samples": 4},
    {"name": "plan_and_budget", "schedule": "polynomial", "total_tokens": 300},
    {"name": "compute_optimal", "probe_samples": 2, "reuse_probe": False},
]
# issue 15's thinking budgets, model pairs and composed pipelines
PAIR_VARIANTS = [
    {"name": "budget_forcing", "n": 3, "cap": None, "extend": 2},
    {"name": "spec_reason", "threshold": 9},
    {"name": "archon", "layers": [
        {"kind": "generate", "generators": [
            {"strategy": {"name": "best_of_n", "n": 3}},
            {"strategy": {"name": "self_consistency", "n": 2}, "model": "draft"}]},
        {"kind": "rank", "top_k": 2}, {"kind": "critique"}, {"kind": "fuse", "fusers": 2},
        {"kind": "verify"}]},
]
CONFIGS = [{"name": n} for n in STRATEGIES.names()] + VARIANTS + NEW_VARIANTS + PAIR_VARIANTS


def _engines(strategy) -> tuple[SimulatedGenerator, dict, list[SimulatedGenerator]]:
    """The generator a strategy needs (a thinking model, a pair), run() extras, engines."""
    if strategy.name == "budget_forcing":
        gen = SimulatedGenerator(SimulatedBackendConfig(thinking=True))
        return gen, {}, [gen]
    gen = SimulatedGenerator()
    if not strategy.needs_draft:
        return gen, {}, [gen]
    draft = SimulatedGenerator(small_model_config(gen.config), peer=gen)
    return gen, {"draft": draft}, [gen, draft]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=st.sampled_from(CONFIGS),
       tokens=st.integers(min_value=1, max_value=2500),
       calls=st.one_of(st.none(), st.integers(min_value=1, max_value=60)),
       difficulty=st.floats(min_value=0.0, max_value=1.0),
       seed=st.integers(min_value=0, max_value=10_000))
def test_budgets_are_never_exceeded(config, tokens, calls, difficulty, seed):
    strategy = STRATEGIES.build({**config, "keep_tree": False},
                                generation=GenerationConfig(seed=seed, max_tokens=600))
    gen, extra, engines = _engines(strategy)
    budget = Budget(max_generated_tokens=tokens, max_verifier_calls=calls)
    problem = Problem(id=str(seed), question="q", answer="1",
                      metadata={"difficulty": difficulty, "num_steps": 5})
    try:
        result = strategy.run(problem, generator=gen, verifier=SimulatedPRM(), budget=budget,
                              **extra)
    except ConfigError as err:
        # a budget too small for the strategy's mechanism (DeepConf's warm-up) is refused
        # before anything runs, naming the budget: nothing spent, nothing left resident
        assert "cannot hold" in str(err) and str(tokens) in str(err)
        for engine in engines:
            assert engine.live_handles == 0 and engine.resident_tokens() == 0
        return
    assert result.ledger.generated_tokens <= tokens
    if calls is not None:
        assert result.ledger.verifier_calls <= calls
    for engine in engines:
        assert engine.live_handles == 0 and engine.resident_tokens() == 0


def _run_within(config: dict, tokens: int, calls: int | None, seed: int) -> None:
    strategy = STRATEGIES.build({**config, "keep_tree": False},
                                generation=GenerationConfig(seed=seed, max_tokens=600))
    gen, extra, engines = _engines(strategy)
    problem = Problem(id=str(seed), question="q", answer="1",
                      metadata={"difficulty": 0.6, "num_steps": 5})
    result = strategy.run(problem, generator=gen, verifier=SimulatedPRM(),
                          budget=Budget(max_generated_tokens=tokens, max_verifier_calls=calls),
                          **extra)
    assert result.ledger.generated_tokens <= tokens
    if calls is not None:
        assert result.ledger.verifier_calls <= calls
    for engine in engines:
        assert engine.live_handles == 0 and engine.resident_tokens() == 0


def test_new_strategies_and_options_keep_every_budget():
    """Each new strategy and option, at defaults and as a variant, under tight and loose
    token and verifier-call budgets (the sampled test above may not draw them all)."""
    news = [{"name": n} for n in ("self_eval", "plan_and_budget", "compute_optimal",
                                  "threads")] + NEW_VARIANTS
    for i, config in enumerate(news):
        for tokens, calls in ((1, None), (37, 2), (400, 5), (2500, None)):
            _run_within(config, tokens, calls, seed=i)


def test_thinking_budgets_model_pairs_and_pipelines_keep_every_budget():
    """Budget forcing, SpecReason and a composed pipeline at defaults and as variants,
    under tight and loose token and verifier-call budgets; both engines of a pair end
    with no live handle and no resident KV."""
    configs = [{"name": n} for n in ("budget_forcing", "spec_reason", "archon")] \
        + PAIR_VARIANTS
    for i, config in enumerate(configs):
        for tokens, calls in ((1, None), (37, 2), (400, 5), (2500, None)):
            _run_within(config, tokens, calls, seed=i)


def test_a_budget_too_small_for_one_step_is_flagged(run):
    r = run({"name": "beam", "n": 8, "width": 4}, budget=Budget(max_generated_tokens=20))
    assert r.result.budget_exhausted
    msg = r.result.info["budget_too_small"]
    assert "generated-token budget (limit 20) cannot cover one search step of 8 branches" in msg
    assert any(e.note == msg for e in r.events)
    r = run({"name": "particle_filtering", "n": 8},
            budget=Budget(max_verifier_calls=3))
    assert "verifier-call budget (limit 3)" in r.result.info["budget_too_small"]
    assert r.result.ledger.verifier_calls == 0


def test_a_budget_that_covers_steps_is_not_flagged(run):
    r = run({"name": "dvts", "n": 8, "width": 4}, num_steps=6,
            budget=Budget(max_generated_tokens=900))
    assert r.result.budget_exhausted
    assert "budget_too_small" not in r.result.info
    assert r.result.info["steps_completed"] >= 1
    assert r.result.ledger.generated_tokens <= 900
