"""Plan-and-Budget: split the question, then give each part a token cap (docs/algorithms.md#plan-and-budget).

    plan   = the planner's reply: sub-questions, one per numbered line, each with a
             complexity estimate "(complexity: c)"                       (ONE engine call)
    parts  = the parsed sub-questions (at most ``max_subquestions``), then the original
             question as the last part (its complexity: the mean of the others, 1 alone)
    w_i    = c_i * decay(i / (n - 1))               (``schedule``; uniform: w_i = 1)
    for i, part in enumerate(parts):                  (ONE engine call each, in order)
        cap_i = max(min_tokens, floor(left * w_i / sum(w_i..w_n-1)))
        answer part i from question + plan + the earlier parts' answers, <= cap_i tokens
        left -= tokens it used                        (what it leaves goes to later parts)
    answer = the last part's answer, scored by the verifier (ONE call)

``total_tokens`` (B) is the budget of the answers; the planner has its own cap
``plan_tokens``; the run's generated-token budget stays a hard limit on both.
Decay schedules over t = i / (n - 1) in [0, 1], each ending at ``decay_floor`` of its
start: linear 1 - (1 - f) t; polynomial f + (1 - f)(1 - t)^p; cosine f + (1 - f)(1 +
cos(pi t)) / 2; ``weighted`` is complexity alone, ``uniform`` ignores it too.

Choices where the spec is silent (the paper's exact schedule constants are not given
in docs/algorithms.md#plan-and-budget): the planner's line format above; complexity 1 where a line gives none; the
original question as a final part; unused tokens roll over to later parts; floor 0.25,
power 2, cosine by default. With no parseable plan (e.g. the simulated backend, whose
text ignores the prompt) the only part is the question itself, with the whole B.

Every part is a new prompt to the same model (:meth:`SearchContext.open_prompt`),
prefilled and charged; prompt nodes are released once answered, answers once read.
Must NOT know: engine internals (pages, KV layout), Hydra, file formats.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, Sequence

from pydantic import Field, PositiveInt

from ttc.aggregate import Selection
from ttc.answers import extract_answer
from ttc.strategies.base import SearchContext, SearchStrategy, StrategyConfig, register
from ttc.strategies.common import stop_if_cut
from ttc.tree import Node

Schedule = Literal["uniform", "weighted", "linear", "polynomial", "cosine"]


class PlanAndBudgetConfig(StrategyConfig):
    name: Literal["plan_and_budget"] = "plan_and_budget"
    total_tokens: PositiveInt = 1024             # B: tokens for the answers of all parts
    plan_tokens: PositiveInt = 256               # cap on the planner's reply
    max_subquestions: PositiveInt = 6
    schedule: Schedule = "cosine"
    decay_floor: float = Field(default=0.25, gt=0.0, le=1.0)
    decay_power: float = Field(default=2.0, gt=0.0)
    min_tokens: PositiveInt = 16                 # no part gets a smaller cap
    selection: Selection = Selection.BEST


@dataclass(frozen=True, slots=True)
class Part:
    question: str
    complexity: float


_LINE = re.compile(r"^\s*(?:[-*]\s*)?\d+\s*[.):]\s*(\S.*)$")
_COMPLEXITY = re.compile(r"\(?\s*complexity\s*[:=]\s*(\d+(?:\.\d+)?)\s*\)?", re.IGNORECASE)


def parse_plan(text: str, limit: int) -> list[Part]:
    """Sub-questions from numbered lines, with "(complexity: c)" where given (else 1)."""
    parts: list[Part] = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        body = m.group(1)
        c = _COMPLEXITY.search(body)
        complexity = float(c.group(1)) if c else 1.0
        q = _COMPLEXITY.sub("", body).strip(" -:;,")
        if q and complexity > 0:
            parts.append(Part(q, complexity))
        if len(parts) == limit:
            break
    return parts


def decay(t: float, schedule: Schedule, *, floor: float, power: float) -> float:
    """The schedule's weight at position t in [0, 1] (1 at t = 0, ``floor`` at t = 1)."""
    if schedule in ("uniform", "weighted"):
        return 1.0
    if schedule == "linear":
        return 1.0 - (1.0 - floor) * t
    if schedule == "polynomial":
        return floor + (1.0 - floor) * (1.0 - t) ** power
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def part_weights(complexities: Sequence[float], schedule: Schedule, *, floor: float,
                 power: float) -> list[float]:
    """w_i = complexity_i * decay(i / (n - 1)) (complexity ignored when uniform)."""
    n = len(complexities)
    return [(1.0 if schedule == "uniform" else c)
            * decay(i / (n - 1) if n > 1 else 0.0, schedule, floor=floor, power=power)
            for i, c in enumerate(complexities)]


