"""Pipeline: a generator, a verifier, a strategy and a budget, composed to solve problems.

Contract: wiring only. Each part may be given as an object, a config, or a registered
name (with defaults); :meth:`Pipeline.from_config` builds all three from a validated
:class:`~ttc.config.RunConfig`. Every problem gets its own ledger (the strategy opens it
and charges it through metered views); :attr:`Pipeline.ledger` adds them up.

    pipe = Pipeline(generator="simulated", verifier="simulated", strategy="best_of_n",
                    budget=4096)
    result = pipe.solve("What is 2+2?")
"""

from __future__ import annotations

from typing import Any, Iterable

from pydantic import BaseModel, ValidationError

from ttc.config import GenerationConfig, RunConfig
from ttc.ledger import Budget, ComputeLedger
from ttc.protocols import ProgressCallback
from ttc.registry import BACKENDS, STRATEGIES, VERIFIERS, ConfigError, format_validation_error
from ttc.types import Problem, Result


def _as_budget(budget: Budget | int | dict | None) -> Budget:
    if budget is None:
        return Budget()
    if isinstance(budget, Budget):
        return budget
    if isinstance(budget, bool) or not isinstance(budget, int | dict):
        raise ConfigError(f"budget must be a Budget, a dict or a positive token count; "
                          f"got {budget!r}.")
    data = {"max_generated_tokens": budget} if isinstance(budget, int) else budget
    try:
        return Budget.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error("budget", err)) from err


class Pipeline:
    def __init__(self, *, generator: Any = "simulated", verifier: Any = "simulated",
                 strategy: Any = "best_of_n", budget: Budget | int | dict | None = None,
                 generation: GenerationConfig | None = None,
                 progress: ProgressCallback | None = None) -> None:
        self.generation = generation or GenerationConfig()
        self.generator = self._build(BACKENDS, generator)
        self.verifier = self._build(VERIFIERS, verifier, generator=self.generator)
        self.strategy = self._build(STRATEGIES, strategy, generation=self.generation)
        self.budget = _as_budget(budget)
        self.progress = progress
        self.ledger = ComputeLedger.total([])

    @staticmethod
    def _build(registry, part: Any, **kwargs: Any) -> Any:
        if isinstance(part, str | dict | BaseModel):
            return registry.build(part, **kwargs)
        return part

    @classmethod
    def from_config(cls, config: RunConfig, *, progress: ProgressCallback | None = None,
                    shared: tuple[Any, Any] | None = None) -> "Pipeline":
        """The pipeline ``config`` describes; ``shared`` = (generator, verifier) already
        built (one engine serving many pipelines, :func:`ttc.sharing.shared_engine`)."""
        generator, verifier = shared if shared is not None else (config.backend,
                                                                 config.verifier)
        return cls(generator=generator, verifier=verifier,
                   strategy=config.strategy, budget=config.budget,
                   generation=config.generation, progress=progress)

    def solve(self, question: str | Problem, *, problem_id: str = "0") -> Result:
        problem = question if isinstance(question, Problem) else Problem(
            id=problem_id, question=question)
        result = self.strategy.run(problem, generator=self.generator, verifier=self.verifier,
                                   budget=self.budget, progress=self.progress)
        self.ledger.merge(result.ledger)
        return result

    def solve_many(self, problems: Iterable[Problem | str]) -> list[Result]:
        return [self.solve(p, problem_id=str(i)) for i, p in enumerate(problems)]
