"""Adaptive budgets for one problem: sample in waves, stop once the vote or PRM is sure.

    wave = BudgetScheduler.next_wave(...)      # grows geometrically, never past the
    while wave > 0:                            # sample cap or the token allowance left
        sample ``wave`` whole solutions (ONE engine call), score them (ONE verifier call)
        stop if vote_confidence(answer counts) >= vote_threshold       (docs/algorithms.md#adaptive-consistency Beta rule)
        stop if the leading answer's best PRM score >= prm_threshold and it leads the
                weighted vote with at least ``min_agree`` samples       (docs/algorithms.md#self-evaluation in spirit)
    answer: weighted vote over every sample drawn

:class:`BudgetScheduler` and the two stopping rules are plain values and functions, so
any strategy (or an eval) can use them; ``ttc.evals.allocation`` splits a
dataset-level budget over problems.

KV lifecycle: every sample is released as soon as it is scored (only the prompt stays).
Must NOT know: engine internals (pages, KV layout), Hydra, file formats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

from pydantic import Field, PositiveInt, model_validator

from ttc.aggregate import Selection, StepAggregation, vote_totals
from ttc.answers import answer_key
from ttc.strategies.base import SearchContext, SearchStrategy, StrategyConfig, register
from ttc.types import Candidate


def vote_confidence(counts: Sequence[int]) -> float:
    """P(the leader's true share beats the runner-up's | counts), the Beta rule of docs/algorithms.md#adaptive-consistency.

    ``counts`` are votes per answer class (any order). Equals the regularised incomplete
    beta ``I_{1/2}(v1 + 1, v2 + 1)`` with v1, v2 the top two counts.
    """
    from scipy.stats import beta

    top = sorted((int(c) for c in counts if c > 0), reverse=True)
    if not top:
        return 0.0
    v1, v2 = top[0], (top[1] if len(top) > 1 else 0)
    return float(beta.cdf(0.5, v2 + 1, v1 + 1))


def prm_confident(candidates: Sequence[Candidate], *, threshold: float,
                  min_agree: int) -> bool:
    """True when the weighted-vote leader has a sample scored ``>= threshold`` and at
    least ``min_agree`` samples."""
    totals = vote_totals(candidates, weighted=True)
    if not totals:
        return False
    leader = max(totals, key=lambda k: totals[k])
    members = [c for c in candidates if answer_key(c.answer) == leader]
    best = max((c.score for c in members if c.score is not None), default=0.0)
    return best >= threshold and len(members) >= min_agree


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetScheduler:
    """How many samples the next wave may draw.

    Waves grow geometrically from ``first_wave`` by ``growth``; a wave never goes past
    ``max_samples`` in all, nor past the token allowance left (a sample is only started
    when ``tokens_per_sample`` more tokens fit, so no sample is cut by the budget).
    """

    max_samples: int
    first_wave: int = 4
    growth: float = 2.0

    def __post_init__(self) -> None:
        if self.max_samples <= 0:
            raise ValueError(f"max_samples must be a positive integer; got {self.max_samples!r}.")
        if self.first_wave <= 0:
            raise ValueError(f"first_wave must be a positive integer; got {self.first_wave!r}.")
        if self.growth < 1.0:
            raise ValueError(f"growth must be at least 1; got {self.growth!r}.")

    def next_wave(self, *, wave_index: int, drawn: int, remaining_tokens: int | None,
                  tokens_per_sample: float | None) -> int:
        """Samples to draw in wave ``wave_index`` (0-based); 0 means stop."""
        size = int(math.ceil(self.first_wave * self.growth ** wave_index))
        size = min(size, self.max_samples - drawn)
        if remaining_tokens is not None and tokens_per_sample:
            size = min(size, int(remaining_tokens // max(1.0, tokens_per_sample)))
        return max(0, size)


class AdaptiveConfig(StrategyConfig):
    name: Literal["adaptive"] = "adaptive"
    max_samples: PositiveInt = 32
    first_wave: PositiveInt = 4
    growth: float = Field(default=2.0, ge=1.0)
    vote_threshold: float = Field(default=0.95, gt=0.5, le=1.0)
    prm_threshold: float | None = Field(default=0.9, gt=0.0, le=1.0)
    min_agree: PositiveInt = 2
    selection: Selection = Selection.WEIGHTED
    aggregation: StepAggregation = StepAggregation.LAST

    @model_validator(mode="after")
    def _wave_fits(self) -> "AdaptiveConfig":
        if self.first_wave > self.max_samples:
            raise ValueError(f"first_wave ({self.first_wave}) must not exceed max_samples "
                             f"({self.max_samples}).")
        return self


@register(AdaptiveConfig)
class Adaptive(SearchStrategy):
    config: AdaptiveConfig

    def search(self, ctx: SearchContext) -> None:
        cfg = self.config
        sched = BudgetScheduler(max_samples=cfg.max_samples, first_wave=cfg.first_wave,
                                growth=cfg.growth)
        drawn, wave, spent = 0, 0, 0
        stop = "max_samples"
        while True:
            per_sample = spent / drawn if drawn else None
            size = sched.next_wave(wave_index=wave, drawn=drawn,
                                   remaining_tokens=ctx.ledger.remaining_generated_tokens(),
                                   tokens_per_sample=per_sample)
            if size <= 0:
                stop = "budget" if drawn < cfg.max_samples else stop
                break
            before = ctx.ledger.generated_tokens
            (samples,) = ctx.expand([ctx.root], n=size,
                                    params=ctx.solution_params(ctx.seed("adaptive", wave)))
            spent += ctx.ledger.generated_tokens - before
            drawn += size
            wave += 1
            ctx.score([s for s in samples if s.text.strip()])
            for node in samples:
                if node.text.strip():
                    ctx.offer(node, score=ctx.value(node, cfg.aggregation))
            ctx.release(samples, prune=False)
            totals = vote_totals(ctx.candidates, weighted=False)
            conf = vote_confidence(list(totals.values()))
            ctx.emit(step=wave, live=0, note=f"{drawn} samples, vote confidence {conf:.2f}")
            if conf >= cfg.vote_threshold:
                stop = "vote"
                break
            if cfg.prm_threshold is not None and prm_confident(
                    ctx.candidates, threshold=cfg.prm_threshold, min_agree=cfg.min_agree):
                stop = "prm"
                break
        ctx.info.update(samples=drawn, waves=wave, stopped_by=stop)
