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

This module assembles the engine from its parts, one responsibility each::

    lock.py       TicketLock: the FIFO lock that guards all state below
    loop.py       StepLoop: the loop thread (wait for work, threads, lock, scheduler.step)
    handles.py    HandleAPI: pin, unpin, release, truncate, token_ids (HandleState)
    prefill.py    Prefill: a handle's tail is prefilled, then the handle moves onto it
    expand.py     ExpandCalls: submit, expand, aexpand, stream, probe (checks, seeds, counts)
    jobs.py       Job, JobLifecycle: start decoding, complete (handles), fail, cancel
    extras.py     Extras: extend, logits, score_tokens, embed (for PRMs and the server)
    generator.py  ChatPrompts: from_config, root(problem), encode; thinking delimiters

A job first prefills every pending handle tail (chunked, in the same steps as other
callers' decodes), then its branches join the decode batch; each finished branch
becomes a tree node under a fresh pinned handle, so the next call reuses it.

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

import threading
from typing import Any, Sequence

import torch
from torch import Tensor

from ttc.engine.handles import HandleTable
from ttc.engine.native.expand import ExpandCalls
from ttc.engine.native.extras import Extras
from ttc.engine.native.generator import ChatPrompts, thinking_delimiters_of
from ttc.engine.native.handles import HandleAPI, HandleState
from ttc.engine.native.jobs import Job, JobLifecycle
from ttc.engine.native.kv_cache import KVCacheFull, PagePool, RadixTree
from ttc.engine.native.lock import TicketLock
from ttc.engine.native.loop import StepLoop
from ttc.engine.native.memory import check_pool_fits
from ttc.engine.native.model import NativeModel, from_hf
from ttc.engine.native.prefill import Prefill
from ttc.engine.native.runner import ModelRunner
from ttc.engine.native.scheduler import Scheduler
from ttc.engine.native.threads import StepTuner
from ttc.engine.prompting import eos_ids
from ttc.registry import ConfigError

__all__ = ["NativeEngine", "NativeGenerator", "KVCacheFull", "Job", "TicketLock",
           "thinking_delimiters_of"]


class NativeEngine(StepLoop, HandleAPI, Prefill, ExpandCalls, JobLifecycle, Extras):
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
        self.seed = seed                  # expand.py: sampled requests' seeds
        self.threads: int | None = None   # loop.py: torch threads on the loop thread
        self.tuner: StepTuner | None = None
        self.set_threads(threads)
        self._calls = 0                   # expand.py: submitted jobs, for the seeds
        self._handles: HandleTable[HandleState] = HandleTable()
        self._lock = TicketLock()
        self._wake = threading.Condition(threading.Lock())      # loop.py
        self._thread: threading.Thread | None = None
        self._closed = False

    @classmethod
    def from_hf(cls, hf_config: Any, state_dict: dict[str, Tensor], tokenizer: Any, *,
                dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                attention: str = "auto", pack: bool | None = None,
                **kwargs: Any) -> NativeEngine:
        """Build from a transformers config and an HF-named state dict (``pack=None``: the
        hardware decides whether linear weights are packed, :mod:`ttc.engine.hardware`)."""
        model = from_hf(hf_config, state_dict, dtype=dtype, device=device, attention=attention,
                        pack=pack)
        kwargs.setdefault("eos_ids", sorted(eos_ids(tokenizer, hf_config)))
        return cls(model, tokenizer, **kwargs)

    # -- counters and checks ----------------------------------------------------------
    def kv_bytes(self) -> int:
        return self.pool.num_used * self.runner.bytes_per_page

    @property
    def peak_kv_bytes(self) -> int:
        return self.pool.peak_used * self.runner.bytes_per_page

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


class NativeGenerator(ChatPrompts, NativeEngine):
    """The native engine with ``root(problem)``: chat template, tokenize, pinned handle."""
