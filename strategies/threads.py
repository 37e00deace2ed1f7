"""Parallel threads with distinct goals, rounds, summaries and a join (docs/algorithms.md#threads).

    ctx    = the planner's reply to "list n_threads distinct approaches" (ONE engine call)
    goals  = parse_goals(ctx)[:n_threads] or ["Approach 1", ..., "Approach n_threads"]
    for each of ``rounds`` rounds:
        kids      = one prompt per goal: question + ctx + "[Thread i: goal]"; all threads
                    in ONE engine call, each capped at ``thread_tokens``
        scored    = the verifier scores ctx + thread for every thread (ONE call)
        survivors = the ``keep`` best (by the last step's score); the rest are released
                    at once
        summaries = a survivor longer than ``summary_threshold`` tokens is summarised:
                    "lm": the model writes a summary of at most ``summary_tokens`` (ONE
                    call for all), "conclusion": its last step; shorter ones verbatim
        ctx      += join_block(summaries)          # join back into the parent context
    final  = the model answers from question + ctx (ONE call, ``final_tokens``)
    answer = the final pass's answer; when it states none, ``selection`` over the
             surviving threads that stated one

Every prompt is a new prompt to the same model (:meth:`SearchContext.open_prompt`): the
Generator protocol has no KV concatenation, so the joined text is prefilled at its new
position (ThreadWeaver-style); the threads of a round share every prompt token before
their goal line, which a radix/prefix cache serves once. Accounting: generated tokens =
plan + all threads (pruned ones too) + summaries + final; ``info["critical_path_tokens"]``
is plan + per round (longest thread + longest summary) + final (the latency model of
docs/algorithms.md#threads); one verifier call per thread per round, plus one for the final answer.

Choices where the spec is silent: goals are parsed from numbered lines ("1. ..." or
"1) ..."); every round reuses the same goals on the grown context (as the pseudo-code
does); a thread is scored on the parent context plus the thread (the spec's
``ctx + o``), so a prompt node carries the context as its text; on the simulated
backend text cannot condition generation, so the final pass is one more independent,
scored sample there.

KV lifecycle: a prompt node is released once its continuation exists; pruned threads at
once (``info["kv_bytes"]`` records the engine's resident KV before and after each
round's prune); survivors once summarised; the final answer once scored.
Must NOT know: engine internals (pages, KV layout), Hydra, file formats.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from ttc.aggregate import Selection, StepAggregation, select
from ttc.answers import extract_answer
from ttc.strategies.base import (SearchContext, SearchStrategy, StrategyConfig, register,
                                 split_steps)
from ttc.strategies.common import stop_if_cut
from ttc.tree import Node
from ttc.types import Candidate


class ThreadsConfig(StrategyConfig):
    name: Literal["threads"] = "threads"
    n_threads: PositiveInt = 4
    thread_tokens: PositiveInt = 1024             # cap on each thread's tokens
    keep: PositiveInt = 2                         # survivors per round
    rounds: PositiveInt = 1
    plan_tokens: PositiveInt = 256                # cap on the planner's reply
    summarize: Literal["lm", "conclusion"] = "lm"
    summary_threshold: int = Field(default=256, ge=0)   # S: longer threads are summarised
    summary_tokens: PositiveInt = 128
    final_tokens: PositiveInt = 512
    selection: Selection = Selection.WEIGHTED     # fallback when the final states no answer
    aggregation: StepAggregation = StepAggregation.LAST

    @model_validator(mode="after")
    def _keep_fits(self) -> "ThreadsConfig":
        if self.keep > self.n_threads:
            raise ValueError(f"keep ({self.keep}) must not exceed n_threads "
                             f"({self.n_threads}).")
        return self


_GOAL_LINE = re.compile(r"^\s*(?:[-*]\s*)?(?:Approach\s+)?\d+\s*[.):]\s*(\S.*)$",
                        re.IGNORECASE)


def parse_goals(text: str, limit: int) -> list[str]:
    """Distinct goals from the planner's numbered lines ("1. ...", "2) ..."), in order."""
    goals: list[str] = []
    for line in text.splitlines():
        m = _GOAL_LINE.match(line)
        if m:
            goal = m.group(1).strip()
            if goal and goal.lower() not in (g.lower() for g in goals):
                goals.append(goal)
        if len(goals) == limit:
            break
    return goals


def plan_prompt(question: str, n_threads: int) -> str:
    return (f"{question.rstrip()}\n\nDo not solve the problem yet. List {n_threads} "
            f"distinct approaches or sub-goals that could each make progress on it, one "
            f"per line, numbered 1. to {n_threads}.")


def thread_prompt(question: str, context: str, index: int, goal: str) -> str:
    # NOTE: everything before the goal line is the same for every thread of a round,
    # so a prefix cache serves it once.
    return (f"{question.rstrip()}\n\nWork so far:\n{context.strip() or '(none)'}\n\n"
            f"[Thread {index + 1}: {goal}]\nPursue only this goal, step by step.")


def summary_prompt(question: str, goal: str, thread: str) -> str:
    return (f"{question.rstrip()}\n\nA line of work on the goal \"{goal}\":\n"
            f"{thread.strip()}\n\nSummarise what it established in a few sentences, "
            f"keeping every result and number it found.")


def join_block(goals: list[str], summaries: list[str]) -> str:
    """The text a round adds to the parent context: one block per surviving thread."""
    return "".join(f"\n[Thread {i + 1}: {g}]\n{s.strip()}\n"
                   for i, (g, s) in enumerate(zip(goals, summaries)))


def final_prompt(question: str, context: str) -> str:
    return (f"{question.rstrip()}\n\nWork so far:\n{context.strip() or '(none)'}\n\n"
            f"Combine the threads above and give the final answer in \\boxed{{}}.")


