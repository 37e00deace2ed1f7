"""Helpers for strategy tests: a simulated engine, a simulated PRM, problems, runs."""

from __future__ import annotations

from ttc.config import GenerationConfig
from ttc.engine.backends.simulated import SimulatedBackendConfig, SimulatedGenerator
from ttc.ledger import Budget
from ttc.registry import STRATEGIES
from ttc.types import Continuation, ExpandOutput, GenerationUsage, Problem, ProgressEvent
from ttc.verifiers.simulated import SimulatedPRM, SimulatedPRMConfig

PROMPT_TOKENS = 120


def make_problem(difficulty: float = 0.5, num_steps: int = 5, pid: str = "p") -> Problem:
    return Problem(id=pid, question=f"question {pid}", answer="123",
                   metadata={"difficulty": difficulty, "num_steps": num_steps})


class Run:
    """One strategy run with its engine kept, and the engine's resident KV at each event."""

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
        self.resident_at_event.append(self.gen.resident_tokens())

    @property
    def tree(self) -> dict:
        return {n["id"]: n for n in self.result.tree["nodes"]}



class ScriptedGenerator:
    """A Generator whose replies are scripted: ``reply(call, request, sample)`` gives the
    ``(text, FinishReason)`` of each continuation (indices count from 0). Tokens are the
    text's words; ``asked`` records the ``n`` of every request, call by call."""

    def __init__(self, reply) -> None:
        self.reply = reply
        self.asked: list[list[int]] = []
        self.handles = 0

    def root(self, problem: Problem) -> int:
        return 0

    def expand(self, requests, *, token_limit=None) -> ExpandOutput:
        call = len(self.asked)
        self.asked.append([r.n for r in requests])
        out, generated = [], 0
        for j, r in enumerate(requests):
            conts = []
            for i in range(r.n):
                text, finish = self.reply(call, j, i)
                ids = tuple(range(len(text.split())))
                generated += len(ids)
                self.handles += 1
                conts.append(Continuation(handle=self.handles, token_ids=ids, text=text,
                                          logprobs=(-0.1,) * len(ids), finish=finish))
            out.append(tuple(conts))
        return ExpandOutput(continuations=tuple(out),
                            usage=GenerationUsage(generated_tokens=generated))

    def pin(self, handles, *, value=None) -> None:
        pass

    def release(self, handles) -> None:
        pass

    def kv_bytes(self) -> int:
        return 0
