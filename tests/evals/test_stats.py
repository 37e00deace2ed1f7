"""Intervals for research claims: hand-worked values, clustering, tokens to reach."""

from __future__ import annotations

import random

import pytest

from ttc.evals.stats import (ReachKind, clustered_proportion_interval, mean_interval,
                             reach_ratio, tokens_to_reach, wilson_interval)


def test_wilson_matches_hand_worked_values_and_does_not_collapse_at_3_of_3():
    # 7/10, z = 1.96: centre 0.64455, half-width 0.24772 (worked by hand)
    assert wilson_interval(7, 10) == pytest.approx((0.39677, 0.89227), abs=1e-4)
    lo, hi = wilson_interval(3, 3)
    assert hi == 1.0 and lo == pytest.approx(0.43850, abs=1e-4)
    lo, hi = wilson_interval(0, 3)
    assert lo == 0.0 and hi == pytest.approx(0.56150, abs=1e-4)
    with pytest.raises(ValueError, match="n > 0"):
        wilson_interval(0, 0)


def test_clustered_interval_is_wilson_when_no_problem_repeats():
    correct = [True, False, True, True, False, True, True]
    assert clustered_proportion_interval(correct, list("abcdefg")) == wilson_interval(5, 7)


def test_a_problem_seen_under_two_seeds_is_one_cluster():
    rng = random.Random(0)
    once = [rng.random() < 0.6 for _ in range(100)]
    ids = [f"p{i}" for i in range(100)]
    single = clustered_proportion_interval(once, ids)
    # the same outcomes again under a second seed: no new information about the problems
    twice = clustered_proportion_interval(once + once, ids + ids)
    naive = wilson_interval(2 * sum(once), 200)        # what treating them as 200 would say
    width = lambda ci: ci[1] - ci[0]                    # noqa: E731
    assert width(twice) >= 0.99 * width(single)
    assert width(naive) < 0.8 * width(twice)
    # all correct under two seeds: each problem counts once, as Wilson 3/3 would
    assert clustered_proportion_interval([True] * 6, list("abcabc")) == wilson_interval(3, 3)


def test_independent_outcomes_under_two_seeds_count_nearly_twice():
    rng = random.Random(1)
    ids = [f"p{i}" for i in range(400)]
    correct = [rng.random() < 0.5 for _ in range(800)]
    ci = clustered_proportion_interval(correct, ids + ids)
    flat = wilson_interval(sum(correct), 800)
    assert (ci[1] - ci[0]) == pytest.approx(flat[1] - flat[0], rel=0.15)


def test_mean_interval_is_student_t_and_needs_two_replicates():
    est = mean_interval([1.0, 2.0, 3.0, 4.0])
    # sd = 1.29099, t(0.975, 3) = 3.18245: half-width 2.05426
    assert est.mean == 2.5 and est.sd == pytest.approx(1.29099, abs=1e-5)
    assert (est.low, est.high) == pytest.approx((0.44574, 4.55426), abs=1e-4)
    assert est.excludes(0.0) and not est.excludes(2.0)
    with pytest.raises(ValueError, match="at least 2 replicates"):
        mean_interval([0.3])


def test_tokens_to_reach_interpolates_the_first_crossing():
    curve = [(100, 0.2), (200, 0.6), (400, 0.5), (800, 0.9)]
    r = tokens_to_reach(curve, 0.4)
    assert r.kind is ReachKind.INTERPOLATED and r.tokens == pytest.approx(150.0)
    r = tokens_to_reach(curve, 0.7)            # the dip at 400 does not count as a crossing
    assert r.tokens == pytest.approx(400 + 400 * (0.7 - 0.5) / 0.4)
    first = tokens_to_reach(curve, 0.1)
    assert first.kind is ReachKind.AT_FIRST_POINT and first.tokens == 100
    never = tokens_to_reach(curve, 0.95)
    assert not never.reached and never.tokens is None
    assert never.describe() == "not reached within 800 tokens"


def test_a_ratio_needs_both_curves_to_reach_the_target():
    slow = tokens_to_reach([(1000, 0.3), (3000, 0.7)], 0.5)
    fast = tokens_to_reach([(100, 0.4), (300, 0.6)], 0.5)
    assert reach_ratio(slow, fast) == pytest.approx(2000 / 200)
    never = tokens_to_reach([(1000, 0.3), (10_000, 0.45)], 0.5)
    assert reach_ratio(never, fast) is None
    assert reach_ratio(slow, tokens_to_reach([(100, 0.55)], 0.5)) is None   # only a bound
