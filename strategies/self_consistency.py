"""Self-consistency: sample N solutions, return the most frequent answer (§2.2).

No verifier calls. Ties go to the answer class seen first.
Must NOT know: engine internals.
"""

from __future__ import annotations

from typing import Literal

from pydantic import PositiveInt

from ttc.aggregate import Selection
from ttc.strategies.base import SearchContext, SearchStrategy, StrategyConfig, register


class SelfConsistencyConfig(StrategyConfig):
    name: Literal["self_consistency"] = "self_consistency"
    n: PositiveInt = 8


@register(SelfConsistencyConfig)
class SelfConsistency(SearchStrategy):
    config: SelfConsistencyConfig
    selection = Selection.MAJORITY

    def search(self, ctx: SearchContext) -> None:
        (samples,) = ctx.expand([ctx.root], n=self.config.n,
                                params=ctx.solution_params(ctx.seed("sc")))
        for node in samples:
            ctx.offer(node)
        ctx.release(samples, prune=False)
        ctx.emit(step=1, live=0, note=f"{len(samples)} votes")
