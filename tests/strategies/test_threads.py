"""Parallel threads: spawn from a shared plan, prune at checkpoints, free KV, join."""

from __future__ import annotations

import pytest

from sim_helpers_ii import problems, world
from ttc.ledger import Budget
from ttc.strategies.threads import Threads, ThreadsConfig, join_prompt
from ttc.tree import NodeStatus


def test_threads_prune_and_free_kv():
    for p in problems(4, seed=20):
        gen, prm = world()
        res = Threads(ThreadsConfig(n_threads=8, keep=2, prune=0.5)).run(
            p, generator=gen, verifier=prm)
        log = res.info["kv_bytes"]
        assert log, "no checkpoint pruned anything"
        for cp in log:
            assert cp["after"] < cp["before"]            # resident KV fell at the prune
        lives = [cp["live"] for cp in log]
        assert lives[0] == 4 and all(b == max(2, -(-a // 2)) for a, b in zip(lives, lives[1:]))
        nodes = res.tree["nodes"]
        assert sum(n["status"] == NodeStatus.PRUNED.value for n in nodes) >= 8 - lives[0]
        # all threads fork from one plan node (the shared prefix)
        plan = [n for n in nodes if n["parent"] == 0 and n["text"]]
        assert len(plan) == 1 and len(plan[0]["children"]) == 8
        assert gen.live_handles == 0 and gen.resident_tokens() == 0


def test_join_writes_a_final_answer_from_the_survivors():
    gen, prm = world()
    p = problems(1, seed=21)[0]
    res = Threads(ThreadsConfig(n_threads=4, keep=2)).run(p, generator=gen, verifier=prm)
    joins = [n for n in res.tree["nodes"] if "join_prompt" in n["extra"]]
    assert len(joins) == 1
    assert "[Thread 1]" in joins[0]["extra"]["join_prompt"]
    assert len(res.candidates) <= 3                      # <= keep survivors + joined answer
    assert res.info["joined_answer"] is not None
    assert res.ledger.prefill_tokens > 120               # the joined prompt was prefilled
    off = Threads(ThreadsConfig(n_threads=4, keep=2, join=False)).run(
        p, generator=world()[0], verifier=world()[1])
    assert "joined_answer" not in off.info
    assert "Thread 2" in join_prompt("q?", "plan", ["a", "b"])


@pytest.mark.parametrize("limit", [25, 300, 1200])
def test_budget_is_exact(limit):
    gen, prm = world()
    res = Threads(ThreadsConfig()).run(problems(1, seed=22)[0], generator=gen, verifier=prm,
                                       budget=Budget(max_generated_tokens=limit))
    assert res.ledger.generated_tokens <= limit
    assert gen.live_handles == 0


def test_keep_larger_than_threads_is_refused():
    with pytest.raises(ValueError, match="keep"):
        ThreadsConfig(n_threads=2, keep=3)
