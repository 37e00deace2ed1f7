"""First Finish Search returns the first (shortest) trajectory to finish, with no verifier."""

import pytest


def _path_tokens(tree: dict, nid: int) -> int:
    total = 0
    while nid != 0:
        total += len(tree[nid]["token_ids"])
        nid = tree[nid]["parent"]
    return total


@pytest.mark.parametrize("pid", ["a", "b", "c", "d"])
def test_returns_the_first_finished_trajectory(run, pid):
    r = run({"name": "first_finish", "n": 8}, difficulty=0.5, num_steps=5, pid=pid)
    tree = r.tree
    assert len(r.result.candidates) == 1
    winner = r.result.candidates[0]
    assert tree[winner.node_id]["status"] == "terminal"
    assert r.result.answer == winner.answer and winner.answer is not None
    won = _path_tokens(tree, winner.node_id)
    assert won == winner.num_tokens == r.result.info["first_finish_tokens"]
    leaves = [n["id"] for n in tree.values() if n["id"] != 0 and not n["children"]]
    assert len(leaves) == 8
    # no other sample finished sooner, and none still running could finish sooner
    assert all(won <= _path_tokens(tree, leaf) for leaf in leaves)
    assert r.result.ledger.verifier_calls == 0
    assert r.gen.live_handles == 0


def test_stops_the_others_as_soon_as_one_finishes(run):
    # problems with different lengths per sample do not exist in the simulator, so stop
    # is checked by cost: no sample is decoded past the step where the winner ended
    r = run({"name": "first_finish", "n": 6}, difficulty=0.3, num_steps=4)
    tree = r.tree
    depth = max(n["depth"] for n in tree.values())
    assert depth == 4
    assert r.result.ledger.lm_calls == depth
