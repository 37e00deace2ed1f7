"""First Finish Search: launch n samples, return the first to finish (docs/algorithms.md#first-finish-search).

    live = [root] * n                         # n samples, prompt shared, own seeds
    while True:
        live = LM.next_step(live)             # ONE expand call: one step for every sample
        finished = [s for s in live if s.eos]
        if finished and min(len(f) for f in finished) <= min(len(s) for s in unfinished):
            cancel(unfinished); free their KV
            return argmin(finished, key=len)  # the first to finish in lockstep decoding

Sync-FFS decodes all samples in lockstep, so the first to end is the shortest in
tokens. Decoding here advances a step at a time; a sample still running already holds
at least its current length, so once the shortest finished trace is no longer than
every running one, no later finisher can be shorter: the answer equals sync-FFS's.
No verifier calls. Only valid where short traces are more often right (reasoning
models on hard math); check that correlation on a dev set before trusting it.
Must NOT know: engine internals.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt

from ttc.aggregate import Selection
from ttc.strategies.base import SearchContext, SearchStrategy, StrategyConfig, register
from ttc.strategies.common import first_step_guard, mark_step_done, stop_if_cut
from ttc.tree import Node, NodeStatus


class FirstFinishConfig(StrategyConfig):
    name: Literal["first_finish"] = "first_finish"
    n: PositiveInt = Field(default=8, description="samples launched together")


@register(FirstFinishConfig)
class FirstFinish(SearchStrategy):
    config: FirstFinishConfig
    selection = Selection.BEST

    def search(self, ctx: SearchContext) -> None:
        n = self.config.n
        length: dict[int, int] = {ctx.root.id: 0}
        live: list[Node] = [ctx.root]
        counts = [n]
        finished: list[Node] = []
        step = 0
        with first_step_guard(ctx, branches=n):
            while live:
                params = [ctx.step_params(ctx.seed("ffs", step, i)) for i in range(len(live))]
                groups = ctx.expand(live, n=counts, params=params)
                ctx.release([p for p in live if p is not ctx.root], prune=False)
                children = [c for g, p in zip(groups, live) for c in g]
                for c in children:
                    length[c.id] = length[c.parent] + c.num_tokens
                mark_step_done(ctx, children)
                step += 1
                finished += [c for c in children if c.status is NodeStatus.TERMINAL]
                live = [c for c in children if c.status is not NodeStatus.TERMINAL]
                counts = [1] * len(live)
                ctx.emit(step=step, live=len(live), note=f"{len(finished)} finished")
                if finished:
                    first = min(finished, key=lambda f: length[f.id])
                    cut = any(c.cut_by_budget for c in children)
                    if cut or all(length[first.id] <= length[s.id] for s in live):
                        ctx.info["first_finish_tokens"] = length[first.id]
                        ctx.offer(first)
                        break
                stop_if_cut(ctx, children)
        ctx.release(live + finished)
