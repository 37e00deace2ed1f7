"""Helpers for the thinking-mode, model-pair and composed-pipeline tests."""

from __future__ import annotations

from ttc.config import GenerationConfig
from ttc.engine.backends.simulated import (SimulatedBackendConfig, SimulatedGenerator,
                                           small_model_config)
from ttc.registry import STRATEGIES
from ttc.types import Problem
from ttc.verifiers.simulated import SimulatedPRM, SimulatedPRMConfig

PROMPT_TOKENS = 120


def problem(difficulty: float = 0.5, num_steps: int = 5, pid: str = "p") -> Problem:
    return Problem(id=pid, question=f"question {pid}", answer="123",
                   metadata={"difficulty": difficulty, "num_steps": num_steps})


def thinking_engine(**kw) -> SimulatedGenerator:
    return SimulatedGenerator(SimulatedBackendConfig(prompt_tokens=PROMPT_TOKENS,
                                                     thinking=True, **kw))


def pair(**kw) -> tuple[SimulatedGenerator, SimulatedGenerator]:
    """(large, small) sharing one world and one handle table."""
    large = SimulatedGenerator(SimulatedBackendConfig(prompt_tokens=PROMPT_TOKENS, **kw))
    small = SimulatedGenerator(small_model_config(large.config), peer=large)
    return large, small


def solve(config: dict, gen, *, prob: Problem | None = None, draft=None,
          generation: GenerationConfig | None = None, auroc: float = 0.9):
    strategy = STRATEGIES.build(config, generation=generation or GenerationConfig())
    extra = {} if draft is None else {"draft": draft}
    return strategy.run(prob or problem(), generator=gen,
                        verifier=SimulatedPRM(SimulatedPRMConfig(auroc=auroc)), **extra)
