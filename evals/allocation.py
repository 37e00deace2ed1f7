"""Difficulty-aware split of a dataset-level token budget over problems (docs/algorithms.md#compute-optimal-choice, docs/algorithms.md#dataset-level-allocation).

    probe   : every problem gets ``probe_samples`` scored solutions (best-of-N, one call)
    q_i     : predicted success rate from the PRM (no gold answer needed: Snell et al.'s
              model-predicted difficulty), :func:`success_estimate`
    split   : waves of ``wave`` samples go, one at a time, to the problem of largest
              marginal gain g_i = q_i (1 - q_i)^{k_i} (= P(solved with k_i + 1) -
              P(solved with k_i) for a perfect checker); a problem whose vote is decided
              (Beta rule of docs/algorithms.md#adaptive-consistency) leaves the queue and its share moves to undecided ones
              (docs/algorithms.md#dataset-level-allocation with voting). Near-certain problems stop early, hopeless ones
              (q ~ 0) get little, and hard-but-solvable ones get the most.
    answer  : weighted vote over all of a problem's samples

The dataset budget is exact: every run's generated-token cap is what is left of the
dataset budget, so the total never exceeds it. :func:`allocate_samples` is the one-shot
version of the split (a plan from fixed estimates). :func:`solve_uniform` is the
baseline (the same number of samples for every problem, no probe). Both solvers return
a :class:`DatasetRun`.
Must NOT know: engine internals (pages, KV layout), Hydra, file formats, gold answers.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Sequence

from ttc.aggregate import Selection, select, vote_totals
from ttc.config import GenerationConfig
from ttc.ledger import Budget, ComputeLedger
from ttc.protocols import Generator, Verifier
from ttc.strategies.best_of_n import BestOfN, BestOfNConfig
from ttc.types import Problem, Result


@dataclass(frozen=True, slots=True)
class DatasetRun:
    """Per-problem results, samples planned per problem, and the summed ledger."""

    results: tuple[Result, ...]
    samples: tuple[int, ...]
    success_estimates: tuple[float, ...]
    generated_tokens: int
    budget: int


def allocate_samples(success: Sequence[float], total: int, *,
                     start: Sequence[int] | None = None) -> list[int]:
    """Greedy marginal-gain allocation of ``total`` samples (``start`` included)."""
    if total < 0:
        raise ValueError(f"total must be a non-negative integer; got {total!r}.")
    for q in success:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"success estimates must be in [0, 1]; got {q!r}.")
    k = list(start) if start is not None else [0] * len(success)
    if len(k) != len(success):
        raise ValueError(f"start has {len(k)} entries for {len(success)} problems.")
    heap = [(-q * (1.0 - q) ** k[i], i) for i, q in enumerate(success)]
    heapq.heapify(heap)
    left = total - sum(k)
    while left > 0 and heap:
        _, i = heapq.heappop(heap)
        k[i] += 1
        left -= 1
        q = success[i]
        heapq.heappush(heap, (-q * (1.0 - q) ** k[i], i))
    return k


def _merge(problem: Problem, parts: list[Result], strategy: str) -> Result:
    cands = tuple(c for r in parts for c in r.candidates)
    chosen = select(cands, Selection.WEIGHTED) if cands else None
    ledger = ComputeLedger.total([r.ledger for r in parts])
    ledger.problems = 1
    return Result(problem_id=problem.id, strategy=strategy,
                  answer=chosen.answer if chosen else None,
                  trajectory=chosen.steps if chosen else (), candidates=cands,
                  ledger=ledger.snapshot(), info={"samples": len(cands)})


def _best_of_n(problem: Problem, n: int, *, generator: Generator, verifier: Verifier,
               remaining: int, generation: GenerationConfig) -> Result:
    strat = BestOfN(BestOfNConfig(n=n, keep_tree=False), generation=generation)
    return strat.run(problem, generator=generator, verifier=verifier,
                     budget=Budget(max_generated_tokens=max(1, remaining)))


def success_estimate(scores: Sequence[float]) -> float:
    """Predicted success rate from PRM scores of finished samples (no gold answer).

    The posterior mean of a Beta(1, 1) prior updated with one "success" per sample the
    PRM scores at 0.5 or above: ``(1 + hits) / (2 + n)``.
    """
    hits = sum(1 for s in scores if s >= 0.5)
    return (1.0 + hits) / (2.0 + len(scores))


def solve_allocated(problems: Sequence[Problem], *, generator: Generator,
                    verifier: Verifier, total_tokens: int, probe_samples: int = 2,
                    wave: int = 2, vote_threshold: float = 0.95,
                    certaindex_threshold: float | None = None,
                    generation: GenerationConfig | None = None) -> DatasetRun:
    """Probe every problem, then give waves of samples by marginal gain until the
    dataset budget ``total_tokens`` is spent.

    A problem whose vote is already decided (:func:`vote_confidence` of its answer
    counts >= ``vote_threshold``, or, with ``certaindex_threshold``, its answers'
    certaindex H~ (:func:`~ttc.strategies.certaindex.answer_certaindex`) at least that)
    gets no more samples; its share goes to undecided ones.
    """
    from ttc.strategies.adaptive import vote_confidence
    from ttc.strategies.certaindex import answer_certaindex

    if certaindex_threshold is not None and not 0.0 <= certaindex_threshold <= 1.0:
        raise ValueError(f"certaindex_threshold must be in [0, 1] (or None); got "
                         f"{certaindex_threshold!r}.")

    if total_tokens <= 0:
        raise ValueError(f"total_tokens must be a positive integer; got {total_tokens!r}.")
    if probe_samples <= 0 or wave <= 0:
        raise ValueError(f"probe_samples and wave must be positive integers; got "
                         f"{probe_samples!r} and {wave!r}.")
    generation = generation or GenerationConfig()
    parts: list[list[Result]] = [[] for _ in problems]
    spent = 0

    def draw(i: int, n: int, round_: int) -> None:
        nonlocal spent
        gen = generation.model_copy(update={"seed": generation.seed + round_})
        r = _best_of_n(problems[i], n, generator=generator, verifier=verifier,
                       remaining=total_tokens - spent, generation=gen)
        spent += r.ledger.generated_tokens
        parts[i].append(r)

    for i in range(len(problems)):
        if spent < total_tokens:
            draw(i, probe_samples, 0)
    per_sample = spent / max(1, probe_samples * len(problems))
    rounds = [1] * len(problems)

    def state(i: int) -> tuple[float, int, bool]:
        cands = [c for r in parts[i] for c in r.candidates]
        q = success_estimate([c.score for c in cands if c.score is not None])
        counts = list(vote_totals(cands, weighted=False).values())
        settled = (certaindex_threshold is not None
                   and answer_certaindex([c.answer for c in cands]) >= certaindex_threshold)
        return q, len(cands), settled or vote_confidence(counts) >= vote_threshold

    heap = []
    for i in range(len(problems)):
        q, k, decided = state(i)
        if not decided:
            heap.append((-q * (1.0 - q) ** k, i))
    heapq.heapify(heap)
    while heap and total_tokens - spent >= wave * per_sample:
        _, i = heapq.heappop(heap)
        draw(i, wave, rounds[i])
        rounds[i] += 1
        q, k, decided = state(i)
        if not decided:
            heapq.heappush(heap, (-q * (1.0 - q) ** k, i))
    results = [_merge(p, ps, "allocated") if ps else
               Result(problem_id=p.id, strategy="allocated", answer=None)
               for p, ps in zip(problems, parts)]
    samples = tuple(sum(len(r.candidates) for r in ps) for ps in parts)
    return DatasetRun(results=tuple(results), samples=samples,
                      success_estimates=tuple(state(i)[0] for i in range(len(problems))),
                      generated_tokens=spent, budget=total_tokens)


def solve_uniform(problems: Sequence[Problem], *, generator: Generator, verifier: Verifier,
                  samples: int, total_tokens: int | None = None,
                  generation: GenerationConfig | None = None) -> DatasetRun:
    """The baseline: ``samples`` per problem for every problem (no probe), each run
    capped by what is left of ``total_tokens`` (``None`` = no dataset cap)."""
    if samples <= 0:
        raise ValueError(f"samples must be a positive integer; got {samples!r}.")
    if total_tokens is not None and total_tokens <= 0:
        raise ValueError(f"total_tokens must be a positive integer; got {total_tokens!r}.")
    generation = generation or GenerationConfig()
    budget = total_tokens if total_tokens is not None else 2**62
    spent = 0
    results = []
    for p in problems:
        if spent >= budget:
            results.append(Result(problem_id=p.id, strategy="uniform", answer=None))
            continue
        r = _best_of_n(p, samples, generator=generator, verifier=verifier,
                       remaining=budget - spent, generation=generation)
        spent += r.ledger.generated_tokens
        results.append(r)
    return DatasetRun(results=tuple(results), samples=tuple([samples] * len(problems)),
                      success_estimates=(), generated_tokens=spent, budget=budget)
