"""Helpers shared by the step-level strategies: seeds per branch, weights, resampling.

Contract: pure functions over floats and nodes, plus :func:`first_step_guard`, the one
rule for budgets too small to search at all:

    a budget that cannot cover one search step (every branch of the first expansion
    generated and scored) does not raise: the run stops, returns what it has (usually
    no answer) and sets ``Result.info["budget_too_small"]`` to a sentence saying which
    budget ran out; a progress event with the same note is emitted.

Raising instead would make budget sweeps fail on their smallest point; a flag keeps the
sweep's table complete and still says plainly that the point is meaningless.
Must NOT know: engine internals (pages, handles beyond passing them), Hydra.
"""

from __future__ import annotations

import math
import random
from contextlib import contextmanager
from typing import Iterator, Sequence

from ttc.ledger import BudgetExhausted
from ttc.strategies.base import SearchContext
from ttc.tree import Node

__all__ = ["ess", "first_step_guard", "logit", "mark_step_done", "multinomial_resample",
           "resample", "softmax", "spread", "stop_if_cut", "systematic_resample"]


def logit(p: float, *, eps: float = 1e-6) -> float:
    """log(p / (1 - p)) with p clipped to [eps, 1 - eps] (a PRM may return 0 or 1)."""
    p = min(max(p, eps), 1.0 - eps)
    return math.log(p / (1.0 - p))


def softmax(logits: Sequence[float], *, temperature: float = 1.0) -> list[float]:
    """softmax(logits / temperature), computed stably. ``temperature`` must be > 0."""
    if temperature <= 0:
        raise ValueError(f"softmax temperature must be > 0; got {temperature!r}.")
    if not logits:
        return []
    scaled = [x / temperature for x in logits]
    top = max(scaled)
    exps = [math.exp(x - top) for x in scaled]
    total = sum(exps)
    return [e / total for e in exps]


def ess(weights: Sequence[float]) -> float:
    """Effective sample size 1 / sum(w_i^2) of normalised weights (N when uniform)."""
    return 1.0 / sum(w * w for w in weights)


def multinomial_resample(weights: Sequence[float], n: int, rng: random.Random) -> list[int]:
    """``n`` independent draws idx_j ~ Categorical(weights)."""
    return rng.choices(range(len(weights)), weights=weights, k=n)


def systematic_resample(weights: Sequence[float], n: int, rng: random.Random) -> list[int]:
    """u ~ U[0, 1/n), u_j = u + j/n; idx_j = first i with cumsum(w)[i] > u_j."""
    u = rng.random() / n
    out: list[int] = []
    cum = 0.0
    i = -1
    for j in range(n):
        target = u + j / n
        while cum <= target and i < len(weights) - 1:
            i += 1
            cum += weights[i]
        out.append(i)
    return out


def resample(weights: Sequence[float], n: int, rng: random.Random, *, scheme: str) -> list[int]:
    if scheme == "systematic":
        return systematic_resample(weights, n, rng)
    if scheme == "multinomial":
        return multinomial_resample(weights, n, rng)
    raise ValueError(f"unknown resampling scheme {scheme!r}; allowed: systematic, multinomial.")


def spread(total: int, parts: int) -> list[int]:
    """Split ``total`` children over ``parts`` parents as evenly as possible, first ones first."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def best_score(nodes: Sequence[Node]) -> float | None:
    scores = [n.score for n in nodes if n.score is not None]
    return max(scores) if scores else None


def mark_step_done(ctx: SearchContext, children: Sequence[Node]) -> None:
    """Record a search step (expand + score) that fitted in the budget: no child was cut."""
    if not any(c.cut_by_budget for c in children):
        ctx.info["steps_completed"] = ctx.info.get("steps_completed", 0) + 1


def stop_if_cut(ctx: SearchContext, children: Sequence[Node]) -> None:
    """End the search once an expansion was cut by the generated-token budget.

    A cut call leaves a few tokens of allowance that lockstep decoding cannot share out
    (fewer than one per branch), so continuing would only issue empty expansions.
    """
    if any(c.cut_by_budget for c in children):
        raise ctx.ledger.exhausted("generated-token")


@contextmanager
def first_step_guard(ctx: SearchContext, *, branches: int) -> Iterator[None]:
    """Flag a budget that ran out before the first search step of ``branches`` finished."""
    ctx.info.setdefault("steps_completed", 0)
    try:
        yield
    except BudgetExhausted as exc:
        if ctx.info.get("steps_completed", 0) == 0:
            msg = (f"the {exc.what} budget (limit {exc.limit:g}) cannot cover one search "
                   f"step of {branches} branches; raise the budget or use fewer branches.")
            ctx.info["budget_too_small"] = msg
            ctx.emit(step=0, live=0, note=msg)
        raise
    else:
        if ctx.info.get("steps_completed", 0) == 0 and ctx.ledger.budget_exhausted:
            msg = (f"the generated-token budget (limit "
                   f"{ctx.ledger.budget.max_generated_tokens}) cannot cover one search step "
                   f"of {branches} branches; raise the budget or use fewer branches.")
            ctx.info["budget_too_small"] = msg
            ctx.emit(step=0, live=0, note=msg)
