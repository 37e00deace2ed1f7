"""DeepConf: confidence maths, the in-engine window rule, the weighted filtered vote,
online early stop with killed traces charged, and the no-log-probs error."""

from __future__ import annotations

import types

import pytest

from ttc.engine.backends.simulated import SimulatedBackendConfig, SimulatedGenerator
from ttc.evals.tasks import make_problems
from ttc.stopping import WindowConfidence, token_confidence
from ttc.strategies.deepconf import (DeepConf, DeepConfConfig, consensus, group_confidences,
                                     keep_threshold, trace_score, weighted_vote)
from ttc.types import Candidate, ExpandRequest, FinishReason, Problem, SamplingParams
from ttc.verifiers.none import NoVerifier

PROBLEM = Problem(id="dc", question="Simulated DeepConf problem.", answer="321",
                  metadata={"difficulty": 0.8, "num_steps": 5})


def _sim(auroc: float = 0.8, seed: int = 0) -> SimulatedGenerator:
    return SimulatedGenerator(SimulatedBackendConfig(world_seed=seed, logprob_auroc=auroc))


def test_group_and_trace_scores_by_hand():
    conf = [5.0, 1.0, 3.0, 3.0, 8.0]
    assert group_confidences(conf, 2) == [3.0, 2.0, 3.0, 5.5]
    assert group_confidences(conf, 9) == [4.0]            # shorter than n: one window
    assert trace_score(conf, how="lowest_group", window=2) == 2.0
    assert trace_score(conf, how="bottom_10", window=2) == 2.0   # max(1, floor(0.4))
    assert trace_score(conf, how="tail", window=2, tail_tokens=2) == 5.5
    assert trace_score(conf, how="mean", window=2) == 4.0
    assert token_confidence([(1, -0.5), (2, -1.5)]) == 1.0
    with pytest.raises(ValueError, match="at least one"):
        trace_score([], how="mean", window=2)


def test_eta_is_the_percent_kept():
    scores = list(range(1, 101))
    assert keep_threshold(scores, 90) == pytest.approx(10.9)    # DeepConf-high keeps 90%
    assert sum(s >= keep_threshold(scores, 10) for s in scores) == 10
    with pytest.raises(ValueError):
        DeepConfConfig(eta=0)


def test_vote_is_weighted_by_confidence():
    # three low-confidence votes for 7, two confident ones for 9: a plain majority says 7
    cands = [Candidate(steps=("x",), answer="7", score=1.0) for _ in range(3)] + \
            [Candidate(steps=("y",), answer="9", score=2.0) for _ in range(2)]
    assert weighted_vote([c.answer for c in cands], [c.score for c in cands]) == \
        {"7": 3.0, "9": 4.0}
    ctx = types.SimpleNamespace(candidates=cands, info={})
    chosen = DeepConf(DeepConfConfig()).choose(ctx)
    assert chosen.answer == "9"
    assert consensus({"7": 3.0, "9": 4.0}) == pytest.approx(4 / 7)


def test_simulated_confidence_separates_right_from_wrong_traces():
    gen = _sim(auroc=0.9)
    root = gen.root(PROBLEM)
    out = gen.expand([ExpandRequest(prefix=root, n=200, params=SamplingParams(
        seed=1, max_tokens=2000, top_logprobs=5))])
    right, wrong = [], []
    for c in out.continuations[0]:
        score = trace_score([token_confidence(t) for t in c.top_logprobs],
                            how="lowest_group", window=16)
        (right if "\\boxed{321}" in c.text else wrong).append(score)
    assert right and wrong
    pairs = [(r > w) + 0.5 * (r == w) for r in right for w in wrong]
    assert sum(pairs) / len(pairs) > 0.75          # confidence carries the signal
    # with the signal off, the same draw is noise
    gen0 = SimulatedGenerator(SimulatedBackendConfig(world_seed=0))
    out0 = gen0.expand([ExpandRequest(prefix=gen0.root(PROBLEM), n=200, params=SamplingParams(
        seed=1, max_tokens=2000, top_logprobs=5))])
    r0, w0 = [], []
    for c in out0.continuations[0]:
        s = trace_score([token_confidence(t) for t in c.top_logprobs], how="mean",
                        window=16)
        (r0 if "\\boxed{321}" in c.text else w0).append(s)
    pairs0 = [(r > w) + 0.5 * (r == w) for r in r0 for w in w0]
    assert abs(sum(pairs0) / len(pairs0) - 0.5) < 0.1


