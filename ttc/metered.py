"""Metered views of a generator and a verifier: the one place a ledger is charged.

Contract: a strategy only ever holds these views. Each call checks the budget first,
passes the remaining generated-token allowance to the engine as a hard cap, times the
call into its ledger phase, and charges the usage the engine or verifier reported.

    strategy ── expand ──► MeteredGenerator ── expand(token_limit=remaining) ──► engine
                               │  charge_generation(usage)     (once per call)
                               ▼
                         ComputeLedger ◄── charge_verification(usage) ── MeteredVerifier

A view may carry a ``line`` label (a model of a pair, a pipeline layer): its usage is
then charged to the totals *and* to ``ledger.lines[line]``. ``probe`` (engines with
:class:`~ttc.protocols.SupportsProbe`) is charged like an expand: its suffix prefill and
its decoded tokens, one LM call.
Must NOT know: what the engine or verifier is.
"""

from __future__ import annotations

from typing import Sequence

from ttc.ledger import ComputeLedger
from ttc.protocols import Generator, SupportsEmbeddings, SupportsProbe, Verifier
from ttc.types import (ExpandOutput, ExpandRequest, FinishReason, Handle, Problem,
                       ScoreOutput, VerifierUsage)


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
        token_limit = self.ledger.check_generation()   # raises BudgetExhausted at 0
        with self.ledger.phase("generate"):
            out = self.inner.expand(list(requests), token_limit=token_limit)
        self.ledger.charge_generation(out.usage, line=self.line, cut=any(
            c.finish is FinishReason.BUDGET for cs in out.continuations for c in cs))
        return out

    # -- optional abilities ------------------------------------------------------------
    @property
    def supports_probe(self) -> bool:
        return isinstance(self.inner, SupportsProbe) and hasattr(self.inner, "encode")

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens) in this engine's tokenizer."""
        encode = getattr(self.inner, "encode", None)
        if encode is None:
            raise TypeError(f"{type(self.inner).__name__} does not expose its tokenizer "
                            f"(encode).")
        return list(encode(text))

    def probe(self, handle: Handle, suffix: str, *, max_new: int, params=None,
              n: int = 1) -> ExpandOutput:
        """A throw-away continuation of ``handle`` + ``suffix`` on shared KV, charged."""
        if not self.supports_probe:
            raise TypeError(f"{type(self.inner).__name__} cannot run probes.")
        token_limit = self.ledger.check_generation()
        max_new = max_new if token_limit is None else min(max_new, token_limit)
        with self.ledger.phase("generate"):
            out = self.inner.probe(handle, self.encode(suffix), max_new=max_new,
                                   params=params, n=n)
        self.ledger.charge_generation(out.usage, line=self.line)
        return out

    @property
    def thinking_delimiters(self) -> tuple[str, str] | None:
        """(start, end) of the model's thinking segment, or None if it has none."""
        return getattr(self.inner, "thinking_delimiters", None)

    @property
    def can_replace_tokens(self) -> bool:
        """Whether stop rules may replace a sampled token (``ttc.stopping.Replace``)."""
        return bool(getattr(self.inner, "can_replace_tokens", False))

    def pin(self, handles: Sequence[Handle], *, value: float | None = None) -> None:
        self.inner.pin(list(handles), value=value)

    def release(self, handles: Sequence[Handle]) -> None:
        if handles:
            self.inner.release(list(handles))

    def kv_bytes(self) -> int:
        return self.inner.kv_bytes()

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
