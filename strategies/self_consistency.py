"""Self-consistency: sample N solutions, return the most frequent answer (docs/algorithms.md#self-consistency).

With ``certaindex_at`` = k < N (Dynasor's certaindex, docs/algorithms.md#dynasor-and-certaindex): sample k first; if the
answers' normalised entropy certaindex H~ >= ``certaindex_threshold`` stop there, else
sample the other N - k. ``Result.info["certaindex"]`` holds H~ at the check (a signal a
dataset-level allocator can read) and whether it stopped.
No verifier calls. Ties go to the answer class seen first.
Must NOT know: engine internals.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from ttc.aggregate import Selection
from ttc.strategies.base import SearchContext, SearchStrategy, StrategyConfig, register
from ttc.strategies.certaindex import answer_certaindex


class SelfConsistencyConfig(StrategyConfig):
    name: Literal["self_consistency"] = "self_consistency"
    n: PositiveInt = 8
    certaindex_at: PositiveInt | None = Field(
        default=None, description="detect@k: samples before the certaindex check (null: "
        "no check, always N)")
    certaindex_threshold: float = Field(
        default=0.7, gt=0.0, le=1.0, description="stop at the check if H~ >= this "
        "(1 = only when unanimous)")

    @model_validator(mode="after")
    def _check_fits(self) -> "SelfConsistencyConfig":
        if self.certaindex_at is not None and self.certaindex_at >= self.n:
            raise ValueError(f"certaindex_at ({self.certaindex_at}) must be below n "
                             f"({self.n})")
        return self


@register(SelfConsistencyConfig)
class SelfConsistency(SearchStrategy):
    config: SelfConsistencyConfig
    selection = Selection.MAJORITY

    def search(self, ctx: SearchContext) -> None:
        cfg = self.config
        first = cfg.certaindex_at or cfg.n
        samples = self._sample(ctx, first, "sc")
        if cfg.certaindex_at is not None:
            h = answer_certaindex([c.answer for c in ctx.candidates])
            stop = h >= cfg.certaindex_threshold
            ctx.info["certaindex"] = {"at": first, "value": h, "stopped": stop}
            if not stop:
                samples += self._sample(ctx, cfg.n - first, "sc-more")
        ctx.emit(step=1, live=0, note=f"{len(samples)} votes")

    def _sample(self, ctx: SearchContext, n: int, tag: str) -> list:
        (samples,) = ctx.expand([ctx.root], n=n, params=ctx.solution_params(ctx.seed(tag)))
        for node in samples:
            ctx.offer(node)
        ctx.release(samples, prune=False)
        return samples
