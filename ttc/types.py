"""Values that cross layers: problems, sampling parameters, expansion requests and results.

Contract: everything here is frozen (pydantic models with ``frozen=True, extra="forbid"``
for what is read from config or disk, frozen dataclasses for runtime values), so a
strategy, an engine and a verifier can hand these to each other without copying.
Must NOT know: engines, pages, models, Hydra, or any particular strategy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator

STEP_DELIMITER = "\n\n"


class Frozen(BaseModel):
    """Base for schemas read from config or disk: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Message(Frozen):
    """One turn of a conversation (a chat client's message, content as plain text)."""

    role: Literal["system", "user", "assistant"]
    content: str


class Problem(Frozen):
    """One question to solve.

    ``answer`` is the gold answer when known (evals); ``metadata`` carries dataset fields
    such as a MATH level, or a simulated problem's difficulty. ``context`` is the
    conversation before the question (a chat client's system prompt, few-shot turns):
    the prompt is ``context`` then ``question`` as the last user turn, and a system
    message in ``context`` takes the place of the engine's default system prompt.
    """

    id: str = "0"
    question: str
    answer: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    context: tuple[Message, ...] = ()

    @field_validator("question")
    @classmethod
    def _question_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the question must be a non-empty string")
        return value


class SamplingParams(Frozen):
    """How to sample one continuation.

    ``stop`` strings end a continuation and are kept in its text (the step delimiter
    ``"\\n\\n"`` ends a reasoning step). ``seed`` makes a branch reproducible: the
    engine derives each continuation's generator from (seed, continuation index).
    ``temperature == 0`` means greedy. ``top_logprobs`` (0..20) asks for the k most
    likely ``(token_id, logprob)`` pairs at every position (``Continuation.top_logprobs``).
    ``stop_rules`` are :class:`ttc.stopping.StopRuleSpec` objects run on every token of
    every branch inside the decode batch (see :mod:`ttc.stopping`).
    """

    temperature: float = Field(default=0.8, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)  # 0 = no top-k truncation
    max_tokens: int = Field(default=512, gt=0)
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = True
    top_logprobs: int = Field(default=0, ge=0, le=20)
    stop_rules: tuple[Any, ...] = ()

    @field_validator("stop_rules")
    @classmethod
    def _rules_are_specs(cls, value: tuple[Any, ...]) -> tuple[Any, ...]:
        from ttc.stopping import MAX_TOP_K, StopRuleSpec

        for r in value:
            if not isinstance(r, StopRuleSpec):
                raise ValueError(f"stop_rules takes ttc.stopping rule specs (with top_k and "
                                 f"start()); got {r!r}")
            if not 0 <= r.top_k <= MAX_TOP_K:
                raise ValueError(f"a stop rule may ask for 0..{MAX_TOP_K} top log-probs; "
                                 f"{r!r} asks for {r.top_k}")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for s in value:
            if s == "":
                raise ValueError("stop strings must be non-empty; got ''")
        return value


class FinishReason(enum.Enum):
    STOP = "stop"              # hit a stop string (e.g. the step delimiter); may continue
    EOS = "eos"                # the model ended the answer
    MAX_TOKENS = "max_tokens"  # hit SamplingParams.max_tokens (or the model's context)
    BUDGET = "budget"          # cut by the caller's generated-token limit
    RULE = "rule"              # ended by a stop rule (ttc.stopping), e.g. low confidence


Handle = Hashable
"""An engine-side name for a token sequence (a prompt, or a prompt plus steps).

Handles come from :meth:`Generator.root` and :meth:`Generator.expand`; the search layer
treats them as opaque and passes them back as prefixes, pins and releases them.
"""


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """One token of one branch, as an engine samples (or forces) it.

    ``branch`` is the continuation's index within its request; ``text`` is the new text
    this token completes (may be empty while a multi-byte character is incomplete);
    ``finish`` is set on the branch's last event.
    """

    branch: int
    token_id: int
    logprob: float
    text: str
    forced: bool = False
    finish: "FinishReason | None" = None


