"""Best-of-N with a verifier (ALGORITHMS.md §2.1, §2.3).

    ys = LM.sample(x, n=N)                      # one request, prompt prefix shared
    scores = [agg(PRM.score(x, y)) for y in ys]
    naive    = ys[argmax(scores)]               # selection="best"
    weighted = argmax_a sum(score_i : ans_i == a)   # selection="weighted" (default)

All N solutions are sampled in one ``expand`` call and scored in one verifier call.
Must NOT know: engine internals.
"""

from __future__ import annotations

from typing import Literal

from pydantic import PositiveInt

from ttc.aggregate import Selection, StepAggregation
from ttc.strategies.base import SearchContext, SearchStrategy, StrategyConfig, register


class BestOfNConfig(StrategyConfig):
    name: Literal["best_of_n"] = "best_of_n"
    n: PositiveInt = 8
    selection: Selection = Selection.WEIGHTED
    aggregation: StepAggregation = StepAggregation.LAST


@register(BestOfNConfig)
class BestOfN(SearchStrategy):
    config: BestOfNConfig

    def search(self, ctx: SearchContext) -> None:
        cfg = self.config
        (samples,) = ctx.expand([ctx.root], n=cfg.n, params=ctx.solution_params(ctx.seed("bon")))
        ctx.emit(step=1, live=len(samples), note="sampled")
        ctx.score(samples)
        for node in samples:
            ctx.offer(node, score=ctx.value(node, cfg.aggregation))
        ctx.release(samples, prune=False)
        best = max((c.score for c in ctx.candidates if c.score is not None), default=None)
        ctx.emit(step=2, live=0, best_score=best, note="scored")
