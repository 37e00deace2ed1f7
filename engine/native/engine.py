"""The native shared-prefix engine behind the Generator protocol: a continuous-batching loop.

Contract: :class:`NativeEngine` owns one model, one paged KV pool, one radix tree and one
step loop (a background thread, started on first use). Any number of callers — search
threads, an asyncio server, verifiers — submit work; every step the loop runs ONE
decode batch over every running branch of every caller, plus a chunk of pending
prefill (:mod:`ttc.engine.native.scheduler` decides what runs). ``expand`` stays the
synchronous contract strategies use: it submits a job and waits for it; ``aexpand`` is
its asyncio twin, ``submit`` returns the job (``result``, ``cancel``), ``stream`` yields
tokens as they are sampled. There is no lock around whole calls: state is guarded by one
FIFO lock that the loop holds only for the length of a step, so a caller's ``pin`` or
``release`` waits at most one step, in arrival order.

Handles (ints) name token sequences; each points at a tree node (its KV is resident)
plus, for a prompt not yet run, a tail of tokens still to prefill. A job first prefills
every pending tail (chunked, in the same steps as other callers' decodes), then its
branches join the decode batch; each finished branch becomes a tree node under a fresh
pinned handle, so the next call reuses it. :class:`NativeGenerator` adds
``root(problem)`` (chat template via ``ttc.engine.prompting``).

Handle lifecycle (ttc.protocols): every handle starts pinned (its node's lock holds the
path resident). ``pin`` re-pins or sets a value; ``release`` unpins and frees at once
every page no pinned handle shares; ``unpin`` unpins but keeps the KV as evictable cache
(evicted lowest value first, then least recently used).

Beyond expand: :meth:`NativeEngine.probe` runs a short throw-away continuation after a
handle plus suffix tokens on shared KV (no re-prefill of the handle's tokens) in the same
batches, and frees everything it made when it returns; :meth:`NativeEngine.truncate` names
a prefix of a handle. For incremental PRM scoring, :meth:`NativeEngine.extend` runs new
tokens after a handle (or a token-id prefix matched against the tree) and returns their
final-norm hidden states plus a pinned handle; :meth:`NativeEngine.logits` applies the LM
head.

Failure isolation: a bad request (dead handle, over the model's context, bad limit) is
refused to its caller alone before it joins the batch; a caller that raises, is
cancelled or interrupted has its job removed and its pages freed; a job whose branch
cannot fit in the whole pool even alone fails with :class:`KVCacheFull` naming the
memory setting, and the other jobs go on.

Policy and PRM: each :class:`NativeEngine` instance owns its own model, KV pool, tree and
loop, sized by its own ``kv_memory_gb``; a PRM hosted on a second instance never shares
or evicts the policy's KV. A PRM that is the policy model itself (a judge) can use the
policy's instance: it then shares prefixes, the pool and the decode batches.
Must NOT know: rewards, strategies, why a branch is kept.
"""

from __future__ import annotations

import asyncio
import atexit
import queue
import sys
import time
import threading
import weakref
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch import Tensor

from ttc.engine.handles import HandleTable
from ttc.engine.hardware import Choice, choose
from ttc.engine.prompting import eos_ids
from ttc.engine.native.kv_cache import KVCacheFull, PagePool, RadixNode, RadixTree
from ttc.engine.native.memory import check_pool_fits
from ttc.engine.native.model import NativeModel, from_hf
from ttc.engine.native.runner import ModelRunner
from ttc.engine.native.scheduler import Branch, DecodeJob, PrefillTask, Scheduler
from ttc.engine.native.threads import StepTuner, apply_threads, is_threads_setting
from ttc.registry import ConfigError
from ttc.types import (Continuation, ExpandOutput, ExpandRequest, GenerationUsage, Handle,
                       Problem, SamplingParams, TokenEvent)

if TYPE_CHECKING:
    from ttc.engine.native.config import NativeBackendConfig

__all__ = ["NativeEngine", "NativeGenerator", "KVCacheFull", "Job"]


