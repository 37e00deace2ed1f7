"""The search tree: nodes are partial trajectories, edges are reasoning steps.

Contract: a :class:`SearchTree` records what a strategy explored: every node's parent,
step text, token ids, step score, depth and status, plus strategy statistics (visits,
value). It exports to ``networkx.DiGraph`` and to JSON, and both round-trip.
The engine handle of a node is runtime-only and is not exported. ``chosen`` names the
leaf whose trajectory became the answer (``None``: none, or not known) and
``budget_exhausted`` says the budget cut the search; both are exported.
Must NOT know: engines, KV, verifiers; it is plain bookkeeping.

    root (prompt, depth 0)
     ├── n1 "Step 1 ..."  score .8   depth 1
     │    ├── n3 "Step 2 ..." score .9  depth 2  TERMINAL answer "42"
     │    └── n4 "Step 2 ..." score .2  depth 2  PRUNED
     └── n2 "Step 1 ..."  score .3   depth 1  PRUNED
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterator

import networkx as nx


class NodeStatus(enum.Enum):
    OPEN = "open"          # alive, may be expanded
    EXPANDED = "expanded"  # has children
    TERMINAL = "terminal"  # a complete trajectory
    PRUNED = "pruned"      # dropped by the search; its KV released


@dataclass(eq=False, slots=True)
class Node:
    id: int
    parent: int | None
    text: str = ""
    token_ids: tuple[int, ...] = ()
    score: float | None = None      # verifier score of this node's last step
    depth: int = 0
    status: NodeStatus = NodeStatus.OPEN
    answer: str | None = None
    finish: str | None = None
    logprob: float = 0.0            # sum of the step's token log-probabilities
    visits: int = 0
    value: float = 0.0              # strategy-defined (MCTS Q-sum, A* cost, ...)
    children: list[int] = field(default_factory=list)
    handle: Hashable | None = None  # runtime only: the engine's name for this prefix
    extra: dict[str, Any] = field(default_factory=dict)
    # The generated-token budget cut this step short (finish "budget") before it ended a
    # solution: the step is incomplete, and the search has no allowance to go on.
    cut_by_budget: bool = False

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "parent": self.parent, "text": self.text,
            "token_ids": list(self.token_ids), "score": self.score, "depth": self.depth,
            "status": self.status.value, "answer": self.answer, "finish": self.finish,
            "logprob": self.logprob, "visits": self.visits, "value": self.value,
            "children": list(self.children), "extra": self.extra,
            "cut_by_budget": self.cut_by_budget,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Node":
        return cls(
            id=int(data["id"]), parent=data["parent"], text=data["text"],
            token_ids=tuple(data["token_ids"]), score=data["score"], depth=data["depth"],
            status=NodeStatus(data["status"]), answer=data["answer"],
            finish=data.get("finish"), logprob=data.get("logprob", 0.0),
            visits=data.get("visits", 0), value=data.get("value", 0.0),
            children=list(data["children"]), extra=dict(data.get("extra", {})),
            cut_by_budget=bool(data.get("cut_by_budget", False)))


class SearchTree:
    """Nodes by id; node 0 is the root (the prompt)."""

    def __init__(self, prompt: str = "") -> None:
        self.nodes: dict[int, Node] = {0: Node(id=0, parent=None, text=prompt)}
        self.chosen: int | None = None
        self.budget_exhausted = False

    @property
    def root(self) -> Node:
        return self.nodes[0]

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def __getitem__(self, node_id: int) -> Node:
        return self.nodes[node_id]

    def add(self, parent: Node | int, *, text: str, token_ids: tuple[int, ...] = (),
            handle: Hashable | None = None, logprob: float = 0.0,
            finish: str | None = None) -> Node:
        parent_node = self.nodes[parent if isinstance(parent, int) else parent.id]
        node = Node(id=len(self.nodes), parent=parent_node.id, text=text,
                    token_ids=tuple(token_ids), depth=parent_node.depth + 1,
                    handle=handle, logprob=logprob, finish=finish)
        self.nodes[node.id] = node
        parent_node.children.append(node.id)
        if parent_node.status is NodeStatus.OPEN:
            parent_node.status = NodeStatus.EXPANDED
        return node

    def path(self, node: Node | int) -> list[Node]:
        """Nodes from the first step down to ``node`` (the root excluded)."""
        current = self.nodes[node if isinstance(node, int) else node.id]
        out: list[Node] = []
        while current.parent is not None:
            out.append(current)
            current = self.nodes[current.parent]
        return out[::-1]

    def steps(self, node: Node | int) -> list[str]:
        return [n.text for n in self.path(node)]

    def step_scores(self, node: Node | int) -> list[float]:
        return [n.score for n in self.path(node) if n.score is not None]

    def chosen_path(self) -> list[int]:
        """Ids from the root down to the chosen leaf ([] when nothing was chosen)."""
        if self.chosen is None or self.chosen not in self.nodes:
            return []
        return [0] + [n.id for n in self.path(self.chosen)]

    def leaves(self) -> list[Node]:
        return [n for n in self.nodes.values() if not n.children and n.parent is not None]

    def distinct_tokens(self, node_ids: list[int] | None = None) -> int:
        """Tokens in the union of the paths to ``node_ids`` (all nodes if None)."""
        seen: set[int] = set()
        for nid in node_ids if node_ids is not None else list(self.nodes):
            for n in self.path(nid):
                seen.add(n.id)
        return sum(self.nodes[i].num_tokens for i in seen)

    # -- export ------------------------------------------------------------------------
    def to_networkx(self) -> nx.DiGraph:
        graph = nx.DiGraph(chosen=self.chosen, budget_exhausted=self.budget_exhausted)
        for node in self.nodes.values():
            attrs = node.to_json()
            attrs.pop("children")
            graph.add_node(node.id, **attrs)
            if node.parent is not None:
                graph.add_edge(node.parent, node.id)
        return graph

    @classmethod
    def from_networkx(cls, graph: nx.DiGraph) -> "SearchTree":
        tree = cls.__new__(cls)
        tree.nodes = {}
        tree.chosen = graph.graph.get("chosen")
        tree.budget_exhausted = bool(graph.graph.get("budget_exhausted", False))
        for node_id in sorted(graph.nodes):
            attrs = dict(graph.nodes[node_id])
            attrs["children"] = sorted(graph.successors(node_id))
            tree.nodes[node_id] = Node.from_json(attrs)
        return tree

    def to_json(self) -> dict[str, Any]:
        return {"nodes": [n.to_json() for n in self.nodes.values()], "chosen": self.chosen,
                "budget_exhausted": self.budget_exhausted}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SearchTree":
        if "nodes" not in data or not isinstance(data["nodes"], list):
            raise ValueError("a search tree's JSON must be an object with a 'nodes' list.")
        tree = cls.__new__(cls)
        tree.nodes = {}
        chosen = data.get("chosen")
        tree.chosen = int(chosen) if chosen is not None else None
        tree.budget_exhausted = bool(data.get("budget_exhausted", False))
        for item in data["nodes"]:
            node = Node.from_json(item)
            tree.nodes[node.id] = node
        if 0 not in tree.nodes:
            raise ValueError("a search tree's JSON must contain the root node (id 0).")
        return tree
