"""Capability-aware self-evaluation: sample until the model says it would not do better
(docs/algorithms.md#self-evaluation, Manvi, Singh, Ermon).

    best, n, drawn = None, first_batch, 0
    while True:
        ys = sample n whole solutions at temperature anneal(drawn)      (ONE engine call)
             with early pruning: first only ``prune_after_tokens`` of each (ONE call),
             P_no of every prefix, the ``prune_keep`` share with the highest P_no is
             finished (ONE call), the rest are stopped and released
        y.conf = P_no(x, y) for each y                                  (ONE probe call)
        best = max([best] + ys, key=conf)
        if best.conf >= threshold or drawn >= max_samples: return best
        n = min(2 n, max_samples - drawn)

P_no is "the probability that more samples would not beat this one", read by a probe:

* ``probe: lm`` (the paper's): the policy is asked the self-evaluation question after
  its response, ``Would you do better if you started over? ("Yes." or "No.")``, and one
  greedy token is read: P_no = p(token) if it says No, 1 - p(token) if it says Yes; any
  other token is unreadable and counts as 0 (the search goes on), tallied in
  ``info["unreadable_probes"]``. The Generator protocol cannot append text to a cached
  response, so the probe is a new prompt holding question + response (prefilled and
  charged; the paper's ~15 tokens on top of the response KV need an engine that extends
  a handle with given text). The paper fine-tunes the model for this token; an untuned
  model's answer is a weak signal.
* ``probe: verifier`` (default; works on every backend): P_no is the configured
  verifier's score of the response's last step, i.e. the verifier plays the self-
  evaluator (with ``verifier=judge``, the policy model itself answers a yes/no question
  about its response).

Choices where the spec is unverified or silent (docs/algorithms.md#self-evaluation): the probe wording
above; batches double from ``first_batch`` (the spec's growing batches); the temperature
ramps linearly from ``temperature_start`` to the generation temperature over the first
``anneal_samples`` samples (``None``: no annealing); early pruning is off unless
``prune_after_tokens`` is set (the paper prunes after 64 or 128 tokens) and a pruned
sample counts as drawn. The answer is the most confident sample (``selection: best``
over candidates scored by P_no).

KV lifecycle: probe prompts are released when read; pruned prefixes at once; every
finished sample once probed (only the problem's prompt stays pinned).
Must NOT know: engine internals (pages, KV layout), Hydra, file formats.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from ttc.aggregate import Selection
from ttc.strategies.base import SearchContext, SearchStrategy, StrategyConfig, register
from ttc.strategies.common import stop_if_cut
from ttc.tree import Node, NodeStatus

QUESTION = 'Would you do better if you started over? ("Yes." or "No.")'


class SelfEvalConfig(StrategyConfig):
    name: Literal["self_eval"] = "self_eval"
    max_samples: PositiveInt = 16
    first_batch: PositiveInt = 1
    threshold: float = Field(default=0.9, gt=0.0, le=1.0)    # stop once best P_no >= this
    probe: Literal["verifier", "lm"] = "verifier"
    temperature_start: float | None = Field(default=0.4, ge=0.0)
    anneal_samples: PositiveInt = 4
    prune_after_tokens: PositiveInt | None = None
    prune_keep: float = Field(default=0.5, gt=0.0, le=1.0)
    selection: Selection = Selection.BEST

    @model_validator(mode="after")
    def _batch_fits(self) -> "SelfEvalConfig":
        if self.first_batch > self.max_samples:
            raise ValueError(f"first_batch ({self.first_batch}) must not exceed max_samples "
                             f"({self.max_samples}).")
        return self


def self_eval_prompt(question: str, response: str) -> str:
    return f"{question.rstrip()}\n\nYour response:\n{response.strip()}\n\n{QUESTION}"


def p_no_from_token(text: str, logprob: float) -> float | None:
    """P(no improvement) from one greedy answer token; None when it is neither Yes nor No."""
    word = text.strip().strip('."').lower()
    p = math.exp(logprob)
    if word == "no":
        return p
    if word == "yes":
        return 1.0 - p
    return None


def annealed_temperature(drawn: int, *, start: float | None, end: float,
                         over: int) -> float:
    """Linear ramp from ``start`` to ``end`` over the first ``over`` samples drawn."""
    if start is None:
        return end
    return start + (end - start) * min(1.0, drawn / over)


def batch_sizes(first: int, max_samples: int) -> list[int]:
    """The batches drawn when no sample is ever confident enough: doubling, capped."""
    sizes, n, drawn = [], first, 0
    while drawn < max_samples:
        n = min(n, max_samples - drawn)
        sizes.append(n)
        drawn += n
        n *= 2
    return sizes


@register(SelfEvalConfig)
class SelfEval(SearchStrategy):
    config: SelfEvalConfig

    def search(self, ctx: SearchContext) -> None:
        cfg = self.config
        ctx.info.update(batches=[], temperatures=[], pruned=0, unreadable_probes=0,
                        stopped_by="max_samples")
        best: float | None = None
        drawn = 0
        for b, size in enumerate(batch_sizes(cfg.first_batch, cfg.max_samples)):
            temp = annealed_temperature(drawn, start=cfg.temperature_start,
                                        end=ctx.generation.temperature,
                                        over=cfg.anneal_samples)
            ctx.info["batches"].append(size)
            ctx.info["temperatures"].append(temp)
            drawn += size
            samples = self._sample(ctx, b, size, temp)
            confs = self._p_no(ctx, samples)
            for node, conf in zip(samples, confs):
                node.extra["p_no"] = conf
                if node.text.strip():
                    ctx.offer(node, score=conf)
            ctx.release(samples, prune=False)
            best = max(confs + ([best] if best is not None else []), default=None)
            ctx.emit(step=b + 1, live=0, best_score=best,
                     note=f"{drawn} samples, best P(no improvement) {best or 0.0:.2f}")
            if best is not None and best >= cfg.threshold:
                ctx.info["stopped_by"] = "threshold"
                break
        ctx.info["samples"] = drawn

    def _sample(self, ctx: SearchContext, batch: int, size: int, temp: float) -> list[Node]:
        """``size`` whole solutions; with early pruning, only the best prefixes finish."""
        cfg = self.config
        seed = ctx.seed("self-eval", batch)
        if cfg.prune_after_tokens is None:
            (out,) = ctx.expand([ctx.root], n=size,
                                params=ctx.solution_params(seed, temperature=temp))
            stop_if_cut(ctx, out)
            return out
        (prefixes,) = ctx.expand([ctx.root], n=size, params=ctx.solution_params(
            seed, temperature=temp, max_tokens=cfg.prune_after_tokens))
        stop_if_cut(ctx, prefixes)
        for p in prefixes:       # cut by the pruning point, not finished: continue later
            if p.finish == "max_tokens" and p.num_tokens >= cfg.prune_after_tokens \
                    and p.num_tokens < ctx.generation.max_tokens:
                p.status, p.answer = NodeStatus.OPEN, None
        confs = self._p_no(ctx, prefixes)
        keep_n = math.ceil(cfg.prune_keep * size)
        order = sorted(range(size), key=lambda i: -confs[i])
        kept, pruned = sorted(order[:keep_n]), order[keep_n:]
        for i in range(size):
            prefixes[i].extra["prefix_p_no"] = confs[i]
        ctx.release([prefixes[i] for i in pruned])
        ctx.info["pruned"] += len(pruned)
        todo = [prefixes[i] for i in kept if prefixes[i].status is NodeStatus.OPEN]
        done = [prefixes[i] for i in kept if prefixes[i].status is not NodeStatus.OPEN]
        if todo:
            params = [ctx.solution_params(
                ctx.seed("self-eval-rest", batch, p.id), temperature=temp,
                max_tokens=max(1, ctx.generation.max_tokens - p.num_tokens)) for p in todo]
            rests = [g[0] for g in ctx.expand(todo, n=1, params=params)]
            ctx.release(todo, prune=False)
            stop_if_cut(ctx, rests)
            done += rests
        return done

    def _p_no(self, ctx: SearchContext, nodes: list[Node]) -> list[float]:
        """P(no improvement) of each (partial) response, in ONE probe call."""
        live = [n for n in nodes if n.text.strip()]
        if self.config.probe == "verifier":
            ctx.score(live)
            return [n.score if n.score is not None and n.text.strip() else 0.0
                    for n in nodes]
        prompts = [ctx.open_prompt(self_eval_prompt(ctx.problem.question,
                                                    "".join(ctx.tree.steps(n))),
                                   label=f"self-eval {n.id}") for n in live]
        conf: dict[int, float] = {}
        if prompts:
            params = ctx.solution_params(ctx.seed("self-eval-probe"), temperature=0.0,
                                         max_tokens=1)
            answers = [g[0] for g in ctx.expand(prompts, n=1, params=params)]
            ctx.release(prompts + answers, prune=False)
            stop_if_cut(ctx, answers)
            for n, a in zip(live, answers):
                p = p_no_from_token(a.text, a.logprob)
                if p is None:
                    ctx.info["unreadable_probes"] += 1
                conf[n.id] = 0.0 if p is None else p
        return [conf.get(n.id, 0.0) for n in nodes]
