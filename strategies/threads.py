"""Parallel threads: spawn, prune at checkpoints, join back (ALGORITHMS.md §9.6).

    plan    = the controller's first ``plan_steps`` steps (the shared prefix)
    threads = K continuations of plan, ONE engine call; then every live thread advances
              one step per round, all threads in ONE engine call (they share plan's KV)
    every ``checkpoint_steps`` rounds: the verifier scores the live threads (ONE call)
              and the weakest are pruned down to max(keep, ceil(live * (1 - prune)));
              a pruned thread's KV is released at once
    join    = the survivors' conclusions (their last step) are joined into the parent
              context: a new prompt ``question + plan + "[Thread i] conclusion" ...``
              that the engine prefills (ThreadWeaver-style join; the protocol has no
              KV concatenation), and the parent writes the final answer from it
    answer  = weighted vote over the survivors and the joined answer

Accounting: generated tokens = plan + all threads (pruned ones too) + final answer;
the joined prompt is prefilled and charged as prefill. On the simulated backend the
joined prompt cannot condition the final answer (the simulator has no memory of text),
so there the join adds one independent, scored sample; on a real model the final pass
reads the threads' conclusions.

KV lifecycle: threads are pinned with their score as value; pruned threads are released
at once (``info["kv_bytes"]`` records the engine's resident KV before and after each
checkpoint's prune); the joined prompt is released when the final answer is written.
Must NOT know: engine internals (pages, KV layout), Hydra, file formats.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from ttc.aggregate import Selection, StepAggregation
from ttc.answers import extract_answer
from ttc.strategies.base import SearchContext, SearchStrategy, StrategyConfig, register
from ttc.tree import Node, NodeStatus
from ttc.types import Problem


class ThreadsConfig(StrategyConfig):
    name: Literal["threads"] = "threads"
    n_threads: PositiveInt = 8
    plan_steps: int = Field(default=1, ge=0)      # steps of shared prefix before spawning
    thread_steps: PositiveInt = 12                # steps per thread at most
    checkpoint_steps: PositiveInt = 1             # rounds between verifier checkpoints
    prune: float = Field(default=0.5, ge=0.0, lt=1.0)   # share of live threads pruned
    keep: PositiveInt = 2                         # threads never pruned below this
    join: bool = True                             # write a final answer from the join
    final_tokens: PositiveInt = 512
    selection: Selection = Selection.WEIGHTED
    aggregation: StepAggregation = StepAggregation.LAST

    @model_validator(mode="after")
    def _keep_fits(self) -> "ThreadsConfig":
        if self.keep > self.n_threads:
            raise ValueError(f"keep ({self.keep}) must not exceed n_threads "
                             f"({self.n_threads}).")
        return self


def join_prompt(question: str, plan: str, conclusions: list[str]) -> str:
    """The parent context after the join: question, shared plan, thread conclusions."""
    lines = [question.rstrip(), "", "Work so far:", plan.strip() or "(none)", "",
             "Parallel threads concluded:"]
    lines += [f"[Thread {i + 1}] {c.strip()}" for i, c in enumerate(conclusions)]
    lines += ["", "Combine the threads and give the final answer in \\boxed{}."]
    return "\n".join(lines)


@register(ThreadsConfig)
class Threads(SearchStrategy):
    config: ThreadsConfig

    def search(self, ctx: SearchContext) -> None:
        cfg = self.config
        plan = ctx.root
        for s in range(cfg.plan_steps):
            (kids,) = ctx.expand([plan], n=1, params=ctx.step_params(ctx.seed("plan", s)))
            ctx.release([plan], prune=False)
            plan = kids[0]
            if plan.status is NodeStatus.TERMINAL or plan.extra.get("cut_by_budget"):
                ctx.score([plan])
                ctx.offer(plan, score=ctx.value(plan, cfg.aggregation))
                return
        (live,) = ctx.expand([plan], n=cfg.n_threads,
                             params=ctx.step_params(ctx.seed("spawn", plan.id)))
        ctx.release([plan], prune=False)
        done: list[Node] = []
        kv_log: list[dict[str, int]] = []
        ctx.info["kv_bytes"] = kv_log
        for rnd in range(1, cfg.thread_steps + 1):
            finished = [n for n in live if n.status is NodeStatus.TERMINAL]
            live = [n for n in live if n.status is not NodeStatus.TERMINAL
                    and not n.extra.get("cut_by_budget")]
            if finished:
                ctx.score(finished)
                done += finished
            if rnd % cfg.checkpoint_steps == 0 and len(live) > cfg.keep:
                ctx.score(live)
                target = max(cfg.keep, math.ceil(len(live) * (1.0 - cfg.prune)))
                live.sort(key=lambda n: -ctx.value(n, cfg.aggregation))
                before = ctx.generator.kv_bytes()
                ctx.release(live[target:])
                live = live[:target]
                kv_log.append({"round": rnd, "before": before,
                               "after": ctx.generator.kv_bytes(), "live": len(live)})
            if not live:
                break
            params = [ctx.step_params(ctx.seed("thread", n.id)) for n in live]
            kids = ctx.expand(live, n=1, params=params)
            ctx.release(live, prune=False)
            live = [cs[0] for cs in kids]
            ctx.emit(step=rnd, live=len(live), note=f"{len(done)} threads concluded")
        finished = [n for n in live if n.status is NodeStatus.TERMINAL]
        if finished:
            ctx.score(finished)
            done += finished
        survivors = sorted(done, key=lambda n: -ctx.value(n, cfg.aggregation))[:cfg.keep]
        for node in survivors:
            ctx.offer(node, score=ctx.value(node, cfg.aggregation))
        ctx.release(done, prune=False)
        ctx.info["threads_concluded"] = len(done)
        if cfg.join and survivors:
            self._join(ctx, plan, survivors)

    def _join(self, ctx: SearchContext, plan: Node, survivors: list[Node]) -> None:
        cfg = self.config
        plan_text = "".join(ctx.tree.steps(plan))
        prompt = join_prompt(ctx.problem.question, plan_text,
                             [n.text for n in survivors])
        joined = Problem(id=ctx.problem.id, question=prompt, answer=ctx.problem.answer,
                         metadata=ctx.problem.metadata)
        handle = ctx.generator.root(joined)
        # NOTE: the join node carries no text of its own (the prompt lives in extra), so
        # the final candidate's steps are the final answer's steps only.
        node = ctx.tree.add(ctx.root, text="", handle=handle)
        node.extra["join_prompt"] = prompt
        try:
            (final,) = ctx.expand([node], n=1, params=ctx.solution_params(
                ctx.seed("join"), max_tokens=cfg.final_tokens))
        finally:
            ctx.generator.release([handle])
            node.status = NodeStatus.EXPANDED
        answer = final[0]
        if answer.text.strip():
            ctx.score([answer])
            if answer.answer is None:
                answer.answer = extract_answer(
                    answer.text, fallback_last_number=ctx.generation.last_number_answer)
            ctx.offer(answer, score=ctx.value(answer, cfg.aggregation))
            ctx.info["joined_answer"] = answer.answer
        ctx.release(final, prune=False)
