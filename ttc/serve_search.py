"""One client's searches: per-request sampling, cancellation when the client leaves, progress.

Contract: :class:`RequestGeneration` is the server's :class:`~ttc.config.GenerationConfig`
with one request's sampling applied (``temperature``, ``top_p``, ``top_k``, ``seed``, the
completion length) plus its ``stop`` strings as a stop rule (:class:`StopStrings`) on
every branch the strategy samples: a branch that writes a stop string ends there
(``FinishReason.RULE``, so the strategy treats it as finished). :class:`Watched` is the
generator view a request's strategy runs on: before every call it asks whether the client
is gone, and an ``expand`` on an engine that can ``submit`` is cancelled mid-flight when it
is (the job's KV is freed at once); the :class:`Disconnected` it raises unwinds the
strategy, whose ``run`` releases every handle it holds. Each finished ``expand`` is reported
(branches, tokens so far, the answers reached and their leader) for streaming.

    client ─ HTTP ─► TTCService ─► strategy.run(generator=Watched(shared engine))
                                        │ expand ─► gone()? ─► submit ─► poll ─► cancel
                                        ▼
                                   on_expand(tokens so far) ─► progress chunks

Must NOT know: sockets, HTTP, engine internals (pages), concrete strategies.
"""

from __future__ import annotations

import concurrent.futures
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ttc.answers import extract_answer
from ttc.config import GenerationConfig
from ttc.stopping import Stop
from ttc.types import ExpandOutput, ExpandRequest, Handle, Problem, SamplingParams

ClientGone = Callable[[], bool]      # True once the client has closed its connection
_POLL_S = 0.1


class Disconnected(Exception):
    """The client closed its connection while its request ran; the work was cancelled."""


# -- stop strings as a rule on every branch --------------------------------------------
@dataclass(frozen=True, eq=False)
class StopStrings:
    """A stop rule: end a branch once its text contains one of ``stops``.

    ``decode`` turns token ids into text (the server's tokenizer, under its lock). Only
    the last ``window`` tokens are decoded per token: a stop string of L characters lies
    within the last L tokens that completed it.
    """

    stops: tuple[str, ...]
    decode: Callable[[Sequence[int]], str]
    top_k: int = 0

    @property
    def window(self) -> int:
        return max(len(s) for s in self.stops) + 1

    def start(self) -> "_StopStringsState":
        return _StopStringsState(self)


class _StopStringsState:
    def __init__(self, spec: StopStrings) -> None:
        self.spec = spec
        self.ids: list[int] = []

    def on_token(self, token: int, logprob: float, top: Any, *, forced: bool) -> Stop | None:
        self.ids.append(int(token))
        tail = self.spec.decode(self.ids[-self.spec.window:])
        hit = next((s for s in self.spec.stops if s in tail), None)
        return Stop(f"stop:{hit!r}") if hit is not None else None

    def summary(self) -> dict[str, float]:
        return {}


class RequestGeneration(GenerationConfig):
    """The configured generation options with one request's sampling applied."""

    stop_rules: tuple[Any, ...] = ()       # StopStrings for the request's ``stop``

    def step_params(self, *, seed: int | None, temperature: float | None = None,
                    max_tokens: int | None = None) -> SamplingParams:
        p = super().step_params(seed=seed, temperature=temperature, max_tokens=max_tokens)
        return p.model_copy(update={"stop_rules": p.stop_rules + self.stop_rules})

    def solution_params(self, *, seed: int | None, temperature: float | None = None,
                        max_tokens: int | None = None) -> SamplingParams:
        p = super().solution_params(seed=seed, temperature=temperature, max_tokens=max_tokens)
        return p.model_copy(update={"stop_rules": p.stop_rules + self.stop_rules})


# -- the generator a request's strategy sees --------------------------------------------
@dataclass
class Progress:
    """What one search has done so far (updated after every expand)."""

    expands: int = 0
    generated_tokens: int = 0
    branches: int = 0
    answers: dict[str, int] = field(default_factory=dict)   # final answers seen, counted

    @property
    def leader_answer(self) -> str | None:
        """The answer most branches reached so far (the vote's leader), if any."""
        return max(self.answers, key=self.answers.get) if self.answers else None


class Watched:
    """The shared generator, seen by one request (see the module docstring)."""

    def __init__(self, inner: Any, *, gone: ClientGone,
                 on_expand: Callable[[Progress], None] | None = None) -> None:
        self.inner = inner
        self.gone = gone
        self.on_expand = on_expand
        self.progress = Progress()
        self.cancelled_jobs = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _check(self) -> None:
        if self.gone():
            raise Disconnected("the client closed the connection; its search was cancelled.")

    def root(self, problem: Problem) -> Handle:
        self._check()
        return self.inner.root(problem)

    def expand(self, requests: Sequence[ExpandRequest], *,
               token_limit: int | None = None) -> ExpandOutput:
        self._check()
        submit = getattr(self.inner, "submit", None)
        if callable(submit):
            job = submit(list(requests), token_limit=token_limit)
            while True:
                done, _ = concurrent.futures.wait([job.future], timeout=_POLL_S)
                if done:
                    out = job.result()
                    break
                if self.gone():
                    job.cancel()               # NOTE: frees the job's KV at once
                    with self._lock:
                        self.cancelled_jobs += 1
                    raise Disconnected("the client closed the connection; its search was "
                                       "cancelled.")
        else:
            out = self.inner.expand(list(requests), token_limit=token_limit)
        with self._lock:
            self.progress.expands += 1
            self.progress.generated_tokens += out.usage.generated_tokens
            self.progress.branches = sum(len(cs) for cs in out.continuations)
            for c in (c for cs in out.continuations for c in cs):
                answer = extract_answer(c.text) if ("boxed" in c.text or "####" in c.text) \
                    else None
                if answer is not None:
                    self.progress.answers[answer] = self.progress.answers.get(answer, 0) + 1
            snapshot = Progress(**{**vars(self.progress),
                                   "answers": dict(self.progress.answers)})
        if self.on_expand is not None:
            self.on_expand(snapshot)
        return out

    def pin(self, handles: Sequence[Handle], *, value: float | None = None) -> None:
        self.inner.pin(handles, value=value)

    def release(self, handles: Sequence[Handle]) -> None:
        self.inner.release(handles)            # NOTE: never refused: cleanup must run

    def kv_bytes(self) -> int:
        return self.inner.kv_bytes()


@dataclass
class GoneFlag:
    """A client-gone check that also trips when the server fails to write to the client."""

    probe: ClientGone | None = None
    tripped: threading.Event = field(default_factory=threading.Event)

    def __call__(self) -> bool:
        if self.tripped.is_set():
            return True
        if self.probe is not None and self.probe():
            self.tripped.set()
        return self.tripped.is_set()