@register(ThreadsConfig)
class Threads(SearchStrategy):
    config: ThreadsConfig

    def search(self, ctx: SearchContext) -> None:
        cfg = self.config
        question = ctx.problem.question
        plan_node = ctx.open_prompt(plan_prompt(question, cfg.n_threads), label="plan")
        (plan,) = self._generate(ctx, [plan_node], "plan", cfg.plan_tokens)
        context = plan.text
        critical = plan.num_tokens
        ctx.release([plan], prune=False)
        parsed = parse_goals(context, cfg.n_threads)
        goals = parsed or [f"Approach {i + 1}" for i in range(cfg.n_threads)]
        ctx.info.update(goals=goals, goals_parsed=bool(parsed), rounds=[])
        kv_log: list[dict[str, int]] = []
        ctx.info["kv_bytes"] = kv_log
        for rnd in range(cfg.rounds):
            prompts = [ctx.open_prompt(thread_prompt(question, context, i, g),
                                       label=f"thread {rnd}.{i}", context=context)
                       for i, g in enumerate(goals)]
            threads = self._generate(ctx, prompts, f"thread-{rnd}", cfg.thread_tokens)
            ctx.score([t for t in threads if t.text.strip()])
            order = sorted(range(len(threads)), key=lambda i: -self._value(ctx, threads[i]))
            kept = sorted(order[:cfg.keep])             # survivors, in goal order
            before = ctx.generator.kv_bytes()
            for i in order[cfg.keep:]:
                threads[i].extra["pruned_round"] = rnd
            ctx.release([threads[i] for i in order[cfg.keep:]])
            kv_log.append({"round": rnd, "before": before, "after": ctx.generator.kv_bytes(),
                           "live": len(kept)})
            survivors = [threads[i] for i in kept]
            for t in survivors:
                if t.answer is not None:
                    ctx.offer(t, score=self._value(ctx, t))
            summaries, summary_len = self._summaries(ctx, survivors, [goals[i] for i in kept],
                                                     rnd)
            ctx.release(survivors, prune=False)
            context += join_block([goals[i] for i in kept], summaries)
            critical += max(t.num_tokens for t in threads) + summary_len
            ctx.info["rounds"].append({
                "round": rnd, "scores": [t.score for t in threads], "kept": kept,
                "summarised": sum(s != t.text for s, t in zip(summaries, survivors))})
            ctx.emit(step=rnd + 1, live=len(survivors),
                     best_score=max((t.score for t in threads if t.score is not None),
                                    default=None), note=f"round {rnd + 1}: kept {kept}")
        final_node = ctx.open_prompt(final_prompt(question, context), label="final")
        (final,) = self._generate(ctx, [final_node], "final", cfg.final_tokens)
        critical += final.num_tokens
        ctx.info["critical_path_tokens"] = critical
        ctx.info["joined_context_chars"] = len(context)
        if final.text.strip():
            ctx.score([final])
            if final.answer is None:
                final.answer = extract_answer(
                    final.text, fallback_last_number=ctx.generation.last_number_answer)
            final.extra["final"] = True
            ctx.offer(final, score=self._value(ctx, final))
            ctx.info["joined_answer"] = final.answer
        ctx.release([final], prune=False)

    def _generate(self, ctx: SearchContext, prompts: list[Node], label: str,
                  max_tokens: int) -> list[Node]:
        """One continuation per prompt node, in ONE engine call; prompts released. A
        call cut by the generated-token budget ends the search (nothing cut is scored)."""
        params = [ctx.solution_params(ctx.seed("threads", label, i), max_tokens=max_tokens)
                  for i in range(len(prompts))]
        groups = ctx.expand(prompts, n=1, params=params)
        ctx.release(prompts, prune=False)
        out = [g[0] for g in groups]
        stop_if_cut(ctx, out)
        return out

    def _summaries(self, ctx: SearchContext, survivors: list[Node], goals: list[str],
                   rnd: int) -> tuple[list[str], int]:
        """summarise(o) if len(o) > S else o; returns the texts and the longest
        summary's tokens (critical path)."""
        cfg = self.config
        long = [i for i, t in enumerate(survivors) if t.num_tokens > cfg.summary_threshold]
        out = [t.text for t in survivors]
        if not long:
            return out, 0
        if cfg.summarize == "conclusion":
            for i in long:
                steps = split_steps(survivors[i].text, ctx.generation.step_delimiter)
                out[i] = steps[-1] if steps else survivors[i].text
            return out, 0
        prompts = [ctx.open_prompt(summary_prompt(ctx.problem.question, goals[i],
                                                  survivors[i].text),
                                   label=f"summary {rnd}.{i}") for i in long]
        written = self._generate(ctx, prompts, f"summary-{rnd}", cfg.summary_tokens)
        for i, s in zip(long, written):
            out[i] = s.text
            s.extra["summary_of"] = survivors[i].id
        ctx.release(written, prune=False)
        return out, max(s.num_tokens for s in written)

    def _value(self, ctx: SearchContext, node: Node) -> float:
        return ctx.value(node, self.config.aggregation) if node.score is not None else -1.0

    def choose(self, ctx: SearchContext) -> Candidate | None:
        """The final pass's answer (the spec's return value); without one, the
        configured selection over the surviving threads that stated an answer."""
        for cand in ctx.candidates:
            node = ctx.tree[cand.node_id] if cand.node_id is not None else None
            if node is not None and node.extra.get("final") and cand.answer is not None:
                return cand
        if not ctx.candidates:
            return super().choose(ctx)
        return select(ctx.candidates, self.config.selection)


__all__ = ["Threads", "ThreadsConfig", "final_prompt", "join_block", "parse_goals",
           "plan_prompt", "summary_prompt", "thread_prompt"]
