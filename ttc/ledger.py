"""Budgets and the compute ledger: what a run may spend and what it did spend.

Contract: one :class:`ComputeLedger` per problem counts every token and verifier call
exactly once, at the place it happens. Engines and verifiers *report* usage
(:class:`~ttc.types.GenerationUsage`, :class:`~ttc.types.VerifierUsage`); the metered
views in :mod:`ttc.metered` are the only code that charges a ledger, so no strategy can
forget to count or count twice. Budgets are hard limits: the metered views pass the
remaining generated-token allowance down to the engine, and refuse a call that would
exceed the verifier-call or wall-time limits by raising :class:`BudgetExhausted`.

    counter                  charged when
    -----------------------  ----------------------------------------------------------
    prefill_tokens           prompt/prefix tokens run through the policy model
    cached_tokens            prompt/prefix tokens served from the engine's prefix cache
    generated_tokens         tokens decoded by the policy model (pruned branches too),
                             sampled or forced: a forced token takes a decode step
    forced_tokens            of generated_tokens, those forced by a stop rule instead of
                             sampled (budget forcing's "Wait", a forced "</think>")
    probe_prefill_tokens     of prefill_tokens, those run by probes (a suffix on a branch)
    probe_generated_tokens   of generated_tokens, those decoded by probes (Dynasor's
                             answer probes, SpecReason's judge digit)
    lm_calls                 one per ``expand`` call (a batch of requests)
    verifier_calls           one per trajectory scored (one verifier forward per sequence)
    verifier_tokens          tokens run through the verifier (not served from its cache)
    verifier_cached_tokens   verifier tokens served from its prefix cache
    peak_kv_bytes            max over the run of the engine's resident KV bytes
    wall_seconds[phase]      seconds in generate / verify / orchestrate
    lines[label][counter]    the same counters again for one labelled part of the run:
                             a model of a pair ("draft", "target") or a layer of a
                             composed pipeline ("layer1.generate"); charged together with
                             the totals above, never instead of them (budgets see totals)

One convention on every engine: forced and probe tokens are counted where they are run
(generated or prefill, so they spend the budget they consume) and again in their own
counters; the counts come from what the engine reports (``GenerationUsage``, a
continuation's ``stats["forced_tokens"]``) and from the metered call that made them
(a probe), never from the strategy.

Ledgers add across problems (:meth:`ComputeLedger.merge`): counters sum, peaks take the max.
Must NOT know: engines, verifiers, strategies; it only counts.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from pydantic import PositiveFloat, PositiveInt

from ttc.types import Frozen, GenerationUsage, LedgerSnapshot, VerifierUsage

PHASES = ("generate", "verify", "orchestrate")


class BudgetExhausted(Exception):
    """Raised by a metered call that would go past a budget; strategies return best-so-far."""

    def __init__(self, what: str, limit: float, spent: float) -> None:
        super().__init__(f"{what} budget exhausted: limit {limit}, spent {spent}")
        self.what = what
        self.limit = limit
        self.spent = spent


DEFAULT_GENERATED_TOKENS = 4096


class Budget(Frozen):
    """Hard limits for one problem, in any combination; ``None`` means unlimited.

    The one place budgets are validated (every limit positive) and the one default:
    ``Budget()`` allows :data:`DEFAULT_GENERATED_TOKENS` generated tokens, as
    ``ttc/conf/budget/default.yaml`` and ``Pipeline(budget=None)`` do;
    :data:`UNLIMITED` sets no limit (a bare :class:`ComputeLedger` only counts).
    """

    max_generated_tokens: PositiveInt | None = DEFAULT_GENERATED_TOKENS
    max_verifier_calls: PositiveInt | None = None
    max_wall_seconds: PositiveFloat | None = None

    @property
    def unlimited(self) -> bool:
        return (self.max_generated_tokens is None and self.max_verifier_calls is None
                and self.max_wall_seconds is None)


UNLIMITED = Budget(max_generated_tokens=None)


class ComputeLedger:
    """Mutable counters for one problem (or, after :meth:`merge`, for many); with no
    ``budget`` they only count (:data:`UNLIMITED`)."""

    def __init__(self, budget: Budget | None = None, *, clock=time.perf_counter) -> None:
        self.budget = UNLIMITED if budget is None else budget
        self._clock = clock
        self._start = clock()
        self.prefill_tokens = 0
        self.cached_tokens = 0
        self.generated_tokens = 0
        self.forced_tokens = 0
        self.probe_prefill_tokens = 0
        self.probe_generated_tokens = 0
        self.lm_calls = 0
        self.verifier_calls = 0
        self.verifier_tokens = 0
        self.verifier_cached_tokens = 0
        self.peak_kv_bytes = 0
        self.wall_seconds: dict[str, float] = {p: 0.0 for p in PHASES}
        self.budget_exhausted = False
        self.problems = 1
        self.lines: dict[str, dict[str, int]] = {}

    # -- charging (called only by ttc.metered) ---------------------------------------
    def charge_generation(self, usage: GenerationUsage, *, cut: bool = False,
                          line: str | None = None, forced: int = 0,
                          probe: bool = False) -> None:
        """Charge one expand call; ``cut``: the engine cut a branch at the call's token cap
        (``FinishReason.BUDGET``), so the generated-token budget is exhausted; ``line``:
        also charge that labelled line; ``forced``: how many of the generated tokens a
        stop rule forced; ``probe``: the call was a probe (its tokens also go to the
        probe counters)."""
        if forced < 0 or forced > usage.generated_tokens:
            raise RuntimeError(f"an engine reported {forced} forced tokens in a call that "
                               f"generated {usage.generated_tokens}; forced tokens are "
                               f"generated tokens.")
        extra = {"forced_tokens": forced} if forced else {}
        if probe:
            extra.update(probe_prefill_tokens=usage.prefill_tokens,
                         probe_generated_tokens=usage.generated_tokens)
        if line is not None:
            self._line(line, prefill_tokens=usage.prefill_tokens,
                       cached_tokens=usage.cached_tokens,
                       generated_tokens=usage.generated_tokens, lm_calls=1, **extra)
        for name, value in extra.items():
            setattr(self, name, getattr(self, name) + value)
        self.prefill_tokens += usage.prefill_tokens
        self.cached_tokens += usage.cached_tokens
        self.generated_tokens += usage.generated_tokens
        self.lm_calls += 1
        self.peak_kv_bytes = max(self.peak_kv_bytes, usage.peak_kv_bytes)
        # NOTE: the engine was given remaining_generated_tokens() as a hard cap, so this
        # can only fail if an engine ignores its cap, which is a bug, not a user error.
        limit = self.budget.max_generated_tokens
        if limit is not None and self.generated_tokens > limit:
            raise RuntimeError(f"engine overspent the generated-token cap: "
                               f"{self.generated_tokens} > {limit}")
        if cut:
            self.budget_exhausted = True

    def charge_prefill(self, tokens: int, *, line: str | None = None) -> None:
        """Tokens an engine ran outside an expand call (e.g. to embed an uncomputed
        handle); not an LM call."""
        if line is not None:
            self._line(line, prefill_tokens=tokens)
        self.prefill_tokens += tokens

    def charge_verification(self, usage: VerifierUsage, *, line: str | None = None) -> None:
        if line is not None:
            self._line(line, verifier_calls=usage.calls, verifier_tokens=usage.tokens,
                       verifier_cached_tokens=usage.cached_tokens)
        self.verifier_calls += usage.calls
        self.verifier_tokens += usage.tokens
        self.verifier_cached_tokens += usage.cached_tokens

    def _line(self, label: str, **counts: int) -> None:
        line = self.lines.setdefault(label, {})
        for name, value in counts.items():
            line[name] = line.get(name, 0) + value

    def record_kv_bytes(self, kv_bytes: int) -> None:
        self.peak_kv_bytes = max(self.peak_kv_bytes, kv_bytes)

    # -- budget queries ----------------------------------------------------------------
    def remaining_generated_tokens(self) -> int | None:
        limit = self.budget.max_generated_tokens
        return None if limit is None else max(0, limit - self.generated_tokens)

    def remaining_verifier_calls(self) -> int | None:
        limit = self.budget.max_verifier_calls
        return None if limit is None else max(0, limit - self.verifier_calls)

    def elapsed(self) -> float:
        return self._clock() - self._start

    def check_generation(self) -> int | None:
        """Raise if no token may be generated now; else return the remaining cap."""
        self.check_wall()
        remaining = self.remaining_generated_tokens()
        if remaining is not None and remaining <= 0:
            raise self.exhausted("generated-token")
        return remaining

    def check_verification(self, calls: int) -> None:
        """Raise unless ``calls`` more verifier calls fit in the budget."""
        self.check_wall()
        remaining = self.remaining_verifier_calls()
        if remaining is not None and calls > remaining:
            raise self.exhausted("verifier-call")

    def check_wall(self) -> None:
        limit = self.budget.max_wall_seconds
        if limit is not None and self.elapsed() >= limit:
            raise self.exhausted("wall-time")

    def exhausted(self, what: str) -> BudgetExhausted:
        """Mark the budget exhausted and return the exception to raise: ``what`` is
        "generated-token", "verifier-call" or "wall-time" (its limit and spend are read
        here, once)."""
        spent_and_limit = {
            "generated-token": (self.generated_tokens, self.budget.max_generated_tokens),
            "verifier-call": (self.verifier_calls, self.budget.max_verifier_calls),
            "wall-time": (round(self.elapsed(), 3), self.budget.max_wall_seconds)}
        if what not in spent_and_limit:
            raise ValueError(f"unknown budget {what!r}; allowed: {', '.join(spent_and_limit)}.")
        spent, limit = spent_and_limit[what]
        self.budget_exhausted = True
        return BudgetExhausted(what, limit if limit is not None else 0, spent)

    # -- timing ------------------------------------------------------------------------
    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the wall time of the block to ``wall_seconds[name]``."""
        if name not in self.wall_seconds:
            raise ValueError(f"unknown ledger phase {name!r}; allowed: {', '.join(PHASES)}.")
        t0 = self._clock()
        try:
            yield
        finally:
            self.wall_seconds[name] += self._clock() - t0

    def finish(self) -> None:
        """Attribute the wall time not spent generating or verifying to orchestration."""
        total = self.elapsed()
        spent = self.wall_seconds["generate"] + self.wall_seconds["verify"]
        self.wall_seconds["orchestrate"] = max(0.0, total - spent)

    # -- combining and reporting -------------------------------------------------------
    def merge(self, other: "ComputeLedger | LedgerSnapshot") -> None:
        """Add another problem's counters to this one (peaks take the max)."""
        for name in ("prefill_tokens", "cached_tokens", "generated_tokens", "forced_tokens",
                     "probe_prefill_tokens", "probe_generated_tokens", "lm_calls",
                     "verifier_calls", "verifier_tokens", "verifier_cached_tokens",
                     "problems"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.peak_kv_bytes = max(self.peak_kv_bytes, other.peak_kv_bytes)
        for phase, seconds in other.wall_seconds.items():
            self.wall_seconds[phase] = self.wall_seconds.get(phase, 0.0) + seconds
        self.budget_exhausted = self.budget_exhausted or other.budget_exhausted
        for label, counts in other.lines.items():
            self._line(label, **counts)

    @classmethod
    def total(cls, ledgers: "list[ComputeLedger | LedgerSnapshot]") -> "ComputeLedger":
        out = cls()
        out.problems = 0
        for ledger in ledgers:
            out.merge(ledger)
        return out

    def snapshot(self) -> LedgerSnapshot:
        return LedgerSnapshot(
            prefill_tokens=self.prefill_tokens, cached_tokens=self.cached_tokens,
            generated_tokens=self.generated_tokens, forced_tokens=self.forced_tokens,
            probe_prefill_tokens=self.probe_prefill_tokens,
            probe_generated_tokens=self.probe_generated_tokens, lm_calls=self.lm_calls,
            verifier_calls=self.verifier_calls, verifier_tokens=self.verifier_tokens,
            verifier_cached_tokens=self.verifier_cached_tokens,
            peak_kv_bytes=self.peak_kv_bytes,
            wall_seconds={k: round(v, 6) for k, v in self.wall_seconds.items()},
            budget_exhausted=self.budget_exhausted, problems=self.problems,
            lines={k: dict(v) for k, v in self.lines.items()})

    def summary(self) -> str:
        """One line for the CLI."""
        wall = sum(self.wall_seconds.values())
        hit = self.cached_tokens / max(1, self.cached_tokens + self.prefill_tokens)
        return (f"generated {self.generated_tokens} tok · prefill {self.prefill_tokens} "
                f"(cache hit {hit:.0%}) · verifier {self.verifier_calls} calls / "
                f"{self.verifier_tokens} tok · peak KV {self.peak_kv_bytes / 2**20:.1f} MiB"
                f" · {wall:.2f} s" + (" · budget exhausted" if self.budget_exhausted else ""))


LedgerLike = ComputeLedger | LedgerSnapshot
__all__ = ["Budget", "BudgetExhausted", "ComputeLedger", "DEFAULT_GENERATED_TOKENS",
           "LedgerLike", "PHASES", "UNLIMITED"]
