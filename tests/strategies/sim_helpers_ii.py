"""Shared set-up for the Strategies II tests: a simulated world and a recording engine."""

from __future__ import annotations

from typing import Sequence

from ttc.engine.backends.simulated import SimulatedBackendConfig, SimulatedGenerator
from ttc.evals.tasks import make_problems
from ttc.types import ExpandOutput, ExpandRequest, Handle, Problem
from ttc.verifiers.simulated import SimulatedPRM, SimulatedPRMConfig


def world(*, auroc: float = 0.9, seed: int = 0) -> tuple[SimulatedGenerator, SimulatedPRM]:
    return (SimulatedGenerator(SimulatedBackendConfig(world_seed=seed)),
            SimulatedPRM(SimulatedPRMConfig(world_seed=seed, auroc=auroc)))


def problems(n: int, *, seed: int = 0, difficulty=(0.2, 0.8)) -> list[Problem]:
    return make_problems(n, seed=seed, difficulty=difficulty)


class NoEmbedGenerator:
    """A generator that forwards the protocol but cannot embed (text fallback path)."""

    def __init__(self, inner: SimulatedGenerator) -> None:
        self.inner = inner

    def root(self, problem: Problem) -> Handle:
        return self.inner.root(problem)

    def expand(self, requests: Sequence[ExpandRequest], *,
               token_limit: int | None = None) -> ExpandOutput:
        return self.inner.expand(requests, token_limit=token_limit)

    def pin(self, handles, *, value=None) -> None:
        self.inner.pin(handles, value=value)

    def release(self, handles) -> None:
        self.inner.release(handles)

    def kv_bytes(self) -> int:
        return self.inner.kv_bytes()
