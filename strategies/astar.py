"""A*-decoding: batched best-first search over partial solutions (docs/algorithms.md#a-decoding).

    f(s) = g(s) + h(s)      g = mean over the path's steps of (1 - r_t)   (normalised,
                            so depth alone never pushes a node down the queue)
                            h = 1 - r(s)  (the PRM's score of the last step)
    open = heap of (f, node)
    while open and len(solutions) < n_solutions:
        pop the ``batch`` lowest-f nodes          # batched best-first: engine stays busy
        a popped terminal node is a solution      # goal test on pop, as in A*
        the others are expanded k times in ONE engine call, children scored in ONE
        verifier call and pushed; the queue is capped at ``queue_size`` (worst dropped)

The answer is the solution of lowest ``f`` (candidate score ``1 - f/2`` in [0, 1]).

KV lifecycle: every queued node stays pinned with value ``-f`` (the engine evicts the
worst-f states first, docs/algorithms.md#a-decoding); a popped node is released once its children exist (they
keep its prefix resident); nodes dropped from a full queue, and nodes popped past
``max_expansions`` (never expanded), are released at once.
``info["pops"]`` lists, per round, the popped f values and the lowest f left in the
queue, so a caller can check that expansion follows cost order.
Must NOT know: engine internals (pages, KV layout), Hydra, file formats.
"""

from __future__ import annotations

import heapq
from typing import Literal

from pydantic import PositiveInt

from ttc.aggregate import Selection
from ttc.strategies.base import SearchContext, SearchStrategy, StrategyConfig, register
from ttc.tree import Node, NodeStatus


class AStarConfig(StrategyConfig):
    name: Literal["astar"] = "astar"
    k: PositiveInt = 4                 # children sampled per expansion
    batch: PositiveInt = 1             # nodes popped and expanded per round
    n_solutions: PositiveInt = 1       # stop after this many complete solutions
    max_expansions: PositiveInt = 64   # popped non-terminal nodes at most
    queue_size: PositiveInt = 64       # open-list cap (worst f dropped and released)
    selection: Selection = Selection.BEST


def path_cost(step_scores: list[float]) -> float:
    """g: mean step cost (1 - r) along the path; 0 for the root."""
    if not step_scores:
        return 0.0
    return sum(1.0 - r for r in step_scores) / len(step_scores)


def priority(step_scores: list[float]) -> float:
    """f = g + h with h = 1 - r(last step); in [0, 2], lower is better."""
    if not step_scores:
        return 1.0
    return path_cost(step_scores) + (1.0 - step_scores[-1])


@register(AStarConfig)
class AStarDecoding(SearchStrategy):
    config: AStarConfig

    def search(self, ctx: SearchContext) -> None:
        cfg = self.config
        open_: list[tuple[float, int, int]] = [(priority([]), 0, ctx.root.id)]  # (f, tie, id)
        tie = 1
        solutions: list[Node] = []
        expansions = 0
        rounds = 0
        pops: list[dict[str, object]] = []
        ctx.info["pops"] = pops
        while open_ and len(solutions) < cfg.n_solutions and expansions < cfg.max_expansions:
            rounds += 1
            popped: list[Node] = []
            popped_f: list[float] = []
            while open_ and len(popped) < cfg.batch and len(solutions) < cfg.n_solutions:
                f, _, nid = heapq.heappop(open_)
                node = ctx.tree[nid]
                popped_f.append(f)
                if node.status is NodeStatus.TERMINAL:
                    solutions.append(node)
                    ctx.offer(node, score=1.0 - f / 2.0)
                    ctx.release([node], prune=False)
                else:
                    popped.append(node)
            pops.append({"f": popped_f, "min_left": open_[0][0] if open_ else None})
            if len(solutions) >= cfg.n_solutions or not popped:
                break
            popped, over = (popped[: cfg.max_expansions - expansions],
                            popped[cfg.max_expansions - expansions:])
            # NOTE: nodes popped past max_expansions are never expanded; they leave the
            # queue, so their KV is released now (pruned), as for a full queue's worst.
            ctx.release(over)
            expansions += len(popped)
            params = [ctx.step_params(ctx.seed("astar", p.id)) for p in popped]
            children = ctx.expand(popped, n=cfg.k, params=params)
            flat = [c for cs in children for c in cs]
            # NOTE: children now hold the popped prefixes resident; the popped handles
            # themselves are never expanded again, so they are released here.
            ctx.release(popped, prune=False)
            scorable = [c for c in flat if c.text.strip()]
            ctx.score(scorable)
            for child in flat:
                if not child.text.strip() or child.cut_by_budget:
                    ctx.release([child])
                    continue
                f = priority(child.extra.get("step_scores", []))
                child.value = f
                ctx.generator.pin([child.handle], value=-f)
                heapq.heappush(open_, (f, tie, child.id))
                tie += 1
            if len(open_) > cfg.queue_size:
                keep = heapq.nsmallest(cfg.queue_size, open_)
                kept = set(keep)
                dropped = [ctx.tree[e[2]] for e in open_ if e not in kept]
                open_ = keep
                heapq.heapify(open_)
                ctx.release(dropped)
            best = min((e[0] for e in open_), default=None)
            ctx.emit(step=rounds, live=len(open_),
                     best_score=None if best is None else 1.0 - best / 2.0,
                     note=f"{expansions} expansions, {len(solutions)} solutions")
        ctx.info.update(expansions=expansions, rounds=rounds, solutions=len(solutions))
        if not solutions:
            # No goal reached within the bounds: the best finished node still in the
            # queue (if any) is the answer; otherwise ``choose`` falls back to partials.
            done = sorted(e for e in open_ if ctx.tree[e[2]].status is NodeStatus.TERMINAL)
            if done:
                ctx.offer(ctx.tree[done[0][2]], score=1.0 - done[0][0] / 2.0)