class Purpose(enum.Enum):
    """What a call to the model is for, as the strategy that makes it says.

    Real engines run every purpose the same way (the prompt says it all); the simulated
    engine, which cannot read, models each kind of call from this field and never from
    the prompt's wording.
    """

    GENERATE = "generate"   # sample reasoning: a step, a solution, a critique, a plan
    PROBE = "probe"         # "what is your answer now?" on a branch (Dynasor)
    JUDGE = "judge"         # a score or verdict about the branch so far (SpecReason)
    FUSE = "fuse"           # merge the candidate answers quoted in the prompt (Archon)


@dataclass(frozen=True, slots=True)
class ExpandRequest:
    """Ask for ``n`` continuations of the sequence named by ``prefix``.

    ``purpose`` says what kind of call this is (:class:`Purpose`); engines that model
    behaviour rather than run a model read it, and no engine reads the prompt for it.

    ``on_token`` (optional) streams every branch's tokens as they are sampled; engines
    that cannot stream call it once per token after the fact. It runs on the engine's
    thread: keep it short (hand the event to a queue), and an exception it raises fails
    this request's call.
    """

    prefix: Handle
    n: int
    params: SamplingParams
    on_token: Callable[[TokenEvent], None] | None = None
    purpose: Purpose = Purpose.GENERATE

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise ValueError(f"ExpandRequest.n must be a positive integer; got {self.n!r}.")
        if not isinstance(self.purpose, Purpose):
            raise ValueError(f"ExpandRequest.purpose must be a ttc.types.Purpose "
                             f"({', '.join(p.value for p in Purpose)}); got {self.purpose!r}.")


@dataclass(frozen=True, slots=True)
class Continuation:
    """One sampled continuation of a prefix.

    ``handle`` names prefix + these tokens; it starts pinned (alive) and stays so until
    the search layer releases it. ``logprobs`` has one natural-log probability per token.
    """

    handle: Handle
    token_ids: tuple[int, ...]
    text: str
    logprobs: tuple[float, ...]
    finish: FinishReason
    top_logprobs: tuple[tuple[tuple[int, float], ...], ...] = ()   # per token, when asked
    stop_reason: str | None = None      # what ended it, e.g. "eos", "stop:'\n\n'", a rule
    stats: dict[str, float] = field(default_factory=dict)   # stop rules' summaries

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def ended(self) -> bool:
        """True when the trajectory cannot continue (EOS, model limit, or a stop rule)."""
        return self.finish in (FinishReason.EOS, FinishReason.MAX_TOKENS, FinishReason.RULE)


@dataclass(frozen=True, slots=True)
class GenerationUsage:
    """What one ``expand`` call cost, reported by the engine where it happened.

    ``prefill_tokens`` were run through the model; ``cached_tokens`` were prompt/prefix
    tokens served from the prefix cache instead. ``peak_kv_bytes`` is the engine's
    high-water mark of resident KV bytes so far.
    """

    prefill_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    peak_kv_bytes: int = 0


@dataclass(frozen=True, slots=True)
class ExpandOutput:
    """Continuations, one list per request in request order, and the call's usage."""

    continuations: tuple[tuple[Continuation, ...], ...]
    usage: GenerationUsage


@dataclass(frozen=True, slots=True)
class VerifierUsage:
    """What one ``score`` call cost: sequences scored and tokens run through the verifier.

    ``tokens`` excludes tokens served from the verifier's own prefix cache, which are
    counted in ``cached_tokens``.
    """

    calls: int = 0
    tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ScoreOutput:
    """Per-step scores in [0, 1], one list per trajectory, and the call's usage."""

    scores: tuple[tuple[float, ...], ...]
    usage: VerifierUsage


class Candidate(Frozen):
    """A finished (or best-so-far) trajectory offered as an answer."""

    steps: tuple[str, ...]
    answer: str | None
    score: float | None = None          # aggregated verifier score, if scored
    step_scores: tuple[float, ...] = ()
    num_tokens: int = 0
    mean_logprob: float | None = None
    node_id: int | None = None          # its leaf in the search tree, if one was kept

    @property
    def text(self) -> str:
        return "".join(self.steps)


