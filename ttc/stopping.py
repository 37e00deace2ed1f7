"""Per-branch stop rules: small state machines an engine runs on every sampled token.

Contract: a :class:`StopRuleSpec` is a frozen, hashable description carried in
:attr:`ttc.types.SamplingParams.stop_rules`; for every branch the engine calls
``spec.start()`` once and then feeds the returned :class:`StopRule` each new token of
that branch, with its natural-log probability and, when ``spec.top_k > 0``, the ``top_k``
most likely ``(token_id, logprob)`` pairs of the distribution it was drawn from (the
model's own distribution: log-softmax of the raw logits, before temperature and
truncation). ``on_token`` returns ``None`` (go on), :class:`Stop` (the branch ends with
``FinishReason.RULE``; the token just fed is kept), :class:`Force` (the engine appends
these tokens next, without sampling; the rule sees them too, with ``forced=True``) or
:class:`Replace` (the sampled token just fed is dropped before the model runs it and
these tokens are forced instead; only engines with ``can_replace_tokens`` honour it).
Each rule keeps O(1) state per branch, so it can run inside the decode batch every step.
``summary()`` is reported on the finished continuation (``Continuation.stats``).

Precedence when several things end a branch on one token: EOS, then a stop string, then
the rules in the order given, then ``max_tokens``. Budget cuts (``FinishReason.BUDGET``)
come before sampling and therefore before all of them.

Built-in rules: :class:`WindowConfidence` (DeepConf online: stop when the mean token
confidence over a sliding window falls below a threshold), :class:`ForceAfter`
(after N tokens, force a text such as ``"</think>"``) and :class:`ThinkingBudget`
(budget forcing, docs/algorithms.md#budget-forcing: cap the thinking segment at N sampled tokens by
forcing its end delimiter, and extend it by replacing up to K attempted ends with
``"Wait"``; no restart, no re-prefill).
Must NOT know: engines, pages, tensors, strategies.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

MAX_TOP_K = 20


@dataclass(frozen=True, slots=True)
class Stop:
    """End the branch now (the token just fed is kept); ``reason`` is logged."""

    reason: str


@dataclass(frozen=True, slots=True)
class Force:
    """Append ``text`` (tokenized by the engine, no special tokens added) without sampling."""

    text: str


@dataclass(frozen=True, slots=True)
class Replace:
    """Drop the sampled token just fed (it has not been run through the model yet) and
    force ``text`` in its place."""

    text: str


Action = Stop | Force | Replace | None


@runtime_checkable
class StopRule(Protocol):
    """The per-branch state of a rule."""

    def on_token(self, token: int, logprob: float,
                 top: Sequence[tuple[int, float]] | None, *, forced: bool) -> Action: ...

    def summary(self) -> dict[str, float]: ...


@runtime_checkable
class StopRuleSpec(Protocol):
    """A frozen description of a rule; ``start()`` makes one branch's state."""

    top_k: int

    def start(self) -> StopRule: ...


def token_confidence(top: Sequence[tuple[int, float]]) -> float:
    """DeepConf's token confidence: minus the mean log-probability of the top-k tokens.

    Peaked distribution -> the non-top log-probs are very negative -> large confidence.
    """
    if not top:
        raise ValueError("token confidence needs at least one top log-prob; got none.")
    return -sum(lp for _, lp in top) / len(top)


@dataclass(frozen=True)
class WindowConfidence:
    """Stop a branch when its mean token confidence over ``window`` tokens < ``threshold``.

    Checked on every token once ``window`` tokens have been seen (DeepConf online, with
    the threshold set from warm-up traces). ``summary()`` reports ``min_window_confidence``
    (DeepConf's lowest group confidence; a trace shorter than the window is one window
    over all its tokens) and ``mean_confidence``. Forced tokens are not scored.
    """

    window: int = 2048
    threshold: float = float("-inf")
    top_k: int = MAX_TOP_K

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"WindowConfidence.window must be >= 1; got {self.window!r}.")
        if not 1 <= self.top_k <= MAX_TOP_K:
            raise ValueError(f"WindowConfidence.top_k must be in 1..{MAX_TOP_K}; "
                             f"got {self.top_k!r}.")

    def start(self) -> "_WindowState":
        return _WindowState(self)


@dataclass(eq=False)
class _WindowState:
    spec: WindowConfidence
    values: deque = field(default_factory=deque)
    total: float = 0.0
    count: int = 0
    all_total: float = 0.0
    lowest: float = float("inf")

    def on_token(self, token: int, logprob: float, top: Sequence[tuple[int, float]] | None,
                 *, forced: bool) -> Action:
        if forced or not top:
            return None
        c = token_confidence(top)
        self.values.append(c)
        self.total += c
        self.count += 1
        self.all_total += c
        if len(self.values) > self.spec.window:
            self.total -= self.values.popleft()
        if len(self.values) == self.spec.window:
            mean = self.total / self.spec.window
            self.lowest = min(self.lowest, mean)
            if mean < self.spec.threshold:
                return Stop(f"window_confidence<{self.spec.threshold:g}")
        return None

    def summary(self) -> dict[str, float]:
        if not self.count:
            return {}
        lowest = self.lowest if self.lowest != float("inf") else self.total / len(self.values)
        return {"min_window_confidence": lowest, "mean_confidence": self.all_total / self.count}


