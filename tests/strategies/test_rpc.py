"""RPC: Weibull-mixture reasoning pruning and perplexity-consistency voting."""

import math
import random

import pytest

from ttc.strategies.rpc import fit_weibull_mixture, perplexity_consistency, prune_mask


def _weibull(rng, k, scale):
    return scale * (-math.log(1 - rng.random())) ** (1 / k)


def test_mixture_fit_separates_two_clusters_and_orders_them():
    rng = random.Random(0)
    high = [min(0.99, _weibull(rng, 12.0, 0.8)) for _ in range(60)]
    low = [_weibull(rng, 6.0, 0.2) for _ in range(40)]
    w1, k1, l1, k2, l2 = fit_weibull_mixture(high + low)
    mean1 = l1 * math.gamma(1 + 1 / k1)
    mean2 = l2 * math.gamma(1 + 1 / k2)
    assert mean1 > mean2                       # component 1 is the high-probability one
    assert mean1 == pytest.approx(0.77, abs=0.05) and mean2 == pytest.approx(0.19, abs=0.05)
    assert 0.2 <= w1 <= 0.8 and w1 == pytest.approx(0.6, abs=0.1)
    keep = prune_mask(high + low, (w1, k1, l1, k2, l2))
    assert all(keep[:60]) and not any(keep[60:])


def test_paths_above_the_mean_are_never_pruned():
    p = [0.9, 0.85, 0.8, 0.3, 0.25, 0.2, 0.1]
    keep = prune_mask(p, fit_weibull_mixture(p))
    mean = sum(p) / len(p)
    assert all(k for k, pi in zip(keep, p) if pi >= mean)


def test_identical_paths_count_once_and_pruned_ones_not_at_all():
    texts = ["a", "a", "a", "b", "c"]
    answers = ["1", "1", "1", "2", "2"]
    p = [0.5, 0.5, 0.5, 0.4, 0.3]
    scores = perplexity_consistency(texts, answers, p, [True] * 5)
    assert scores == pytest.approx({"1": 0.5, "2": 0.7})    # "a" counted once
    pruned = perplexity_consistency(texts, answers, p, [True, True, True, True, False])
    assert pruned == pytest.approx({"1": 0.5, "2": 0.4})


def test_strategy_returns_the_highest_scored_answer(run):
    r = run({"name": "rpc", "n": 12}, difficulty=0.6, num_steps=5)
    info = r.result.info["rpc"]
    assert len(info["p"]) == 12 and all(0 < x <= 1 for x in info["p"])
    winner = max(info["scores"], key=info["scores"].get)
    assert r.result.answer == winner
    assert info["confidence"] == pytest.approx(info["scores"][winner] / sum(info["scores"].values()))
    assert r.result.ledger.verifier_calls == 0 and r.gen.live_handles == 0