class TicketLock:
    """A reentrant FIFO lock: threads get it in the order they asked.

    ``threading.Lock`` is not fair: the step loop, re-taking it right after a step,
    would starve callers waiting to pin or release. A waiter interrupted while queued
    gives its turn up (the ticket is skipped), so a Ctrl-C never wedges the engine.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition(threading.Lock())
        self._next = 0
        self._serving = 0
        self._skipped: set[int] = set()
        self._owner: int | None = None
        self._depth = 0

    def acquire(self) -> None:
        me = threading.get_ident()
        with self._cv:
            if self._owner == me:
                self._depth += 1
                return
            ticket = self._next
            self._next += 1
            try:
                while self._serving != ticket:
                    self._cv.wait()
            except BaseException:
                if self._serving == ticket:
                    self._advance()
                else:
                    self._skipped.add(ticket)
                raise
            self._owner, self._depth = me, 1

    def release(self) -> None:
        with self._cv:
            if self._owner != threading.get_ident():
                raise RuntimeError("TicketLock released by a thread that does not hold it")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._advance()

    def _advance(self) -> None:
        self._serving += 1
        while self._serving in self._skipped:
            self._skipped.discard(self._serving)
            self._serving += 1
        self._cv.notify_all()

    def __enter__(self) -> "TicketLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass(eq=False)
class _NativeHandle:
    node: RadixNode
    tail: tuple[int, ...]          # tokens after node still to prefill
    pinned: bool                   # False: kept by ``unpin`` as evictable cache
    prompt_len: int                # tokens of the root prompt (text_of starts after it)
    task: PrefillTask | None = None            # the prefill of ``tail``, while in flight
    waiters: list["Job"] = field(default_factory=list)
    released: bool = False


class Job:
    """One submitted ``expand`` (or ``probe``): wait with :meth:`result`, stop with :meth:`cancel`."""

    def __init__(self, engine: "NativeEngine", requests: Sequence[ExpandRequest],
                 states: Sequence[_NativeHandle], token_limit: int | None, *,
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


class NativeEngine:
    """A model, its paged KV pool, radix tree, step loop, and the handles into them."""

    thread_safe = True        # many threads may call every method at once
    supports_token_rules = True   # returns top_logprobs and runs stop_rules inside the batch
    can_replace_tokens = True     # a rule's Replace takes back a sampled token (stopping.py)

    def __init__(self, model: NativeModel, tokenizer: Any, *, page_size: int = 16,
                 kv_memory_gb: float = 2.0, max_batch_tokens: int = 2048,
                 prefill_chunk: int = 256, eos_ids: Sequence[int] = (), seed: int = 0,
                 threads: int | str | None = None,
                 setting: str = "backend.kv_memory_gb") -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be a positive integer; got {page_size!r}.")
        self.model = model
        self.tokenizer = tokenizer
        self.page_size = page_size
        bytes_per_page = model.kv_bytes_per_token() * page_size
        num_pages = int(kv_memory_gb * (1 << 30)) // bytes_per_page
        if num_pages < 2:
            raise ConfigError(f"{setting}={kv_memory_gb!r} holds fewer than 2 KV pages of "
                              f"{bytes_per_page} bytes; raise {setting}.")
        # NOTE: before anything is allocated (the pool's bookkeeping is lazy, the tensor not).
        check_pool_fits(num_pages * bytes_per_page, device=model.device, setting=setting,
                        value=kv_memory_gb)
        self.pool = PagePool(num_pages=num_pages, page_size=page_size, setting=setting,
                             page_bytes=bytes_per_page)
        self.tree = RadixTree(self.pool)
        self.runner = ModelRunner(model, num_pages=num_pages, page_size=page_size,
                                  max_batch_tokens=max_batch_tokens)
        self.scheduler = Scheduler(tree=self.tree, pool=self.pool, runner=self.runner,
                                   tokenizer=tokenizer, eos_ids=eos_ids,
                                   max_position=model.config.max_position,
                                   prefill_chunk=prefill_chunk)
        self.seed = seed
        self.threads: int | None = None
        self.tuner: StepTuner | None = None
        self.set_threads(threads)
        self._calls = 0
        self._handles: HandleTable[_NativeHandle] = HandleTable()
        self._lock = TicketLock()
        self._wake = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    def from_hf(cls, hf_config: Any, state_dict: dict[str, Tensor], tokenizer: Any, *,
                dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                attention: str = "auto", pack: bool | None = None,
                **kwargs: Any) -> "NativeEngine":
        """Build from a transformers config and an HF-named state dict (``pack=None``: the
        hardware decides whether linear weights are packed, :mod:`ttc.engine.hardware`)."""
        model = from_hf(hf_config, state_dict, dtype=dtype, device=device, attention=attention,
                        pack=pack)
        kwargs.setdefault("eos_ids", sorted(eos_ids(tokenizer, hf_config)))
        return cls(model, tokenizer, **kwargs)

    # -- the loop -------------------------------------------------------------------
    def _notify(self) -> None:
        with self._wake:
            if self._thread is None or not self._thread.is_alive():
                if self._closed:
                    raise RuntimeError("the engine is closed")
                self._thread = threading.Thread(target=self._loop, name="ttc-engine",
                                                daemon=True)
                self._thread.start()
                _register_loop(self)
            self._wake.notify_all()

    def _loop(self) -> None:
        applied = None
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._closed and not self.scheduler.has_work():
                        self._wake.wait()
                    if self._closed:
                        return
                tuner = self.tuner
                threads = tuner.next_threads() if tuner is not None else self.threads
                if threads is not None and threads != applied:
                    # NOTE: torch's thread count is per OS thread (engine/native/threads.py):
                    # it must be set here, on the thread that runs the model.
                    apply_threads(threads)
                    applied = threads
                with self._lock:
                    start = time.perf_counter()
                    try:
                        work = self.scheduler.step()
                    except Exception as err:  # noqa: BLE001  (a step broke: fail its work)
                        self.scheduler.fail_all(err)
                        continue
                if tuner is not None:
                    tuner.record(time.perf_counter() - start, work)

    def set_threads(self, n: int | str | None) -> None:
        """Run the model on ``n`` torch threads from the next step on; ``"auto"``: a fresh
        :class:`~ttc.engine.native.threads.StepTuner` chooses from the engine's own steps;
        None: torch's default."""
        if n is not None and not is_threads_setting(n):
            raise ValueError(f"set_threads needs a positive integer, 'auto' or None; "
                             f"got {n!r}.")
        self.tuner = StepTuner() if n == "auto" else None
        self.threads = None if n == "auto" else n

    @property
    def threads_in_use(self) -> int | None:
        """The count the step loop runs on now (the tuner's choice under ``auto``)."""
        return self.tuner.current if self.tuner is not None else self.threads

    def close(self) -> None:
        """Stop the step loop (pending work fails); the engine cannot be used after."""
        with self._lock:
            self.scheduler.fail_all(RuntimeError("the engine was closed"))
        self._stop_loop(timeout=10)

    def _stop_loop(self, *, timeout: float) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)

    # -- handles ----------------------------------------------------------------------
    def _new_handle(self, node: RadixNode, tail: Sequence[int], prompt_len: int) -> int:
        self.tree.pin(node)
        return self._handles.add(_NativeHandle(node=node, tail=tuple(tail), pinned=True,
                                              prompt_len=prompt_len))

    def _state(self, handle: Handle) -> _NativeHandle:
        st = self._handles.find(handle)
        if st is None or not st.node.alive:
            raise ValueError(f"handle {handle!r} is not live (released, evicted or never issued).")
        return st

    def handle_for_tokens(self, token_ids: Sequence[int], *, prompt_len: int | None = None) -> int:
        """A pinned handle for a token sequence: the longest cached prefix plus a tail to prefill."""
        ids = [int(t) for t in token_ids]
        if not ids:
            raise ValueError("a sequence needs at least one token; got none.")
        if len(ids) >= self.model.config.max_position:
            raise ValueError(f"the prompt has {len(ids)} tokens; the model's context is "
                             f"{self.model.config.max_position} tokens.")
        with self._lock:
            node = self.tree.match(ids)
            if node.end == len(ids) and node.payload is None:
                # Fully cached but no hidden state for its last token: recompute the last
                # page's worth so the first sampled token has logits.
                node = self.tree.match(ids, limit=len(ids) - 1)
            return self._new_handle(node, ids[node.end:],
                                    len(ids) if prompt_len is None else prompt_len)

    def truncate(self, handle: Handle, position: int) -> int:
        """A new pinned handle for the first ``position`` tokens of ``handle``'s sequence."""
        with self._lock:
            st = self._state(handle)
            total = st.node.end + len(st.tail)
            if not 1 <= position <= total:
                raise ValueError(f"truncate position must be in 1..{total} (the handle's "
                                 f"tokens); got {position!r}.")
            ids = self.tree.tokens_of(st.node) + list(st.tail)
            return self.handle_for_tokens(ids[:position],
                                          prompt_len=min(st.prompt_len, position))

    def pin(self, handles: Sequence[Handle], *, value: float | None = None) -> None:
        with self._lock:
            for h in handles:
                st = self._state(h)
                if st.pinned:
                    if value is not None:
                        st.node.value = value
                else:
                    self.tree.unretain(st.node)
                    self.tree.pin(st.node, value=value)
                    st.pinned = True

    def unpin(self, handles: Sequence[Handle], *, value: float | None = None) -> None:
        """Unpin but keep the KV as evictable cache (lowest value evicted first)."""
        with self._lock:
            for h in handles:
                st = self._handles.find(h)
                if st is not None and st.pinned and st.node.alive:
                    st.pinned = False
                    self.tree.unpin(st.node, value=value)
                    self.tree.retain(st.node)

    def release(self, handles: Sequence[Handle]) -> None:
        """End handles; KV that no pinned handle shares is freed at once."""
        with self._lock:
            for h in handles:
                st = self._handles.pop(h)
                if st is not None:
                    self._drop_state(st)

    def _drop_state(self, st: _NativeHandle) -> None:
        st.released = True
        if not st.node.alive:
            return                           # evicted while kept as cache
        if st.pinned:
            self.tree.unpin(st.node)
        else:
            self.tree.unretain(st.node)
        self.tree.free_unlocked(st.node)

    def kv_bytes(self) -> int:
        return self.pool.num_used * self.runner.bytes_per_page

    @property
    def peak_kv_bytes(self) -> int:
        return self.pool.peak_used * self.runner.bytes_per_page

    def token_ids(self, handle: Handle) -> list[int]:
        with self._lock:
            st = self._state(handle)
            return self.tree.tokens_of(st.node) + list(st.tail)

    def token_count(self, handle: Handle) -> int:
        with self._lock:
            st = self._state(handle)
            return st.node.end + len(st.tail)

    def text_of(self, handle: Handle) -> str:
        """Decoded text after the root prompt."""
        with self._lock:
            st = self._state(handle)
            ids = self.tree.tokens_of(st.node) + list(st.tail)
            return self.tokenizer.decode(ids[st.prompt_len:], skip_special_tokens=True)

    def check_invariants(self) -> None:
        with self._lock:
            self.tree.check_invariants(extra_refs=self.scheduler.owned_pages())
            for h, st in self._handles.items():
                if st.node.alive and st.pinned:
                    assert st.node.lock > 0, f"pinned handle {h} on an unlocked node"

    def stats(self) -> dict[str, int]:
        """Counters for tests and metrics: steps run, preemptions, pages, live handles."""
        return {"steps": self.scheduler.steps, "preemptions": self.scheduler.preemptions,
                "peak_batch": self.scheduler.peak_batch,
                "prefill_tokens_run": self.scheduler.prefill_tokens_run,
                "decode_tokens_run": self.scheduler.decode_tokens_run,
                "pages_used": self.pool.num_used, "pages_total": self.pool.num_pages,
                "handles": len(self._handles),
                "running": len(self.scheduler.running_branches()),
                "prefills_waiting": len(self.scheduler.waiting),
                "preempted": sum(b.preempted for j in self.scheduler.jobs for b in j.branches
                                 if not b.done)}

    # -- prefill ----------------------------------------------------------------------
    def _prefill(self, st: _NativeHandle, *, keep_hidden: bool = False,
                 on_hidden: Any = None) -> PrefillTask:
        """Queue the prefill of ``st.tail``; when done, ``st`` moves to the new node."""
        parent = st.node
        self.tree.pin(parent)                 # NOTE: the parent stays resident meanwhile

        def done(task: PrefillTask, hidden: Tensor) -> None:
            self.tree.unpin(parent)
            node = self.tree.add_child(parent, task.tokens, task.pages,
                                       payload=hidden[-1].clone())
            task.pages = None
            if st.released:
                self.tree.free_unlocked(node)
            elif st.pinned:                   # the handle moves to the computed node
                self.tree.pin(node)
                self.tree.unpin(parent)
            else:
                self.tree.retain(node)
                self.tree.unretain(parent)
            st.node, st.tail, st.task = node, (), None
            if on_hidden is not None:
                on_hidden(hidden)
            waiters, st.waiters = st.waiters, []
            for job in waiters:
                job.waiting_on -= 1
                if job.waiting_on == 0 and not job.closed:
                    self._start_decode(job)

        def failed(err: BaseException) -> None:
            self.tree.unpin(parent)
            st.task = None
            waiters, st.waiters = st.waiters, []
            for job in waiters:
                self._fail(job, err)
            if on_hidden is not None:
                on_hidden(err)

        task = PrefillTask(parent=parent, tokens=st.tail, keep_hidden=keep_hidden,
                           on_done=done, on_error=failed)
        st.task = task
        self.scheduler.add_prefill(task)
        return task

    def extend(self, prefix: Handle | Sequence[int], new_token_ids: Sequence[int]
               ) -> tuple[Tensor, int]:
        """Run ``new_token_ids`` after ``prefix``; return their hidden states and a pinned handle.

        Returns ``(hidden [len(new_token_ids), hidden_size] with the final norm applied,
        handle)``; the handle names prefix + new tokens.
        """
        hidden, handles = self.extend_batch([(prefix, new_token_ids)])
        return hidden[0], handles[0]

    def extend_batch(self, items: Sequence[tuple[Handle | Sequence[int], Sequence[int]]]
                     ) -> tuple[list[Tensor], list[int]]:
        """:meth:`extend` for many items, prefilled in the engine's steps (chunked)."""
        hidden, handles, _ = self.extend_batch_usage(items)
        return hidden, handles

    def extend_batch_usage(self, items: Sequence[tuple[Handle | Sequence[int], Sequence[int]]]
                           ) -> tuple[list[Tensor], list[int], int]:
        """:meth:`extend_batch`, plus the tokens the engine actually computed for it.

        That is at least the new tokens: a token-id prefix matched against the tree
        reuses whole cached pages only, so up to a page of the prefix may run again.
        Charge this figure, not the count asked for.
        """
        futures: list[Future] = []
        counts, hids = [], []
        computed = 0
        with self._lock:
            try:
                for prefix, new in items:
                    new = [int(t) for t in new]
                    if not new:
                        raise ValueError("extend needs at least one new token; got none.")
                    if isinstance(prefix, (list, tuple)):
                        ids = [int(t) for t in prefix] + new
                        node = self.tree.match(ids, limit=len(prefix))
                        prompt_len = len(prefix)
                        tail = ids[node.end:]
                    else:
                        st = self._state(prefix)
                        node, tail, prompt_len = st.node, list(st.tail) + new, st.prompt_len
                    if node.end + len(tail) > self.model.config.max_position:
                        raise ValueError(f"the sequence would have {node.end + len(tail)} "
                                         f"tokens; the model's context is "
                                         f"{self.model.config.max_position} tokens.")
                    hid = self._new_handle(node, tail, prompt_len)
                    hids.append(hid)
                    counts.append(len(new))
                    computed += len(tail)
                    fut: Future = Future()
                    futures.append(fut)
                    self._prefill(self._handles.get(hid), keep_hidden=True,
                                  on_hidden=_resolver(fut))
            except BaseException:
                self._release_locked(hids, futures)
                raise
        self._notify()
        try:
            hidden = [f.result() for f in futures]
        except BaseException:
            with self._lock:
                self._release_locked(hids, futures)
            raise
        return [h[-n:] for h, n in zip(hidden, counts)], hids, computed

    def _release_locked(self, hids: Sequence[int], futures: Sequence[Future]) -> None:
        for hid in hids:
            st = self._handles.pop(hid)
            if st is None:
                continue
            if st.task is not None:
                self.scheduler.cancel_prefill(st.task)
                self.tree.unpin(st.task.parent)
                st.task = None
            self._drop_state(st)
        for f in futures:
            f.cancel()

    def logits(self, hidden: Tensor) -> Tensor:
        """``[rows, hidden_size]`` final-norm hidden states -> ``[rows, vocab]`` float32 logits."""
        with torch.inference_mode():
            return self.model.logits(hidden)

    def score_tokens(self, token_ids: Sequence[int], *, top_k: int = 0
                     ) -> tuple[list[float | None], list[list[tuple[int, float]]], int]:
        """Log-probabilities the model gives each of ``token_ids`` after the ones before it
        (prompt log-probs, as for ``echo`` with ``logprobs``), from one prefill.

        Returns ``(logprobs, top, computed)``: ``logprobs[i]`` is the natural-log
        probability of token ``i`` given tokens ``0..i-1`` (``None`` for token 0, which has
        no context); ``top[i]`` the ``top_k`` most likely ``(token_id, logprob)`` at that
        position (empty for token 0); ``computed`` the tokens run through the model (to
        charge). Nothing stays pinned: the sequence's KV is left as evictable cache.
        """
        ids = [int(t) for t in token_ids]
        if not 0 <= top_k <= 20:
            raise ValueError(f"top_k must be in [0, 20]; got {top_k!r}.")
        hidden, handles, computed = self.extend_batch_usage([((), ids)])
        try:
            # hidden[0]: [num_tokens, hidden_size]; row i predicts token i + 1.
            logp = torch.log_softmax(self.logits(hidden[0][:-1]).float(), dim=-1)
        finally:
            self.release(handles)
        nxt = torch.tensor(ids[1:], dtype=torch.long)
        chosen = logp.gather(1, nxt[:, None]).squeeze(1).tolist() if len(ids) > 1 else []
        top: list[list[tuple[int, float]]] = [[]]
        if top_k:
            values, idx = logp.topk(top_k, dim=-1)
            top += [list(zip(i.tolist(), v.tolist())) for i, v in zip(idx, values)]
        else:
            top += [[] for _ in chosen]
        return [None, *chosen], top, computed

    def embed(self, handles: Sequence[Handle]) -> list[list[float]]:
        """The final hidden state of each handle's last token, L2-normalised."""
        return self.embed_usage(handles)[0]

    def embed_usage(self, handles: Sequence[Handle]) -> tuple[list[list[float]], int]:
        """:meth:`embed`, plus the tokens it computed (a handle's tail not yet prefilled;
        a computed handle's vector is its stored hidden state and costs nothing)."""
        futures = []
        computed = 0
        with self._lock:
            states = [self._state(h) for h in handles]
            for st in states:
                if st.tail and st.task is None:
                    fut: Future = Future()
                    futures.append(fut)
                    computed += len(st.tail)
                    self._prefill(st, on_hidden=_resolver(fut))
                elif st.task is not None:
                    raise RuntimeError("embed of a handle whose prefill is still running")
        if futures:
            self._notify()
            for f in futures:
                f.result()
        out = []
        with self._lock:
            for st in states:
                v = st.node.payload.float()
                out.append((v / v.norm().clamp_min(1e-6)).tolist())
        return out, computed

    # -- expand -----------------------------------------------------------------------
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
        if job.future.done():                # cancelled from outside (asyncio, a Future user)
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
                if job.ephemeral:
                    self.pool.free(b.own_pages)
                    hid = None
                else:
                    if b.tokens:
                        node = self.tree.add_child(b.prefix, b.tokens, b.own_pages,
                                                   payload=b.hidden)
                    else:                        # cut by the budget before its first token
                        self.pool.free(b.own_pages)
                        node = b.prefix
                    hid = self._new_handle(node, (), st.prompt_len)
                b.own_pages = []
                generated += len(b.tokens)
                stats: dict[str, float] = {}
                for rule in b.rules:
                    stats.update(rule.summary())
                if b.forced_count:
                    stats["forced_tokens"] = float(b.forced_count)
                conts.append(Continuation(
                    handle=hid, token_ids=tuple(b.tokens),
                    text=self.tokenizer.decode(b.tokens, skip_special_tokens=True),
                    logprobs=tuple(b.logprobs) if b.params.logprobs else (), finish=b.finish,
                    top_logprobs=tuple(b.top), stop_reason=b.stop_reason, stats=stats))
            outputs.append(tuple(conts))
        usage = GenerationUsage(prefill_tokens=job.prefill_tokens + job.decode.recomputed,
                                cached_tokens=job.cached_tokens,
                                generated_tokens=generated, peak_kv_bytes=self.peak_kv_bytes)
        _settle(job.future, ExpandOutput(continuations=tuple(outputs), usage=usage))

    def _fail(self, job: Job, err: BaseException) -> None:
        self._detach(job)
        _settle(job.future, err)

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
            _settle(job.future, CancelledError("the expand call was cancelled"))


