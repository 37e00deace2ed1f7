"""Best-of-N with a verifier (docs/algorithms.md#best-of-n).

    ys = LM.sample(x, n=N)                      # one request, prompt prefix shared
    scores = [agg(PRM.score(x, y)) for y in ys]
    naive    = ys[argmax(scores)]               # selection="best"
    weighted = argmax_a sum(w_i : ans_i == a)   # selection="weighted" (default)
               w_i = score_i, or exp(score_i / T) with weight_temperature=T (docs/algorithms.md#best-of-n)
    majority = argmax_a #{i : ans_i == a}       # selection="majority"

All N solutions are sampled in one ``expand`` call and scored in one verifier call.
Must NOT know: engine internals.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, field_validator

from ttc.aggregate import Selection, StepAggregation, weighted_majority
from ttc.strategies.base import SearchContext, SearchStrategy, StrategyConfig, register
from ttc.types import Candidate


class BestOfNConfig(StrategyConfig):
    name: Literal["best_of_n"] = "best_of_n"
    n: PositiveInt = 8
    selection: Selection = Selection.WEIGHTED
    aggregation: StepAggregation = StepAggregation.LAST
    weight_temperature: float | None = Field(
        default=None, description="weighted vote with w = exp(score / T); null: w = score")

    @field_validator("weight_temperature")
    @classmethod
    def _positive_temperature(cls, value: float | None) -> float | None:
        if value is not None and not value > 0:
            raise ValueError(f"weight_temperature must be > 0 or null; got {value!r}")
        return value


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

    def choose(self, ctx: SearchContext) -> Candidate | None:
        cfg = self.config
        if cfg.selection is Selection.WEIGHTED and cfg.weight_temperature is not None \
                and ctx.candidates:
            return weighted_majority(ctx.candidates, temperature=cfg.weight_temperature)
        return super().choose(ctx)
