"""Particle filtering: softmax weights, ESS-triggered resampling, both schemes, Gibbs."""

import math
import random
from collections import Counter

import pytest
from pydantic import ValidationError

from strategy_helpers import PROMPT_TOKENS as TEMPLATE_TOKENS

PROMPT_TOKENS = TEMPLATE_TOKENS + 2    # the template, then the question's 2 words
from ttc.strategies.common import (ess, logit, multinomial_resample, softmax,
                                   systematic_resample)
from ttc.strategies.particle_filtering import ParticleFilteringConfig, swap_probability


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


def _sources_of_resampled(run_cls, seed_pids=range(6)) -> list[tuple[float, float]]:
    """For every resampling with a perfect PRM: (best score in the pool, score of each
    particle chosen), read from the tree: a particle of step k+1 came from itself (a
    finished one) or from its parent in step k's pool."""
    picks = []
    for pid in seed_pids:
        r = run_cls({"name": "particle_filtering", "n": 8}, difficulty=0.6, num_steps=6,
                    auroc=1.0, pid=f"w{pid}")
        tree = r.tree
        trace = r.result.info["pf_trace"]
        for cur, nxt in zip(trace, trace[1:]):
            pool = set(cur["nodes"])
            top = max(tree[i]["score"] for i in pool)
            for nid in nxt["nodes"]:
                src = nid if nid in pool else tree[nid]["parent"]
                assert src in pool
                picks.append((top, tree[src]["score"]))
    return picks


def test_resampling_keeps_only_the_weighted_particles(run):
    """PF's resampling follows the weights: with a perfect PRM (scores 0 or 1, clipped
    logits +-13.8) a wrong particle is never drawn while a right one is in the pool.

    Mutation check: with ``ttc.strategies.particle_filtering.resample`` monkeypatched to
    ignore the weights (uniform indices) this fails; ``test_weight_ignoring_mutation_is_
    caught`` applies that mutation on every run (and monkeypatch restores it).
    """
    picks = _sources_of_resampled(run)
    mixed = [(top, s) for top, s in picks if top == 1.0]
    assert len(mixed) >= 8                      # pools held right particles: not vacuous
    assert all(s == 1.0 for _, s in mixed)


def test_weight_ignoring_mutation_is_caught(run, monkeypatch):
    import ttc.strategies.particle_filtering as pf_module

    monkeypatch.setattr(pf_module, "resample", lambda weights, n, rng, *, scheme: [
        rng.randrange(len(weights)) for _ in range(n)])
    picks = _sources_of_resampled(run)
    assert any(top == 1.0 and s == 0.0 for top, s in picks)


def test_swap_probability_matches_hand_computation():
    # cold tau 1, hot tau 2: beta difference 0.5; hot loglik 1 below the cold one
    assert swap_probability(tau_cold=1.0, tau_hot=2.0, loglik_cold=2.0,
                            loglik_hot=1.0) == pytest.approx(math.exp(-0.5))
    # a better hot particle always moves to the colder chain
    assert swap_probability(tau_cold=1.0, tau_hot=4.0, loglik_cold=-1.0,
                            loglik_hot=0.5) == 1.0


def test_parallel_tempering_swaps_by_metropolis_and_answers_from_the_cold_chain(run):
    """Chains at tau = 1, 2, 4: each neighbour pair proposes one swap per step, accepted
    with min(1, exp((1/tau_k - 1/tau_k+1)(l_hot - l_cold))); an accepted swap puts the
    hot particle into the colder chain's next pool; the answer is the cold chain's."""
    accepted_up = 0
    for pid in range(4):
        r = run({"name": "particle_filtering", "n": 6, "tempering_ladder": [2.0, 4.0]},
                difficulty=0.6, num_steps=6, auroc=0.8, pid=f"pt{pid}")
        info = r.result.info
        temps = (1.0, 2.0, 4.0)
        pools = {(e["chain"], e["step"]): e for e in info["pf_trace"]}
        steps = {e["step"] for e in info["pf_trace"]}
        assert {e["chain"] for e in info["pf_trace"]} == {0, 1, 2}
        moved: dict[tuple[int, int], int] = {}      # (step, node) -> chain after swaps
        tree = r.tree
        for s in info["pt_swaps"]:
            k, k1 = s["chains"]
            lc, lh = s["loglik"]
            assert [lc, lh] == pytest.approx([logit(tree[i]["score"]) for i in s["nodes"]])
            want = min(1.0, math.exp((1 / temps[k] - 1 / temps[k1]) * (lh - lc)))
            assert s["prob"] == pytest.approx(want)
            assert s["accepted"] == (s["u"] < s["prob"])
            if s["accepted"]:
                cold, hot = s["nodes"]
                moved[(s["step"], hot)] = k
                moved[(s["step"], cold)] = k1
                accepted_up += lh > lc
        for (step, node), chain in moved.items():
            # the chain a particle was swapped into weighs it (and may resample it)
            pool = pools[(chain, step)]
            assert node in pool["nodes"] and pool["temperature"] == temps[chain]
        # one proposal per neighbour pair per resampling step
        assert len(info["pt_swaps"]) == 2 * len(steps)
        # the answer comes from the cold chain's final particles
        assert {c.node_id for c in r.result.candidates} <= set(info["particles"])
        assert r.gen.live_handles == 0 and r.gen.resident_tokens() == 0
    assert accepted_up >= 1                    # better hot particles did move down


def test_bad_tempering_ladders_are_refused():
    with pytest.raises(ValidationError, match="tempering_ladder must rise"):
        ParticleFilteringConfig(tempering_ladder=(2.0, 1.5))
    with pytest.raises(ValidationError, match="tempering_ladder must rise"):
        ParticleFilteringConfig(softmax_temperature=2.0, tempering_ladder=(1.0,))
    with pytest.raises(ValidationError, match="gibbs_iterations 1"):
        ParticleFilteringConfig(tempering_ladder=(2.0,), gibbs_iterations=2)
