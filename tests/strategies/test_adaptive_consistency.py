"""Adaptive consistency stops at the first wave whose Beta criterion passes the threshold."""

import pytest
from pydantic import ValidationError

from ttc.strategies.adaptive_consistency import (AdaptiveConsistencyConfig,
                                                 beta_confidence)


def test_beta_criterion_matches_its_closed_form():
    # BetaCDF(1/2; 1, v1 + 1) = 1 - (1/2)^(v1 + 1) when there is no runner-up
    for v1 in range(1, 8):
        assert beta_confidence(v1, 0) == pytest.approx(1 - 0.5 ** (v1 + 1))
    assert beta_confidence(3, 3) == pytest.approx(0.5)
    assert beta_confidence(10, 2) > beta_confidence(6, 2) > beta_confidence(6, 4)
    from scipy.stats import beta

    for v1 in range(0, 12):
        for v2 in range(0, v1 + 1):
            assert beta_confidence(v1, v2) == pytest.approx(beta.cdf(0.5, v2 + 1, v1 + 1))


def test_stops_at_the_first_decided_wave(run):
    easy = run({"name": "adaptive_consistency", "max_n": 40, "batch": 4}, difficulty=0.0)
    waves = easy.result.info["waves"]
    # four agreeing votes: 1 - 2^-5 = 0.969 > 0.95, so one wave is enough
    assert len(waves) == 1 and easy.result.info["samples"] == 4
    assert easy.result.answer == "123"
    hard = run({"name": "adaptive_consistency", "max_n": 40, "batch": 4}, difficulty=0.9,
               num_steps=6)
    waves = hard.result.info["waves"]
    assert all(w["confidence"] <= 0.95 for w in waves[:-1])
    assert waves[-1]["confidence"] > 0.95 or hard.result.info["samples"] == 40
    assert len(waves) > 1
    assert hard.result.ledger.lm_calls == len(waves)         # one expand per wave
    assert hard.result.ledger.verifier_calls == 0
    assert hard.gen.live_handles == 0


def test_batch_larger_than_max_n_is_refused():
    with pytest.raises(ValidationError, match=r"batch \(8\) must not exceed max_n \(4\)"):
        AdaptiveConsistencyConfig(max_n=4, batch=8)
