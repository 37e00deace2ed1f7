import json

import networkx as nx
import pytest

from ttc.tree import NodeStatus, SearchTree


def make_tree() -> SearchTree:
    tree = SearchTree(prompt="Q")
    a = tree.add(0, text="Step 1\n\n", token_ids=(1, 2), logprob=-0.5)
    b = tree.add(0, text="Step 1'\n\n", token_ids=(3,))
    c = tree.add(a, text="\\boxed{4}", token_ids=(4, 5, 6))
    a.score, b.score, c.score = 0.8, 0.3, 0.9
    b.status = NodeStatus.PRUNED
    c.status = NodeStatus.TERMINAL
    c.answer = "4"
    c.extra["step_scores"] = [0.8, 0.9]
    return tree


def test_paths_and_distinct_tokens():
    tree = make_tree()
    assert tree.steps(3) == ["Step 1\n\n", "\\boxed{4}"]
    assert tree.step_scores(3) == [0.8, 0.9]
    assert tree[3].depth == 2
    assert tree.root.status is NodeStatus.EXPANDED
    # union of paths: nodes 1, 2, 3 -> 2 + 1 + 3 tokens
    assert tree.distinct_tokens([3, 2]) == 6
    assert tree.distinct_tokens([3]) == 5


def test_round_trips_through_json_and_networkx():
    tree = make_tree()
    data = json.loads(json.dumps(tree.to_json()))
    back = SearchTree.from_json(data)
    assert back.to_json() == tree.to_json()
    graph = tree.to_networkx()
    assert isinstance(graph, nx.DiGraph)
    assert sorted(graph.edges) == [(0, 1), (0, 2), (1, 3)]
    assert graph.nodes[3]["score"] == 0.9
    assert SearchTree.from_networkx(graph).to_json() == tree.to_json()


def test_bad_json_is_a_clear_error():
    with pytest.raises(ValueError, match="'nodes' list"):
        SearchTree.from_json({"x": 1})
    with pytest.raises(ValueError, match="root node"):
        SearchTree.from_json({"nodes": []})
