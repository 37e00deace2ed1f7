"""Difficulty-aware split of a dataset-level token budget over problems (§10.3, §10.4).

    probe   : every problem gets ``probe_samples`` scored solutions (best-of-N, one call)
    q_i     : predicted success rate = mean final PRM score of its probe (no gold answer
              needed: Snell et al.'s model-predicted difficulty)
    split   : samples left K = (budget - probe tokens) / mean tokens per sample, given
              one at a time to the problem of largest marginal gain
              g_i = q_i (1 - q_i)^{k_i}  (= P(solve with k_i+1) - P(solve with k_i)),
              so near-certain problems stop early, hopeless ones (q ~ 0) get little and
              the middle, the hard-but-solvable ones, get the most
    spend   : each problem draws its extra samples; its probe samples are kept and the
              answer is a weighted vote over both

The dataset budget is exact: every run's generated-token cap is what is left of the
dataset budget, so the total never exceeds it. :func:`solve_uniform` is the baseline
(the same budget split evenly, no probe). Both return a :class:`DatasetRun`.
Must NOT know: engine internals (pages, KV layout), Hydra, file formats, gold answers.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Sequence

from ttc.aggregate import Selection, select
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
                  ledger=ledger.snapshot(), budget_exhausted=ledger.budget_exhausted,
                  info={"samples": len(cands)})


def _best_of_n(problem: Problem, n: int, *, generator: Generator, verifier: Verifier,
               remaining: int, generation: GenerationConfig) -> Result:
    strat = BestOfN(BestOfNConfig(n=n, keep_tree=False), generation=generation)
    return strat.run(problem, generator=generator, verifier=verifier,
                     budget=Budget(max_generated_tokens=max(1, remaining)))


def solve_allocated(problems: Sequence[Problem], *, generator: Generator,
                    verifier: Verifier, total_tokens: int, probe_samples: int = 2,
                    generation: GenerationConfig | None = None) -> DatasetRun:
    """Probe, estimate difficulty, split ``total_tokens`` by marginal gain, solve."""
    if total_tokens <= 0:
        raise ValueError(f"total_tokens must be a positive integer; got {total_tokens!r}.")
    if probe_samples <= 0:
        raise ValueError(f"probe_samples must be a positive integer; got {probe_samples!r}.")
    generation = generation or GenerationConfig()
    spent = 0
    probes: list[Result | None] = []
    for p in problems:
        if spent >= total_tokens:
            probes.append(None)
            continue
        r = _best_of_n(p, probe_samples, generator=generator, verifier=verifier,
                       remaining=total_tokens - spent, generation=generation)
        spent += r.ledger.generated_tokens
        probes.append(r)
    q = []
    for r in probes:
        scores = [c.score for c in (r.candidates if r else ()) if c.score is not None]
        q.append(min(0.98, max(0.02, sum(scores) / len(scores))) if scores else 0.02)
    done = [len(r.candidates) if r else 0 for r in probes]
    per_sample = spent / max(1, sum(done))
    extra_total = int((total_tokens - spent) // max(1.0, per_sample))
    k = allocate_samples(q, sum(done) + extra_total, start=done)
    # the second phase samples with another seed so it extends, not repeats, the probe
    second = generation.model_copy(update={"seed": generation.seed + 1})
    results = []
    for p, r, ki, di in zip(problems, probes, k, done):
        parts = [r] if r is not None else []
        if ki > di and spent < total_tokens:
            extra = _best_of_n(p, ki - di, generator=generator, verifier=verifier,
                               remaining=total_tokens - spent, generation=second)
            spent += extra.ledger.generated_tokens
            parts.append(extra)
        results.append(_merge(p, parts, "allocated") if parts else
                       Result(problem_id=p.id, strategy="allocated", answer=None))
    return DatasetRun(results=tuple(results), samples=tuple(k), success_estimates=tuple(q),
                      generated_tokens=spent, budget=total_tokens)


def solve_uniform(problems: Sequence[Problem], *, generator: Generator, verifier: Verifier,
                  total_tokens: int, tokens_per_sample: float,
                  generation: GenerationConfig | None = None) -> DatasetRun:
    """The baseline: the same budget split evenly (``total / (Q * tokens_per_sample)``)."""
    if total_tokens <= 0:
        raise ValueError(f"total_tokens must be a positive integer; got {total_tokens!r}.")
    generation = generation or GenerationConfig()
    n = max(1, int(total_tokens // (len(problems) * max(1.0, tokens_per_sample))))
    spent = 0
    results = []
    for p in problems:
        if spent >= total_tokens:
            results.append(Result(problem_id=p.id, strategy="uniform", answer=None))
            continue
        r = _best_of_n(p, n, generator=generator, verifier=verifier,
                       remaining=total_tokens - spent, generation=generation)
        spent += r.ledger.generated_tokens
        results.append(r)
    return DatasetRun(results=tuple(results), samples=tuple([n] * len(problems)),
                      success_estimates=(), generated_tokens=spent, budget=total_tokens)
