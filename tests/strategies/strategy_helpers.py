"""Strategy runs on the simulated engine and PRM, kept for inspection (fakes: tests/fakes.py)."""

from __future__ import annotations

from ttc.config import GenerationConfig
from ttc.engine.backends.simulated import SimulatedBackendConfig, SimulatedGenerator
from ttc.ledger import Budget
from ttc.registry import STRATEGIES
from ttc.types import EventKind, Problem, ProgressEvent
from ttc.verifiers.simulated import SimulatedPRM, SimulatedPRMConfig

PROMPT_TOKENS = 120


def make_problem(difficulty: float = 0.5, num_steps: int = 5, pid: str = "p") -> Problem:
    return Problem(id=pid, question=f"question {pid}", answer="123",
                   metadata={"difficulty": difficulty, "num_steps": num_steps})


class Run:
    """One strategy run with its engine kept, its events (the strategy's step reports and
    the tree events), and the engine's resident KV at each step report."""

    def __init__(self, config: dict, *, difficulty: float = 0.5, num_steps: int = 5,
                 auroc: float = 0.9, budget: Budget | None = None, pid: str = "p",
                 generation: GenerationConfig | None = None) -> None:
        self.gen = SimulatedGenerator(SimulatedBackendConfig(prompt_tokens=PROMPT_TOKENS))
        self.prm = SimulatedPRM(SimulatedPRMConfig(auroc=auroc))
        self.strategy = STRATEGIES.build(config, generation=generation or GenerationConfig())
        self.events: list[ProgressEvent] = []
        self.resident_at_event: list[int] = []
        self.problem = make_problem(difficulty, num_steps, pid)
        self.result = self.strategy.run(self.problem, generator=self.gen, verifier=self.prm,
                                        budget=budget, progress=self._on_event)

    def _on_event(self, event: ProgressEvent) -> None:
        self.events.append(event)
        if event.kind is EventKind.STEP:
            self.resident_at_event.append(self.gen.resident_tokens())

    @property
    def step_events(self) -> list[ProgressEvent]:
        """The strategy's own reports (``SearchContext.emit``)."""
        return [e for e in self.events if e.kind is EventKind.STEP]

    @property
    def tree(self) -> dict:
        return {n["id"]: n for n in self.result.tree["nodes"]}
