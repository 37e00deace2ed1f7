"""A*-decoding: cost order, goal test on pop, budgets, KV release."""

from __future__ import annotations

import pytest

from fakes import problems, world
from ttc.ledger import Budget
from ttc.strategies.astar import AStarConfig, AStarDecoding, path_cost, priority
from ttc.tree import NodeStatus
from ttc.types import EventKind


def test_priority_is_mean_path_cost_plus_last_step_cost():
    assert path_cost([]) == 0.0
    assert priority([0.8, 0.6]) == pytest.approx((0.2 + 0.4) / 2 + 0.4)
    assert priority([1.0]) == 0.0
    assert priority([]) == 1.0


@pytest.mark.parametrize("batch", [1, 3])
def test_expands_in_cost_order(batch):
    for p in problems(6, seed=4):
        gen, prm = world()
        res = AStarDecoding(AStarConfig(k=3, batch=batch)).run(p, generator=gen, verifier=prm)
        pops = res.info["pops"]
        assert pops, "A* popped nothing"
        for rnd in pops:
            assert len(rnd["f"]) <= batch
            if rnd["min_left"] is not None:
                # every popped node was at least as cheap as anything left in the queue
                assert max(rnd["f"]) <= rnd["min_left"] + 1e-12
        tree = {n["id"]: n for n in res.tree["nodes"]}
        for node in tree.values():
            scores = node["extra"].get("step_scores")
            if scores and node["value"]:
                assert node["value"] == pytest.approx(priority(scores))


def test_stops_at_first_complete_solution_under_its_bound():
    for p in problems(6, seed=5):
        gen, prm = world()
        res = AStarDecoding(AStarConfig(k=4, n_solutions=1)).run(p, generator=gen, verifier=prm)
        assert res.info["solutions"] == 1
        assert len(res.candidates) == 1
        last = res.info["pops"][-1]
        f_goal = last["f"][-1]
        assert res.candidates[0].score == pytest.approx(1.0 - f_goal / 2.0)
        if last["min_left"] is not None:
            assert f_goal <= last["min_left"]          # nothing cheaper was left open
        tree = {n["id"]: n for n in res.tree["nodes"]}
        assert tree[res.candidates[0].node_id]["status"] == NodeStatus.TERMINAL.value
        assert gen.live_handles == 0 and gen.resident_tokens() == 0


@pytest.mark.parametrize("limit", [50, 300, 900])
def test_budget_is_exact(limit):
    gen, prm = world()
    res = AStarDecoding(AStarConfig(k=4, batch=2)).run(
        problems(1, seed=7)[0], generator=gen, verifier=prm,
        budget=Budget(max_generated_tokens=limit))
    assert res.ledger.generated_tokens <= limit
    assert gen.live_handles == 0


def test_full_queue_drops_and_releases_the_worst():
    gen, prm = world(auroc=0.7)
    res = AStarDecoding(AStarConfig(k=4, batch=2, queue_size=3, n_solutions=2)).run(
        problems(1, seed=8, difficulty=0.9)[0], generator=gen, verifier=prm)
    pruned = [n for n in res.tree["nodes"] if n["status"] == NodeStatus.PRUNED.value]
    assert pruned
    assert gen.live_handles == 0


def test_nodes_popped_past_max_expansions_are_released():
    # batch 4, one expansion left after the root: three of the popped nodes are dropped
    gen, prm = world()
    live_vs_queue: list[tuple[int, int]] = []
    res = AStarDecoding(AStarConfig(k=4, batch=4, max_expansions=2)).run(
        problems(1, seed=3, difficulty=0.9)[0], generator=gen, verifier=prm,
        progress=lambda ev: ev.kind is EventKind.STEP    # A*'s own reports, not tree events
        and live_vs_queue.append((gen.live_handles, ev.live)))
    assert res.info["expansions"] == 2 and len(res.info["pops"][-1]["f"]) == 4
    # every pinned handle is a queued node: nothing dropped is still held
    assert live_vs_queue and all(live == queued for live, queued in live_vs_queue)
    tree = {n["id"]: n for n in res.tree["nodes"]}
    dropped = [n for n in tree.values() if n["depth"] == 1 and not n["children"]]
    assert len(dropped) == 3
    assert all(n["status"] == NodeStatus.PRUNED.value for n in dropped)
