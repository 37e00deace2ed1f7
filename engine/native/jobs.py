"""Jobs: one submitted ``expand`` (or probe) from the moment it is queued until it settles.

Contract: a :class:`Job` is what a caller holds (``result``, ``cancel``, ``future``);
:class:`JobLifecycle` is the part of the engine that moves it along, always under the
engine lock::

    submitted (expand.py)   waiting_on = handles whose tail is still prefilling
      │  the last of them is computed (prefill.py)
      ▼
    _start_decode           tree.pin(each prefix node); a DecodeJob joins the scheduler
      │  the scheduler finishes every branch        │  a step fails, or KVCacheFull
      ▼                                              ▼
    _complete               each branch becomes      _fail: _detach, then the error
                            a tree node under a new
                            pinned handle (probe:
                            its pages freed instead)
    _cancel (any time)      before it settled: _detach, CancelledError;
                            after it completed: release the handles it made (once)

NOTE: ``closed`` is set exactly once, by ``_complete`` or ``_detach``: after it the job
holds no pins, no prefill waits and no scheduler work. ``_unpin_job`` undoes exactly the
pins ``_start_decode`` took.
Must NOT know: how steps are chosen or run (the scheduler and runner), the loop thread,
prompts.
"""

from __future__ import annotations

from concurrent.futures import CancelledError, Future
from typing import TYPE_CHECKING, Any, Callable, Sequence

from ttc.engine.native.scheduler import Branch, DecodeJob
from ttc.types import Continuation, ExpandOutput, ExpandRequest, GenerationUsage

if TYPE_CHECKING:
    from ttc.engine.handles import HandleTable
    from ttc.engine.native.engine import NativeEngine
    from ttc.engine.native.handles import HandleState
    from ttc.engine.native.kv_cache import PagePool, RadixNode, RadixTree
    from ttc.engine.native.lock import TicketLock
    from ttc.engine.native.scheduler import Scheduler

__all__ = ["Job", "JobLifecycle", "settle", "resolver"]


class Job:
    """One submitted ``expand`` (or ``probe``): wait with :meth:`result`, stop with :meth:`cancel`."""

    def __init__(self, engine: NativeEngine, requests: Sequence[ExpandRequest],
                 states: Sequence[HandleState], token_limit: int | None, *,
                 ephemeral: bool) -> None:
        self.engine = engine
        self.requests = list(requests)
        self.states = list(states)
        self.token_limit = token_limit
        self.ephemeral = ephemeral
        self.future: Future[ExpandOutput] = Future()
        # RUNNING: Future.cancel() (e.g. asyncio.wrap_future's) cannot settle it behind the
        # engine's back; cancelling goes through Job.cancel, which frees the job's KV.
        self.future.set_running_or_notify_cancel()
        self.waiting_on = 0
        self.decode: DecodeJob | None = None
        self.pinned: list[RadixNode] = []
        self.prefill_tokens = 0
        self.cached_tokens = 0
        self.seeds: list[int | None] = []
        self.dropped = False       # cancelled after it finished: its output was released
        self.closed = False        # completed, failed or cancelled: nothing left in the engine

    def done(self) -> bool:
        return self.future.done()

    def result(self, timeout: float | None = None) -> ExpandOutput:
        """Wait for the output; if the wait itself is interrupted, the job is cancelled."""
        try:
            return self.future.result(timeout)
        except BaseException:
            if not self.future.done():
                self.cancel()
            raise

    def cancel(self) -> None:
        """The caller will not use this job's output: remove its requests from the engine
        and free their KV; if the job finished meanwhile (a race the caller cannot see),
        release the handles it produced instead. Idempotent."""
        self.engine._cancel(self)


