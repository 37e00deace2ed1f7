"""The simulator's signals: token log-probs with a chosen AUROC, greedy steps that can be
wrong, PRM noise correlated along a path, probes on shared KV."""

from __future__ import annotations

import statistics

import pytest

from ttc.engine.backends.simulated import SimulatedBackendConfig, SimulatedGenerator
from ttc.stopping import token_confidence
from ttc.types import ExpandRequest, Problem, SamplingParams
from ttc.verifiers.simulated import SimulatedPRM, SimulatedPRMConfig, step_is_correct


def _problem(d=0.6, i=0):
    return Problem(id=f"s{i}", question=f"Signals {i}.", answer="77",
                   metadata={"difficulty": d, "num_steps": 6})


def _auroc(pos, neg):
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


@pytest.mark.parametrize("auroc", [0.7, 0.9])
def test_step_confidence_has_the_chosen_auroc(auroc):
    gen = SimulatedGenerator(SimulatedBackendConfig(logprob_auroc=auroc,
                                                    logprob_token_noise=0.0))
    root = gen.root(_problem())
    right, wrong = [], []
    out = gen.expand([ExpandRequest(prefix=root, n=1000, params=SamplingParams(
        seed=3, max_tokens=100, stop=("\n\n",), top_logprobs=4))])
    for c in out.continuations[0]:       # first steps: right or wrong, never inherited
        mean_c = statistics.fmean(token_confidence(t) for t in c.top_logprobs)
        (right if step_is_correct(0, c.text) else wrong).append(mean_c)
    assert abs(_auroc(right, wrong) - auroc) < 0.05


def test_sampled_logprob_is_the_top_one_and_off_by_default():
    gen = SimulatedGenerator(SimulatedBackendConfig(logprob_auroc=0.8))
    c = gen.expand([ExpandRequest(prefix=gen.root(_problem()), n=1, params=SamplingParams(
        seed=1, max_tokens=50, top_logprobs=3))]).continuations[0][0]
    assert len(c.top_logprobs) == c.num_tokens and all(len(t) == 3 for t in c.top_logprobs)
    assert c.logprobs == tuple(t[0][1] for t in c.top_logprobs)
    for t in c.top_logprobs:
        assert sum(2.718281828 ** lp for _, lp in t) <= 1.0 + 1e-9


def test_greedy_can_be_wrong_but_stays_deterministic():
    def greedy_answers(can_err):
        gen = SimulatedGenerator(SimulatedBackendConfig(greedy_can_err=can_err))
        answers = []
        for i in range(40):
            p = _problem(d=0.8, i=i)
            c = gen.expand([ExpandRequest(prefix=gen.root(p), n=2, params=SamplingParams(
                temperature=0.0, max_tokens=2000))]).continuations[0]
            # greedy: right or wrong is fixed per prefix (the filler words are not modelled)
            assert ("\\boxed{77}" in c[0].text) == ("\\boxed{77}" in c[1].text)
            answers.append("\\boxed{77}" in c[0].text)
        return answers
    assert all(greedy_answers(False))                # p_ok = 0.6 >= 0.5: never wrong
    wrong = greedy_answers(True).count(False)
    assert 10 < wrong < 40                           # P(right) = 0.6 ** 5 per problem


def test_prm_path_correlation_keeps_auroc_and_correlates_steps():
    steps = [f"Step {t}: filler [{'%08x' % (t * 7919)}]\n\n" for t in range(30)]
    p = _problem()

    def noise(rho):
        prm = SimulatedPRM(SimulatedPRMConfig(auroc=0.8, path_correlation=rho))
        return [prm._path_noise(p, tuple(steps[: t + 1])) for t in range(30)]
    for rho in (0.0, 0.9):
        z = noise(rho)
        lag1 = statistics.correlation(z[:-1], z[1:])
        if rho:
            assert lag1 > 0.5
        else:
            assert abs(lag1) < 0.45
    with pytest.raises(ValueError):
        SimulatedPRMConfig(path_correlation=1.0)


def test_probe_is_charged_and_leaves_no_handle():
    gen = SimulatedGenerator(SimulatedBackendConfig())
    root = gen.root(_problem())
    c = gen.expand([ExpandRequest(prefix=root, n=1, params=SamplingParams(
        seed=1, max_tokens=30))]).continuations[0][0]
    live = gen.live_handles
    out = gen.probe(c.handle, gen.encode("final answer is \\boxed{"), max_new=20)
    assert out.continuations[0][0].handle is None and gen.live_handles == live
    assert out.usage.prefill_tokens == 4 and out.usage.cached_tokens == 120 + 2 + 30   # template, question, step
    assert out.usage.generated_tokens == out.continuations[0][0].num_tokens >= 1
    with pytest.raises(ValueError, match="max_new"):
        gen.probe(c.handle, [1], max_new=0)
