"""Metered views of a generator and a verifier: the one place a ledger is charged.

Contract: a strategy only ever holds these views. Each call checks the budget first,
passes the remaining generated-token allowance to the engine as a hard cap, times the
call into its ledger phase, and charges the usage the engine or verifier reported.

    strategy ── expand ──► MeteredGenerator ── expand(token_limit=remaining) ──► engine
                               │  charge_generation(usage)     (once per call)
                               ▼
                         ComputeLedger ◄── charge_verification(usage) ── MeteredVerifier

A view may carry a ``line`` label (a model of a pair, a pipeline layer): its usage is
then charged to the totals *and* to ``ledger.lines[line]``.
Must NOT know: what the engine or verifier is.
"""

from __future__ import annotations

from typing import Sequence

from ttc.ledger import ComputeLedger
from ttc.protocols import Generator, SupportsEmbeddings, Verifier
from ttc.registry import ConfigError
from ttc.turns import follow_up_text
from ttc.types import (Continuation, ExpandOutput, ExpandRequest, FinishReason, Handle,
                       Problem, Purpose, SamplingParams, ScoreOutput, VerifierUsage)


class MeteredGenerator:
    def __init__(self, inner: Generator, ledger: ComputeLedger, *,
                 line: str | None = None) -> None:
        if isinstance(inner, MeteredGenerator):
            raise TypeError("generator is already metered; pass the underlying engine.")
        self.inner = inner
        self.ledger = ledger
        self.line = line

    def relabel(self, line: str | None) -> "MeteredGenerator":
        """The same engine and ledger, charged to another line."""
        return MeteredGenerator(self.inner, self.ledger, line=line)

    def root(self, problem: Problem) -> Handle:
        return self.inner.root(problem)

    def expand(self, requests: Sequence[ExpandRequest]) -> ExpandOutput:
        if not requests:
            raise ValueError("expand needs at least one request; got none.")
        if not self.supports_token_rules and any(r.params.stop_rules or r.params.top_logprobs
                                                 for r in requests):
            engine = getattr(self.inner, "inner", self.inner)     # through serving wrappers
            raise ConfigError(f"the {type(engine).__name__} backend does not run stop rules "
                              f"or return top-k log-probs while it decodes (they would be "
                              f"ignored); use backend=native or backend=simulated.")
        token_limit = self.ledger.check_generation()   # raises BudgetExhausted at 0
        with self.ledger.phase("generate"):
            out = self.inner.expand(list(requests), token_limit=token_limit)
        self.ledger.charge_generation(out.usage, line=self.line, cut=any(
            c.finish is FinishReason.BUDGET for cs in out.continuations for c in cs),
            forced=_forced(out))
        return out

    def pin(self, handles: Sequence[Handle], *, value: float | None = None) -> None:
        self.inner.pin(list(handles), value=value)

    def release(self, handles: Sequence[Handle]) -> None:
        if handles:
            self.inner.release(list(handles))

    def kv_bytes(self) -> int:
        return self.inner.kv_bytes()

    @property
    def supports_token_rules(self) -> bool:
        """Whether the engine returns ``top_logprobs`` and runs ``stop_rules`` while it
        decodes (an engine says so with ``supports_token_rules = True``)."""
        return bool(getattr(self.inner, "supports_token_rules", False))

    @property
    def supports_probe(self) -> bool:
        return callable(getattr(self.inner, "probe", None))

    def probe(self, handle: Handle, suffix: str, *, max_new: int,
              params: SamplingParams | None = None,
              purpose: Purpose = Purpose.PROBE) -> Continuation:
        """One throw-away continuation of ``handle`` + ``suffix`` on shared KV, charged
        (to the totals and to the probe counters).

        The suffix is tokenized by the engine (role markers of a chat template become
        their special tokens); ``max_new`` is capped by the generated-token budget left,
        so a probe never overspends it. ``purpose`` says what the probe asks
        (:class:`~ttc.types.Purpose`: PROBE for an answer, JUDGE for a score); only an
        engine that declares ``reads_purpose`` is told.
        """
        if not self.supports_probe:
            raise ValueError(f"the {type(self.inner).__name__} engine cannot probe a branch "
                             f"(no probe on shared KV); use backend=native or simulated.")
        token_limit = self.ledger.check_generation()   # raises BudgetExhausted at 0
        if token_limit is not None:
            max_new = min(max_new, token_limit)
        told = {"purpose": purpose} if getattr(self.inner, "reads_purpose", False) else {}
        with self.ledger.phase("generate"):
            out = self.inner.probe(handle, self._encode(suffix), max_new=max_new,
                                   params=params, **told)
        self.ledger.charge_generation(out.usage, line=self.line, probe=True,
                                      forced=_forced(out))
        return out.continuations[0][0]

    def follow_up(self, user_text: str, assistant_prefix: str) -> str:
        """Text that closes the branch's assistant turn, asks ``user_text`` as a user
        turn and opens the reply with ``assistant_prefix`` (:mod:`ttc.turns`), in this
        engine's chat template: a probe suffix for a question about the branch."""
        return follow_up_text(getattr(self.inner, "tokenizer", None), user_text,
                              assistant_prefix)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens) in this engine's tokenizer."""
        return self._encode(text)

    @property
    def thinking_delimiters(self) -> tuple[str, str] | None:
        """(start, end) of the model's thinking segment, or None if it has none."""
        return getattr(self.inner, "thinking_delimiters", None)

    @property
    def can_replace_tokens(self) -> bool:
        """Whether stop rules may replace a sampled token (``ttc.stopping.Replace``)."""
        return bool(getattr(self.inner, "can_replace_tokens", False))

    def _encode(self, text: str) -> list[int]:
        encode = getattr(self.inner, "encode", None)
        if callable(encode):
            return list(encode(text))
        return list(self.inner.tokenizer.encode(text, add_special_tokens=False))

    @property
    def supports_embeddings(self) -> bool:
        return isinstance(self.inner, SupportsEmbeddings)

    def embed(self, handles: Sequence[Handle]) -> list[list[float]]:
        if not isinstance(self.inner, SupportsEmbeddings):
            raise TypeError(f"{type(self.inner).__name__} cannot embed steps.")
        with self.ledger.phase("generate"):
            counted = getattr(self.inner, "embed_usage", None)
            if counted is None:
                return self.inner.embed(list(handles))
            vectors, computed = counted(list(handles))
        if computed:                       # an embedding that ran the model is charged
            self.ledger.charge_prefill(computed, line=self.line)
        return vectors


