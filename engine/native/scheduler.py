"""The scheduler: one engine step at a time, for every job that shares the engine.

Contract: :class:`Scheduler` holds the work of all callers — :class:`PrefillTask` (new
tokens after a computed tree node: prompts, verifier extends, probe suffixes) and
:class:`DecodeJob` (the branches of one ``expand`` call, with that call's token cap) —
and :meth:`Scheduler.step` advances all of it by one step (vLLM v1's rule: no prefill
or decode phases, each piece of work catches up a little every step)::

    step():                    schedule -> run -> postprocess, twice
        extend   schedule: pages for preempted branches that fit again (their tokens
                           to recompute), admit waiting prefill tasks in arrival order
                           while their pages fit, one chunk of at most ``chunk`` tokens
                           over the admitted tasks (``max_batch_tokens`` when nothing
                           is decoding)
                 run:      ONE extend forward over the recomputes and the chunk
                 post:     prefill tasks that are complete call back
        start:   jobs whose prefixes are computed sample their first tokens
        decode   schedule: every running branch, with the page its token needs
                           (preempting under pressure), grouped by shared prefix pages
                 run:      ONE decode forward, then the LM head
                 post:     sample, check stops, stream
        finish:  jobs that are complete call back (the engine makes handles)

Per branch, on every token: EOS (kept) -> ``EOS``; a stop string in its text ->
``STOP``; a stop rule (:mod:`ttc.stopping`) -> ``RULE`` (or forced tokens queued);
``max_tokens`` or the model's context -> ``MAX_TOKENS``. Per job: the call's
``token_limit`` — when the job's running branches would together pass it with the next
token, all of them finish with ``BUDGET`` (lockstep within the call, as if it ran alone),
so a budgeted search batches with everything else and never exceeds its cap.

A branch's last sampled token has no KV yet; the step after it stops, the branch is fed
once more ("flushed") so its KV and final hidden state exist before the job finishes.

Memory: pages come from the pool (which evicts unlocked cache first). When a decoding
branch needs a page and none can be had, branches ranked below it are preempted — lowest
value first (the value the search layer pinned on the branch's prefix), then the youngest
job — their pages freed, their tokens and RNG state kept, recomputed later in one extend. When nothing else is running and a
branch still cannot get a page, its job fails alone with :class:`KVCacheFull`, which
names the memory setting. A job that fails or is cancelled frees everything it held;
the other jobs go on.

Nano-vllm's split: this module decides, :mod:`ttc.engine.native.kv_cache` counts,
:mod:`ttc.engine.native.runner` computes.
Must NOT know: handles, rewards, strategies, chat templates.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ttc.engine.native.kv_cache import KVCacheFull, PagePool, RadixNode, RadixTree
from ttc.engine.native.profile import StepClock
from ttc.engine.native.runner import DecodeGroup, ExtendItem, ModelRunner
from ttc.engine.native.sampling import RowParams, sample, seeded_generator
from ttc.stopping import Force, Replace, Stop
from ttc.types import FinishReason, SamplingParams, TokenEvent


class StopTracker:
    """Incremental detokenisation of one branch and stop-string detection.

    Decodes only a short window of recent tokens per step (the prefix/read offsets of
    incremental detokenisers), holding back text while the window ends in an incomplete
    UTF-8 sequence. With ``track_text`` it keeps the text even without stop strings
    (token streams need each token's new text).
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str], *, track_text: bool = False) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(stops)
        self.track_text = track_text or bool(self.stops)
        self.longest = max((len(s) for s in self.stops), default=0)
        self.ids: list[int] = []
        self.text = ""
        self.delta = ""
        self.hit: str | None = None
        self.prefix_offset = 0
        self.read_offset = 0

    def mark(self) -> tuple:
        """The tracker's state, to :meth:`reset` to when a token is taken back."""
        return (len(self.ids), len(self.text), self.delta, self.hit, self.prefix_offset,
                self.read_offset)

    def reset(self, mark: tuple) -> None:
        n_ids, n_text, self.delta, self.hit, self.prefix_offset, self.read_offset = mark
        del self.ids[n_ids:]
        self.text = self.text[:n_text]

    def push(self, token: int) -> bool:
        """Add a token; return True when the text now contains a stop string."""
        self.ids.append(token)
        self.delta = ""
        if not self.track_text:
            return False
        dec = self.tokenizer.decode
        before = dec(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        after = dec(self.ids[self.prefix_offset:], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return False
        delta = after[len(before):]
        self.delta = delta
        self.text += delta
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.ids)
        if not self.stops:
            return False
        window = self.text[-(len(delta) + self.longest - 1):]
        for s in self.stops:
            if s in window:
                self.hit = s
                return True
        return False


@dataclass(eq=False)
class Branch:
    """One continuation being generated."""

    job: "DecodeJob"
    request: int                 # index of its request within the job
    index: int                   # index within its request (seeding, streams)
    prefix: RadixNode
    params: SamplingParams
    generator: torch.Generator | None
    tracker: StopTracker
    rules: list[Any]
    group_key: int
    base_pages: list[int]        # full pages of the prefix (shared, never written)
    base_len: int                # prefix tokens
    own_pages: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[tuple[tuple[int, float], ...]] = field(default_factory=list)
    forced: deque = field(default_factory=deque)    # tokens to append without sampling
    forced_count: int = 0
    finish: FinishReason | None = None
    stop_reason: str | None = None
    hidden: Tensor | None = None  # final hidden state of the last token, once computed
    preempted: bool = False
    top_k: int = 0               # top log-probs this branch needs per token (params, rules)

    @property
    def needs_flush(self) -> bool:
        return self.finish is not None and bool(self.tokens) and self.hidden is None

    @property
    def done(self) -> bool:
        return self.finish is not None and not self.needs_flush


@dataclass(eq=False)
class DecodeJob:
    """The branches of one ``expand`` call: one token cap for all of them.

    ``prefixes[i]`` is request ``i``'s computed node (its payload is the hidden state of
    its last token); ``on_done(job)`` runs when every branch is done, ``on_error(exc)``
    when the job fails (its pages already freed).
    """

    prefixes: Sequence[RadixNode]
    requests: Sequence[Any]               # ExpandRequest-like: n, params, on_token
    seeds: Sequence[int | None]           # per request, for params without a seed
    token_limit: int | None
    on_done: Callable[["DecodeJob"], None]
    on_error: Callable[[BaseException], None]
    seq: int = 0
    branches: list[Branch] = field(default_factory=list)
    shared: RadixNode | None = None   # deepest node every prefix of the job descends from
    generated: int = 0
    recomputed: int = 0          # tokens run again after a preemption (charged as prefill)
    finished: bool = False


@dataclass(eq=False)
class PrefillTask:
    """Compute ``tokens`` after ``parent`` (computed and kept resident by the caller).

    ``on_done(task, hidden)`` gets the new tokens' final hidden states (all of them when
    ``keep_hidden``, else only the last row) and must take over ``pages`` (e.g. as a
    tree node); ``on_error(exc)`` runs if the task fails (its pages already freed).
    """

    parent: RadixNode
    tokens: tuple[int, ...]
    keep_hidden: bool
    on_done: Callable[["PrefillTask", Tensor], None]
    on_error: Callable[[BaseException], None]
    pages: list[int] | None = None
    done: int = 0
    parts: list[Tensor] = field(default_factory=list)


@dataclass(eq=False)
class ExtendBatch:
    """What one step's extend forward computes: first the recomputes of resumed branches
    (``items[:len(recomputes)]``), then a chunk of admitted prefill tasks (``chunk``:
    task and tokens taken, one item each)."""

    items: list[ExtendItem] = field(default_factory=list)
    recomputes: list[Branch] = field(default_factory=list)
    chunk: list[tuple[PrefillTask, int]] = field(default_factory=list)


class Scheduler:
    def __init__(self, *, tree: RadixTree, pool: PagePool, runner: ModelRunner, tokenizer: Any,
                 eos_ids: Sequence[int], max_position: int, prefill_chunk: int,
                 encode: Callable[[str], list[int]] | None = None) -> None:
        self.tree = tree
        self.pool = pool
        self.runner = runner
        self.tokenizer = tokenizer
        self.eos_ids = frozenset(eos_ids)
        self.max_position = max_position
        self.page_size = pool.page_size
        self.prefill_chunk = prefill_chunk
        self.encode = encode
        self._seq = itertools.count()
        self.waiting: deque[PrefillTask] = deque()   # not yet given pages
        self.prefilling: list[PrefillTask] = []      # pages held, tokens being computed
        self.starting: list[DecodeJob] = []          # first tokens not sampled yet
        self.jobs: list[DecodeJob] = []              # started, not finished
        self.steps = 0                               # decode steps run (for tests, metrics)
        self.peak_batch = 0                          # most branches in one decode step
        # What the model actually ran (the ledger must add up to these): tokens through
        # extend forwards (prefills, probe suffixes, recomputes) and decode rows.
        self.prefill_tokens_run = 0
        self.decode_tokens_run = 0
        self.preemptions = 0
        self.clock = StepClock()       # seconds per phase of each step (profile.py)

    # -- queues -----------------------------------------------------------------------
    def add_prefill(self, task: PrefillTask) -> None:
        self.waiting.append(task)

    def add_job(self, job: DecodeJob) -> None:
        job.seq = next(self._seq)
        self.starting.append(job)

    def has_work(self) -> bool:
        return bool(self.waiting or self.prefilling or self.starting or self.jobs)

    def running_branches(self) -> list[Branch]:
        return [b for j in self.jobs for b in j.branches if not b.done and not b.preempted]

    def owned_pages(self) -> list[list[int]]:
        """Pages held by work in flight (for invariant checks)."""
        out = [t.pages for t in self.prefilling if t.pages]
        out += [b.own_pages for j in self.jobs for b in j.branches if b.own_pages]
        return out

    def cancel_job(self, job: DecodeJob) -> None:
        """Remove a job wherever it is and free its pages (no callback)."""
        if job in self.starting:
            self.starting.remove(job)
        if job in self.jobs:
            self.jobs.remove(job)
        for b in job.branches:
            self.pool.free(b.own_pages)
            b.own_pages = []
        job.finished = True

    def cancel_prefill(self, task: PrefillTask) -> None:
        if task in self.waiting:
            self.waiting.remove(task)
        if task in self.prefilling:
            self.prefilling.remove(task)
        if task.pages:
            self.pool.free(task.pages)
            task.pages = None

    def fail_all(self, exc: BaseException) -> None:
        """A step failed in a way that cannot be pinned on one job: fail everything."""
        tasks = list(self.waiting) + self.prefilling
        jobs = self.starting + self.jobs
        for t in tasks:
            self.cancel_prefill(t)
        for j in jobs:
            self.cancel_job(j)
        for t in tasks:
            _call_safely(t.on_error, exc)
        for j in jobs:
            _call_safely(j.on_error, exc)

    # -- the step -----------------------------------------------------------------------
    def step(self) -> int:
        """Advance every piece of work by one step; return the tokens it ran through the
        model (prefill, recompute and decode rows: the step's work).

        Schedule -> run -> postprocess, for the extend forward (recomputes of resumed
        branches and a chunk of pending prefill) and then for the decode forward (every
        running branch); between them, jobs whose prefixes are now computed sample their
        first tokens, so they decode in this same step.
        """
        start = time.perf_counter()
        ran = self.prefill_tokens_run + self.decode_tokens_run
        batch = self._schedule_extend()
        if batch.items:
            hidden = self._run_extend(batch)
            if hidden is not None:
                self._postprocess_extend(batch, hidden)
        self._start_jobs()
        rows = self._schedule_decode()
        out = self._run_decode(rows) if rows else None
        if out is not None:
            self._postprocess_decode(rows, *out)
        self._finish_jobs()
        self.clock.end_step(time.perf_counter() - start, decoded=out is not None)
        return self.prefill_tokens_run + self.decode_tokens_run - ran

    # -- the extend forward -------------------------------------------------------------
    def _schedule_extend(self) -> "ExtendBatch":
        batch = ExtendBatch()
        self._resume_preempted(batch)
        self._admit_prefills()
        decoding = bool(self.jobs or self.starting)
        self._take_prefill_chunk(
            batch, self.prefill_chunk if decoding else self.runner.max_batch_tokens)
        return batch

    def _run_extend(self, batch: "ExtendBatch") -> list[Tensor] | None:
        """The extend forward; on failure its owners fail (other work goes on), None."""
        try:
            start = time.perf_counter()
            hidden = self.runner.extend(batch.items)
            self.clock.add("prefill", time.perf_counter() - start)
        except Exception as err:  # noqa: BLE001  (the owners of this batch fail)
            for job in {id(b.job): b.job for b in batch.recomputes}.values():
                self._fail_job(job, err)
            for task, _ in batch.chunk:
                self.cancel_prefill(task)
                _call_safely(task.on_error, err)
            return None
        self.prefill_tokens_run += sum(len(it.tokens) for it in batch.items)
        return hidden

    def _postprocess_extend(self, batch: "ExtendBatch", hidden: list[Tensor]) -> None:
        for b, item in zip(batch.recomputes, batch.items):
            b.job.recomputed += len(item.tokens)
        for (task, take), h in zip(batch.chunk, hidden[len(batch.recomputes):]):
            task.done += take
            if task.keep_hidden:
                task.parts.append(h)
            else:                               # only the last token's state is wanted
                task.parts = [h[-1:]]
            if task.done == len(task.tokens):
                self.prefilling.remove(task)
                out = torch.cat(task.parts) if len(task.parts) > 1 else task.parts[0]
                task.parts = []
                try:
                    task.on_done(task, out)
                except Exception as err:  # noqa: BLE001
                    if task.pages:
                        self.pool.free(task.pages)
                        task.pages = None
                    _call_safely(task.on_error, err)

    # -- prefill ------------------------------------------------------------------------
    def _admit_prefills(self) -> None:
        ps = self.page_size
        while self.waiting:
            task = self.waiting[0]
            parent = task.parent
            n_pages = -(-(parent.end + len(task.tokens)) // ps) - parent.end // ps
            try:
                pages = self.pool.alloc(n_pages)
            except KVCacheFull as err:
                if self.prefilling or self.running_branches():
                    return                      # wait for running work to free pages
                self.waiting.popleft()
                _call_safely(task.on_error, err)
                continue
            self.waiting.popleft()
            if parent.end % ps:
                self.runner.copy_page(self.tree.page_table(parent)[-1], pages[0])
            task.pages = pages
            self.prefilling.append(task)

    def _take_prefill_chunk(self, batch: "ExtendBatch", budget: int) -> None:
        """Up to ``budget`` tokens of the admitted prefill tasks, in arrival order."""
        ps = self.page_size
        for task in self.prefilling:
            if budget <= 0:
                break
            take = min(budget, len(task.tokens) - task.done)
            base = self.tree.page_table(task.parent)[: task.parent.end // ps]
            batch.items.append(ExtendItem(table=base + task.pages,
                                          start=task.parent.end + task.done,
                                          tokens=task.tokens[task.done:task.done + take]))
            batch.chunk.append((task, take))
            budget -= take

    # -- jobs ---------------------------------------------------------------------------
    def _new_branch(self, job: DecodeJob, request: int, index: int) -> Branch:
        r = job.requests[request]
        node = job.prefixes[request]
        params: SamplingParams = r.params
        gen = None
        if params.temperature > 0:
            seed = params.seed if params.seed is not None else job.seeds[request]
            if seed is not None:
                gen = seeded_generator(seed, index)
        table = self.tree.page_table(node)
        ps = self.page_size
        return Branch(job=job, request=request, index=index, prefix=node, params=params,
                      generator=gen,
                      tracker=StopTracker(self.tokenizer, params.stop,
                                          track_text=r.on_token is not None),
                      rules=[spec.start() for spec in params.stop_rules],
                      group_key=id(job.shared), base_pages=table[: node.end // ps], base_len=node.end,
                      top_k=max([params.top_logprobs] + [s.top_k for s in params.stop_rules]))

    def _start_jobs(self) -> None:
        if not self.starting:
            return
        jobs, self.starting = self.starting, []
        nodes = []
        node_row: dict[int, int] = {}
        for job in jobs:
            job.shared = _deepest_common(job.prefixes)
            job.branches = [self._new_branch(job, i, j) for i, r in enumerate(job.requests)
                            for j in range(r.n)]
            for node in job.prefixes:
                if id(node) not in node_row:
                    node_row[id(node)] = len(nodes)
                    nodes.append(node)
            self.jobs.append(job)
        # First token of every branch from its prefix's stored hidden state.
        start = time.perf_counter()
        logits = self.runner.model.logits(torch.stack([n.payload for n in nodes]))
        self.clock.add("logits", time.perf_counter() - start)
        self._sample_rows([(b, node_row[id(job.prefixes[b.request])])
                           for job in jobs for b in job.branches], logits)
        self._finish_jobs()

    # -- decode -------------------------------------------------------------------------
    def _schedule_decode(self) -> list[Branch]:
        """Every running branch (and each finished one still to flush), with the page its
        fed token needs, sorted by group; preempts under memory pressure."""
        rows = [b for j in self.jobs for b in j.branches
                if not b.preempted and (b.finish is None or b.needs_flush)]
        if not rows:
            return []
        rows = self._give_pages(rows)
        rows.sort(key=lambda b: b.group_key)
        return rows

    def _run_decode(self, rows: list[Branch]) -> tuple[Tensor, Tensor | None, list[int]] | None:
        """The decode forward and the LM head of the rows that sample; on failure every
        job in the batch fails, None."""
        try:
            hidden = self._forward(rows)
        except Exception as err:  # noqa: BLE001  (every job in this batch fails)
            for job in {id(b.job): b.job for b in rows}.values():
                self._fail_job(job, err)
            return None
        live = [i for i, b in enumerate(rows) if b.finish is None]
        logits = None
        if live:
            start = time.perf_counter()
            logits = self.runner.model.logits(
                hidden if len(live) == len(rows)
                else hidden.index_select(0, torch.tensor(live, device=hidden.device)))
            self.clock.add("logits", time.perf_counter() - start)
        return hidden, logits, live

    def _postprocess_decode(self, rows: list[Branch], hidden: Tensor, logits: Tensor | None,
                            live: list[int]) -> None:
        self.steps += 1
        self.decode_tokens_run += len(rows)
        self.peak_batch = max(self.peak_batch, len(rows))
        for b, h in zip(rows, hidden):
            b.hidden = h
        if logits is not None:
            self._sample_rows([(rows[i], k) for k, i in enumerate(live)], logits)

    def _give_pages(self, rows: list[Branch]) -> list[Branch]:
        """Give each row the page its fed token needs, preempting under pressure."""
        ps = self.page_size
        rows = sorted(rows, key=self._rank, reverse=True)     # highest rank first
        kept = []
        for b in rows:
            if b.preempted or b.job.finished:
                continue
            pos = b.base_len + len(b.tokens) - 1
            k = pos // ps - b.base_len // ps
            while k >= len(b.own_pages):
                page = self._alloc_page(b)
                if page is None:
                    break
                if not b.own_pages and b.base_len % ps:
                    self.runner.copy_page(self.tree.page_table(b.prefix)[-1], page)
                b.own_pages.append(page)
            else:
                kept.append(b)
        return [b for b in kept if not b.preempted and not b.job.finished]

    def _alloc_page(self, b: Branch) -> int | None:
        """One page for ``b``; None when ``b`` was preempted or its job failed instead."""
        while True:
            try:
                (page,) = self.pool.alloc(1)
                return page
            except KVCacheFull as err:
                victim = self._victim(b)
                if victim is None:
                    if self._others_running(b):
                        self._preempt(b)      # only older work is running: b waits for it
                    else:
                        self._fail_job(b.job, err)
                    return None
                self._preempt(victim)

    def _others_running(self, b: Branch) -> bool:
        return any(o is not b and o.own_pages for o in self.running_branches())

    @staticmethod
    def _rank(b: Branch) -> tuple[float, int, int]:
        """Preemption order: a branch ranked lower is preempted first. Lowest value of its
        prefix first (the search layer's ``pin(value=...)``; none counts lowest), then the
        youngest job, then the last branch of a job. A strict total order: the branch
        ranked highest always makes progress."""
        value = b.prefix.value if b.prefix.value is not None else float("-inf")
        return (value, -b.job.seq, -b.index)

    def _victim(self, b: Branch) -> Branch | None:
        """The branch to preempt for ``b``: the lowest-ranked one ranked below ``b`` that
        holds pages (running, or finished and waiting for its siblings); None if none."""
        best, key = None, self._rank(b)
        for j in self.jobs:
            for o in j.branches:
                if o is b or o.preempted or not o.own_pages:
                    continue
                r = self._rank(o)
                if r < key and (best is None or r < self._rank(best)):
                    best = o
        return best

    def _preempt(self, b: Branch) -> None:
        self.pool.free(b.own_pages)
        b.own_pages = []
        b.hidden = None
        b.preempted = True
        self.preemptions += 1

    def _resume_preempted(self, batch: "ExtendBatch") -> None:
        """Pages for preempted branches that fit again; their tokens (all but the last,
        which the decode feeds) join ``batch`` to be computed again."""
        waiting = [b for j in self.jobs for b in j.branches if b.preempted]
        if not waiting:
            return
        waiting.sort(key=self._rank, reverse=True)
        ps = self.page_size
        resumed = []
        for b in waiting:
            if b.job.finished or not b.preempted:
                continue
            # Pages for positions base_len .. base_len + len(tokens) - 2 (all but the last
            # token, which the next decode step feeds), plus one page of headroom.
            last = b.base_len + len(b.tokens) - 1
            n = -(-last // ps) - b.base_len // ps if last > b.base_len else (
                1 if b.base_len % ps else 0)
            pages = None
            while pages is None:
                try:
                    pages = self.pool.alloc(n + 1)
                except KVCacheFull:
                    victim = self._victim(b)
                    if victim is None:
                        break
                    self._preempt(victim)
            if pages is None:
                if not self.running_branches() and not resumed and not self.prefilling:
                    held = sum(len(o.own_pages) for o in b.job.branches)
                    self._fail_job(b.job, KVCacheFull(
                        f"the KV cache cannot hold this call's branches: one needs {n} more "
                        f"pages of {ps} tokens while its finished siblings hold {held} and "
                        f"pinned handles the rest of {self.pool.num_pages}; raise "
                        f"{self.pool.setting}, ask for fewer or shorter branches, or keep "
                        f"fewer handles pinned."))
                    continue
                break
            self.pool.free(pages[-1:])
            b.own_pages = pages[:-1]
            if b.base_len % ps and b.own_pages:
                self.runner.copy_page(self.tree.page_table(b.prefix)[-1], b.own_pages[0])
            b.preempted = False
            resumed.append(b)
            if len(b.tokens) > 1:
                batch.recomputes.append(b)
                batch.items.append(ExtendItem(table=b.base_pages + b.own_pages,
                                              start=b.base_len, tokens=b.tokens[:-1]))

    def _forward(self, rows: list[Branch]) -> Tensor:
        """Feed each row's last token; rows sorted by group key. Returns hidden per row."""
        ps = self.page_size
        positions, slots = [], []
        for b in rows:
            pos = b.base_len + len(b.tokens) - 1
            positions.append(pos)
            slots.append(b.own_pages[pos // ps - b.base_len // ps] * ps + pos % ps)
        groups: list[DecodeGroup] = []
        i = 0
        while i < len(rows):
            j = i
            while j < len(rows) and rows[j].group_key == rows[i].group_key:
                j += 1
            members = rows[i:j]
            shared = _common_prefix([b.base_pages for b in members])
            groups.append(DecodeGroup(
                prefix_pages=shared, tokens=[b.tokens[-1] for b in members],
                suffix_tables=[b.base_pages[len(shared):] + b.own_pages for b in members],
                suffix_lens=[b.base_len + len(b.tokens) - len(shared) * ps for b in members]))
            i = j
        start = time.perf_counter()
        hidden = self.runner.decode(groups, positions=positions, slots=slots)
        self.clock.add("forward", time.perf_counter() - start)
        return hidden

    # -- sampling and stops ------------------------------------------------------------
    def _sample_rows(self, pairs: Sequence[tuple[Branch, int]], logits: Tensor) -> None:
        """Sample (or force) one token for each branch; ``pairs`` = (branch, logits row).

        Each job's token cap is checked first, over that job's rows in this step; the
        rows that go on are sampled in one batch (per-row generators keep every branch's
        draws independent of its batch mates)."""
        by_job: dict[int, list[tuple[Branch, int]]] = {}
        for b, r in pairs:
            if not b.job.finished:
                by_job.setdefault(id(b.job), []).append((b, r))
        go: list[tuple[Branch, int]] = []
        for group in by_job.values():
            job = group[0][0].job
            if job.token_limit is not None and job.generated + len(group) > job.token_limit:
                for b, _ in group:
                    b.finish, b.stop_reason = FinishReason.BUDGET, "budget"
                    self._emit(b, None)
                continue
            job.generated += len(group)
            go.extend(group)
        if not go:
            return
        dev = logits.device
        idx = [r for _, r in go]
        if idx != list(range(logits.shape[0])):
            logits = logits.index_select(0, torch.tensor(idx, device=dev))
        rows = [b for b, _ in go]
        tokens: list[int] = [0] * len(rows)
        lps: list[float] = [0.0] * len(rows)
        sampled = [i for i, b in enumerate(rows) if not b.forced]
        if sampled:
            sel = logits if len(sampled) == len(rows) else logits.index_select(
                0, torch.tensor(sampled, device=dev))
            params = [RowParams(temperature=rows[i].params.temperature,
                                top_p=rows[i].params.top_p, top_k=rows[i].params.top_k)
                      for i in sampled]
            start = time.perf_counter()
            t, lp = sample(sel, params, [rows[i].generator for i in sampled])
            self.clock.add("sampling", time.perf_counter() - start)
            for i, tok, p in zip(sampled, t.tolist(), lp.tolist()):
                tokens[i], lps[i] = tok, p
        forced = [i for i, b in enumerate(rows) if b.forced]
        if forced:
            fidx = torch.tensor(forced, device=dev)
            toks = torch.tensor([rows[i].forced[0] for i in forced], device=dev)
            sel = logits.index_select(0, fidx)
            lp = (sel.gather(1, toks.view(-1, 1)).squeeze(1)
                  - torch.logsumexp(sel, dim=-1)).tolist()
            for k, i in enumerate(forced):
                tokens[i], lps[i] = rows[i].forced.popleft(), lp[k]
        k_top = [b.top_k for b in rows]
        tops: list[tuple[tuple[int, float], ...] | None] = [None] * len(rows)
        if any(k_top):
            need = [i for i, k in enumerate(k_top) if k]
            sel = logits.index_select(0, torch.tensor(need, device=dev)).float()
            vals, ids = torch.topk(torch.log_softmax(sel, dim=-1), max(k_top), dim=-1)
            vals, ids = vals.tolist(), ids.tolist()
            for r, i in enumerate(need):
                k = k_top[i]
                tops[i] = tuple(zip(ids[r][:k], vals[r][:k]))
        forced_set = set(forced)
        for i, b in enumerate(rows):
            if b.job.finished:
                continue
            try:
                self._append(b, tokens[i], lps[i], tops[i], forced=i in forced_set,
                             logits=logits[i])
            except Exception as err:  # noqa: BLE001  (a rule of this job broke: it fails)
                self._fail_job(b.job, err)

    def _append(self, b: Branch, t: int, lp: float, top, *, forced: bool,
                logits: Tensor | None = None) -> None:
        mark = b.tracker.mark() if b.rules else None   # only a rule can take the token back
        b.tokens.append(t)
        b.logprobs.append(lp)
        if b.params.top_logprobs:
            b.top.append(top[: b.params.top_logprobs] if top else ())
        b.hidden = None                      # the new token has no KV yet
        if forced:
            b.forced_count += 1
        hit = b.tracker.push(t)
        if t in self.eos_ids and not forced:
            b.finish, b.stop_reason = FinishReason.EOS, "eos"
        elif hit:
            b.finish, b.stop_reason = FinishReason.STOP, f"stop:{b.tracker.hit!r}"
        if b.finish is None:
            for rule in b.rules:
                action = rule.on_token(t, lp, top, forced=forced)
                if isinstance(action, Stop):
                    b.finish, b.stop_reason = FinishReason.RULE, f"rule:{action.reason}"
                    b.forced.clear()
                    break
                if isinstance(action, Force):
                    b.forced.extend(self._encode(action.text))
                if isinstance(action, Replace):
                    self._replace(b, mark, action.text, top, forced=forced, logits=logits)
                    return
        if b.finish is None and (len(b.tokens) >= b.params.max_tokens
                                 or b.base_len + len(b.tokens) >= self.max_position):
            b.finish, b.stop_reason = FinishReason.MAX_TOKENS, "max_tokens"
        self._emit(b, t, lp=lp, forced=forced)

    def _replace(self, b: Branch, mark: tuple | None, text: str, top, *, forced: bool,
                 logits: Tensor | None) -> None:
        """Take back the token just sampled (it has not run through the model) and put the
        tokens of ``text`` in its place: the first one at the same position, with its
        log-prob under the same logits, the rest forced next. Rules see them as forced."""
        ids = self._encode(text)
        if forced or not ids or logits is None:
            raise ValueError(f"a stop rule asked to replace a "
                             f"{'forced' if forced else 'sampled'} token by {text!r}; only a "
                             f"sampled token can be replaced, by non-empty text.")
        b.tokens.pop()
        b.logprobs.pop()
        if b.params.top_logprobs:
            b.top.pop()
        b.tracker.reset(mark)
        b.forced.extendleft(reversed(ids[1:]))
        lp = float(torch.log_softmax(logits.float(), dim=-1)[ids[0]])
        self._append(b, ids[0], lp, top, forced=True)

    def _encode(self, text: str) -> list[int]:
        if self.encode is not None:
            return list(self.encode(text))
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _emit(self, b: Branch, token: int | None, *, lp: float = 0.0, forced: bool = False
              ) -> None:
        callback = b.job.requests[b.request].on_token
        if callback is None:
            return
        event = TokenEvent(branch=b.index, token_id=-1 if token is None else token,
                           logprob=lp, text="" if token is None else b.tracker.delta,
                           forced=forced, finish=b.finish)
        try:
            callback(event)
        except Exception as err:  # noqa: BLE001  (the caller's callback fails its own job)
            self._fail_job(b.job, err)

    # -- completion ---------------------------------------------------------------------
    def _fail_job(self, job: DecodeJob, err: BaseException) -> None:
        if job.finished:
            return
        self.cancel_job(job)
        _call_safely(job.on_error, err)

    def _finish_jobs(self) -> None:
        for job in list(self.jobs):
            if job.finished or not all(b.done for b in job.branches):
                continue
            self.jobs.remove(job)
            job.finished = True
            try:
                job.on_done(job)
            except Exception as err:  # noqa: BLE001
                for b in job.branches:
                    if b.own_pages:
                        self.pool.free(b.own_pages)
                        b.own_pages = []
                _call_safely(job.on_error, err)


def _deepest_common(nodes: Sequence[RadixNode]) -> RadixNode:
    """The deepest tree node that every one of ``nodes`` is (or descends from)."""
    def path(n: RadixNode) -> list[RadixNode]:
        out = []
        while n is not None:
            out.append(n)
            n = n.parent
        return out[::-1]
    common = path(nodes[0])
    for n in nodes[1:]:
        p = path(n)
        k = 0
        while k < min(len(common), len(p)) and common[k] is p[k]:
            k += 1
        common = common[:k]
    return common[-1]


def _call_safely(fn: Callable[[BaseException], None], err: BaseException) -> None:
    try:
        fn(err)
    except Exception:  # noqa: BLE001, S110  (an error callback must not stop the loop)
        pass


def _common_prefix(tables: Sequence[Sequence[int]]) -> list[int]:
    first = tables[0]
    n = len(first)
    for t in tables[1:]:
        m = min(n, len(t))
        k = 0
        while k < m and t[k] == first[k]:
            k += 1
        n = k
        if n == 0:
            break
    return list(first[:n])
