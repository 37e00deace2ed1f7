"""Dynasor-CoT: probe a chain every T tokens, exit once the probed answers settle
(docs/algorithms.md "Dynasor"; Fu et al., arXiv:2412.20993).

    ans, txt = [], []
    for chunk in range(0, max_tokens, T):
        branch += decode(branch, T)                       # ONE expand for all live chains
        p = probe(branch, SUFFIX, max_new=20)             # on shared KV, thrown away
        ans.append(text up to the first unmatched "}"); txt.append(p)
        if len(ans) >= w and all equivalent(ans[-w:]) and all non-empty(ans[-w:])
                and no hedge word in txt[-w:]:
            return branch + SUFFIX + ans[-1] + close_thinking + final answer  # early exit
    return branch                                           # ran to its own end

Agreement IS checked (the reference servers' ``should_early_exit`` skips it and stops
once w probes exist and the newest does not hedge), through the project's answer
equivalence (:func:`ttc.answers.answer_key`: ``\\frac{1}{2}``, ``1/2`` and ``0.5`` agree),
as the reference's ``math_equal`` does. On a model that thinks between delimiters
(``thinking_delimiters``), the exit text closes the open thinking block and then states
the answer, as the reference's exit does; the exit text is the strategy's, not sampled. Hedging is the reference's
lower-cased substring test, so "no" also fires on "not" (it errs toward continuing).
Probes run after each chunk on the chain's shared prefix (the reference's vLLM-native
order), so the first probe sees T tokens. Every chain token (including the last chunk
before an exit) and every probe's suffix and answer tokens are charged. With ``n`` > 1
chains the exits and finished chains are majority-voted (Dynasor under
self-consistency). ``Result.info["dynasor"]`` lists each chain's probes and how it ended.
Must NOT know: engine internals.
"""

from __future__ import annotations

from typing import Literal, Sequence

from pydantic import Field, PositiveInt

from ttc.aggregate import Selection
from ttc.answers import answer_key
from ttc.strategies.base import SearchContext, SearchStrategy, StrategyConfig, register
from ttc.strategies.common import first_step_guard, mark_step_done, stop_if_cut
from ttc.tree import Node, NodeStatus
from ttc.types import FinishReason, SamplingParams

PROBE_SUFFIX = ("... Oh, I suddenly got the answer to the whole problem, **Final Answer**"
                "\n\n\\[ \\boxed{")
HEDGE_WORDS = ("wait", "hold", "but", "okay", "no", "hmm")


class DynasorConfig(StrategyConfig):
    name: Literal["dynasor"] = "dynasor"
    n: PositiveInt = Field(default=1, description="chains, majority-voted when > 1")
    chunk_tokens: PositiveInt = Field(default=64, description="T: tokens between probes")
    window: PositiveInt = Field(default=3, description="w: probes that must agree")
    probe_tokens: PositiveInt = Field(default=20, description="new tokens per probe")
    probe_suffix: str = Field(default=PROBE_SUFFIX, min_length=1)
    hedge_words: tuple[str, ...] = HEDGE_WORDS
    probe_temperature: float = Field(default=0.6, ge=0.0)


def probed_answer(text: str) -> str:
    """The probe's text up to the first unmatched ``}`` ('' when there is none)."""
    depth = 0
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
        elif ch == "}":
            if depth == 0:
                return text[:i].strip()
            depth -= 1
    return ""


def should_exit(answers: Sequence[str], texts: Sequence[str], *, window: int,
                hedge_words: Sequence[str]) -> bool:
    """The last ``window`` probed answers are equivalent (:func:`ttc.answers.answer_key`)
    and non-empty, and none hedges."""
    if len(answers) < window:
        return False
    last = answers[-window:]
    if not all(last) or any(answer_key(a) != answer_key(last[-1]) for a in last):
        return False
    return not any(h in t.lower() for t in texts[-window:] for h in hedge_words)


