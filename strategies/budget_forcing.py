"""Budget forcing (s1) for models that think between delimiters (docs/algorithms.md
"Budget forcing"; Muennighoff et al., arXiv:2501.19393).

    rule = ThinkingBudget(cap=N, extend=K)   # a stop rule run on every token, in the batch
    ys   = LM.sample(x + "<think>", n)       # at N thinking tokens: force "</think>" +
                                             #   answer_text (no restart, no re-prefill);
                                             # first K attempted "</think>": replaced by "Wait"
    answer = majority(ys)                    # n = 1: the one answer

Everything happens inside one engine call: the cap and the extensions are forced tokens
(decoded one per step, so charged as generated tokens and counted again in the ledger's
``forced_tokens``), so the ledger shows one LM call and no re-prefilled trace.

Defaults: one "Wait" (the s1 README's ``NUM_IGNORE = 1``). The cap is 512 thinking
tokens, not s1's 32,000, because the whole solution must fit ``generation.max_tokens``
(1024 by default): a cap at or above it is one clear error (:meth:`check_run`). The same
control is available to every strategy's branches via ``generation.thinking_cap`` and
``generation.thinking_extend``; set it in one place only.
Must NOT know: engine internals.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, model_validator

from ttc.aggregate import Selection
from ttc.registry import ConfigError
from ttc.strategies.base import SearchContext, SearchStrategy, StrategyConfig, register
from ttc.strategies.thinking import thinking_rule


class BudgetForcingConfig(StrategyConfig):
    name: Literal["budget_forcing"] = "budget_forcing"
    n: PositiveInt = 1
    cap: PositiveInt | None = Field(default=512, description="thinking tokens before "
                                    "the end delimiter is forced; null: no cap")
    extend: int = Field(default=1, ge=0, description="attempted ends replaced by "
                        "extend_text (s1's NUM_IGNORE, 1 in its README)")
    extend_text: str = "Wait"
    answer_text: str = "\nFinal Answer:"

    @model_validator(mode="after")
    def _cap_or_extend(self) -> "BudgetForcingConfig":
        if self.cap is None and self.extend == 0:
            raise ValueError("budget_forcing needs a cap (cap=N) or extensions (extend=K); "
                             "got neither")
        return self

    def check_run(self, *, max_tokens: int, budget_tokens: int | None) -> None:
        """The cap must leave room in ``generation.max_tokens`` for the forced end and
        the answer."""
        if self.cap is not None and self.cap >= max_tokens:
            raise ConfigError(
                f"strategy.cap ({self.cap}) must be below generation.max_tokens "
                f"({max_tokens}): the forced end delimiter and the answer come after the "
                f"cap, inside max_tokens; lower cap or raise max_tokens.")


@register(BudgetForcingConfig)
class BudgetForcing(SearchStrategy):
    config: BudgetForcingConfig
    selection = Selection.MAJORITY

    def search(self, ctx: SearchContext) -> None:
        cfg = self.config
        cfg.check_run(max_tokens=ctx.generation.max_tokens, budget_tokens=None)
        if ctx.thinking_rule is not None:
            raise ConfigError("set the thinking budget once: strategy=budget_forcing's "
                              "cap/extend or generation.thinking_cap/thinking_extend, not both.")
        rule = thinking_rule(ctx.generator, cap=cfg.cap, extend=cfg.extend,
                             extend_text=cfg.extend_text, answer_text=cfg.answer_text,
                             setting="strategy=budget_forcing")
        params = ctx.solution_params(ctx.seed("bf"))
        params = params.model_copy(update={"stop_rules": (*params.stop_rules, rule)})
        (samples,) = ctx.expand([ctx.root], n=cfg.n, params=params)
        for node in samples:
            ctx.offer(node)
        ctx.release(samples, prune=False)
        states = [ctx.thinking_of(node) for node in samples]
        ctx.info.update(
            thinking_tokens=[s.tokens for s in states],
            forced_ends=sum(s.forced for s in states),
            waits=sum(s.waits for s in states))
        ctx.emit(step=1, live=0, note=f"{len(samples)} thought")
