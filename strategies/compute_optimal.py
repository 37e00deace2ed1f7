"""Compute-optimal strategy choice per difficulty (docs/algorithms.md#compute-optimal-choice, Snell et al.).

    probe      = ``probe_samples`` whole solutions, scored        (ONE engine call, ONE
                                                                   verifier call)
    difficulty = 1 - mean(final-answer score of the probe)        (model-predicted: no
                                                                   gold answer needed)
    bin        = how many of ``bin_edges`` are <= difficulty      (0 easiest .. 4 hardest)
    run per_bin[bin] on the same search context: its generations and verifier calls
    go through the same metered views, so one ledger and one budget cover probe + search
    answer      = the chosen strategy's own selection over its candidates (and the probe's,
                  ``reuse_probe``)

The table is fitted offline (docs/algorithms.md#compute-optimal-choice step 2): :func:`quantile_edges` cuts held-out
difficulty estimates into equal-count bins (Snell's five quantile levels), and
:func:`best_per_bin` picks, per bin, the candidate configuration with the best held-out
accuracy; grading held-out answers is the caller's job (this module never sees gold).

Choices where the spec is silent: the default edges (0.2, 0.4, 0.6, 0.8) are fixed cut
points, not fitted quantiles; the default table follows the paper's qualitative finding
(best-of-N on easy bins, beam search on harder ones), it is not fitted; with no scored
probe sample the difficulty is 0.5 (no evidence either way); the probe's samples stay in
the candidate pool (they were paid for) unless ``reuse_probe`` is false.
Must NOT know: engine internals (pages, KV layout), Hydra, file formats, gold answers.
"""

from __future__ import annotations

import bisect
from typing import Any, Literal, Sequence

from pydantic import BaseModel, Field, PositiveInt, SerializeAsAny, field_validator, \
    model_validator

from ttc.aggregate import StepAggregation
from ttc.strategies.base import (STRATEGIES, SearchContext, SearchStrategy, StrategyConfig,
                                 register)
from ttc.strategies.common import stop_if_cut
from ttc.types import Candidate

DEFAULT_PER_BIN: tuple[dict[str, Any], ...] = (
    {"name": "best_of_n", "n": 8},
    {"name": "best_of_n", "n": 8},
    {"name": "beam", "n": 8, "width": 4},
    {"name": "beam", "n": 8, "width": 4},
    {"name": "beam", "n": 16, "width": 4},
)


class ComputeOptimalConfig(StrategyConfig):
    name: Literal["compute_optimal"] = "compute_optimal"
    probe_samples: PositiveInt = 4
    bin_edges: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)   # on predicted difficulty [0, 1]
    per_bin: tuple[SerializeAsAny[BaseModel], ...] = Field(
        default=DEFAULT_PER_BIN, validate_default=True,
        description="one strategy config per bin, easiest first (len(bin_edges) + 1)")
    reuse_probe: bool = True

    @field_validator("per_bin", mode="before")
    @classmethod
    def _strategy_configs(cls, value: Any) -> tuple[BaseModel, ...]:
        out = []
        for item in value:
            config = STRATEGIES.make_config(item)
            if config.name == "compute_optimal":
                raise ValueError("per_bin cannot nest compute_optimal in itself")
            out.append(config)
        return tuple(out)

    @model_validator(mode="after")
    def _bins_match(self) -> "ComputeOptimalConfig":
        edges = self.bin_edges
        if any(not 0.0 <= e <= 1.0 for e in edges) or any(
                b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"bin_edges must rise strictly within [0, 1]; got {list(edges)}")
        if len(self.per_bin) != len(edges) + 1:
            raise ValueError(f"per_bin needs one strategy per bin: {len(edges) + 1} for "
                             f"{len(edges)} bin_edges; got {len(self.per_bin)}")
        return self


def difficulty_bin(difficulty: float, edges: Sequence[float]) -> int:
    """0 (easiest) .. len(edges) (hardest): how many edges are <= difficulty."""
    return bisect.bisect_right(list(edges), difficulty)


def predicted_difficulty(scores: Sequence[float]) -> float:
    """1 - mean final-answer score (Snell's model-predicted difficulty); 0.5 if none."""
    return 1.0 - sum(scores) / len(scores) if scores else 0.5


def quantile_edges(difficulties: Sequence[float], bins: int = 5) -> tuple[float, ...]:
    """The ``bins - 1`` cut points that split held-out difficulties into equal-count bins
    (lower empirical quantiles)."""
    if bins < 2:
        raise ValueError(f"bins must be at least 2; got {bins!r}.")
    if len(difficulties) < bins:
        raise ValueError(f"need at least {bins} held-out difficulties for {bins} bins; "
                         f"got {len(difficulties)}.")
    xs = sorted(difficulties)
    return tuple(xs[(k * len(xs)) // bins] for k in range(1, bins))


def best_per_bin(records: Sequence[tuple[int, int, float]], *, bins: int,
                 candidates: int) -> list[int | None]:
    """Per bin, the candidate configuration with the best mean held-out accuracy.

    ``records`` are (bin, candidate index, correct in [0, 1]) rows, one per held-out
    problem and candidate; ties go to the lower index (list cheaper candidates first);
    a bin without rows gets None (keep its default).
    """
    totals = [[0.0] * candidates for _ in range(bins)]
    counts = [[0] * candidates for _ in range(bins)]
    for b, c, correct in records:
        totals[b][c] += correct
        counts[b][c] += 1
    out: list[int | None] = []
    for b in range(bins):
        means = [totals[b][c] / counts[b][c] if counts[b][c] else None
                 for c in range(candidates)]
        seen = [(m, -c) for c, m in enumerate(means) if m is not None]
        out.append(-max(seen)[1] if seen else None)
    return out


@register(ComputeOptimalConfig)
class ComputeOptimal(SearchStrategy):
    config: ComputeOptimalConfig

    def search(self, ctx: SearchContext) -> None:
        cfg = self.config
        (probe,) = ctx.expand([ctx.root], n=cfg.probe_samples,
                              params=ctx.solution_params(ctx.seed("compute-optimal-probe")))
        stop_if_cut(ctx, probe)
        ctx.score([p for p in probe if p.text.strip()])
        scores = [ctx.value(p, StepAggregation.LAST) for p in probe if p.score is not None]
        if cfg.reuse_probe:
            for p in probe:
                if p.score is not None:
                    ctx.offer(p, score=p.score)
        ctx.release(probe, prune=False)
        difficulty = predicted_difficulty(scores)
        b = difficulty_bin(difficulty, cfg.bin_edges)
        inner = self._inner(b)
        ctx.info.update(probe_scores=scores, difficulty=difficulty, bin=b, chosen=inner.name,
                        chosen_config=cfg.per_bin[b].model_dump(mode="json"))
        ctx.emit(step=1, live=0, best_score=max(scores, default=None),
                 note=f"difficulty {difficulty:.2f}: bin {b} -> {inner.name}")
        inner.search(ctx)

    def _inner(self, b: int) -> SearchStrategy:
        # NOTE: built per call, not kept on self: one strategy object may serve several
        # problems at once (evals' concurrency), each with its own bin.
        return STRATEGIES.build(self.config.per_bin[b], generation=self.generation)

    def choose(self, ctx: SearchContext) -> Candidate | None:
        if "bin" not in ctx.info:        # the budget ran out during the probe
            return super().choose(ctx)
        return self._inner(ctx.info["bin"]).choose(ctx)
