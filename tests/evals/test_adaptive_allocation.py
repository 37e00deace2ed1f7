"""Adaptive budgets: stopping rules, the wave scheduler, dataset-level allocation."""

from __future__ import annotations

import pytest

from fakes import problems, world
from ttc.evals.allocation import (allocate_samples, solve_allocated, solve_uniform,
                                  success_estimate)
from ttc.ledger import Budget
from ttc.strategies.adaptive import (Adaptive, AdaptiveConfig, BudgetScheduler,
                                     prm_confident, vote_confidence)
from ttc.types import Candidate


def test_vote_confidence_is_the_beta_rule():
    assert vote_confidence([5]) == pytest.approx(1 - 0.5 ** 6)    # I_1/2(6, 1)
    assert vote_confidence([3, 3]) == pytest.approx(0.5)
    assert vote_confidence([]) == 0.0
    assert vote_confidence([1, 8, 0]) > vote_confidence([7, 2])


def test_prm_confident_needs_score_and_agreement():
    c = [Candidate(steps=("x",), answer="4", score=0.95),
         Candidate(steps=("y",), answer="4", score=0.5),
         Candidate(steps=("z",), answer="5", score=0.3)]
    assert prm_confident(c, threshold=0.9, min_agree=2)
    assert not prm_confident(c, threshold=0.99, min_agree=2)
    assert not prm_confident(c, threshold=0.9, min_agree=3)


def test_scheduler_grows_and_respects_caps():
    s = BudgetScheduler(max_samples=20, first_wave=2, growth=2.0)
    assert [s.next_wave(wave_index=i, drawn=0, remaining_tokens=None, tokens_per_sample=None)
            for i in range(4)] == [2, 4, 8, 16]
    assert s.next_wave(wave_index=3, drawn=14, remaining_tokens=None, tokens_per_sample=None) == 6
    assert s.next_wave(wave_index=2, drawn=4, remaining_tokens=250, tokens_per_sample=100) == 2
    assert s.next_wave(wave_index=2, drawn=4, remaining_tokens=50, tokens_per_sample=100) == 0
    with pytest.raises(ValueError, match="growth"):
        BudgetScheduler(max_samples=4, growth=0.5)


def test_adaptive_stops_early_on_easy_problems_and_spends_more_on_hard_ones():
    easy = problems(6, seed=30, difficulty=0.0)
    hard = problems(6, seed=30, difficulty=0.7)
    spent = {}
    for name, ps in (("easy", easy), ("hard", hard)):
        total = 0
        for p in ps:
            gen, prm = world()
            r = Adaptive(AdaptiveConfig(max_samples=32)).run(p, generator=gen, verifier=prm)
            total += r.info["samples"]
            assert gen.live_handles == 0
            if name == "easy":
                assert r.info["stopped_by"] in ("vote", "prm") and r.answer == p.answer
        spent[name] = total
    assert spent["hard"] > spent["easy"]


@pytest.mark.parametrize("limit", [100, 700])
def test_adaptive_budget_is_exact(limit):
    gen, prm = world()
    r = Adaptive(AdaptiveConfig()).run(problems(1, seed=31, difficulty=0.8)[0], generator=gen,
                                       verifier=prm, budget=Budget(max_generated_tokens=limit))
    assert r.ledger.generated_tokens <= limit


def test_allocate_samples_greedy_marginal_gain():
    k = allocate_samples([0.95, 0.5, 0.001], 12, start=[1, 1, 1])
    assert sum(k) == 12
    assert k[1] > k[0] and k[1] > k[2]          # the middle gets most, near-sure / hopeless little
    with pytest.raises(ValueError, match="success"):
        allocate_samples([1.5], 3)
    assert success_estimate([0.9, 0.2]) == pytest.approx(0.5)


def test_allocation_spends_more_on_harder_problems_and_never_exceeds_budget():
    ps = problems(30, seed=32, difficulty=(0.0, 0.6))
    gen, prm = world()
    run = solve_allocated(ps, generator=gen, verifier=prm, total_tokens=30 * 900)
    assert run.generated_tokens <= 30 * 900
    assert sum(r.ledger.generated_tokens for r in run.results) == run.generated_tokens
    diffs = [p.metadata["difficulty"] for p in ps]
    order = sorted(range(len(ps)), key=lambda i: diffs[i])
    easy = [run.samples[i] for i in order[:10]]
    hard = [run.samples[i] for i in order[-10:]]
    assert sum(hard) > sum(easy)
    uni = solve_uniform(ps, generator=world()[0], verifier=world()[1], samples=3,
                        total_tokens=1000)
    assert uni.generated_tokens <= 1000


def test_allocation_reads_certaindex_as_a_settled_signal():
    """With a certaindex threshold, a problem whose probe answers already agree gets no
    more samples: at threshold 0 every problem is settled by its probe alone; without one
    the vote rule alone decides and unsettled problems get waves."""
    from ttc.strategies.certaindex import answer_certaindex

    ps = problems(12, seed=33, difficulty=(0.3, 0.9))
    loose = solve_allocated(ps, generator=world()[0], verifier=world()[1],
                            total_tokens=12 * 900, certaindex_threshold=0.0)
    assert loose.samples == (2,) * 12
    plain = solve_allocated(ps, generator=world()[0], verifier=world()[1],
                            total_tokens=12 * 900)
    assert sum(plain.samples) > sum(loose.samples)
    strict = solve_allocated(ps, generator=world()[0], verifier=world()[1],
                             total_tokens=12 * 900, certaindex_threshold=1.0)
    resampled = [r for r, k in zip(strict.results, strict.samples) if k > 2]
    assert resampled, "no problem was sampled beyond its probe"
    for result in resampled:        # only problems whose two probe answers differed
        assert answer_certaindex([c.answer for c in result.candidates[:2]]) < 1.0
    with pytest.raises(ValueError, match="certaindex_threshold must be in"):
        solve_allocated(ps, generator=world()[0], verifier=world()[1], total_tokens=100,
                        certaindex_threshold=1.5)