def test_window_rule_stops_inside_decoding_at_the_first_low_window():
    gen = _sim()
    rule = WindowConfidence(window=8, threshold=4.0, top_k=5)
    out = gen.expand([ExpandRequest(prefix=gen.root(PROBLEM), n=20, params=SamplingParams(
        seed=2, max_tokens=2000, top_logprobs=5, stop_rules=(rule,)))])
    stopped = [c for c in out.continuations[0] if c.finish is FinishReason.RULE]
    assert stopped, "the threshold is high enough to stop some traces"
    for c in out.continuations[0]:
        conf = [token_confidence(t) for t in c.top_logprobs]
        windows = group_confidences(conf, 8) if len(conf) >= 8 else []
        first_low = next((i for i, m in enumerate(windows) if m < 4.0), None)
        if c.finish is FinishReason.RULE:
            # stopped at the first token whose window fell below: checked every token
            assert first_low == len(windows) - 1 and c.num_tokens == first_low + 8
            assert c.stop_reason.startswith("rule:window_confidence")
        else:
            assert first_low is None


def test_online_counts_killed_traces_and_stops_on_consensus():
    gen = _sim(auroc=0.8)
    cfg = DeepConfConfig(traces=48, warmup=8, wave=8, eta=10, window=16, top_k=5, tau=None)
    r = DeepConf(cfg).run(PROBLEM, generator=gen, verifier=NoVerifier())
    info = r.info["deepconf"]
    assert info["traces"] == 48 and info["stopped"] > 0 and info["stopped_tokens"] > 0
    traces = [n for n in r.tree["nodes"] if n["parent"] == 0]
    assert len(traces) == 48
    # every token of every trace, killed ones included, is in the ledger (and the engine ran them)
    assert r.ledger.generated_tokens == sum(len(n["token_ids"]) for n in traces)
    assert r.ledger.generated_tokens == gen.decode_tokens_run
    killed = [n for n in traces if n["finish"] == "rule"]
    assert len(killed) == info["stopped"]
    by_id = {n["id"]: n for n in traces}
    assert all(by_id[c.node_id]["finish"] != "rule" for c in r.candidates)   # killed: no vote
    assert len(r.candidates) >= 48 - 8 - info["stopped"]
    # consensus stop: with tau, an easy problem stops after the first online wave (the
    # consensus is never checked before it, as in the paper's loop)
    easy = Problem(id="easy", question="An easy simulated problem.", answer="42",
                   metadata={"difficulty": 0.1, "num_steps": 4})
    r2 = DeepConf(cfg.model_copy(update={"tau": 0.6})).run(
        easy, generator=_sim(auroc=0.8), verifier=NoVerifier())
    assert r2.info["deepconf"]["traces"] == 8 + 8 and r2.info["deepconf"]["beta"] >= 0.6


def test_offline_keeps_the_top_eta_percent():
    r = DeepConf(DeepConfConfig(mode="offline", traces=40, eta=25, window=16, top_k=5)).run(
        PROBLEM, generator=_sim(), verifier=NoVerifier())
    assert len(r.candidates) == 10
    assert r.ledger.generated_tokens > 0
    scores = sorted(c.score for c in r.candidates)
    assert scores[0] >= r.info["deepconf"]["keep_threshold"]


class _NoLogprobs:
    """An engine that neither returns top log-probs nor says it does (an HTTP server)."""

    def __init__(self, inner, claim: bool):
        self.inner = inner
        if claim:
            self.supports_token_rules = True

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def expand(self, requests, *, token_limit=None):
        out = self.inner.expand(requests, token_limit=token_limit)
        conts = tuple(tuple(c.__class__(handle=c.handle, token_ids=c.token_ids, text=c.text,
                                        logprobs=c.logprobs, finish=c.finish) for c in cs)
                      for cs in out.continuations)
        return out.__class__(continuations=conts, usage=out.usage)