@register(DynasorConfig)
class Dynasor(SearchStrategy):
    config: DynasorConfig
    selection = Selection.MAJORITY

    def search(self, ctx: SearchContext) -> None:
        cfg = self.config
        if not ctx.generator.supports_probe:
            raise ValueError(f"strategy=dynasor needs an engine that can probe a branch on "
                             f"shared KV, which the {type(ctx.generator.inner).__name__} "
                             f"backend cannot; use backend=native or backend=simulated.")
        chains: list[dict] = [{"probes": [], "texts": [], "tokens": 0, "end": None}
                              for _ in range(cfg.n)]
        ctx.info["dynasor"] = chains
        live: list[tuple[int, Node]] = [(i, ctx.root) for i in range(cfg.n)]
        probe_params = SamplingParams(temperature=cfg.probe_temperature, top_p=0.95,
                                      max_tokens=cfg.probe_tokens)
        step = 0
        with first_step_guard(ctx, branches=cfg.n):
            while live:
                parents = [node for _, node in live]
                counts = [1] * len(parents)
                if all(p is ctx.root for p in parents):
                    parents, counts = [ctx.root], [len(live)]
                params = [self._chunk_params(ctx, step, i) for i in range(len(parents))]
                groups = ctx.expand(parents, n=counts, params=params)
                children = [c for g in groups for c in g]
                ctx.release([p for p in parents if p is not ctx.root], prune=False)
                mark_step_done(ctx, children)
                step += 1
                still: list[tuple[int, Node]] = []
                for (i, _), child in zip(live, children):
                    chain = chains[i]
                    chain["tokens"] += child.num_tokens
                    self._reopen_if_chunk_end(ctx, child, chain["tokens"])
                    if child.status is NodeStatus.TERMINAL:
                        chain["end"] = "finished"
                        ctx.offer(child)
                        continue
                    if child.cut_by_budget:
                        still.append((i, child))
                        continue
                    probe = ctx.generator.probe(
                        child.handle, cfg.probe_suffix, max_new=cfg.probe_tokens,
                        params=probe_params.model_copy(
                            update={"seed": ctx.seed("dynasor-probe", i, step)}))
                    chain["probes"].append(probed_answer(probe.text))
                    chain["texts"].append(probe.text)
                    if should_exit(chain["probes"], chain["texts"], window=cfg.window,
                                   hedge_words=cfg.hedge_words):
                        chain["end"] = "probe_exit"
                        self._exit(ctx, child, chain["probes"][-1])
                        continue
                    still.append((i, child))
                live = still
                ctx.emit(step=step, live=len(live),
                         note=f"{sum(c['end'] is not None for c in chains)} chains done")
                stop_if_cut(ctx, children)

    def _chunk_params(self, ctx: SearchContext, step: int, i: int) -> SamplingParams:
        return ctx.solution_params(ctx.seed("dynasor", step, i),
                                   max_tokens=self.config.chunk_tokens)

    def _reopen_if_chunk_end(self, ctx: SearchContext, child: Node, tokens: int) -> None:
        """A chunk that stopped at ``chunk_tokens`` is not the chain's end: keep it open
        unless it stated an answer or the chain reached ``generation.max_tokens``."""
        if (child.finish == FinishReason.MAX_TOKENS.value and "boxed" not in child.text
                and tokens < ctx.generation.max_tokens):
            child.status = NodeStatus.OPEN
            child.answer = None

    def _exit(self, ctx: SearchContext, node: Node, answer: str) -> None:
        """End the chain with the probe's answer (the exit text is forced, not sampled),
        closing the thinking block first when the model thinks and it is still open."""
        text = exit_text(self.config.probe_suffix, answer, "".join(ctx.steps_of(node)),
                         ctx.generator.thinking_delimiters)
        leaf = ctx.tree.add(node, text=text, handle=None)
        leaf.status = NodeStatus.TERMINAL
        leaf.answer = answer
        ctx.release([node], prune=False)
        ctx.offer(leaf)


def exit_text(suffix: str, answer: str, trace: str,
              delimiters: tuple[str, str] | None) -> str:
    """What an early exit appends to ``trace``: the probe's suffix and answer, then (on a
    model with thinking ``delimiters`` whose block is still open in ``trace``) the end
    delimiter and the answer stated after it."""
    text = f"{suffix}{answer}}}\\]"
    if delimiters is not None and delimiters[1] not in trace:
        text += f"\n{delimiters[1]}\n\nThe final answer is \\boxed{{{answer}}}."
    return text
