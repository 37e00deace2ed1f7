"""Particle filtering: softmax weights, ESS-triggered resampling, both schemes, Gibbs."""

import math
import random
from collections import Counter

import pytest
from pydantic import ValidationError

from strategy_helpers import PROMPT_TOKENS
from ttc.strategies.common import (ess, logit, multinomial_resample, softmax,
                                   systematic_resample)
from ttc.strategies.particle_filtering import ParticleFilteringConfig


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_weights_are_the_configured_softmax_of_score_logits(run, tau):
    r = run({"name": "particle_filtering", "n": 8, "softmax_temperature": tau},
            difficulty=0.6, num_steps=6, auroc=0.8)
    tree = r.tree
    trace = r.result.info["pf_trace"]
    assert trace
    for entry in trace:
        scores = [tree[i]["score"] for i in entry["nodes"]]
        logits = [math.log(s / (1 - s)) for s in scores]
        z = sum(math.exp(x / tau) for x in logits)
        expected = [math.exp(x / tau) / z for x in logits]
        assert entry["weights"] == pytest.approx(expected, rel=1e-9)
        assert entry["resampled"]                 # paper setting: every step
        assert entry["ess"] == pytest.approx(1 / sum(w * w for w in entry["weights"]))
    if tau == 1.0:   # tau = 1: w proportional to r / (1 - r)
        s = [tree[i]["score"] for i in trace[0]["nodes"]]
        odds = [x / (1 - x) for x in s]
        assert trace[0]["weights"] == pytest.approx([o / sum(odds) for o in odds])


def test_resamples_only_when_ess_falls_below_its_threshold(run):
    decisions = []
    for pid in range(6):
        r = run({"name": "particle_filtering", "n": 8, "ess_threshold": 0.5},
                difficulty=0.7, num_steps=7, auroc=0.8, pid=str(pid))
        tree = r.tree
        trace = r.result.info["pf_trace"]
        for prev, entry in zip([None] + trace[:-1], trace):
            assert entry["resampled"] == (entry["ess"] < 0.5 * 8)
            assert entry["weights"] == pytest.approx(softmax(entry["logw"]))
            if prev is not None and not prev["resampled"]:
                # carried weights: logw += logit(r_t) - logit(r_t-1), particle by particle
                for i, (node, old) in enumerate(zip(entry["nodes"], prev["nodes"])):
                    step = logit(tree[node]["score"]) - logit(tree[old]["score"])
                    assert entry["logw"][i] == pytest.approx(prev["logw"][i] + step)
            decisions.append(entry["resampled"])
    assert any(decisions) and not all(decisions)   # both branches were exercised


def test_particles_copy_their_parent_and_unselected_ones_are_freed(run):
    r = run({"name": "particle_filtering", "n": 8}, difficulty=0.6, num_steps=6, auroc=0.8)
    tree = r.tree
    trace = r.result.info["pf_trace"]
    for k in range(len(trace) - 1):
        active = {i for i in trace[k + 1]["nodes"] if tree[i]["status"] != "terminal"}
        seen: set[int] = set()
        for nid in active:
            while nid != 0 and nid not in seen:
                seen.add(nid)
                nid = tree[nid]["parent"]
        # after each step only the live particles' paths (and the prompt) are resident
        assert r.resident_at_event[k] == PROMPT_TOKENS + sum(
            len(tree[i]["token_ids"]) for i in seen)
        # every particle of step k+1 descends from a particle kept at step k
        for nid in trace[k + 1]["nodes"]:
            node = tree[nid]
            assert node["parent"] in trace[k]["nodes"] or nid in trace[k]["nodes"]
    assert r.gen.live_handles == 0


def test_systematic_resampling_is_within_one_of_the_expected_count():
    rng = random.Random(0)
    for _ in range(200):
        raw = [rng.random() ** 3 for _ in range(7)]
        w = [x / sum(raw) for x in raw]
        counts = Counter(systematic_resample(w, 16, rng))
        for i, wi in enumerate(w):
            assert math.floor(16 * wi) <= counts[i] <= math.ceil(16 * wi) + 1e-9


def test_multinomial_resampling_follows_the_weights():
    rng = random.Random(1)
    w = [0.1, 0.6, 0.3]
    counts = Counter(multinomial_resample(w, 30000, rng))
    for i, wi in enumerate(w):
        assert abs(counts[i] / 30000 - wi) < 0.015


def test_ess_is_n_for_uniform_and_one_for_degenerate_weights():
    assert ess([0.25] * 4) == pytest.approx(4.0)
    assert ess([1.0, 0.0, 0.0]) == pytest.approx(1.0)


def test_particle_gibbs_keeps_a_reference_and_runs_n_minus_one_fresh(run):
    r = run({"name": "particle_filtering", "n": 6, "gibbs_iterations": 3},
            difficulty=0.5, num_steps=5)
    tree = r.tree
    assert len(r.result.info["references"]) == 2
    assert len(tree[0]["children"]) == 6 + 5 + 5
    sweeps = {e["sweep"] for e in r.result.info["pf_trace"]}
    assert sweeps == {0, 1, 2}
    ref = r.result.info["references"][0]
    # in the second sweep, the reference's path node at step t is in every pool
    path = []
    nid = ref
    while nid != 0:
        path.append(nid)
        nid = tree[nid]["parent"]
    path.reverse()
    for entry in (e for e in r.result.info["pf_trace"] if e["sweep"] == 1):
        assert entry["nodes"][-1] == path[min(entry["step"], len(path)) - 1]
    assert r.gen.live_handles == 0 and r.gen.resident_tokens() == 0


@pytest.mark.parametrize("tau", [0.0, -1.0])
def test_non_positive_softmax_temperature_is_refused(tau):
    with pytest.raises(ValidationError, match="softmax_temperature must be > 0"):
        ParticleFilteringConfig(softmax_temperature=tau)


def test_bad_ess_threshold_is_refused():
    with pytest.raises(ValidationError, match=r"ess_threshold must be in \(0, 1\]"):
        ParticleFilteringConfig(ess_threshold=1.5)
