"""The scheduler: decides which branches run each decode step and when each one stops.

Contract: :meth:`Scheduler.decode` takes computed prefixes (radix-tree nodes whose
payload is the final hidden state of their last token) and a number of branches for
each, samples every branch's first token from its prefix's logits, then runs all live
branches together, one token per branch per step, until each stops on its own rule:

* a stop string appears in its decoded text (the text keeps the stop string; tokens
  after the one that completed it are not generated) -> ``FinishReason.STOP``;
* an EOS token (kept) -> ``EOS``; ``max_tokens`` or the model's context -> ``MAX_TOKENS``;
* the call's ``token_limit`` would be exceeded by the next lockstep token -> ``BUDGET``
  (every live branch stops at once, as lockstep decoding does).

A branch's last sampled token has no KV yet; the step after it stops the branch is fed
once more ("flushed") so its KV and final hidden state exist: every finished branch is
then inserted into the radix tree as a computed node that the next call reuses.

Per step (nano-vllm split: this module decides, :mod:`ttc.engine.native.kv_cache` counts,
:mod:`ttc.engine.native.runner` computes)::

    rows = live branches + branches flushed this step, grouped by top-level prefix node
    a row needs a new page when its fed token starts one (pool.alloc may evict)
    hidden = runner.decode(groups)      -> sample live rows -> check stops

Must NOT know: handles, rewards, strategies, chat templates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from ttc.engine.native.kv_cache import Node, PagePool, RadixTree
from ttc.engine.native.runner import DecodeGroup, ModelRunner
from ttc.engine.native.sampling import RowParams, sample, seeded_generator
from ttc.types import FinishReason, SamplingParams


class StopTracker:
    """Incremental detokenisation of one branch and stop-string detection.

    Decodes only a short window of recent tokens per step (the prefix/read offsets of
    incremental detokenisers), holding back text while the window ends in an incomplete
    UTF-8 sequence.
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = tuple(stops)
        self.longest = max((len(s) for s in self.stops), default=0)
        self.ids: list[int] = []
        self.text = ""
        self.prefix_offset = 0
        self.read_offset = 0

    def push(self, token: int) -> bool:
        """Add a token; return True when the text now contains a stop string."""
        self.ids.append(token)
        if not self.stops:
            return False
        dec = self.tokenizer.decode
        before = dec(self.ids[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        after = dec(self.ids[self.prefix_offset:], skip_special_tokens=True)
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return False
        delta = after[len(before):]
        self.text += delta
        self.prefix_offset = self.read_offset
        self.read_offset = len(self.ids)
        window = self.text[-(len(delta) + self.longest - 1):]
        return any(s in window for s in self.stops)


@dataclass(eq=False)
class Branch:
    """One continuation being generated."""

    request: int
    prefix: Node
    params: SamplingParams
    generator: torch.Generator | None
    tracker: StopTracker
    group_key: int
    base_pages: list[int]        # full pages of the prefix (shared, never written)
    base_len: int                # prefix tokens
    own_pages: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: FinishReason | None = None
    hidden: Tensor | None = None  # final hidden state of the last token, once computed


@dataclass(frozen=True, kw_only=True)
class PrefixWork:
    """Continue ``node`` (computed, payload = hidden of its last token) ``n`` times."""

    node: Node
    n: int
    params: SamplingParams
    seed: int | None


class Scheduler:
    def __init__(self, *, tree: RadixTree, pool: PagePool, runner: ModelRunner, tokenizer: Any,
                 eos_ids: Sequence[int], max_position: int) -> None:
        self.tree = tree
        self.pool = pool
        self.runner = runner
        self.tokenizer = tokenizer
        self.eos_ids = frozenset(eos_ids)
        self.max_position = max_position
        self.page_size = pool.page_size

    # -- public -----------------------------------------------------------------------
    def decode(self, work: Sequence[PrefixWork], *, token_limit: int | None) -> list[list[Branch]]:
        """Generate every branch; return them per work item, finished, with pages owned."""
        branches = [self._new_branch(i, w, j) for i, w in enumerate(work) for j in range(w.n)]
        out: list[list[Branch]] = [[] for _ in work]
        for b in branches:
            out[b.request].append(b)
        try:
            self._run(branches, work, token_limit)
        except BaseException:
            for b in branches:       # NOTE: no page leaks when a step fails
                self.pool.free(b.own_pages)
                b.own_pages = []
            raise
        return out

    # -- internals --------------------------------------------------------------------
    def _new_branch(self, request: int, w: PrefixWork, index: int) -> Branch:
        gen = None
        if w.params.temperature > 0:
            if w.params.seed is not None:
                gen = seeded_generator(w.params.seed, index)
            elif w.seed is not None:
                gen = seeded_generator(w.seed, index)
        top = w.node
        while top.parent is not None and top.parent is not self.tree.root:
            top = top.parent
        table = self.tree.page_table(w.node)
        ps = self.page_size
        return Branch(request=request, prefix=w.node, params=w.params, generator=gen,
                      tracker=StopTracker(self.tokenizer, w.params.stop), group_key=id(top),
                      base_pages=table[: w.node.end // ps], base_len=w.node.end)

    def _start_pages(self, branches: Sequence[Branch]) -> None:
        """Give branches whose prefix ends mid-page a private copy of that page."""
        ps = self.page_size
        for b in branches:
            if b.base_len % ps:
                (page,) = self.pool.alloc(1)
                b.own_pages.append(page)
                src = self.tree.page_table(b.prefix)[-1]
                self.runner.copy_page(src, page)

    def _run(self, branches: list[Branch], work: Sequence[PrefixWork],
             token_limit: int | None) -> None:
        self._start_pages(branches)
        # First token of every branch from its prefix's stored hidden state.
        hidden = torch.stack([w.node.payload for w in work])
        logits = self.runner.model.logits(hidden)
        rows = logits.index_select(0, torch.tensor([b.request for b in branches],
                                                   device=logits.device))
        live = self._sample(branches, rows, token_limit, 0)
        generated = sum(len(b.tokens) for b in branches)
        # NOTE: a branch that stopped after sampling a token still needs that token's KV
        # and hidden state: it is fed once more ("flushed") in the next step.
        flush = [b for b in branches if b.finish is not None and b.tokens]
        while live or flush:
            step_rows = sorted(live + flush, key=lambda b: b.group_key)
            hidden = self._step(step_rows)
            for b, h in zip(step_rows, hidden):
                b.hidden = h
            live_idx = [i for i, b in enumerate(step_rows) if b.finish is None]
            if not live_idx:
                break
            live = [step_rows[i] for i in live_idx]
            logits = self.runner.model.logits(
                hidden if len(live_idx) == len(step_rows)
                else hidden.index_select(0, torch.tensor(live_idx, device=hidden.device)))
            still = self._sample(live, logits, token_limit, generated)
            flush = []
            for b in live:
                if b.finish is FinishReason.BUDGET:
                    continue          # cut before sampling: its last token is computed
                generated += 1
                b.hidden = None       # the new token has no KV yet
                if b.finish is not None:
                    flush.append(b)
            live = still

    def _sample(self, rows: list[Branch], logits: Tensor, token_limit: int | None,
                generated: int) -> list[Branch]:
        """Sample one token for each row; return the rows still live."""
        if token_limit is not None and generated + len(rows) > token_limit:
            for b in rows:
                b.finish = FinishReason.BUDGET
            return []
        params = [RowParams(temperature=b.params.temperature, top_p=b.params.top_p,
                            top_k=b.params.top_k) for b in rows]
        tokens, lps = sample(logits, params, [b.generator for b in rows])
        live = []
        for b, t, lp in zip(rows, tokens.tolist(), lps.tolist()):
            b.tokens.append(t)
            b.logprobs.append(lp)
            if t in self.eos_ids:
                b.finish = FinishReason.EOS
            elif b.tracker.push(t):
                b.finish = FinishReason.STOP
            elif (len(b.tokens) >= b.params.max_tokens
                  or b.base_len + len(b.tokens) >= self.max_position):
                b.finish = FinishReason.MAX_TOKENS
            else:
                live.append(b)
        return live

    def _step(self, rows: list[Branch]) -> Tensor:
        """Feed each row's last token; rows sorted by group key. Returns hidden per row."""
        ps = self.page_size
        positions, slots = [], []
        for b in rows:
            pos = b.base_len + len(b.tokens) - 1
            k = pos // ps - b.base_len // ps
            if k == len(b.own_pages):
                b.own_pages.extend(self.pool.alloc(1))
            positions.append(pos)
            slots.append(b.own_pages[k] * ps + pos % ps)
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
        return self.runner.decode(groups, positions=positions, slots=slots)


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