_LOOPS: "weakref.WeakSet[NativeEngine]" = weakref.WeakSet()


def _register_loop(engine: NativeEngine) -> None:
    """Stop step loops before the interpreter tears torch down (a loop thread killed
    mid-step at exit can abort the process)."""
    if not _LOOPS:
        atexit.register(_stop_all_loops)
    _LOOPS.add(engine)


def _stop_all_loops() -> None:
    for engine in list(_LOOPS):
        engine._stop_loop(timeout=2)


def _settle(fut: Future, value: Any) -> None:
    """Set a future's result or exception unless it is already settled (or cancelled)."""
    if fut.done():
        return
    if isinstance(value, BaseException):
        fut.set_exception(value)
    else:
        fut.set_result(value)


def _resolver(fut: Future) -> Any:
    """A callback that settles ``fut`` with what it is given (a value or an exception)."""
    return lambda value: _settle(fut, value)


class NativeGenerator(NativeEngine):
    """The native engine with ``root(problem)``: chat template, tokenize, pinned handle."""

    system_prompt: str | None = None
    hardware: Choice | None = None       # what ttc.engine.hardware chose for this machine

    @classmethod
    def from_config(cls, config: NativeBackendConfig) -> "NativeGenerator":
        choice = choose(device=config.device, dtype=config.dtype, attention=config.attention)
        if choice.note:
            print(f"ttc: {choice.note}", file=sys.stderr)
        from ttc.engine.loader import load_model  # noqa: PLC0415  (heavy)

        device, dtype = choice.device, choice.dtype
        loaded = load_model(config.model, dtype=dtype, device=device)
        gen = cls.from_hf(loaded.hf_config, loaded.state_dict, loaded.tokenizer, dtype=dtype,
                          device=device, attention=choice.attention, pack=choice.pack_linear,
                          page_size=config.page_size,
                          kv_memory_gb=config.kv_memory_gb,
                          max_batch_tokens=config.max_batch_tokens,
                          prefill_chunk=config.prefill_chunk_tokens, seed=config.seed,
                          threads=config.threads)
        from ttc.engine.prompting import DEFAULT_SYSTEM_PROMPT  # noqa: PLC0415

        # None: the default system prompt; "": none (the hf backend's rule).
        gen.system_prompt = (DEFAULT_SYSTEM_PROMPT if config.system_prompt is None
                             else config.system_prompt or None)
        gen.thinking_delimiters = thinking_delimiters_of(loaded.tokenizer)
        gen.hardware = choice
        return gen

    # Budget forcing (ttc.stopping.ThinkingBudget): the cap is a Force inside the batch,
    # "Wait" extensions a Replace of the sampled end delimiter (the scheduler runs both).
    thinking_delimiters: tuple[str, str] | None = None

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (probe suffixes, delimiters)."""
        with self._lock:                  # NOTE: one thread at a time in the tokenizer
            return list(self.tokenizer.encode(text, add_special_tokens=False))

    def root(self, problem: Problem) -> Handle:
        with self._lock:                  # NOTE: one thread at a time in the tokenizer
            ids = self.format(problem)
            return self.handle_for_tokens(ids)

    def format(self, problem: Problem) -> list[int]:
        """The prompt's token ids (the model's chat template when it has one)."""
        from ttc.engine.prompting import format_prompt  # noqa: PLC0415

        return list(format_prompt(self.tokenizer, problem, system_prompt=self.system_prompt))


def thinking_delimiters_of(tokenizer) -> tuple[str, str] | None:
    """``("<think>", "</think>")`` when the tokenizer has each as one token (R1, Qwen3)."""
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError):
        return None
    pair = ("<think>", "</think>")
    return pair if all(t in vocab for t in pair) else None
