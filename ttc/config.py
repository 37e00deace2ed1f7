"""Run configuration: pydantic schemas are the single source of truth.

Contract: :class:`RunConfig` joins the shared :class:`GenerationConfig`, the budget and
one config each for backend, verifier and strategy. The last three are looked up by
their ``name`` in :mod:`ttc.registry`, so a typo fails at start-up with the list of
registered names. Hydra groups in ``ttc/conf/`` map one to one onto these schemas
(``ttc/conf/strategy/beam.yaml`` holds exactly the fields of ``BeamConfig``); only
``ttc.compose`` composes them, then calls :func:`load_run_config` on a plain dict.
Must NOT know: Hydra (it sees plain dicts), engine internals.
"""

from __future__ import annotations

from typing import Any

from pydantic import (BaseModel, Field, PositiveInt, ValidationError, field_validator,
                      model_validator)

from ttc.ledger import Budget
from ttc.registry import (BACKENDS, STRATEGIES, VERIFIERS, ConfigError,
                          format_validation_error)
from ttc.types import STEP_DELIMITER, Frozen, SamplingParams


class GenerationConfig(Frozen):
    """Sampling options shared by every strategy (set once, never per strategy)."""

    temperature: float = Field(default=0.8, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)
    step_delimiter: str = STEP_DELIMITER
    max_step_tokens: PositiveInt = 256     # tokens in one reasoning step at most
    max_tokens: PositiveInt = 1024         # tokens in one whole solution at most
    max_steps: PositiveInt = 40            # steps in one solution at most
    seed: int = 0
    # A solution the model ended (EOS) without \boxed{}, "####" or "The answer is"
    # answers with its last number, as graders read it (``ttc.verifiers.grade``).
    last_number_answer: bool = True
    # Thinking-budget control for every branch of any strategy (docs/algorithms.md#budget-forcing), on a
    # model that thinks between delimiters: force the end after ``thinking_cap`` sampled
    # thinking tokens (null: no cap); replace the first ``thinking_extend`` attempted ends
    # by ``thinking_extend_text``. ``thinking_answer_text`` follows a forced end.
    thinking_cap: PositiveInt | None = None
    thinking_extend: int = Field(default=0, ge=0)
    thinking_extend_text: str = "Wait"
    thinking_answer_text: str = "\nFinal Answer:"

    @field_validator("step_delimiter")
    @classmethod
    def _delimiter_not_empty(cls, value: str) -> str:
        if value == "":
            raise ValueError("the step delimiter must be a non-empty string")
        return value

    def step_params(self, *, seed: int | None, temperature: float | None = None,
                    max_tokens: int | None = None) -> SamplingParams:
        """Sampling parameters for one reasoning step (stops at the delimiter)."""
        return SamplingParams(
            temperature=self.temperature if temperature is None else temperature,
            top_p=self.top_p, top_k=self.top_k,
            max_tokens=max_tokens or self.max_step_tokens,
            stop=(self.step_delimiter,), seed=seed)

    def solution_params(self, *, seed: int | None, temperature: float | None = None,
                        max_tokens: int | None = None) -> SamplingParams:
        """Sampling parameters for a whole solution (runs to EOS or max_tokens)."""
        return SamplingParams(
            temperature=self.temperature if temperature is None else temperature,
            top_p=self.top_p, top_k=self.top_k,
            max_tokens=max_tokens or self.max_tokens, stop=(), seed=seed)


class RunConfig(Frozen):
    """Everything one ``ttc solve`` / ``ttc eval`` run needs."""

    backend: BaseModel
    verifier: BaseModel
    strategy: BaseModel
    generation: GenerationConfig = GenerationConfig()
    budget: Budget = Budget()
    # The small model of a pair (SpecReason drafts with it; ``backend`` is the large one).
    draft_backend: BaseModel | None = None

    @field_validator("backend", mode="before")
    @classmethod
    def _backend(cls, value: Any) -> BaseModel:
        return BACKENDS.make_config(value)

    @field_validator("draft_backend", mode="before")
    @classmethod
    def _draft_backend(cls, value: Any) -> BaseModel | None:
        return None if value is None else BACKENDS.make_config(value)

    @field_validator("verifier", mode="before")
    @classmethod
    def _verifier(cls, value: Any) -> BaseModel:
        return VERIFIERS.make_config(value)

    @field_validator("strategy", mode="before")
    @classmethod
    def _strategy(cls, value: Any) -> BaseModel:
        return STRATEGIES.make_config(value)

    @model_validator(mode="after")
    def _strategy_fits_run(self) -> "RunConfig":
        """A strategy whose settings depend on the generation length or the budget checks
        them here (``check_run``), so a combination that cannot work fails at start-up."""
        check = getattr(self.strategy, "check_run", None)
        if callable(check):
            check(max_tokens=self.generation.max_tokens,
                  budget_tokens=self.budget.max_generated_tokens)
        return self

    def dump(self) -> dict[str, Any]:
        """A plain dict that validates back into an equal RunConfig."""
        draft = {} if self.draft_backend is None else {
            "draft_backend": self.draft_backend.model_dump(mode="json")}
        return {
            **draft,
            "backend": self.backend.model_dump(mode="json"),
            "verifier": self.verifier.model_dump(mode="json"),
            "strategy": self.strategy.model_dump(mode="json"),
            "generation": self.generation.model_dump(mode="json"),
            "budget": self.budget.model_dump(mode="json"),
        }


def load_run_config(data: dict[str, Any], *, extra_keys: tuple[str, ...] = ()) -> RunConfig:
    """Validate a composed config; raise :class:`ConfigError` with one clear sentence.

    ``extra_keys`` are top-level keys that belong to the caller (an eval's dataset,
    output folder, ...) and are ignored here.
    """
    data = {k: v for k, v in data.items() if k not in extra_keys}
    try:
        return RunConfig.model_validate(data)
    except ConfigError:
        raise
    except ValidationError as err:
        # A registry ConfigError raised inside a validator arrives wrapped.
        first = err.errors()[0]
        ctx_err = first.get("ctx", {}).get("error")
        if isinstance(ctx_err, ConfigError):
            raise ConfigError(str(ctx_err)) from err
        raise ConfigError(format_validation_error("config", err)) from err
