"""Metrics: pass@k against its closed form, majority@k, bootstrap intervals."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ttc.evals.metrics import bootstrap_ci, majority_correct, pass_at_k, summarize


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 60).flatmap(lambda n: st.tuples(
    st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_matches_the_closed_form(nck):
    n, c, k = nck
    expected = 1.0 - comb(n - c, k) / comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_edge_cases_and_errors():
    assert pass_at_k(10, 0, 3) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(4, 5, 1)


def test_majority_uses_answer_classes_and_first_k():
    answers = ["1/2", "7", "0.5", "7", "7"]
    correct = [True, False, True, False, False]
    assert majority_correct(answers, correct, 3) is True     # 1/2 and 0.5 form one class
    assert majority_correct(answers, correct, 5) is False    # 7 wins 3 to 2
    assert majority_correct([None, None], [False, False], 2) is False


def test_bootstrap_interval_contains_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = rng.random(20) < 0.5
    large = rng.random(2000) < 0.5
    lo, hi = bootstrap_ci(small)
    assert lo <= small.mean() <= hi
    lo2, hi2 = bootstrap_ci(large)
    assert (hi2 - lo2) < (hi - lo) / 3


def test_summarize_reports_compute_and_k_metrics():
    led = {"generated_tokens": 100, "prefill_tokens": 10, "verifier_calls": 4,
           "peak_kv_bytes": 1000}
    recs = [{"correct": i % 2 == 0, "ledger": led, "wall_seconds": 0.5,
             "candidate_answers": ["1", "1", "2", "3"],
             "candidate_correct": [i % 2 == 0, i % 2 == 0, False, False]} for i in range(10)]
    s = summarize(recs, ks=(1, 4, 8))
    assert s["accuracy"] == 0.5 and s["generated_tokens_per_problem"] == 100
    assert s["pass@1"] == pytest.approx(0.25)
    assert s["pass@4"] == pytest.approx(0.5)
    assert s["majority@4"] == pytest.approx(0.5)
    assert "pass@8" not in s


def test_summarize_clusters_accuracy_by_problem_and_keeps_3_of_3_open():
    led = {"generated_tokens": 10, "prefill_tokens": 1, "verifier_calls": 1,
           "peak_kv_bytes": 1}
    recs = [{"id": f"p{i}", "correct": True, "ledger": led, "seed": 0} for i in range(3)]
    s = summarize(recs)
    assert s["accuracy"] == 1.0 and s["accuracy_ci_high"] == 1.0
    assert s["accuracy_ci_low"] == pytest.approx(0.4385, abs=1e-4)     # Wilson 3/3
    # the same three problems again under seed 1 are no new problems: the interval stays
    again = summarize(recs + [{**r, "seed": 1} for r in recs])
    assert again["accuracy_ci_low"] == pytest.approx(s["accuracy_ci_low"])
    # three new problems do narrow it
    more = summarize(recs + [{**r, "id": r["id"] + "b"} for r in recs])
    assert more["accuracy_ci_low"] > s["accuracy_ci_low"] + 0.1
