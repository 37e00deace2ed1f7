"""The Generator calls: ``submit`` and its waiting forms (``expand``, ``aexpand``, ``stream``),
and ``probe``.

Contract: :meth:`ExpandCalls.submit` checks a call (at least one request, live handles, room
in the model's context, a non-negative token limit) before anything joins the batch, so a
bad request is refused to its caller alone; then, under the engine lock, it makes the
:class:`~ttc.engine.native.jobs.Job`, gives each sampled request its seed (from the
engine's seed and call count), queues the prefill of every handle tail not yet computed
(once per handle, even when several requests or jobs share it), counts the job's
``prefill_tokens`` and ``cached_tokens``, starts decoding at once when nothing is pending,
and wakes the loop. ``expand`` waits for the job; ``aexpand`` awaits it (cancelling the
task cancels the job); ``stream`` yields tokens as they are sampled. ``probe`` runs a
throw-away continuation after a handle plus suffix tokens on shared KV and frees
everything it made before it returns.
Must NOT know: how the job is scheduled, completed or cancelled (jobs.py), prompts.
"""

from __future__ import annotations

import asyncio
import queue
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from ttc.engine.native.jobs import Job
from ttc.types import ExpandOutput, ExpandRequest, Handle, SamplingParams, TokenEvent

if TYPE_CHECKING:
    from ttc.engine.native.lock import TicketLock
    from ttc.engine.native.model import NativeModel

__all__ = ["ExpandCalls"]


class ExpandCalls:
    """The expand and probe calls of an engine (a mixin: the engine sets the attributes
    below)."""

    model: NativeModel
    seed: int
    _calls: int                           # submitted jobs: the seeds' call counter
    _lock: TicketLock
    # and the other parts' _state, _new_handle, release (handles.py), _prefill
    # (prefill.py), _start_decode (jobs.py), _notify (loop.py)

    def submit(self, requests: Sequence[ExpandRequest], *, token_limit: int | None = None,
               _ephemeral: bool = False) -> Job:
        """Queue an expand; returns at once. The job's branches join the next steps."""
        if token_limit is not None and token_limit < 0:
            raise ValueError(f"token_limit must be None or >= 0; got {token_limit!r}.")
        if not requests:
            raise ValueError("expand needs at least one request; got none.")
        with self._lock:
            states = [self._state(r.prefix) for r in requests]
            limit = self.model.config.max_position
            for r, st in zip(requests, states):
                if st.node.end + len(st.tail) >= limit:
                    raise ValueError(
                        f"handle {r.prefix!r} has {st.node.end + len(st.tail)} tokens; the "
                        f"model's context is {limit} tokens, so it cannot grow.")
            job = Job(self, requests, states, token_limit, ephemeral=_ephemeral)
            self._calls += 1
            job.seeds = [None if r.params.temperature == 0 else
                         hash((self.seed, self._calls, i)) & ((1 << 62) - 1)
                         for i, r in enumerate(requests)]
            seen: set[int] = set()
            prefill = 0
            for st in states:
                if not st.tail or id(st) in seen:
                    continue
                seen.add(id(st))
                if st.task is None:
                    self._prefill(st)
                    prefill += len(st.tail)
                st.waiters.append(job)
                job.waiting_on += 1
            job.prefill_tokens = prefill
            job.cached_tokens = sum(st.node.end + len(st.tail) for st in states) - prefill
            if job.waiting_on == 0:
                self._start_decode(job)
        self._notify()
        return job

    def expand(self, requests: Sequence[ExpandRequest], *,
               token_limit: int | None = None) -> ExpandOutput:
        return self.submit(requests, token_limit=token_limit).result()

    async def aexpand(self, requests: Sequence[ExpandRequest], *,
                      token_limit: int | None = None) -> ExpandOutput:
        """``expand`` for asyncio callers: awaits the job; cancelling the task cancels it."""
        job = self.submit(requests, token_limit=token_limit)
        try:
            return await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:
            job.cancel()
            raise

    def stream(self, requests: Sequence[ExpandRequest], *, token_limit: int | None = None
               ) -> Iterator[tuple[int, TokenEvent] | ExpandOutput]:
        """Yield ``(request index, TokenEvent)`` as tokens are sampled, then the output.

        Closing the iterator early cancels the job and frees its KV.
        """
        events: queue.SimpleQueue = queue.SimpleQueue()
        wrapped = []
        for i, r in enumerate(requests):
            inner = r.on_token

            def push(ev: TokenEvent, i: int = i, inner: Any = inner) -> None:
                events.put((i, ev))
                if inner is not None:
                    inner(ev)
            wrapped.append(ExpandRequest(prefix=r.prefix, n=r.n, params=r.params, on_token=push))
        job = self.submit(wrapped, token_limit=token_limit)
        job.future.add_done_callback(lambda _: events.put(None))
        try:
            while True:
                item = events.get()
                if item is None:
                    break
                yield item
            yield job.result()
        finally:
            if not job.done():
                job.cancel()

    def probe(self, handle: Handle, suffix_tokens: Sequence[int], *, max_new: int,
              params: SamplingParams | None = None, n: int = 1) -> ExpandOutput:
        """A throw-away continuation of ``handle`` + ``suffix_tokens`` on shared KV.

        The handle's tokens are not recomputed (only the suffix is prefilled); it runs in
        the same batches as everything else, and every page it made is freed before it
        returns (continuations have ``handle=None``). ``params`` defaults to greedy.
        """
        if max_new < 1:
            raise ValueError(f"probe max_new must be >= 1; got {max_new!r}.")
        p = params or SamplingParams(temperature=0.0, max_tokens=max_new)
        p = p.model_copy(update={"max_tokens": max_new})
        suffix = tuple(int(t) for t in suffix_tokens)
        with self._lock:
            st = self._state(handle)
            if st.node.end + len(st.tail) + len(suffix) >= self.model.config.max_position:
                raise ValueError(f"the probe would have {st.node.end + len(st.tail) + len(suffix)}"
                                 f" tokens; the model's context is "
                                 f"{self.model.config.max_position} tokens.")
            tmp = self._new_handle(st.node, st.tail + suffix, st.prompt_len)
        try:
            job = self.submit([ExpandRequest(prefix=tmp, n=n, params=p)], _ephemeral=True)
            return job.result()
        finally:
            self.release([tmp])
