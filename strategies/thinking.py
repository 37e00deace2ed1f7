"""Thinking-budget control shared by ``strategy=budget_forcing`` and every strategy's
branches (``generation.thinking_cap`` / ``thinking_extend``), docs/algorithms.md#budget-forcing.

Contract: :func:`thinking_rule` turns the settings into a :class:`ttc.stopping.ThinkingBudget`
rule for the generator at hand, or raises one :class:`~ttc.registry.ConfigError` when the
model has no thinking delimiters (or cannot replace a sampled token, for ``extend``).
:class:`ThinkingState` is what a node's path has used so far, so a branch continued in a
later call (step-wise search) keeps counting from where its prefix stopped.
Must NOT know: engine internals (only the metered generator's optional abilities).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ttc.metered import MeteredGenerator
from ttc.registry import ConfigError
from ttc.stopping import ThinkingBudget


@dataclass(frozen=True, slots=True)
class ThinkingState:
    """Thinking on a path so far: sampled thinking tokens, "Wait"s, whether it ended."""

    tokens: int = 0
    waits: int = 0
    closed: bool = False
    forced: bool = False

    def as_dict(self) -> dict[str, int | bool]:
        return {"tokens": self.tokens, "waits": self.waits, "closed": self.closed,
                "forced": self.forced}

    def after(self, stats: dict[str, float]) -> "ThinkingState":
        """The state after a continuation whose rule reported ``stats``."""
        if "thinking_tokens" not in stats:
            return self
        return ThinkingState(tokens=self.tokens + int(stats["thinking_tokens"]),
                             waits=self.waits + int(stats.get("waits", 0)),
                             closed=self.closed or bool(stats.get("thinking_closed")),
                             forced=self.forced or bool(stats.get("thinking_forced")))


def thinking_rule(generator: MeteredGenerator, *, cap: int | None, extend: int,
                  extend_text: str, answer_text: str, setting: str) -> ThinkingBudget:
    """The rule for ``generator``'s end delimiter; ``setting`` names the user's knob."""
    delimiters = generator.thinking_delimiters
    engine = type(generator.inner).__name__
    if delimiters is None:
        raise ConfigError(f"{setting} needs a model that thinks between delimiters such as "
                          f"<think>...</think>; the {engine} model has none (for example "
                          f"use backend=simulated backend.thinking=true).")
    if extend and not generator.can_replace_tokens:
        raise ConfigError(f"{setting}: extending thinking needs an engine that can replace "
                          f"a sampled token in the batch; {engine} cannot (use a cap only).")
    end = delimiters[1]
    try:
        return ThinkingBudget(end_ids=tuple(generator.encode(end)), end_text=end, cap=cap,
                              extend=extend, extend_text=extend_text,
                              answer_text=answer_text)
    except ValueError as err:
        raise ConfigError(f"{setting}: {err}") from err


def continued(rule: ThinkingBudget, state: ThinkingState) -> ThinkingBudget | None:
    """The rule for a branch continuing from ``state`` (None once thinking has ended)."""
    if state.closed:
        return None
    return replace(rule, used=state.tokens, extended=state.waits)
