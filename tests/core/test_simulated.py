"""The simulated backend behaves as configured, and its accounting is honest."""

import math

import pytest

from ttc.engine.backends.simulated import SimulatedBackendConfig, SimulatedGenerator
from ttc.evals.tasks import make_problems
from ttc.evals.stats import mean_interval
from ttc.ledger import Budget
from ttc.strategies.best_of_n import BestOfN, BestOfNConfig
from ttc.strategies.self_consistency import SelfConsistency, SelfConsistencyConfig
from ttc.types import ExpandRequest, FinishReason, Problem, SamplingParams
from ttc.verifiers.simulated import SimulatedPRM, SimulatedPRMConfig, step_is_correct

STEP = SamplingParams(temperature=0.8, max_tokens=400, stop=("\n\n",), seed=1)


@pytest.mark.parametrize("difficulty", [0.2, 0.8])
def test_measured_step_accuracy_matches_the_configuration(difficulty):
    gen = SimulatedGenerator(SimulatedBackendConfig(max_step_error=0.5))
    problem = Problem(id="p", question="q", metadata={"difficulty": difficulty, "num_steps": 40})
    root = gen.root(problem)
    out = gen.expand([ExpandRequest(prefix=root, n=4000, params=STEP)])
    correct = [step_is_correct(0, c.text) for c in out.continuations[0]]
    expected = 1 - 0.5 * difficulty
    measured = sum(correct) / len(correct)
    # 4000 Bernoulli draws: 4 standard errors is well under 0.03
    assert abs(measured - expected) < 4 * math.sqrt(expected * (1 - expected) / 4000) + 1e-9


def test_errors_are_absorbing_and_answers_need_every_step_right():
    gen = SimulatedGenerator()
    problem = Problem(id="p", question="q", answer="42", metadata={"difficulty": 0.6, "num_steps": 5})
    root = gen.root(problem)
    sol = SamplingParams(temperature=1.0, max_tokens=2000, seed=3)
    for cont in gen.expand([ExpandRequest(prefix=root, n=300, params=sol)]).continuations[0]:
        assert cont.finish is FinishReason.EOS
        steps = cont.text.split("\n\n")
        flags = [step_is_correct(0, s) for s in steps[:-1]]
        first_error = flags.index(False) if False in flags else len(flags)
        assert all(not f for f in flags[first_error:])          # absorbing
        right = "\\boxed{42}" in steps[-1]
        assert right == all(flags)


def test_prefix_tokens_are_counted_once_and_release_frees():
    gen = SimulatedGenerator(SimulatedBackendConfig(prompt_tokens=100))
    root = gen.root(Problem(question="q", metadata={"difficulty": 0.1, "num_steps": 10}))
    first = gen.expand([ExpandRequest(prefix=root, n=4, params=STEP)])
    # the prompt: 100 template words, then the question's one word
    assert first.usage.prefill_tokens == 101 and first.usage.cached_tokens == 0
    kids = first.continuations[0]
    assert first.usage.generated_tokens == sum(c.num_tokens for c in kids)
    second = gen.expand([ExpandRequest(prefix=kids[0].handle, n=2, params=STEP)])
    assert second.usage.prefill_tokens == 0
    assert second.usage.cached_tokens == 101 + kids[0].num_tokens
    before = gen.resident_tokens()
    gen.release([kids[1].handle])
    assert gen.resident_tokens() == before - kids[1].num_tokens
    with pytest.raises(ValueError, match="not live"):
        gen.expand([ExpandRequest(prefix=kids[1].handle, n=1, params=STEP)])


def test_token_limit_is_exact():
    gen = SimulatedGenerator()
    root = gen.root(Problem(question="q"))
    sol = SamplingParams(max_tokens=1000, seed=0)
    out = gen.expand([ExpandRequest(prefix=root, n=8, params=sol)], token_limit=137)
    assert out.usage.generated_tokens <= 137
    assert any(c.finish is FinishReason.BUDGET for c in out.continuations[0])


def test_simulated_prm_quality_follows_its_auroc():
    gen = SimulatedGenerator()
    problems = make_problems(60, seed=1, difficulty=0.6)
    sol = SamplingParams(max_tokens=2000, seed=0)
    prm_good = SimulatedPRM(SimulatedPRMConfig(auroc=0.95))
    pos, neg = [], []
    for p in problems:
        conts = gen.expand([ExpandRequest(prefix=gen.root(p), n=8, params=sol)]).continuations[0]
        for c in conts:
            steps = [s + "\n\n" for s in c.text.split("\n\n")[:-1]] + [c.text.split("\n\n")[-1]]
            score = prm_good.score(p, [steps]).scores[0][-1]
            (pos if f"\\boxed{{{p.answer}}}" in c.text else neg).append(score)
    auroc = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))
    assert 0.9 < auroc < 0.99


def _accuracy(strategy, problems, *, auroc, budget, seed):
    gen = SimulatedGenerator(SimulatedBackendConfig(world_seed=seed))
    prm = SimulatedPRM(SimulatedPRMConfig(world_seed=seed, auroc=auroc))
    right = 0
    for p in problems:
        r = strategy.run(p, generator=gen, verifier=prm, budget=Budget(max_generated_tokens=budget))
        right += r.answer == p.answer
    return right / len(problems)


def test_perfect_prm_best_of_n_beats_majority_beats_one_sample():
    """On hard problems, at a matched budget: BoN with a perfect PRM > majority > 1 sample.

    10 seeds (each its own 30 problems and sampling world); each gap's 95% interval over
    seeds must lie above zero.
    """
    budget = 16 * 400
    bon_gap, maj_gap = [], []
    for seed in range(10):
        problems = make_problems(30, seed=7 + seed, difficulty=(0.5, 0.8))
        acc = {name: _accuracy(strategy, problems, auroc=1.0, budget=budget, seed=seed)
               for name, strategy in (
                   ("bon", BestOfN(BestOfNConfig(n=16, selection="best", keep_tree=False))),
                   ("maj", SelfConsistency(SelfConsistencyConfig(n=16, keep_tree=False))),
                   ("one", SelfConsistency(SelfConsistencyConfig(n=1, keep_tree=False))))}
        bon_gap.append(acc["bon"] - acc["maj"])
        maj_gap.append(acc["maj"] - acc["one"])
    assert mean_interval(bon_gap).low > 0, mean_interval(bon_gap)
    assert mean_interval(maj_gap).low > 0, mean_interval(maj_gap)