def next_cap(left: int, weights: Sequence[float], i: int, *, min_tokens: int) -> int:
    """Part i's cap: its weight's share of what is left, over the parts not yet answered."""
    share = weights[i] / sum(weights[i:])
    return max(min_tokens, math.floor(left * share))


def plan_prompt(question: str, limit: int) -> str:
    return (f"{question.rstrip()}\n\nDo not solve it yet. Break the problem into at most "
            f"{limit} sub-questions that lead to its answer, in the order to answer them, "
            f"one per line as: 1. <sub-question> (complexity: <1-5>)")


def part_prompt(question: str, done: Sequence[tuple[str, str]], part: str, *,
                last: bool) -> str:
    lines = [question.rstrip(), ""]
    if done:
        lines.append("Answered so far:")
        lines += [f"Q: {q}\nA: {a.strip()}" for q, a in done]
        lines.append("")
    if last:
        lines.append("Now answer the original question; give the final answer in \\boxed{}.")
    else:
        lines.append(f"Now answer only this sub-question, briefly: {part}")
    return "\n".join(lines)


@register(PlanAndBudgetConfig)
class PlanAndBudget(SearchStrategy):
    config: PlanAndBudgetConfig

    def search(self, ctx: SearchContext) -> None:
        cfg = self.config
        question = ctx.problem.question
        node = ctx.open_prompt(plan_prompt(question, cfg.max_subquestions), label="plan")
        (plan,) = self._answer(ctx, node, "plan", cfg.plan_tokens)
        parts = parse_plan(plan.text, cfg.max_subquestions)
        mean = sum(p.complexity for p in parts) / len(parts) if parts else 1.0
        parts.append(Part(question, mean))
        weights = part_weights([p.complexity for p in parts], cfg.schedule,
                               floor=cfg.decay_floor, power=cfg.decay_power)
        ctx.info.update(parts=[p.question for p in parts],
                        complexities=[p.complexity for p in parts], weights=weights,
                        caps=[], used=[], plan_parsed=len(parts) > 1)
        left = cfg.total_tokens
        done: list[tuple[str, str]] = []
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            cap = next_cap(left, weights, i, min_tokens=cfg.min_tokens)
            ctx.info["caps"].append(cap)
            node = ctx.open_prompt(part_prompt(question, done, part.question, last=last),
                                   label=f"part {i}")
            (ans,) = self._answer(ctx, node, f"part-{i}", cap)
            ctx.info["used"].append(ans.num_tokens)
            left = max(0, left - ans.num_tokens)
            done.append((part.question, ans.text))
            ctx.emit(step=i + 1, live=0, note=f"part {i + 1}/{len(parts)}: cap {cap}, "
                                              f"used {ans.num_tokens}")
            if last:
                self._finish(ctx, ans)
            else:
                ctx.release([ans], prune=False)

    def _answer(self, ctx: SearchContext, node: Node, label: str, cap: int) -> list[Node]:
        (out,) = ctx.expand([node], n=1, params=ctx.solution_params(
            ctx.seed("plan-and-budget", label), max_tokens=cap))
        ctx.release([node], prune=False)
        stop_if_cut(ctx, out)
        return out

    def _finish(self, ctx: SearchContext, ans: Node) -> None:
        if ans.text.strip():
            ctx.score([ans])
            if ans.answer is None:
                ans.answer = extract_answer(
                    ans.text, fallback_last_number=ctx.generation.last_number_answer)
            ctx.offer(ans)
        ctx.release([ans], prune=False)
