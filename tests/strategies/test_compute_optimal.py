"""Compute-optimal strategy choice per difficulty (docs/algorithms.md#compute-optimal-choice): a scored probe predicts the
difficulty (no gold answer), the bin picks the strategy, one ledger covers both."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fakes import world
from ttc.ledger import Budget
from ttc.strategies.compute_optimal import (ComputeOptimal, ComputeOptimalConfig,
                                            best_per_bin, difficulty_bin,
                                            predicted_difficulty, quantile_edges)
from ttc.types import Problem

TABLE = [{"name": "best_of_n", "n": 3}, {"name": "self_consistency", "n": 2},
         {"name": "self_consistency", "n": 2}, {"name": "self_consistency", "n": 2},
         {"name": "beam", "n": 4, "width": 2}]


def problem(difficulty: float, pid: str, answer: str | None = "321") -> Problem:
    return Problem(id=pid, question=f"question {pid}", answer=answer,
                   metadata={"difficulty": difficulty, "num_steps": 8})


def test_bins_quantiles_and_table_fitting_by_hand():
    edges = (0.2, 0.4, 0.6, 0.8)
    assert [difficulty_bin(d, edges) for d in (0.0, 0.2, 0.39, 0.5, 0.79, 0.8, 1.0)] == \
        [0, 1, 1, 2, 3, 4, 4]
    assert predicted_difficulty([1.0, 0.5, 0.0, 0.5]) == pytest.approx(0.5)
    assert predicted_difficulty([]) == 0.5
    assert quantile_edges([i / 10 for i in range(10)], 5) == (0.2, 0.4, 0.6, 0.8)
    # bin 0: candidate 1 wins 2/2 vs 1/2; bin 1: tie -> the lower index; bin 2: no rows
    rows = [(0, 0, 1), (0, 0, 0), (0, 1, 1), (0, 1, 1), (1, 0, 1), (1, 1, 1)]
    assert best_per_bin(rows, bins=3, candidates=2) == [1, 0, None]


def test_easy_and_hard_problems_run_their_bins_strategy():
    """A perfect verifier scores every probe sample of an easy problem 1 (difficulty 0,
    bin 0: best-of-3) and of a very hard one 0 (difficulty 1, bin 4: beam search).
    Mutation check: a fixed choice (always per_bin[2]) fails both ``chosen`` asserts."""
    cfg = ComputeOptimalConfig(probe_samples=6, per_bin=TABLE)
    for pid in range(3):
        gen, prm = world(auroc=1.0)
        easy = ComputeOptimal(cfg).run(problem(0.0, f"e{pid}"), generator=gen, verifier=prm)
        assert easy.info["probe_scores"] == [1.0] * 6
        assert easy.info["bin"] == 0 and easy.info["chosen"] == "best_of_n"
        # probe + best-of-3: two engine calls, 6 + 3 scored samples, 9 candidates
        assert easy.ledger.lm_calls == 2 and easy.ledger.verifier_calls == 9
        assert len(easy.candidates) == 9
        assert gen.live_handles == 0
        gen, prm = world(auroc=1.0)
        hard = ComputeOptimal(cfg).run(problem(1.0, f"h{pid}"), generator=gen, verifier=prm)
        assert hard.info["difficulty"] > 0.8
        assert hard.info["bin"] == 4 and hard.info["chosen"] == "beam"
        nodes = hard.tree["nodes"]
        assert max(n["depth"] for n in nodes) >= 3        # step-level search ran
        assert hard.ledger.lm_calls > 3
        assert gen.live_handles == 0 and gen.resident_tokens() == 0


@pytest.mark.parametrize("limit", [30, 400, 1500])
def test_one_budget_covers_probe_and_search(limit):
    gen, prm = world()
    res = ComputeOptimal(ComputeOptimalConfig()).run(
        problem(0.5, "b"), generator=gen, verifier=prm,
        budget=Budget(max_generated_tokens=limit, max_verifier_calls=12))
    assert res.ledger.generated_tokens <= limit and res.ledger.verifier_calls <= 12
    assert gen.live_handles == 0


def test_bad_tables_are_refused():
    with pytest.raises(ValidationError, match="one strategy per bin"):
        ComputeOptimalConfig(per_bin=TABLE[:4])
    with pytest.raises(ValidationError, match="rise strictly"):
        ComputeOptimalConfig(bin_edges=(0.5, 0.3, 0.6, 0.8))
    with pytest.raises(ValidationError, match="nest"):
        ComputeOptimalConfig(per_bin=[*TABLE[:4], {"name": "compute_optimal"}])
    with pytest.raises(ValidationError, match="unknown strategy"):
        ComputeOptimalConfig(per_bin=[*TABLE[:4], {"name": "nope"}])
