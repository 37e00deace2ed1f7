"""Property: no strategy run ever exceeds its budget by one token or one verifier call."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ttc.config import GenerationConfig
from ttc.engine.simulated import SimulatedGenerator
from ttc.ledger import Budget
from ttc.registry import STRATEGIES
from ttc.types import Problem
from ttc.verifiers.simulated import SimulatedPRM


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(STRATEGIES.names()),
       tokens=st.integers(min_value=1, max_value=3000),
       calls=st.one_of(st.none(), st.integers(min_value=1, max_value=40)),
       difficulty=st.floats(min_value=0.0, max_value=1.0),
       seed=st.integers(min_value=0, max_value=10_000))
def test_no_strategy_exceeds_its_budget(name, tokens, calls, difficulty, seed):
    strategy = STRATEGIES.build({"name": name, "keep_tree": False},
                                generation=GenerationConfig(seed=seed, max_tokens=800))
    gen = SimulatedGenerator()
    budget = Budget(max_generated_tokens=tokens, max_verifier_calls=calls)
    problem = Problem(id=str(seed), question="q", answer="1",
                      metadata={"difficulty": difficulty, "num_steps": 4})
    result = strategy.run(problem, generator=gen, verifier=SimulatedPRM(), budget=budget)
    assert result.ledger.generated_tokens <= tokens
    if calls is not None:
        assert result.ledger.verifier_calls <= calls
    # every handle is released at the end of a run: nothing stays resident
    assert gen.live_handles == 0
