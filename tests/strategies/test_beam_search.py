"""Beam search keeps N/M beams, expands each M times per step, and frees what it prunes."""

import pytest
from pydantic import ValidationError

from strategy_helpers import PROMPT_TOKENS as TEMPLATE_TOKENS

PROMPT_TOKENS = TEMPLATE_TOKENS + 2    # the template, then the question's 2 words
from ttc.config import load_run_config
from ttc.registry import ConfigError
from ttc.strategies.beam_search import BeamSearchConfig


def _path_tokens(tree: dict, ids) -> int:
    seen: set[int] = set()
    for nid in ids:
        while nid is not None and nid != 0 and nid not in seen:
            seen.add(nid)
            nid = tree[nid]["parent"]
    return sum(len(tree[i]["token_ids"]) for i in seen)


@pytest.mark.parametrize("n, width", [(8, 4), (12, 3), (4, 4)])
def test_keeps_n_over_m_parents_and_expands_each_m_times(run, n, width):
    r = run({"name": "beam", "n": n, "width": width}, difficulty=0.3, num_steps=6)
    exps = r.result.info["expansions"]
    assert exps[0] == {"parents": [0], "children": [n]}
    assert len(exps) == 6                    # every beam answers at step 6
    for e in exps[1:]:
        assert len(e["parents"]) == n // width
        assert e["children"] == [width] * (n // width)
    # one engine call per step, N verifier calls per step
    assert r.result.ledger.lm_calls == len(exps)
    assert r.result.ledger.verifier_calls == n * len(exps)


def test_kept_beams_are_the_top_scored_children(run):
    r = run({"name": "beam", "n": 8, "width": 4}, difficulty=0.6, num_steps=6, auroc=0.8)
    tree = r.tree
    exps = r.result.info["expansions"]
    for prev, nxt in zip(exps, exps[1:]):
        children = [c for p in prev["parents"] for c in tree[p]["children"]]
        kept = set(nxt["parents"])
        assert kept <= set(children)
        dropped = [c for c in children if c not in kept]
        assert min(tree[k]["score"] for k in kept) >= max(tree[d]["score"] for d in dropped)
        assert all(tree[d]["status"] == "pruned" for d in dropped)


def test_pruned_beams_are_freed_at_once(run):
    r = run({"name": "beam", "n": 8, "width": 4}, difficulty=0.5, num_steps=6)
    tree = r.tree
    exps = r.result.info["expansions"]
    for step, nxt in enumerate(exps[1:]):
        # after step `step`, only the kept beams' paths (and the prompt) are resident
        assert r.resident_at_event[step] == PROMPT_TOKENS + _path_tokens(tree, nxt["parents"])
    assert r.gen.resident_tokens() == 0 and r.gen.live_handles == 0


def test_completed_beams_are_candidates_and_last_step_runs_to_the_end(run):
    r = run({"name": "beam", "n": 8, "width": 4, "num_iterations": 2}, num_steps=6)
    # the second (last) iteration generates whole solutions, so every child completes
    assert len(r.result.candidates) == 8
    assert all(c.answer is not None for c in r.result.candidates)


def test_lookahead_scores_a_step_by_its_greedy_rollout(run):
    plain = run({"name": "beam", "n": 8, "width": 4}, difficulty=0.5, num_steps=6)
    look = run({"name": "beam", "n": 8, "width": 4, "lookahead": 2}, difficulty=0.5,
               num_steps=6)
    tree = look.tree
    rollouts = [n for n in tree.values() if n["extra"].get("lookahead")]
    assert rollouts and all(n["status"] in ("pruned", "terminal") for n in rollouts)
    scored = [n for n in tree.values() if "lookahead_score" in n["extra"]]
    assert scored
    for node in scored:
        assert node["score"] == node["extra"]["lookahead_score"]
        assert node["extra"]["step_scores"][-1] == node["score"]
        assert not node["extra"].get("lookahead")
    assert look.result.ledger.generated_tokens > 1.5 * plain.result.ledger.generated_tokens
    assert look.gen.live_handles == 0


def test_n_not_a_multiple_of_width_is_refused():
    with pytest.raises(ValidationError, match=r"n \(N=6\) must be a multiple of width \(M=4\)"):
        BeamSearchConfig(n=6, width=4)
    with pytest.raises(ConfigError, match="multiple of width"):
        load_run_config({"backend": "simulated", "verifier": "simulated",
                         "strategy": {"name": "beam", "n": 10, "width": 4}})


@pytest.mark.parametrize("tokens", [32, 200])
def test_fragments_cut_by_the_budget_are_not_scored(run, tokens):
    from ttc.ledger import Budget

    r = run({"name": "beam", "n": 8, "width": 4}, budget=Budget(max_generated_tokens=tokens))
    nodes = r.tree.values()
    cut = [n for n in nodes if n["finish"] == "budget"]
    assert cut, "the budget should cut the first expansion"
    assert all(n["score"] is None for n in cut)
    scored = [n for n in nodes if n["score"] is not None]
    assert r.result.ledger.verifier_calls == len(scored)   # one call per scored child only
