"""Adaptive consistency: sample in waves, stop once the vote is decided (docs/algorithms.md#adaptive-consistency).

    counts = Counter()
    while sum(counts) < max_n:
        for y in LM.sample(x, n=batch): counts[ans(y)] += 1   # ONE expand per wave
        v1, v2 = top-2 counts (v2 = 0 with one class)
        conf = BetaCDF(0.5; a=v2 + 1, b=v1 + 1)   # P(leader's share > runner-up's)
        if conf > threshold: break
    return counts.most_common(1)

Samples without an answer do not vote. Each wave's KV is released as soon as its
answers are read. The stopping decision per wave is kept in ``Result.info["waves"]``.
Must NOT know: engine internals.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from ttc.aggregate import Selection
from ttc.answers import answer_key
from ttc.strategies.base import SearchContext, SearchStrategy, StrategyConfig, register
from ttc.strategies.common import first_step_guard, mark_step_done, stop_if_cut


class AdaptiveConsistencyConfig(StrategyConfig):
    name: Literal["adaptive_consistency"] = "adaptive_consistency"
    max_n: PositiveInt = Field(default=40, description="samples at most")
    batch: PositiveInt = Field(default=4, description="samples per wave")
    threshold: float = Field(default=0.95, gt=0.0, lt=1.0,
                             description="stop once P(leader is the majority) exceeds this")

    @model_validator(mode="after")
    def _batch_fits(self) -> "AdaptiveConsistencyConfig":
        if self.batch > self.max_n:
            raise ValueError(f"batch ({self.batch}) must not exceed max_n ({self.max_n})")
        return self


def beta_confidence(v1: int, v2: int) -> float:
    """P(p_leader > p_runner_up) under a uniform prior: BetaCDF(1/2; v2 + 1, v1 + 1).

    For integer a = v2 + 1, b = v1 + 1 the regularised incomplete beta function is a
    binomial tail: I_{1/2}(a, b) = P(Binomial(a + b - 1, 1/2) >= a), exact in integers.
    """
    a, b = v2 + 1, v1 + 1
    n = a + b - 1
    return sum(math.comb(n, j) for j in range(a, n + 1)) / 2 ** n


@register(AdaptiveConsistencyConfig)
class AdaptiveConsistency(SearchStrategy):
    config: AdaptiveConsistencyConfig
    selection = Selection.MAJORITY

    def search(self, ctx: SearchContext) -> None:
        cfg = self.config
        counts: dict[str, int] = {}
        drawn = 0
        waves = ctx.info.setdefault("waves", [])
        with first_step_guard(ctx, branches=cfg.batch):
            while drawn < cfg.max_n:
                k = min(cfg.batch, cfg.max_n - drawn)
                (samples,) = ctx.expand([ctx.root], n=k,
                                        params=ctx.solution_params(ctx.seed("ac", drawn)))
                mark_step_done(ctx, samples)
                drawn += k
                for node in samples:
                    cand = ctx.offer(node)
                    key = answer_key(cand.answer)
                    if key is not None:
                        counts[key] = counts.get(key, 0) + 1
                ctx.release(samples, prune=False)
                stop_if_cut(ctx, samples)
                top = sorted(counts.values(), reverse=True) + [0, 0]
                conf = beta_confidence(top[0], top[1])
                waves.append({"samples": drawn, "leader": top[0], "runner_up": top[1],
                              "confidence": conf})
                ctx.emit(step=len(waves), live=0, best_score=conf,
                         note=f"{drawn} samples, P(decided)={conf:.3f}")
                if conf > cfg.threshold:
                    break
        ctx.info["samples"] = drawn