@pytest.mark.parametrize("claim", [False, True])
def test_a_generator_without_logprobs_gets_one_clear_error(claim):
    gen = _NoLogprobs(_sim(), claim=claim)
    with pytest.raises(ValueError, match="strategy=deepconf needs per-token top log-probs"):
        DeepConf(DeepConfConfig(traces=4, warmup=2, window=4)).run(
            PROBLEM, generator=gen, verifier=NoVerifier())


def test_deepconf_beats_plain_voting_on_the_simulator_at_fewer_tokens():
    """The defining claim in miniature (the research script measures it over seeds)."""
    from ttc.strategies.self_consistency import SelfConsistency, SelfConsistencyConfig

    problems = make_problems(12, seed=5, difficulty=(0.5, 1.0))
    dc = DeepConf(DeepConfConfig(traces=32, warmup=8, eta=10, window=16, top_k=5,
                                 keep_tree=False))
    sc = SelfConsistency(SelfConsistencyConfig(n=32, keep_tree=False))
    dc_tok = sc_tok = 0
    for p in problems:
        dc_tok += dc.run(p, generator=_sim(), verifier=NoVerifier()).ledger.generated_tokens
        sc_tok += sc.run(p, generator=_sim(), verifier=NoVerifier()).ledger.generated_tokens
    assert dc_tok < 0.8 * sc_tok


# -- lengths that cannot work together are one clear error; defaults scale ----------------
def test_a_window_longer_than_a_trace_is_one_clear_error():
    from ttc.config import load_run_config
    from ttc.registry import ConfigError

    with pytest.raises(ConfigError, match=r"strategy.window \(2048\) exceeds "
                                          r"generation.max_tokens \(1024\).*window tokens"):
        load_run_config({"backend": {"name": "simulated"}, "verifier": {"name": "none"},
                         "strategy": {"name": "deepconf", "window": 2048}})


def test_a_warmup_that_cannot_fit_the_budget_is_one_clear_error():
    from ttc.config import load_run_config
    from ttc.registry import ConfigError

    with pytest.raises(ConfigError) as err:
        load_run_config({"backend": {"name": "simulated"}, "verifier": {"name": "none"},
                         "strategy": {"name": "deepconf", "warmup": 16}})
    msg = str(err.value)
    assert "\n" not in msg
    assert "strategy.warmup (16) x generation.max_tokens (1024) = 16384 exceeds " \
           "budget.max_generated_tokens (4096)" in msg


def test_default_window_and_warmup_scale_to_the_run():
    from ttc.strategies.deepconf import resolve_lengths

    cfg = DeepConfConfig()
    assert resolve_lengths(cfg, max_tokens=1024, budget_tokens=4096) == (64, 2)
    assert resolve_lengths(cfg, max_tokens=1024, budget_tokens=None) == (64, 16)
    assert resolve_lengths(cfg, max_tokens=32768, budget_tokens=None) == (2048, 16)
    assert resolve_lengths(cfg, max_tokens=128, budget_tokens=100_000) == (16, 16)
    # the paper's sampling is the default
    assert (cfg.temperature, cfg.top_p, cfg.traces, cfg.warmup) == (0.6, 0.95, 256, None)


def test_a_budget_too_small_for_the_scaled_warmup_is_one_clear_error():
    from ttc.config import load_run_config
    from ttc.registry import ConfigError

    with pytest.raises(ConfigError, match=r"budget.max_generated_tokens \(1000\) cannot hold "
                                          r"the smallest DeepConf warm-up: 2 traces x "
                                          r"generation.max_tokens \(1024\) = 2048"):
        load_run_config({"backend": {"name": "simulated"}, "verifier": {"name": "none"},
                         "strategy": {"name": "deepconf"},
                         "budget": {"max_generated_tokens": 1000}})
