"""The runner: owns the model weights and the KV tensor, and computes what it is told.

Contract: :class:`ModelRunner` turns page tables into attention plans and runs the
model. :meth:`ModelRunner.extend` computes new tokens of many sequences (prefill, in
chunks of at most ``max_batch_tokens``), :meth:`ModelRunner.decode` one token for each
of many branches grouped by shared prefix pages. Pages are chosen by the caller
(:mod:`ttc.engine.native.kv_cache` counts them, :mod:`ttc.engine.native.scheduler` decides).

KV tensor: ``[num_layers, 2, num_pages, page_size, num_kv_heads, head_dim]``; layer
``i``'s ``k_cache`` is ``kv[i, 0]``, its ``v_cache`` ``kv[i, 1]``.
Must NOT know: radix trees, handles, sampling, text, rewards, strategies.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ttc.engine.native.attention import plan_decode, plan_extend
from ttc.engine.native.model import NativeModel


@dataclass(frozen=True, kw_only=True)
class ExtendItem:
    """New tokens for one sequence: ``table`` covers ``start + len(tokens)`` positions."""

    table: Sequence[int]
    start: int                 # tokens already in the cache (positions 0..start-1)
    tokens: Sequence[int]


@dataclass(frozen=True, kw_only=True)
class DecodeGroup:
    """Branches sharing ``prefix_pages`` (all full pages); one row per branch."""

    prefix_pages: Sequence[int]
    tokens: Sequence[int]                   # the token each branch feeds now
    suffix_tables: Sequence[Sequence[int]]  # pages after the shared prefix, per branch
    suffix_lens: Sequence[int]              # tokens in those pages incl. the one fed now


def zeroed_pool(shape: tuple[int, ...], *, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A zero tensor for the KV pool. On CPU it lives in anonymous ``mmap`` memory, which
    reads as zero and is committed page by page on first write, so a large pool costs
    memory only as it fills (``torch.zeros`` would write, and commit, all of it)."""
    if torch.device(device).type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    count = math.prod(shape)
    buffer = mmap.mmap(-1, count * dtype.itemsize)   # the tensor keeps it alive
    return torch.frombuffer(buffer, dtype=dtype, count=count).view(shape)


class ModelRunner:
    def __init__(self, model: NativeModel, *, num_pages: int, page_size: int,
                 max_batch_tokens: int) -> None:
        c = model.config
        self.model = model
        self.page_size = page_size
        self.max_batch_tokens = max_batch_tokens
        # NOTE: zeros, not empty: attention reads the unwritten tail of a partly filled
        # page (and padding page 0) under a -inf mask, and never-written memory may hold
        # NaN or inf, which a mask cannot cancel (0 * NaN = NaN in the value product).
        self.kv = zeroed_pool((c.num_layers, 2, num_pages, page_size, c.num_kv_heads,
                               c.head_dim), dtype=model.dtype, device=model.device)

    @property
    def bytes_per_page(self) -> int:
        return self.model.kv_bytes_per_token() * self.page_size

    def copy_page(self, src: int, dst: int) -> None:
        """Copy one page's keys and values in every layer (a child's copy of a tail page)."""
        self.kv[:, :, dst].copy_(self.kv[:, :, src])

    def extend(self, items: Sequence[ExtendItem]) -> list[Tensor]:
        """Compute every item's new tokens; return their hidden states ``[len(tokens), hidden]``."""
        out: list[list[Tensor]] = [[] for _ in items]
        # Chunk: (item index, offset into its tokens, count)
        chunk: list[tuple[int, int, int]] = []
        room = self.max_batch_tokens
        pending = [(i, 0) for i in range(len(items))]
        while pending:
            i, off = pending.pop(0)
            n = len(items[i].tokens) - off
            take = min(n, room)
            chunk.append((i, off, take))
            room -= take
            if take < n:
                pending.insert(0, (i, off + take))
            if room == 0 or not pending:
                self._run_chunk(items, chunk, out)
                chunk, room = [], self.max_batch_tokens
        return [torch.cat(parts) if len(parts) > 1 else parts[0] for parts in out]

    def _run_chunk(self, items: Sequence[ExtendItem], chunk: list[tuple[int, int, int]],
                   out: list[list[Tensor]]) -> None:
        ps = self.page_size
        ids, pos, slots = [], [], []
        prefix_lens, new_lens, tables = [], [], []
        for i, off, take in chunk:
            item = items[i]
            start = item.start + off
            ids.extend(item.tokens[off:off + take])
            for p in range(start, start + take):
                pos.append(p)
                slots.append(item.table[p // ps] * ps + p % ps)
            prefix_lens.append(start)
            new_lens.append(take)
            tables.append(list(item.table[: -(-(start + take) // ps)]))
        dev = self.model.device
        plan = plan_extend(prefix_lens=prefix_lens, new_lens=new_lens, page_tables=tables,
                           page_size=ps, device=dev)
        hidden = self.model.forward(torch.tensor(ids, device=dev), torch.tensor(pos, device=dev),
                                    torch.tensor(slots, device=dev), self.kv, plan)
        row = 0
        for i, _, take in chunk:
            out[i].append(hidden[row:row + take])
            row += take

    def decode(self, groups: Sequence[DecodeGroup], *, positions: Sequence[int],
               slots: Sequence[int]) -> Tensor:
        """One token per branch, branches in group order; return hidden ``[num_branches, hidden]``."""
        ps = self.page_size
        tokens = [t for g in groups for t in g.tokens]
        dev = self.model.device
        plan = plan_decode(
            group_sizes=[len(g.tokens) for g in groups],
            group_prefix_pages=[list(g.prefix_pages) for g in groups],
            group_prefix_lens=[len(g.prefix_pages) * ps for g in groups],
            suffix_pages=[list(t) for g in groups for t in g.suffix_tables],
            suffix_lens=[n for g in groups for n in g.suffix_lens], page_size=ps, device=dev)
        return self.model.forward(torch.tensor(tokens, device=dev),
                                  torch.tensor(list(positions), device=dev),
                                  torch.tensor(list(slots), device=dev), self.kv, plan)
