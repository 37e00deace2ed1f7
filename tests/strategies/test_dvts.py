"""DVTS: N/M independent subtrees sharing only the prompt, one expand call per step."""

import pytest
from pydantic import ValidationError

from fakes import ScriptedGenerator
from strategy_helpers import PROMPT_TOKENS as TEMPLATE_TOKENS

PROMPT_TOKENS = TEMPLATE_TOKENS + 2    # the template, then the question's 2 words
from ttc.strategies.dvts import DVTSConfig


def test_subtrees_share_no_node_below_the_root(run):
    r = run({"name": "dvts", "n": 16, "width": 4}, difficulty=0.5, num_steps=5)
    tree = r.tree
    first = tree[0]["children"]
    assert len(first) == 16
    by_tree: dict[int, list[int]] = {}
    for c in first:
        by_tree.setdefault(tree[c]["extra"]["subtree"], []).append(c)
    assert sorted(by_tree) == [0, 1, 2, 3] and all(len(v) == 4 for v in by_tree.values())
    for node in tree.values():
        if node["parent"] not in (None, 0):
            assert node["extra"]["subtree"] == tree[node["parent"]]["extra"]["subtree"]
    # each subtree expands exactly one node per depth: the best of its M candidates
    for node in tree.values():
        if node["id"] != 0 and node["children"]:
            siblings = tree[node["parent"]]["children"]
            assert len(siblings) == 4 if node["parent"] != 0 else True
            group = [s for s in siblings
                     if tree[s]["extra"]["subtree"] == node["extra"]["subtree"]]
            assert node["score"] == max(tree[s]["score"] for s in group)
            assert sum(1 for s in group if tree[s]["children"]) == 1


def test_one_expand_and_one_scoring_per_step_and_losers_freed(run):
    r = run({"name": "dvts", "n": 8, "width": 4}, difficulty=0.4, num_steps=5)
    tree = r.tree
    steps = max(n["depth"] for n in tree.values())
    assert steps == 5
    assert r.result.ledger.lm_calls == steps
    assert r.result.ledger.verifier_calls == 8 * steps
    for i in range(steps - 1):
        current = [n["id"] for n in tree.values() if n["depth"] == i + 1 and n["children"]]
        assert len(current) == 2
        path_tokens = 0
        for nid in current:
            while nid != 0:
                path_tokens += len(tree[nid]["token_ids"])
                nid = tree[nid]["parent"]
        # subtrees are disjoint below the root, so their paths add up
        assert r.resident_at_event[i] == PROMPT_TOKENS + path_tokens
    assert r.gen.live_handles == 0 and r.gen.resident_tokens() == 0


def test_each_subtree_offers_its_last_candidates(run):
    r = run({"name": "dvts", "n": 8, "width": 4}, difficulty=0.2, num_steps=4)
    assert len(r.result.candidates) == 8
    assert all(c.answer is not None for c in r.result.candidates)


def test_n_not_a_multiple_of_width_is_refused():
    with pytest.raises(ValidationError, match=r"must be a multiple of width \(M=4\)"):
        DVTSConfig(n=10, width=4)


def _first_subtree_ends_early(call, request, sample):
    """Step 1: the first subtree's children end with an answer, the other's take a step;
    later steps all end."""
    from ttc.types import FinishReason

    if call == 0 and request > 0:
        return "Add the two numbers.\n\n", FinishReason.STOP
    return "\\boxed{4}", FinishReason.EOS


class _Constant:
    incremental = False

    def score(self, problem, trajectories):
        from ttc.types import ScoreOutput, VerifierUsage

        return ScoreOutput(scores=tuple((0.5,) * len(t) for t in trajectories),
                           usage=VerifierUsage(calls=len(trajectories)))


@pytest.mark.parametrize("reassign, second_step", [(False, [4]), (True, [8])])
def test_a_finished_subtrees_width_goes_to_the_live_ones_only_when_asked(reassign, second_step):
    from ttc.registry import STRATEGIES
    from ttc.types import Problem

    gen = ScriptedGenerator(_first_subtree_ends_early)
    strategy = STRATEGIES.build({"name": "dvts", "n": 8, "width": 4,
                                 "reassign_width": reassign})
    result = strategy.run(Problem(question="What is 2 + 2?"), generator=gen,
                          verifier=_Constant(), budget=None)
    assert gen.asked == [[4, 4], second_step]
    # subtree 0 offers its 4 finished children, subtree 1 all it sampled at the end
    assert len(result.candidates) == 4 + second_step[0]
    assert result.answer == "4"
