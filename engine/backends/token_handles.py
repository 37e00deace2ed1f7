"""Generators over engines that take whole token sequences (vLLM offline, HTTP servers).

Contract: :class:`TokenHandleGenerator` implements the Generator protocol for an engine
that is driven by "prompt token ids in, continuation out" calls and keeps its own prefix
cache (vLLM's automatic prefix caching, SGLang's radix cache). Subclasses implement one
method, :meth:`TokenHandleGenerator._generate`, that runs a batch of :class:`Job` and
returns one :class:`JobResult` per job (in order). This class supplies:

* handles: each handle keeps its full token ids (prompt + steps) and its parent; the
  engine's own prefix cache gives the KV sharing, so ``pin``/``release`` are bookkeeping:
  :meth:`kv_bytes` reports the distinct tokens under pinned handles (each token once, a
  tree as in the native engine) times the model's KV bytes per token;
* ``n`` samples with seeds: a request with a seed becomes ``n`` jobs with seeds derived
  from ``(seed, continuation index)`` (so adding samples extends a run and the same seed
  gives the same continuation on every backend that honours seeds); without a seed one job
  asks for ``n`` samples;
* ``token_limit``: lockstep rounds. Each round gives every live branch an equal share of
  what is left (``remaining // live``); a branch that used its whole share continues in the
  next round from its token ids (the engine's prefix cache serves the prefix); when less
  than one token per live branch is left, the live branches finish with
  ``FinishReason.BUDGET``. Generated tokens never exceed the limit, and every token the
  engine generated is counted.
* usage: prompt tokens reported cached by the engine go to ``cached_tokens``, the rest to
  ``prefill_tokens`` (summed over jobs, as the engine ran them).
* threads: ``expand``, ``root``, ``pin``, ``release`` and the read-back methods may be
  called from many threads at once (concurrent searches sharing one generator). One lock
  guards the handle table's dict operations only, never an engine call: ``expand`` copies
  what it needs of its prefixes under the lock, calls :meth:`_generate` without it, and
  takes it again to add the children. So :meth:`_generate` is called concurrently too,
  and a subclass must accept that (batch the calls into one engine, or send them at once).
  A prefix released by another thread while it is being expanded is an error, raised
  when the children would be added.

    root(P) ─ h1 (tokens P+a) ─ h3 (P+a+c)      resident tokens = |P ∪ a ∪ c ∪ b|
            └ h2 (tokens P+b)                   (pinned handles and their ancestors)

Must NOT know: rewards, strategies, how a subclass reaches its engine.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

from ttc.engine.handles import HandleTable
from ttc.types import (Continuation, ExpandOutput, ExpandRequest, FinishReason,
                       GenerationUsage, Handle, Problem, SamplingParams)


def derive_seed(seed: int, index: int) -> int:
    """The seed of continuation ``index`` of a request seeded with ``seed``.

    A hash of ``seed`` (62 bits) plus ``index``: the same rule vLLM applies to the
    children of one ``n``-sample request (``seed + index``), so one request with ``n`` and
    ``n`` requests with these seeds draw the same samples.
    """
    digest = hashlib.blake2b(f"ttc-seed:{seed}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") & ((1 << 62) - 1)) + index


@dataclass(frozen=True, slots=True)
class Job:
    """One engine call: continue ``prompt_ids`` (or ``prompt_text``) ``n`` times."""

    prompt_ids: tuple[int, ...]
    prompt_text: str | None
    params: SamplingParams
    n: int
    max_tokens: int
    seed: int | None


@dataclass(frozen=True, slots=True)
class Sample:
    """One continuation as the engine returned it.

    ``finish`` is STOP (stop string), EOS, or MAX_TOKENS (the job's ``max_tokens`` or the
    model's context); ``text`` is the engine's text for these tokens.
    """

    token_ids: tuple[int, ...]
    text: str
    logprobs: tuple[float, ...]
    finish: FinishReason


@dataclass(frozen=True, slots=True)
class JobResult:
    samples: tuple[Sample, ...]
    prompt_tokens: int
    cached_tokens: int


@dataclass(slots=True)
class _TokenHandle:
    token_ids: tuple[int, ...]
    text: str                    # text of the tokens this handle added (prompt: whole prompt)
    parent: int | None
    own: int                     # tokens this handle added to its parent
    prompt_len: int
    ended: bool = False
    pinned: bool = True
    value: float | None = None


@dataclass(frozen=True, slots=True)
class _Prefix:
    """What one ``expand`` needs of a prefix handle, copied under the lock at its start."""

    token_ids: tuple[int, ...]
    text: str | None             # prompt + steps text; None when the engine takes token ids
    prompt_len: int


@dataclass(slots=True)
class _Branch:
    req_index: int
    prefix: int
    origin: _Prefix
    params: SamplingParams
    seed: int | None
    tokens: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: FinishReason | None = None


class TokenHandleGenerator:
    """Base class: handles as token ids, lockstep token limits, usage. See module doc."""

    kv_bytes_per_token: int = 0
    system_prompt: str | None = None
    # True when the engine gives child i of a seeded n-sample job the seed ``seed + i``
    # (vLLM): seeded samples of one request then travel as one job.
    seeded_n_as_offsets: bool = False
    thread_safe = True        # many searches may call one instance at once (ttc.sharing)

    def __init__(self) -> None:
        self._handles: HandleTable[_TokenHandle] = HandleTable()
        # NOTE: held only around reads and writes of _handles and _peak, never across an
        # engine call (see "threads" in the module docstring).
        self._lock = threading.Lock()
        # NOTE: fast tokenizers are not safe to call from several threads at once
        # ("Already borrowed"); every tokenizer call of a subclass goes under this lock.
        self.tokenizer_lock = threading.Lock()
        self._peak = 0

    # -- subclass hooks -------------------------------------------------------------------
    def _generate(self, jobs: Sequence[Job]) -> list[JobResult]:  # pragma: no cover
        """Run ``jobs``; called from many threads at once (see the module docstring)."""
        raise NotImplementedError

    def format_prompt(self, problem: Problem) -> tuple[tuple[int, ...], str]:
        """The prompt's token ids and text (subclasses apply the chat template)."""
        raise NotImplementedError  # pragma: no cover

    def decode(self, token_ids: Sequence[int]) -> str | None:
        """Text of token ids when a tokenizer is at hand, else None (engine text is used)."""
        return None

    def chat_prompt(self, tokenizer, problem: Problem) -> tuple[tuple[int, ...], str]:
        """The problem through ``tokenizer``'s chat template with this backend's system prompt."""
        from ttc.engine.prompting import format_prompt  # noqa: PLC0415  (transformers)

        with self.tokenizer_lock:
            ids = tuple(format_prompt(tokenizer, problem, system_prompt=self.system_prompt))
            return ids, tokenizer.decode(list(ids))

    # -- Generator protocol ---------------------------------------------------------------
    def root(self, problem: Problem) -> Handle:
        ids, text = self.format_prompt(problem)
        with self._lock:
            return self._new(_TokenHandle(token_ids=tuple(ids), text=text, parent=None,
                                          own=len(ids), prompt_len=len(ids)))

    def expand(self, requests: Sequence[ExpandRequest], *,
               token_limit: int | None = None) -> ExpandOutput:
        if token_limit is not None and token_limit < 0:
            raise ValueError(f"token_limit must be None or >= 0; got {token_limit!r}.")
        text = not self._uses_token_prompts()
        origins: list[_Prefix] = []
        with self._lock:
            for r in requests:
                st = self._live(r.prefix)
                if st.ended:
                    raise ValueError(f"handle {r.prefix!r} ended (EOS); it cannot be expanded.")
                origins.append(_Prefix(token_ids=st.token_ids,
                                       text=self._prompt_text(r.prefix) if text else None,
                                       prompt_len=st.prompt_len))
        branches: list[_Branch] = []
        for i, (r, origin) in enumerate(zip(requests, origins)):
            for k in range(r.n):
                seed = None if r.params.seed is None else derive_seed(r.params.seed, k)
                branches.append(_Branch(req_index=i, prefix=r.prefix, origin=origin,
                                        params=r.params, seed=seed))
        prefill = cached = 0
        remaining = token_limit
        live = list(branches)
        while live:
            share = None
            if remaining is not None:
                share = remaining // len(live)
                if share == 0:
                    for b in live:
                        b.finish = FinishReason.BUDGET
                    break
            jobs, owners = self._jobs_for(live, share)
            results = self._generate(jobs)
            if len(results) != len(jobs):
                raise RuntimeError(f"engine returned {len(results)} results for "
                                   f"{len(jobs)} jobs.")
            still: list[_Branch] = []
            for job, res, group in zip(jobs, results, owners):
                prefill += max(0, res.prompt_tokens - res.cached_tokens)
                cached += res.cached_tokens
                for b, s in zip(group, res.samples):
                    b.tokens.extend(s.token_ids)
                    b.texts.append(s.text)
                    b.logprobs.extend(s.logprobs)
                    if remaining is not None:
                        remaining -= len(s.token_ids)
                    cut_by_share = (share is not None and s.finish is FinishReason.MAX_TOKENS
                                    and len(b.tokens) < b.params.max_tokens
                                    and job.max_tokens == share)
                    if cut_by_share:
                        still.append(b)
                    else:
                        b.finish = s.finish
            live = still
        return self._commit(requests, branches, prefill, cached)

    def pin(self, handles: Sequence[Handle], *, value: float | None = None) -> None:
        with self._lock:
            for h in handles:
                st = self._live(h)
                st.pinned = True
                if value is not None:
                    st.value = value

    def release(self, handles: Sequence[Handle]) -> None:
        with self._lock:
            for h in handles:
                st = self._handles.find(h)
                if st is not None:
                    st.pinned = False
            self._handles.sweep()

    def kv_bytes(self) -> int:
        return self.resident_tokens() * self.kv_bytes_per_token

    # -- read back ------------------------------------------------------------------------
    def resident_tokens(self) -> int:
        with self._lock:
            return sum(s.own for s in self._handles.values())

    def token_ids(self, handle: Handle) -> list[int]:
        with self._lock:
            return list(self._live(handle).token_ids)

    def token_count(self, handle: Handle) -> int:
        with self._lock:
            return len(self._live(handle).token_ids)

    def text_of(self, handle: Handle) -> str:
        """Text generated after the prompt (the steps), as the engine decoded them."""
        with self._lock:
            self._live(handle)
            return self._text_of(handle)

    def prompt_text(self, handle: Handle) -> str:
        """The whole text of a handle: prompt and steps."""
        with self._lock:
            self._live(handle)
            return self._prompt_text(handle)

    # -- internals ------------------------------------------------------------------------
    def _jobs_for(self, live: list[_Branch], share: int | None
                  ) -> tuple[list[Job], list[list[_Branch]]]:
        jobs: list[Job] = []
        owners: list[list[_Branch]] = []
        unseeded: dict[tuple[int, int, int], list[_Branch]] = {}
        for b in live:
            left = b.params.max_tokens - len(b.tokens)
            cap = left if share is None else min(left, share)
            if not b.tokens and (b.seed is None or self.seeded_n_as_offsets):
                unseeded.setdefault((b.req_index, b.prefix, cap), []).append(b)
                continue
            jobs.append(self._job(b, cap, 1, b.seed))
            owners.append([b])
        for (_, _, cap), group in unseeded.items():
            jobs.append(self._job(group[0], cap, len(group), group[0].seed))
            owners.append(group)
        return jobs, owners

    def _job(self, b: _Branch, cap: int, n: int, seed: int | None) -> Job:
        ids = b.origin.token_ids + tuple(b.tokens)
        text = None if b.origin.text is None else b.origin.text + "".join(b.texts)
        if seed is not None and b.tokens:
            seed = derive_seed(seed, len(b.tokens))   # a resumed branch: fresh stream
        return Job(prompt_ids=ids, prompt_text=text, params=b.params, n=n, max_tokens=cap,
                   seed=seed)

    def _uses_token_prompts(self) -> bool:
        return True

    def _commit(self, requests: Sequence[ExpandRequest], branches: list[_Branch],
                prefill: int, cached: int) -> ExpandOutput:
        out: list[list[Continuation]] = [[] for _ in requests]
        generated = 0
        texts = []
        for b in branches:       # decoding needs no lock: keep it out of the critical section
            decoded = self.decode(b.tokens)
            texts.append(decoded if decoded is not None else "".join(b.texts))
        with self._lock:
            for r in requests:
                if r.prefix not in self._handles:
                    raise ValueError(f"handle {r.prefix!r} was released while it was being "
                                     f"expanded; release a handle only after its expand "
                                     f"returns.")
            for b, text in zip(branches, texts):
                finish = b.finish or FinishReason.MAX_TOKENS
                st = _TokenHandle(token_ids=b.origin.token_ids + tuple(b.tokens), text=text,
                                  parent=b.prefix, own=len(b.tokens),
                                  prompt_len=b.origin.prompt_len,
                                  ended=finish is FinishReason.EOS)
                hid = self._new(st)
                generated += len(b.tokens)
                out[b.req_index].append(Continuation(
                    handle=hid, token_ids=tuple(b.tokens), text=text,
                    logprobs=tuple(b.logprobs) if b.params.logprobs else (), finish=finish))
            self._peak = max(self._peak, sum(s.own for s in self._handles.values())
                             * self.kv_bytes_per_token)
            peak = self._peak
        usage = GenerationUsage(prefill_tokens=prefill, cached_tokens=cached,
                                generated_tokens=generated, peak_kv_bytes=peak)
        return ExpandOutput(continuations=tuple(tuple(c) for c in out), usage=usage)

    # NOTE: the helpers below read or write the handle table; call them with _lock held.
    def _text_of(self, handle: int) -> str:
        parts = [st.text for _, st in self._handles.lineage(handle) if st.parent is not None]
        return "".join(reversed(parts))

    def _prompt_text(self, handle: int) -> str:
        *_, (_, root) = self._handles.lineage(handle)
        return root.text + self._text_of(handle)

    def _new(self, st: _TokenHandle) -> int:
        return self._handles.add(st)

    def _live(self, handle: Handle) -> _TokenHandle:
        return self._handles.get(handle)


def kv_bytes_per_token(hf_config: Any, dtype_bytes: int) -> int:
    """K and V bytes one token occupies: 2 x layers x KV heads x head dim x dtype bytes."""
    cfg = getattr(hf_config, "text_config", hf_config)
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * dtype_bytes
