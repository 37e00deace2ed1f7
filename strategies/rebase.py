"""REBASE: reward-balanced tree search (docs/algorithms.md#rebase).

    frontier = [root]; remaining = width
    for depth in range(max_depth):
        finished frontier nodes become leaves and each consumes one unit of width
        alloc = balanced_allocation(rewards of the open frontier, remaining, T)
        every node with alloc m > 0 is expanded m times (ONE engine call for the depth),
        children scored in ONE verifier call; nodes with alloc 0 are pruned
    answer = weighted majority over the leaves

Certaindex (docs/algorithms.md#dynasor-and-certaindex, optional): once ``certaindex_at`` leaves have finished, after each
depth the search stops if the leaves' answer certaindex H~ (and/or their max reward)
clears its threshold; the open frontier is released and ``info["certaindex"]`` says when.

KV lifecycle: a node with allocation 0 is released at once (pruned); an expanded node
is released once its children exist (they keep its prefix resident); a finished leaf is
released after it is offered. ``info["kv_tokens"]`` records, per depth, the distinct
generated tokens of the kept subtree (the ETS paper's KV metric; the prompt is shared
by all and not counted), ``info["kv_nodes"]`` its distinct nodes, and
``info["kv_token_sum"]`` the sum over depths.

:func:`balanced_allocation` is shared with ETS (``ttc.strategies.ets``).
Must NOT know: engine internals (pages, KV layout), Hydra, file formats.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

from pydantic import Field, PositiveInt

from ttc.aggregate import Selection, StepAggregation
from ttc.strategies.base import SearchContext, SearchStrategy, StrategyConfig, register
from ttc.strategies.certaindex import certaindex_check
from ttc.tree import Node, NodeStatus


class RebaseConfig(StrategyConfig):
    name: Literal["rebase"] = "rebase"
    width: PositiveInt = 16
    softmax_temperature: float = Field(default=0.2, gt=0.0)
    max_depth: PositiveInt = 25
    selection: Selection = Selection.WEIGHTED
    aggregation: StepAggregation = StepAggregation.LAST
    certaindex_entropy: float | None = Field(
        default=None, gt=0.0, le=1.0, description="stop once the finished leaves' answer "
        "certaindex H~ >= this (null: off)")
    certaindex_reward: float | None = Field(
        default=None, ge=0.0, le=1.0, description="and/or once their max reward >= this")
    certaindex_at: PositiveInt = Field(default=4, description="finished leaves before the "
                                       "certaindex is checked")


def balanced_allocation(rewards: Sequence[float], width: int, temperature: float) -> list[int]:
    """Split ``width`` expansions over nodes by a softmax of their rewards.

    Best node first, each gets ``ceil(left * e_j / mass)`` of what is left, so the
    counts sum to ``width`` at most and a higher reward never gets fewer children.
    A reward of ``-inf`` gets nothing.
    """
    if width < 0:
        raise ValueError(f"width must be a non-negative integer; got {width!r}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive; got {temperature!r}.")
    out = [0] * len(rewards)
    finite = [r for r in rewards if r != -math.inf]
    if not finite or width == 0:
        return out
    top = max(finite)
    order = sorted(range(len(rewards)), key=lambda i: -rewards[i])
    weights = [0.0 if rewards[i] == -math.inf else math.exp((rewards[i] - top) / temperature)
               for i in order]
    left, mass = width, sum(weights)
    for i, e in zip(order, weights):
        if left <= 0 or mass <= 0:
            break
        m = min(left, math.ceil(left * e / mass - 1e-12))
        out[i] = m
        left -= m
        mass -= e
    return out


def kept_kv_tokens(ctx: SearchContext, nodes: Sequence[Node]) -> int:
    """Distinct generated tokens on the root paths of ``nodes`` (KV kept for them)."""
    return ctx.tree.distinct_tokens([n.id for n in nodes])


class RewardBalancedSearch(SearchStrategy):
    """The breadth-synchronous loop; subclasses may filter the frontier (ETS)."""

    def choose_kept(self, ctx: SearchContext, frontier: list[Node],
                    rewards: list[float], remaining: int) -> list[float]:
        """Rewards used for allocation; ``-inf`` marks a node not to keep."""
        return rewards

    def search(self, ctx: SearchContext) -> None:
        cfg = self.config
        frontier: list[Node] = [ctx.root]
        remaining = cfg.width
        kv_tokens: list[int] = []
        kv_nodes: list[int] = []
        ctx.info["kv_tokens"] = kv_tokens
        ctx.info["kv_nodes"] = kv_nodes
        for depth in range(cfg.max_depth):
            open_nodes: list[Node] = []
            for node in frontier:
                if node.status is NodeStatus.TERMINAL:
                    remaining -= 1
                    ctx.offer(node, score=ctx.value(node, cfg.aggregation))
                    ctx.release([node], prune=False)
                elif node.cut_by_budget or (node.parent is not None
                                                        and not node.text.strip()):
                    ctx.release([node])
                else:
                    open_nodes.append(node)
            if remaining <= 0 or not open_nodes or self._settled(ctx, depth):
                ctx.release(open_nodes)
                break
            rewards = [ctx.value(n, cfg.aggregation) if n.parent is not None else 1.0
                       for n in open_nodes]
            rewards = self.choose_kept(ctx, open_nodes, rewards, remaining)
            alloc = balanced_allocation(rewards, remaining, cfg.softmax_temperature)
            keep = [n for n, m in zip(open_nodes, alloc) if m > 0]
            ctx.release([n for n, m in zip(open_nodes, alloc) if m == 0])
            kv_tokens.append(kept_kv_tokens(ctx, keep))
            kv_nodes.append(len({a.id for n in keep for a in ctx.tree.path(n)}))
            counts = [m for m in alloc if m > 0]
            params = [ctx.step_params(ctx.seed(self.name, n.id)) for n in keep]
            children = ctx.expand(keep, n=counts, params=params)
            ctx.release(keep, prune=False)
            frontier = [c for cs in children for c in cs]
            ctx.score([c for c in frontier if c.text.strip()])
            best = max((c.score for c in frontier if c.score is not None), default=None)
            ctx.emit(step=depth + 1, live=len(frontier), best_score=best,
                     note=f"{len(keep)} kept, width left {remaining}")
        else:
            for node in frontier:   # depth limit: offer what finished, drop the rest
                if node.status is NodeStatus.TERMINAL:
                    ctx.offer(node, score=ctx.value(node, cfg.aggregation))
        ctx.info["kv_token_sum"] = sum(kv_tokens)

    def _settled(self, ctx: SearchContext, depth: int) -> bool:
        cfg = self.config
        entropy = getattr(cfg, "certaindex_entropy", None)
        reward = getattr(cfg, "certaindex_reward", None)
        if (entropy is None and reward is None) or len(ctx.candidates) < cfg.certaindex_at:
            return False
        record = certaindex_check([c.answer for c in ctx.candidates],
                                  [c.score or 0.0 for c in ctx.candidates],
                                  entropy=entropy, reward=reward, reward_how="max")
        ctx.info["certaindex"] = {**record, "depth": depth}
        return bool(record["stop"])


@register(RebaseConfig)
class Rebase(RewardBalancedSearch):
    config: RebaseConfig