@dataclass(frozen=True)
class ForceAfter:
    """After ``after`` tokens of a branch, force ``text`` once (e.g. ``"</think>"``)."""

    after: int
    text: str
    top_k: int = 0

    def __post_init__(self) -> None:
        if self.after < 1:
            raise ValueError(f"ForceAfter.after must be >= 1; got {self.after!r}.")
        if not self.text:
            raise ValueError("ForceAfter.text must be a non-empty string; got ''.")

    def start(self) -> "_ForceAfterState":
        return _ForceAfterState(self)


@dataclass(eq=False)
class _ForceAfterState:
    spec: ForceAfter
    seen: int = 0
    fired: bool = False

    def on_token(self, token: int, logprob: float, top: Sequence[tuple[int, float]] | None,
                 *, forced: bool) -> Action:
        self.seen += 1
        if not self.fired and self.seen >= self.spec.after:
            self.fired = True
            return Force(self.spec.text)
        return None

    def summary(self) -> dict[str, float]:
        return {"forced_at": float(self.spec.after)} if self.fired else {}


@dataclass(frozen=True)
class ThinkingBudget:
    """Budget forcing for a thinking segment that is open when the branch starts.

    ``end_ids`` are the token ids of the end delimiter ``end_text`` in the engine's
    tokenizer. Thinking tokens are the sampled (not forced) tokens before the end.

    * cap: when ``cap`` thinking tokens have been sampled (``used`` of them on the prefix
      already), force ``end_text + answer_text`` (s1's harness adds "Final Answer:").
    * extend: the first ``extend`` times the model samples the end delimiter itself
      (``extended`` of them on the prefix already), replace it by ``extend_text``
      (:class:`Replace`: the delimiter never enters the sequence, nothing is re-run).
      Needs a one-token delimiter (like vLLM's ``min_tokens`` suppression).

    ``summary()``: ``thinking_tokens`` sampled in this call, ``thinking_closed`` (1 once
    the end delimiter is in the sequence), ``thinking_forced`` (1 if the cap closed it),
    ``waits`` (extensions in this call).
    """

    end_ids: tuple[int, ...]
    end_text: str
    cap: int | None = None
    extend: int = 0
    extend_text: str = "Wait"
    answer_text: str = ""
    used: int = 0
    extended: int = 0
    top_k: int = 0

    def __post_init__(self) -> None:
        if not self.end_ids or not self.end_text:
            raise ValueError("ThinkingBudget needs the end delimiter's text and token ids; "
                             f"got {self.end_text!r} -> {self.end_ids!r}.")
        if self.cap is not None and self.cap < 1:
            raise ValueError(f"ThinkingBudget.cap must be >= 1 or None; got {self.cap!r}.")
        if self.extend < 0:
            raise ValueError(f"ThinkingBudget.extend must be >= 0; got {self.extend!r}.")
        if self.extend and len(self.end_ids) != 1:
            raise ValueError(f"extending thinking needs a one-token end delimiter; "
                             f"{self.end_text!r} is {len(self.end_ids)} tokens here.")
        if self.extend and not self.extend_text:
            raise ValueError("ThinkingBudget.extend_text must be non-empty; got ''.")

    def start(self) -> "_ThinkingState":
        return _ThinkingState(self, seen=self.used, ext=self.extended)


@dataclass(eq=False)
class _ThinkingState:
    spec: ThinkingBudget
    seen: int = 0
    ext: int = 0
    closed: bool = False
    forced_end: bool = False
    recent: deque = field(default_factory=deque)

    def on_token(self, token: int, logprob: float, top: Sequence[tuple[int, float]] | None,
                 *, forced: bool) -> Action:
        if self.closed:
            return None
        spec = self.spec
        self.recent.append(token)
        if len(self.recent) > len(spec.end_ids):
            self.recent.popleft()
        if tuple(self.recent) == spec.end_ids:
            if not forced and self.ext < spec.extend:
                self.ext += 1
                self.recent.clear()
                return Replace(spec.extend_text)
            self.closed = True
            return None
        if forced:
            return None
        self.seen += 1
        if spec.cap is not None and self.seen >= spec.cap:
            self.closed = self.forced_end = True
            return Force(spec.end_text + spec.answer_text)
        return None

    def summary(self) -> dict[str, float]:
        return {"thinking_tokens": float(self.seen - self.spec.used),
                "thinking_closed": float(self.closed),
                "thinking_forced": float(self.forced_end),
                "waits": float(self.ext - self.spec.extended)}
