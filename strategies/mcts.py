"""MCTS over reasoning steps with PRM values and PUCT selection (ALGORITHMS.md §7.1).

    for each round (``batch`` simulations at once, with virtual loss):
        SELECT   from the root, child = argmax PUCT until an unexpanded or terminal node
                 PUCT(c) = Q(c) + C(parent) P(c) sqrt(N(parent)) / (1 + N(c))
                 C(parent) = log((N(parent) + c_base + 1) / c_base) + c_init
                 Q(c) = W(c)/N(c), or the PRM score of c while N(c) = 0
        in-flight paths get a virtual visit (N += virtual_loss, W unchanged), so the
        other selections of the round spread out; it is removed before backup
        EXPAND   all selected leaves at once: k steps each in ONE engine call, children
                 scored in ONE verifier call; priors P = softmax of the children's
                 mean token log-probabilities; the leaf's value is its best child's score
        BACKUP   N += 1, W += v along the path (a terminal leaf's v is its own score)
    answer: weighted vote over the terminal trajectories found; when none was found,
            the most-visited path is completed by one sampled rollout (``final_rollout``)

KV lifecycle: the whole tree may be revisited, so every node stays pinned with value
Q (the engine evicts low-Q nodes first, §12.5); terminal nodes are offered and released.
Must NOT know: engine internals (pages, KV layout), Hydra, file formats.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, PositiveInt

from ttc.aggregate import Selection
from ttc.strategies.base import SearchContext, SearchStrategy, StrategyConfig, register
from ttc.tree import Node, NodeStatus


class MCTSConfig(StrategyConfig):
    name: Literal["mcts"] = "mcts"
    n_simulations: PositiveInt = 32
    k: PositiveInt = 3                  # children per expansion
    batch: PositiveInt = 2              # simulations selected and expanded together
    c_base: float = Field(default=19652.0, gt=0.0)
    c_init: float = Field(default=1.25, ge=0.0)
    virtual_loss: float = Field(default=1.0, ge=0.0)
    final_rollout: bool = True          # no terminal found: finish the most-visited path
    selection: Selection = Selection.WEIGHTED


def puct_score(*, q: float, prior: float, parent_visits: float, child_visits: float,
               c_base: float, c_init: float) -> float:
    """Q + C(parent) * P * sqrt(N(parent)) / (1 + N(child))."""
    c = math.log((parent_visits + c_base + 1.0) / c_base) + c_init
    return q + c * prior * math.sqrt(parent_visits) / (1.0 + child_visits)


def priors_from_logprobs(mean_logprobs: list[float]) -> list[float]:
    """Softmax of mean token log-probabilities (normalised step likelihoods)."""
    top = max(mean_logprobs)
    e = [math.exp(x - top) for x in mean_logprobs]
    s = sum(e)
    return [x / s for x in e]


@register(MCTSConfig)
class MCTS(SearchStrategy):
    config: MCTSConfig

    def _q(self, node: Node, virtual: dict[int, float]) -> tuple[float, float]:
        n = node.visits + virtual.get(node.id, 0.0)
        if n == 0:
            return (node.score if node.score is not None else 0.0), 0.0
        return node.value / n, n

    def select_child(self, parent: Node, ctx: SearchContext,
                     virtual: dict[int, float]) -> Node:
        cfg = self.config
        parent_n = parent.visits + virtual.get(parent.id, 0.0)
        best, best_s = None, -math.inf
        for cid in parent.children:
            child = ctx.tree[cid]
            if child.status is NodeStatus.PRUNED:
                continue
            q, n = self._q(child, virtual)
            s = puct_score(q=q, prior=child.extra.get("prior", 1.0 / len(parent.children)),
                           parent_visits=parent_n, child_visits=n,
                           c_base=cfg.c_base, c_init=cfg.c_init)
            if s > best_s:
                best, best_s = child, s
        assert best is not None   # callers only descend into nodes with live children
        return best

    def _has_live_children(self, node: Node, ctx: SearchContext) -> bool:
        return any(ctx.tree[c].status is not NodeStatus.PRUNED for c in node.children)

    def search(self, ctx: SearchContext) -> None:
        cfg = self.config
        sims = 0
        offered: set[int] = set()
        while sims < cfg.n_simulations:
            virtual: dict[int, float] = {}
            paths: list[list[Node]] = []
            for _ in range(min(cfg.batch, cfg.n_simulations - sims)):
                node, path = ctx.root, [ctx.root]
                while node.status is not NodeStatus.TERMINAL and \
                        self._has_live_children(node, ctx):
                    node = self.select_child(node, ctx, virtual)
                    path.append(node)
                if any(p[-1] is node for p in paths) and node.status is not NodeStatus.TERMINAL:
                    break              # the same leaf twice: expand it once this round
                for p in path:
                    virtual[p.id] = virtual.get(p.id, 0.0) + cfg.virtual_loss
                paths.append(path)
            sims += len(paths)
            leaves = [p[-1] for p in paths if p[-1].status is not NodeStatus.TERMINAL]
            if leaves:
                params = [ctx.step_params(ctx.seed("mcts", n.id)) for n in leaves]
                kids = ctx.expand(leaves, n=cfg.k, params=params)
                flat = [c for cs in kids for c in cs]
                ctx.score([c for c in flat if c.text.strip()])
                for leaf, cs in zip(leaves, kids):
                    live = [c for c in cs if c.text.strip() and not c.extra.get("cut_by_budget")]
                    ctx.release([c for c in cs if c not in live])
                    if live:
                        priors = priors_from_logprobs(
                            [c.logprob / max(1, c.num_tokens) for c in live])
                        for c, p in zip(live, priors):
                            c.extra["prior"] = p
                            if c.status is NodeStatus.TERMINAL and c.id not in offered:
                                offered.add(c.id)
                                ctx.offer(c)
                                ctx.release([c], prune=False)
                    leaf.extra["leaf_value"] = max((c.score or 0.0 for c in live),
                                                   default=0.0)
            pinned = set(ctx.pinned_nodes)
            for path in paths:
                leaf = path[-1]
                if leaf.status is NodeStatus.TERMINAL:
                    v = leaf.score if leaf.score is not None else 0.0
                else:
                    v = leaf.extra.get("leaf_value", 0.0)
                for node in path:
                    node.visits += 1
                    node.value += v
                    if node.id in pinned and node.status is not NodeStatus.TERMINAL:
                        ctx.generator.pin([node.handle], value=node.value / node.visits)
            best = max((c.score for c in ctx.candidates if c.score is not None), default=None)
            ctx.emit(step=sims, live=len(ctx.pinned_nodes), best_score=best,
                     note=f"{len(ctx.candidates)} terminal")
        if cfg.final_rollout and not ctx.candidates:
            self._rollout(ctx)
        ctx.info.update(simulations=sims, root_visits=ctx.root.visits,
                        child_visits=[ctx.tree[c].visits for c in ctx.root.children])

    def _rollout(self, ctx: SearchContext) -> None:
        node = ctx.root
        while True:
            kids = [ctx.tree[c] for c in node.children
                    if ctx.tree[c].status is not NodeStatus.PRUNED and ctx.tree[c].visits > 0]
            if not kids:
                break
            node = max(kids, key=lambda c: (c.visits, c.value))
        if node.status is NodeStatus.TERMINAL or node.handle is None:
            return
        if node.id not in set(ctx.pinned_nodes):
            return
        (done,) = ctx.expand([node], n=1, params=ctx.solution_params(ctx.seed("rollout")))
        ctx.score([d for d in done if d.text.strip()])
        for d in done:
            if d.text.strip():
                ctx.offer(d)