class JobLifecycle:
    """Starts, completes, fails and cancels jobs (a mixin: the engine sets the attributes
    below)."""

    tokenizer: Any
    pool: PagePool
    tree: RadixTree
    scheduler: Scheduler
    peak_kv_bytes: int
    _lock: TicketLock
    _handles: HandleTable[HandleState]
    # and the handle API's _new_handle and _drop_state (handles.py)

    def _start_decode(self, job: Job) -> None:
        nodes = [st.node for st in job.states]
        for node in nodes:                  # NOTE: prefixes stay resident during the job
            self.tree.pin(node)
        job.pinned = nodes
        job.decode = DecodeJob(prefixes=nodes, requests=job.requests, seeds=job.seeds,
                               token_limit=job.token_limit,
                               on_done=lambda _d: self._complete(job),
                               on_error=lambda err: self._fail(job, err))
        self.scheduler.add_job(job.decode)

    def _unpin_job(self, job: Job) -> None:
        for node in job.pinned:
            self.tree.unpin(node)
        job.pinned = []

    def _complete(self, job: Job) -> None:
        job.closed = True
        self._unpin_job(job)
        # Settled behind the engine's back (Future.cancel cannot: the future is RUNNING, see
        # Job.__init__; a caller's set_result or set_exception can): keep nothing.
        if job.future.done():
            for b in job.decode.branches:
                self.pool.free(b.own_pages)
                b.own_pages = []
            return
        outputs, generated = [], 0
        by_request: list[list[Branch]] = [[] for _ in job.requests]
        for b in job.decode.branches:
            by_request[b.request].append(b)
        for st, branches in zip(job.states, by_request):
            conts = []
            for b in branches:
                conts.append(self._continuation(job, st, b))
                generated += len(b.tokens)
            outputs.append(tuple(conts))
        usage = GenerationUsage(prefill_tokens=job.prefill_tokens + job.decode.recomputed,
                                cached_tokens=job.cached_tokens,
                                generated_tokens=generated, peak_kv_bytes=self.peak_kv_bytes)
        settle(job.future, ExpandOutput(continuations=tuple(outputs), usage=usage))

    def _continuation(self, job: Job, st: HandleState, b: Branch) -> Continuation:
        """A finished branch's output; its pages become a tree node under a new pinned
        handle (a probe's, or a branch cut before its first token, are freed)."""
        if job.ephemeral:
            self.pool.free(b.own_pages)
            hid = None
        else:
            if b.tokens:
                node = self.tree.add_child(b.prefix, b.tokens, b.own_pages, payload=b.hidden)
            else:                        # cut by the budget before its first token
                self.pool.free(b.own_pages)
                node = b.prefix
            hid = self._new_handle(node, (), st.prompt_len)
        b.own_pages = []
        stats: dict[str, float] = {}
        for rule in b.rules:
            stats.update(rule.summary())
        if b.forced_count:
            stats["forced_tokens"] = float(b.forced_count)
        return Continuation(
            handle=hid, token_ids=tuple(b.tokens),
            text=self.tokenizer.decode(b.tokens, skip_special_tokens=True),
            logprobs=tuple(b.logprobs) if b.params.logprobs else (), finish=b.finish,
            top_logprobs=tuple(b.top), stop_reason=b.stop_reason, stats=stats)

    def _fail(self, job: Job, err: BaseException) -> None:
        self._detach(job)
        settle(job.future, err)

    def _detach(self, job: Job) -> None:
        """Take ``job`` out of the engine: prefill waits, decode branches, pins (once)."""
        if job.closed:
            return
        job.closed = True
        for st in job.states:
            if job in st.waiters:
                st.waiters.remove(job)
        if job.decode is not None and not job.decode.finished:
            self.scheduler.cancel_job(job.decode)
        self._unpin_job(job)

    def _cancel(self, job: Job) -> None:
        with self._lock:
            if job.closed and job.future.done() and job.future.exception() is None:
                if not job.dropped:           # finished before the cancel: drop its output
                    job.dropped = True
                    out = job.future.result()
                    for h in [c.handle for cs in out.continuations for c in cs
                              if c.handle is not None]:
                        st = self._handles.pop(h)
                        if st is not None:
                            self._drop_state(st)
                return
            self._detach(job)
            settle(job.future, CancelledError("the expand call was cancelled"))


def settle(fut: Future, value: Any) -> None:
    """Set a future's result or exception unless it is already settled (or cancelled)."""
    if fut.done():
        return
    if isinstance(value, BaseException):
        fut.set_exception(value)
    else:
        fut.set_result(value)


def resolver(fut: Future) -> Callable[[Any], None]:
    """A callback that settles ``fut`` with what it is given (a value or an exception)."""
    return lambda value: settle(fut, value)
