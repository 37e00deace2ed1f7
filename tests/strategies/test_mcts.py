"""MCTS: PUCT and UCT selection, root Dirichlet noise, rollout values, visit bookkeeping,
virtual loss, budgets."""

from __future__ import annotations

import math
import random

import pytest

from fakes import problems, world
from ttc.ledger import Budget
from pydantic import ValidationError

from ttc.strategies.mcts import (MCTS, MCTSConfig, dirichlet_noise, priors_from_logprobs,
                                 puct_score, uct_score)
from ttc.tree import NodeStatus


def test_puct_matches_hand_computation():
    c = math.log((9 + 19652 + 1) / 19652) + 1.25
    want = 0.4 + c * 0.25 * 3.0 / (1 + 2)
    got = puct_score(q=0.4, prior=0.25, parent_visits=9, child_visits=2,
                     c_base=19652, c_init=1.25)
    assert got == pytest.approx(want)
    assert priors_from_logprobs([0.0, 0.0]) == [0.5, 0.5]
    assert priors_from_logprobs([-1.0, 0.0])[1] > 0.5


class RecordingMCTS(MCTS):
    """Checks every selection against PUCT computed here from the node statistics."""

    def select_child(self, parent, ctx, virtual):
        chosen = super().select_child(parent, ctx, virtual)
        cfg = self.config
        n_parent = parent.visits + virtual.get(parent.id, 0.0)
        best = -math.inf
        for cid in parent.children:
            ch = ctx.tree[cid]
            if ch.status is NodeStatus.PRUNED:
                continue
            n = ch.visits + virtual.get(cid, 0.0)
            q = ch.value / n if n else (ch.score or 0.0)
            c = math.log((n_parent + cfg.c_base + 1) / cfg.c_base) + cfg.c_init
            s = q + c * ch.extra["prior"] * math.sqrt(n_parent) / (1 + n)
            best = max(best, s)
            if cid == chosen.id:
                chosen_s = s
        assert chosen_s == pytest.approx(best)
        self.selections += 1
        return chosen


@pytest.mark.parametrize("batch", [1, 4])
def test_visit_counts_follow_puct(batch):
    for p in problems(4, seed=9):
        gen, prm = world()
        strat = RecordingMCTS(MCTSConfig(n_simulations=24, k=3, batch=batch,
                                         certaindex_entropy=None, certaindex_reward=None))
        strat.selections = 0
        res = strat.run(p, generator=gen, verifier=prm)
        assert strat.selections > 0
        nodes = {n["id"]: n for n in res.tree["nodes"]}
        assert nodes[0]["visits"] == res.info["simulations"] == 24
        for n in nodes.values():
            kids = [nodes[c] for c in n["children"] if nodes[c]["status"] != "pruned"]
            if kids and n["status"] != NodeStatus.TERMINAL.value:
                # one visit when the node itself was the expanded leaf, the rest via children
                assert n["visits"] == 1 + sum(k["visits"] for k in kids)
        assert gen.live_handles == 0


def test_perfect_prm_concentrates_visits_on_a_correct_child():
    hits = 0
    trials = 0
    for p in problems(8, seed=10, difficulty=0.6):
        gen, prm = world(auroc=1.0)
        res = MCTS(MCTSConfig(n_simulations=24, k=3, batch=1)).run(p, generator=gen,
                                                                  verifier=prm)
        nodes = {n["id"]: n for n in res.tree["nodes"]}
        kids = [nodes[c] for c in nodes[0]["children"]]
        if not any(k["score"] == 1.0 for k in kids) or all(k["score"] == 1.0 for k in kids):
            continue
        trials += 1
        top = max(kids, key=lambda k: k["visits"])
        hits += top["score"] == 1.0
    assert trials > 0 and hits == trials


def test_virtual_loss_spreads_a_batch_over_distinct_leaves():
    gen, prm = world()
    res = MCTS(MCTSConfig(n_simulations=12, k=3, batch=3)).run(
        problems(1, seed=11)[0], generator=gen, verifier=prm)
    nodes = {n["id"]: n for n in res.tree["nodes"]}
    expanded = [n for n in nodes.values() if n["children"]]
    # batched rounds: fewer engine calls than simulations, yet one expansion per leaf
    assert res.ledger.lm_calls < 12
    assert len(expanded) >= res.ledger.lm_calls


@pytest.mark.parametrize("limit", [40, 400])
def test_budget_is_exact(limit):
    gen, prm = world()
    res = MCTS(MCTSConfig()).run(problems(1, seed=12)[0], generator=gen, verifier=prm,
                                 budget=Budget(max_generated_tokens=limit))
    assert res.ledger.generated_tokens <= limit
    assert gen.live_handles == 0


def test_uct_matches_hand_computation():
    assert uct_score(q=0.4, parent_visits=9, child_visits=2, c_uct=2.0) == pytest.approx(
        0.4 + 2.0 * math.sqrt(math.log(9) / 2))
    assert uct_score(q=0.0, parent_visits=5, child_visits=0, c_uct=2.0) == math.inf