class MeteredVerifier:
    def __init__(self, inner: Verifier, ledger: ComputeLedger, *,
                 line: str | None = None) -> None:
        if isinstance(inner, MeteredVerifier):
            raise TypeError("verifier is already metered; pass the underlying verifier.")
        self.inner = inner
        self.ledger = ledger
        self.line = line

    def relabel(self, line: str | None) -> "MeteredVerifier":
        return MeteredVerifier(self.inner, self.ledger, line=line)

    @property
    def incremental(self) -> bool:
        return bool(getattr(self.inner, "incremental", False))

    def score(self, problem: Problem,
              trajectories: Sequence[Sequence[str]]) -> ScoreOutput:
        trajectories = [list(t) for t in trajectories]
        if not trajectories:
            return ScoreOutput(scores=(), usage=_NO_USAGE)
        self.ledger.check_verification(len(trajectories))
        with self.ledger.phase("verify"):
            out = self.inner.score(problem, trajectories)
        if len(out.scores) != len(trajectories):
            raise RuntimeError(f"{type(self.inner).__name__} returned {len(out.scores)} "
                               f"score lists for {len(trajectories)} trajectories.")
        self.ledger.charge_verification(out.usage, line=self.line)
        return out


_NO_USAGE = VerifierUsage()


def _forced(out: ExpandOutput) -> int:
    """Tokens the call's stop rules forced, as the engine reports them per continuation."""
    return int(sum(c.stats.get("forced_tokens", 0) for cs in out.continuations for c in cs))
