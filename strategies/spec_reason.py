"""SpecReason: a small model drafts each step, the large one judges it (docs/algorithms.md
"SpecReason"; Pan et al., arXiv:2504.07891).

    steps = []
    while not finished:
        d = small.decode(ctx(steps), stop="\n\n")                 # draft line of the ledger
        s = large.probe(ctx(steps + [d]) + judge turn, 1 token)    # target line: the judge
        steps.append(d if s >= threshold else large.decode(ctx(steps), stop="\n\n"))

The judge is a probe on the large model's shared KV (``Purpose.JUDGE``), laid out as the
paper specifies (our own wording): the assistant turn holding the steps is closed, a user turn asks to
rate only the last step's correctness and logical validity from 0 to 9, and the
assistant's reply is opened with "I think the quality score is: " (the engine's chat
template writes the turns, :meth:`~ttc.metered.MeteredGenerator.follow_up`). The drafted
step and that suffix are prefilled once, one digit is decoded greedily and thrown away
(``greedy`` scoring: a non-digit scores 0). Steps are sampled at the paper's temperature
0.6 and top-p 0.95 by both models. An accepted step stays in the large model's KV (it was prefilled for
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
from ttc.types import Purpose, SamplingParams

JUDGE_QUESTION = ("Evaluate the last reasoning step above. Rate only its correctness and "
                  "logical validity with a single digit from 0 (wrong) to 9 (correct).")
JUDGE_PREFIX = "I think the quality score is: "


class SpecReasonConfig(StrategyConfig):
    name: Literal["spec_reason"] = "spec_reason"
    threshold: int = Field(default=7, ge=0, le=9, description="keep a draft step scoring >= this")
    judge_question: str = Field(default=JUDGE_QUESTION, min_length=1,
                                description="the judge's user turn")
    judge_prefix: str = Field(default=JUDGE_PREFIX, description="opens the judge's reply")
    first_target_steps: int = Field(default=0, ge=0)
    temperature: float = Field(default=0.6, ge=0.0, description=(
        "sampling temperature of every step (the paper's 0.6; replaces "
        "generation.temperature for this strategy)"))
    top_p: float = Field(default=0.95, gt=0.0, le=1.0, description=(
        "nucleus of every step (the paper's 0.95; replaces generation.top_p)"))


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
            params = ctx.step_params(ctx.seed("spec", step), temperature=cfg.temperature
                                     ).model_copy(update={"top_p": cfg.top_p})
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
        cfg = self.config
        suffix = ctx.generator.follow_up(cfg.judge_question, cfg.judge_prefix)
        reply = ctx.generator.probe(draft.handle, suffix, max_new=1,
                                    params=SamplingParams(temperature=0.0, max_tokens=1),
                                    purpose=Purpose.JUDGE)
        return judge_score(reply.text)