class RecordingUCT(MCTS):
    """Checks every selection against UCT computed here (unvisited first, by PRM score)."""

    def select_child(self, parent, ctx, virtual):
        chosen = super().select_child(parent, ctx, virtual)
        n_parent = parent.visits + virtual.get(parent.id, 0.0)
        keys = {}
        for cid in parent.children:
            ch = ctx.tree[cid]
            if ch.status is NodeStatus.PRUNED or ch.extra.get("rollout"):
                continue
            n = ch.visits + virtual.get(cid, 0.0)
            q = ch.value / n if n else (ch.score or 0.0)
            u = math.inf if n == 0 else q + 2.0 * math.sqrt(math.log(max(n_parent, 1)) / n)
            keys[cid] = (u, q)
        assert keys[chosen.id] == max(keys.values())
        self.selections += 1
        return chosen


def test_uct_selection_and_every_child_visited_before_any_twice():
    for p in problems(3, seed=9):
        gen, prm = world()
        strat = RecordingUCT(MCTSConfig(n_simulations=24, k=3, batch=1, tree_policy="uct"))
        strat.selections = 0
        res = strat.run(p, generator=gen, verifier=prm)
        assert strat.selections > 0
        nodes = {n["id"]: n for n in res.tree["nodes"]}
        root_kids = [nodes[c]["visits"] for c in nodes[0]["children"]
                     if nodes[c]["status"] != "pruned"]
        assert min(root_kids) >= 1              # UCT tries every root child
        assert gen.live_handles == 0


def test_dirichlet_noise_mixes_only_the_root_priors():
    """Root priors are (1 - e) softmax + e eta with eta ~ Dir(alpha); deeper ones are not.
    Mutation check: without the noise (priors left clean) the first assertion fails."""
    gen, prm = world()
    p = problems(1, seed=31)[0]
    res = MCTS(MCTSConfig(n_simulations=12, k=4, dirichlet_weight=0.25)).run(
        p, generator=gen, verifier=prm)
    nodes = {n["id"]: n for n in res.tree["nodes"]}
    root_kids = [nodes[c]["extra"] for c in nodes[0]["children"] if "prior" in nodes[c]["extra"]]
    eta = [x["noise"] for x in root_kids]
    assert sum(eta) == pytest.approx(1.0) and all(e >= 0 for e in eta)
    for x in root_kids:
        assert x["prior"] == pytest.approx(0.75 * x["prior_clean"] + 0.25 * x["noise"])
        assert x["prior"] != pytest.approx(x["prior_clean"])
    deeper = [n for n in nodes.values() if n["depth"] >= 2 and "prior" in n["extra"]]
    assert deeper and all("noise" not in n["extra"] for n in deeper)
    clean = MCTS(MCTSConfig(n_simulations=12, k=4)).run(p, generator=world()[0],
                                                        verifier=world()[1])
    cnodes = {n["id"]: n for n in clean.tree["nodes"]}
    assert all("noise" not in cnodes[c]["extra"] for c in cnodes[0]["children"])
    # a small alpha concentrates the noise on few children; a large one spreads it
    rng = random.Random(0)
    assert max(dirichlet_noise(0.05, 8, rng)) > max(dirichlet_noise(50.0, 8, rng))


def test_root_noise_is_refused_with_uct():
    with pytest.raises(ValidationError, match="dirichlet_weight"):
        MCTSConfig(tree_policy="uct", dirichlet_weight=0.25)


def test_rollout_value_backs_up_the_rollout_score_not_the_prm_score():
    """value="rollout": after expanding a leaf, its best child is completed greedily,
    scored, offered, and that score (not the child's PRM score) is backed up along
    root .. child. A child that was rolled out and never expanded has exactly one
    visit whose value is its rollout's score.
    Mutation check: backing up the child's PRM score instead makes the value assertion
    fail (scores differ with a noisy PRM: the ``differs`` count below)."""
    checked = differs = 0
    for p in problems(3, seed=32):
        gen, prm = world(auroc=0.8)
        res = MCTS(MCTSConfig(n_simulations=12, k=3, value="rollout")).run(
            p, generator=gen, verifier=prm)
        nodes = {n["id"]: n for n in res.tree["nodes"]}
        rollouts = [n for n in nodes.values() if n["extra"].get("rollout")]
        assert rollouts
        offered = {c.node_id for c in res.candidates}
        for r in rollouts:
            assert r["visits"] == 0 and not r["children"]     # never selected into
            assert r["id"] in offered and r["status"] == "terminal"
            child = nodes[r["parent"]]
            selectable = [c for c in child["children"] if not nodes[c]["extra"].get("rollout")]
            if not selectable:
                checked += 1
                assert child["visits"] == 1
                assert child["value"] == pytest.approx(r["score"])
                differs += child["score"] != pytest.approx(r["score"])
        # the root's visits are the simulations (each backs up through a root child)
        assert nodes[0]["visits"] == sum(nodes[c]["visits"] for c in nodes[0]["children"])
        assert gen.live_handles == 0
    assert checked >= 3 and differs >= 1
