"""DVTS: diverse verifier tree search (docs/algorithms.md#dvts; search-and-learn).

    trees = [Subtree(root) for _ in range(N // M)]      # share only the prompt
    for it in range(num_iterations):
        live = [t for t in trees if not t.done]
        last = it == num_iterations - 1                  # the last step runs to EOS
        cands = LM.next_step([t.node for t in live], n=M)   # ONE expand for all subtrees
        sc = PRM.score(cands)                             # ONE verifier call
        for t in live:
            t.prev, t.cands = t.node, cands[t]
            t.node = argmax(cands[t], key=agg(sc))       # greedy: keep the best child
            t.done = t.node.terminal
    return select(terminal c for t in trees for c in t.cands)   # M outputs per subtree

Each subtree is expanded from its own node with its own seeds, so subtrees share no
node below the root. KV: the M-1 losers of every subtree are released right after
scoring and the old node is unpinned once expanded; a subtree's final candidates are
released after they are offered. A finished subtree's width is left unused, as in the
reference code, unless ``reassign_width``: then the N children of a step are spread
over the live subtrees (docs/algorithms.md#dvts pitfalls; ETS tracks width per subtree).
Must NOT know: engine internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from ttc.aggregate import Selection, StepAggregation
from ttc.strategies.base import SearchContext, SearchStrategy, StrategyConfig, register
from ttc.strategies.common import (best_score, first_step_guard, mark_step_done, spread,
                                   stop_if_cut)
from ttc.tree import Node, NodeStatus


class DVTSConfig(StrategyConfig):
    name: Literal["dvts"] = "dvts"
    n: PositiveInt = Field(default=16, description="N: children sampled per step in all")
    width: PositiveInt = Field(default=4, description="M: children per subtree per step")
    num_iterations: PositiveInt = Field(default=40, description="max depth in steps")
    aggregation: StepAggregation = StepAggregation.LAST
    selection: Selection = Selection.WEIGHTED
    reassign_width: bool = Field(default=False, description="spread a finished subtree's "
                                 "width over the live ones (the reference leaves it unused)")

    @model_validator(mode="after")
    def _n_multiple_of_width(self) -> "DVTSConfig":
        if self.n % self.width:
            raise ValueError(f"n (N={self.n}) must be a multiple of width (M={self.width}), "
                             f"so that the budget splits into N/M subtrees")
        return self


@dataclass(eq=False)
class Subtree:
    index: int
    node: Node
    cands: list[Node] = field(default_factory=list)
    done: bool = False


@register(DVTSConfig)
class DVTS(SearchStrategy):
    config: DVTSConfig

    def search(self, ctx: SearchContext) -> None:
        cfg = self.config
        trees = [Subtree(index=i, node=ctx.root) for i in range(cfg.n // cfg.width)]
        ctx.info["subtrees"] = len(trees)
        try:
            with first_step_guard(ctx, branches=cfg.n):
                for it in range(cfg.num_iterations):
                    live = [t for t in trees if not t.done]
                    if not live:
                        break
                    last = it == cfg.num_iterations - 1
                    params = [ctx.solution_params(ctx.seed("dvts", it, t.index)) if last
                              else ctx.step_params(ctx.seed("dvts", it, t.index))
                              for t in live]
                    widths = (spread(cfg.n, len(live)) if cfg.reassign_width
                              else [cfg.width] * len(live))
                    groups = ctx.expand([t.node for t in live], n=widths, params=params)
                    ctx.release([t.node for t in live if t.node is not ctx.root], prune=False)
                    for t, cands in zip(live, groups):
                        t.cands = cands
                        for c in cands:
                            c.extra["subtree"] = t.index
                    children = [c for g in groups for c in g]
                    ctx.score(children)
                    mark_step_done(ctx, children)
                    for t in live:
                        t.node = max(t.cands, key=lambda c: ctx.value(c, cfg.aggregation))
                        t.done = t.node.status is NodeStatus.TERMINAL or last
                        ctx.release([c for c in t.cands if c is not t.node])
                        if t.done:
                            self._finish(ctx, t)
                    stop_if_cut(ctx, children)
                    ctx.emit(step=it + 1, live=sum(not t.done for t in trees),
                             best_score=best_score(children),
                             note=f"{sum(t.done for t in trees)}/{len(trees)} subtrees done")
        finally:
            for t in trees:
                if not t.done and t.cands:
                    self._finish(ctx, t)

    def _finish(self, ctx: SearchContext, tree: Subtree) -> None:
        """Offer the subtree's last candidates that are complete trajectories."""
        for c in tree.cands:
            if c.status is NodeStatus.TERMINAL:
                ctx.offer(c, score=ctx.value(c, self.config.aggregation))
        ctx.release([tree.node], prune=False)
        tree.done = True
