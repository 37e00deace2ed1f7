"""SpecReason: a small model drafts each step, the large one judges it (ALGORITHMS.md §14.4).

    steps = []
    while not finished:
        d = small.decode(ctx(steps), stop="\n\n")                 # draft line of the ledger
        s = large.probe(ctx(steps + [d]) + JUDGE_SUFFIX, 1 token)  # target line: the judge
        steps.append(d if s >= threshold else large.decode(ctx(steps), stop="\n\n"))

The judge is a probe on the large model's shared KV: the drafted step and the suffix are
prefilled once, one digit is decoded greedily and thrown away (``greedy`` scoring: a
non-digit scores 0). An accepted step stays in the large model's KV (it was prefilled for
the judge); a rejected one is released and the large model writes the step itself.
Both models continue the same handles (a pair sharing a tokenizer); each has its own
ledger line (``draft``, ``target``). The first ``first_target_steps`` steps are written by
the large model (the paper's first-n knob). Stops on a final answer, on two identical
steps in a row, or at ``generation.max_steps`` / ``max_tokens``.
Must NOT know: engine internals.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ttc.aggregate import Selection
from ttc.registry import ConfigError
from ttc.strategies.base import SearchContext, SearchStrategy, StrategyConfig, register
from ttc.tree import Node, NodeStatus
from ttc.types import SamplingParams

JUDGE_SUFFIX = ("\n\nRate only the last step's correctness and logical validity from 0 "
                "to 9. The quality score is:")


class SpecReasonConfig(StrategyConfig):
    name: Literal["spec_reason"] = "spec_reason"
    threshold: int = Field(default=7, ge=0, le=9, description="keep a draft step scoring >= this")
    judge_suffix: str = JUDGE_SUFFIX
    first_target_steps: int = Field(default=0, ge=0)


def judge_score(text: str) -> int:
    """The paper's ``greedy`` scoring: the decoded digit, or 0 for anything else."""
    text = text.strip()
    return int(text[0]) if text[:1].isdigit() else 0


@register(SpecReasonConfig)
class SpecReason(SearchStrategy):
    config: SpecReasonConfig
    selection = Selection.MAJORITY    # one trajectory, one candidate
    uses_draft = True

    def search(self, ctx: SearchContext) -> None:
        cfg = self.config
        if not ctx.generator.supports_probe:
            raise ConfigError(f"spec_reason judges steps with a probe on the large model; "
                              f"{type(ctx.generator.inner).__name__} cannot run probes.")
        node, last_text = ctx.root, None
        drafted = accepted = 0
        scores: list[int] = []
        for step in range(ctx.generation.max_steps):
            params = ctx.step_params(ctx.seed("spec", step))
            child = None
            if step >= cfg.first_target_steps:
                (draft,) = ctx.expand([node], params=params, generator=ctx.draft)[0]
                drafted += 1
                score = self._judge(ctx, draft)
                scores.append(score)
                draft.extra.update(by="draft", judge=score, kept=score >= cfg.threshold)
                if score >= cfg.threshold:
                    child, accepted = draft, accepted + 1
                else:
                    ctx.release([draft])
            if child is None:
                (child,) = ctx.expand([node], params=params)[0]
                child.extra["by"] = "target"
            ctx.emit(step=step + 1, live=1, note=f"{accepted}/{drafted} drafts kept")
            if child.status is NodeStatus.TERMINAL or child.text == last_text \
                    or not child.text.strip():
                break
            node, last_text = child, child.text
        ctx.offer(child)
        ctx.info.update(drafted=drafted, accepted=accepted, rewritten=drafted - accepted,
                        judge_scores=scores,
                        steps_by_target=sum(1 for n in ctx.tree.path(child)
                                            if n.extra.get("by") == "target"))

    def _judge(self, ctx: SearchContext, draft: Node) -> int:
        reply = ctx.generator.probe(draft.handle, self.config.judge_suffix, max_new=1,
                                    params=SamplingParams(temperature=0.0, max_tokens=1))
        return judge_score(reply.text)
