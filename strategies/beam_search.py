"""Step-level beam search with a PRM (docs/algorithms.md#beam-search; Snell et al., search-and-learn).

    active = [root]                              # the first step samples N children
    for it in range(num_iterations):
        last = it == num_iterations - 1          # the last step runs to EOS
        children = LM.next_step(active, n=N / len(active))   # ONE expand call, N children
        scores = PRM.score(children, lookahead)  # ONE verifier call (+ docs/algorithms.md#beam-search rollouts)
        completed += [c for c in children if c.terminal]
        live = unique_by_text(live) if filter_duplicates else live
        active = top_k(live, k=N // M, key=agg(score))    # keep N/M, release the rest
    return select(completed)                     # weighted vote / best / majority

Every kept beam is expanded M times (N children per step); when fewer than N/M beams
survive (some completed), the N children are spread over the survivors (search-and-learn's
refill). Each child gets its own seed. KV: pruned children are released at once, parents
are unpinned once expanded (their KV lives on while a kept descendant needs it),
completed beams are released after scoring (the verifier needs text, not KV).
Candidates are the completed beams, not padded by repetition. Budget: once an expansion is
cut by the token budget the search stops after that step; its cut fragments are not scored.
Must NOT know: engine internals.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from ttc.aggregate import Selection, StepAggregation
from ttc.strategies.base import SearchContext, SearchStrategy, StrategyConfig, register
from ttc.strategies.common import (best_score, first_step_guard, mark_step_done, spread,
                                   stop_if_cut)
from ttc.tree import Node, NodeStatus
from ttc.types import FinishReason


class BeamSearchConfig(StrategyConfig):
    name: Literal["beam"] = "beam"
    n: PositiveInt = Field(default=8, description="N: children sampled per step (beams)")
    width: PositiveInt = Field(default=4, description="M: children per kept beam")
    num_iterations: PositiveInt = Field(default=40, description="max search depth in steps")
    lookahead: NonNegativeInt = Field(default=0, description="greedy steps to score a step")
    aggregation: StepAggregation = StepAggregation.LAST
    filter_duplicates: bool = False
    selection: Selection = Selection.WEIGHTED

    @model_validator(mode="after")
    def _n_multiple_of_width(self) -> "BeamSearchConfig":
        if self.n % self.width:
            raise ValueError(f"n (N={self.n}) must be a multiple of width (M={self.width}), "
                             f"so that N/M beams are kept each step")
        return self


@register(BeamSearchConfig)
class BeamSearch(SearchStrategy):
    config: BeamSearchConfig

    def search(self, ctx: SearchContext) -> None:
        cfg = self.config
        keep = cfg.n // cfg.width
        active: list[Node] = [ctx.root]
        with first_step_guard(ctx, branches=cfg.n):
            for it in range(cfg.num_iterations):
                last = it == cfg.num_iterations - 1
                counts = spread(cfg.n, len(active))
                params = [ctx.solution_params(ctx.seed("beam", it, i)) if last
                          else ctx.step_params(ctx.seed("beam", it, i))
                          for i in range(len(active))]
                groups = ctx.expand(active, n=counts, params=params)
                ctx.info.setdefault("expansions", []).append(
                    {"parents": [p.id for p in active], "children": [len(g) for g in groups]})
                ctx.release([p for p in active if p is not ctx.root], prune=False)
                children = [c for g in groups for c in g]
                # NOTE: a fragment cut by the token budget is never expanded or offered
                # (stop_if_cut ends the search below), so scoring it would waste calls.
                self._score(ctx, [c for c in children
                                  if c.finish != FinishReason.BUDGET.value], it)
                mark_step_done(ctx, children)
                done = [c for c in children if c.status is NodeStatus.TERMINAL]
                for c in done:
                    ctx.offer(c, score=ctx.value(c, cfg.aggregation))
                ctx.release(done, prune=False)
                stop_if_cut(ctx, children)
                live = [c for c in children if c.status is not NodeStatus.TERMINAL]
                if cfg.filter_duplicates:
                    live = _unique_by_text(ctx, live)
                live.sort(key=lambda c: ctx.value(c, cfg.aggregation), reverse=True)
                active, pruned = live[:keep], live[keep:]
                ctx.release(pruned)
                ctx.emit(step=it + 1, live=len(active), best_score=best_score(children),
                         note=f"{len(done)} completed")
                if not active:
                    break

    def _score(self, ctx: SearchContext, children: list[Node], it: int) -> None:
        """Score children in one verifier call; with lookahead k, by their greedy rollout.

        docs/algorithms.md#beam-search: each live child is rolled forward up to k steps at temperature 0 (all
        rollouts in one expand call per step), the rollout's last-step score becomes the
        child's value, and the rollout is discarded (released).
        """
        ctx.score(children)
        if self.config.lookahead == 0:
            return
        tips = {c.id: c for c in children if c.status is not NodeStatus.TERMINAL}
        rollout: list[Node] = []
        for k in range(self.config.lookahead):
            open_ids = [cid for cid, tip in tips.items() if tip.status is not NodeStatus.TERMINAL]
            if not open_ids:
                break
            greedy = [ctx.step_params(ctx.seed("look", it, k, cid), temperature=0.0)
                      for cid in open_ids]
            steps = ctx.expand([tips[cid] for cid in open_ids], n=1, params=greedy)
            for cid, (step,) in zip(open_ids, steps):
                step.extra["lookahead"] = True
                rollout.append(step)
                tips[cid] = step
        ends = {cid: tip for cid, tip in tips.items() if tip.id != cid}
        ctx.score(list(ends.values()))
        for cid, tip in ends.items():
            child = ctx.tree[cid]
            if tip.score is None or not child.extra.get("step_scores"):
                continue
            child.extra["step_scores"][-1] = tip.score
            child.extra["lookahead_score"] = tip.score
            child.score = tip.score
            ctx.generator.pin([child.handle], value=tip.score)
        ctx.release(rollout)
        stop_if_cut(ctx, rollout)


def _unique_by_text(ctx: SearchContext, nodes: list[Node]) -> list[Node]:
    seen: set[str] = set()
    out: list[Node] = []
    dupes: list[Node] = []
    for n in nodes:
        text = "".join(ctx.tree.steps(n))
        if text in seen:
            dupes.append(n)
        else:
            seen.add(text)
            out.append(n)
    ctx.release(dupes)
    return out