class LedgerSnapshot(Frozen):
    """A frozen copy of a :class:`~ttc.ledger.ComputeLedger`'s counters."""

    prefill_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    forced_tokens: int = 0              # of generated_tokens: forced by a stop rule
    probe_prefill_tokens: int = 0       # of prefill_tokens: run by probes
    probe_generated_tokens: int = 0     # of generated_tokens: decoded by probes
    lm_calls: int = 0
    verifier_calls: int = 0
    verifier_tokens: int = 0
    verifier_cached_tokens: int = 0
    peak_kv_bytes: int = 0
    wall_seconds: dict[str, float] = Field(default_factory=dict)
    budget_exhausted: bool = False
    problems: int = 1
    lines: dict[str, dict[str, int]] = Field(default_factory=dict)   # per model / layer


class Result(Frozen):
    """What a strategy returns for one problem."""

    problem_id: str
    strategy: str
    answer: str | None
    trajectory: tuple[str, ...] = ()
    candidates: tuple[Candidate, ...] = ()
    tree: dict[str, Any] | None = None   # SearchTree.to_json(), when kept
    ledger: LedgerSnapshot = Field(default_factory=LedgerSnapshot)
    info: dict[str, Any] = Field(default_factory=dict)

    @computed_field
    @property
    def budget_exhausted(self) -> bool:
        """A budget stopped the search (the ledger's flag: :meth:`ComputeLedger.exhausted`)."""
        return self.ledger.budget_exhausted

    @property
    def text(self) -> str:
        return "".join(self.trajectory)


class EventKind(enum.Enum):
    """What a :class:`ProgressEvent` reports.

    ``STEP`` is a strategy's own report (``SearchContext.emit``); the others come from
    the search tree as it changes, so a viewer can redraw the tree live
    (:mod:`ttc.live`): a node was added, scored, pruned, or chosen as the answer.
    """

    STEP = "step"
    NODE_ADDED = "node_added"
    NODE_SCORED = "node_scored"
    NODE_PRUNED = "node_pruned"
    CHOSEN = "chosen"


@dataclass(frozen=True, slots=True)
class NodeUpdate:
    """One search-tree node as a viewer needs it (see :class:`ttc.tree.Node`).

    ``status`` is a :class:`ttc.tree.NodeStatus` value (``open``, ``expanded``,
    ``terminal``, ``pruned``); ``tokens`` is the node's own step length in tokens;
    ``cut_by_budget``: the token budget ended this step early.
    """

    id: int
    parent: int | None
    depth: int
    text: str
    tokens: int
    status: str
    score: float | None = None
    answer: str | None = None
    cut_by_budget: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "parent": self.parent, "depth": self.depth, "text": self.text,
                "tokens": self.tokens, "status": self.status, "score": self.score,
                "answer": self.answer, "cut_by_budget": self.cut_by_budget}


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """A search's progress: search step, live branches, best score so far.

    ``kind`` says what happened (:class:`EventKind`); tree events carry the ``node``
    concerned (a ``CHOSEN`` event: the chosen leaf, or ``None`` when no candidate was
    kept) and repeat the latest step, live and best score, so a consumer that reads
    only those fields sees a consistent stream. ``generated_tokens`` is the problem's
    ledger so far and ``budget_tokens`` its limit (``None``: unlimited);
    ``budget_exhausted`` is set on the ``CHOSEN`` event of a search the budget cut.
    """

    step: int
    live: int
    best_score: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    kind: EventKind = EventKind.STEP
    node: NodeUpdate | None = None
    generated_tokens: int = 0
    budget_tokens: int | None = None
    budget_exhausted: bool = False


@dataclass
class BenchReport:
    """What one benchmark (``ttc bench NAME``) measured: absolute ``metrics`` (units in their
    keys), ``ratios`` measured side by side in the same run, ``notes``, the ``machine``."""

    name: str
    metrics: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "machine": self.machine, "metrics": self.metrics,
                "ratios": self.ratios, "notes": self.notes}
