"""Launch shapes for the decode kernels: query tiles and split-K chunking.

Contract: everything here is derived from a DecodePlan's Python fields and the head
counts, with no device work, so computing it for every layer costs microseconds; a
:class:`DecodeLaunch` built once per step by :func:`plan_decode_launch` can be passed to
``decode_attention(..., launch=...)`` to skip even that, or to force chunk sizes (tests).

Split-K: a decode step has few queries, so one program per (group, KV head) would leave
most of the GPU idle; each key range is cut into ``chunk``-token pieces so that about
``2 x num_SMs`` programs run, never more than ``MAX_SPLITS`` pieces per range::

    prefix of P tokens:  [chunk 0][chunk 1] .. [chunk k-1]   -> k partial states per row
    suffix of S tokens:  [chunk 0] ..                        -> merged by LSE at the end

Must NOT know: models, tokens, radix trees, kernels' internals beyond their block sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ttc.engine.native.kernels._common import cdiv, next_pow2, num_sms

PREFIX_BLOCK_N = 64      # keys per inner step of the prefix kernel
SUFFIX_BLOCK_N = 64      # keys per inner step of the suffix kernel
MAX_BLOCK_M = 64         # query rows per prefix tile
MIN_PREFIX_CHUNK = 256   # tokens: below this a split costs more than it saves
MIN_SUFFIX_CHUNK = 128
MAX_SPLITS = 64


@dataclass(frozen=True, kw_only=True)
class DecodeLaunch:
    """Split-K chunking for one decode step (valid for every layer of that step).

    ``prefix_chunk`` / ``suffix_chunk`` are tokens per program; ``prefix_splits`` /
    ``suffix_splits`` are pieces of the longest prefix / suffix (0 prefix splits: no group
    has a prefix). ``suffix_splits == 1`` lets the suffix kernel merge the prefix states
    and write the final output itself (no separate merge launch).
    """

    num_branches: int
    prefix_chunk: int
    prefix_splits: int
    suffix_chunk: int
    suffix_splits: int


def prefix_tile_rows(plan, rep: int) -> tuple[int, int]:
    """``(block_m, m_tiles)``: query rows per tile and tiles per (group, KV head)."""
    starts = plan.group_starts_list
    max_group = max((b - a for a, b in zip(starts, starts[1:])), default=1)
    rows = max(1, max_group * rep)
    block_m = min(MAX_BLOCK_M, max(16, next_pow2(rows)))
    return block_m, cdiv(rows, block_m)


def _check_chunk(name: str, chunk_len: int | None) -> None:
    if chunk_len is not None and (isinstance(chunk_len, bool) or not isinstance(chunk_len, int)
                                  or chunk_len < 1):
        raise ValueError(f"{name} must be a positive number of tokens or None; got {chunk_len!r}.")


def _split(length: int, programs_per_split: int, *, block: int, min_chunk: int,
           device: torch.device, chunk_len: int | None) -> tuple[int, int]:
    if length == 0:
        return block, 0
    if chunk_len is None:
        want = max(1, cdiv(2 * num_sms(device), max(1, programs_per_split)))
        chunk_len = max(min_chunk, cdiv(cdiv(length, want), block) * block)
        if cdiv(length, chunk_len) > MAX_SPLITS:
            chunk_len = cdiv(cdiv(length, MAX_SPLITS), block) * block
    return chunk_len, cdiv(length, chunk_len)


def split_prefix(plan, *, num_kv_heads: int, rep: int, device: torch.device,
                 chunk_len: int | None = None) -> tuple[int, int]:
    """``(chunk_len, num_splits)`` for the shared-prefix kernel."""
    _check_chunk("prefix chunk_len", chunk_len)
    longest = max(plan.group_prefix_lens_list, default=0)
    _, m_tiles = prefix_tile_rows(plan, rep)
    return _split(longest, plan.num_groups * m_tiles * num_kv_heads, block=PREFIX_BLOCK_N,
                  min_chunk=MIN_PREFIX_CHUNK, device=device, chunk_len=chunk_len)


def split_suffix(plan, *, num_kv_heads: int, device: torch.device,
                 chunk_len: int | None = None) -> tuple[int, int]:
    """``(chunk_len, num_splits)`` for the per-branch suffix kernel (at least one split)."""
    _check_chunk("suffix chunk_len", chunk_len)
    # NOTE: suffix lengths live on the device; the page count bounds them without a sync.
    longest = plan.max_suffix_pages * plan.page_size
    chunk, splits = _split(longest, plan.num_branches * num_kv_heads, block=SUFFIX_BLOCK_N,
                           min_chunk=MIN_SUFFIX_CHUNK, device=device, chunk_len=chunk_len)
    return chunk, max(1, splits)


def plan_decode_launch(plan, *, num_heads: int, num_kv_heads: int,
                       device: torch.device | str, prefix_chunk: int | None = None,
                       suffix_chunk: int | None = None) -> DecodeLaunch:
    """Chunking for :func:`~ttc.engine.native.kernels.decode_attention`; build once per decode step.

    ``prefix_chunk`` / ``suffix_chunk`` force tokens per split-K program (default: fill the
    device).
    """
    if num_kv_heads < 1 or num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a positive multiple of num_kv_heads "
                         f"({num_kv_heads}).")
    device = torch.device(device)
    pc, ps = split_prefix(plan, num_kv_heads=num_kv_heads, rep=num_heads // num_kv_heads,
                          device=device, chunk_len=prefix_chunk)
    sc, ss = split_suffix(plan, num_kv_heads=num_kv_heads, device=device, chunk_len=suffix_chunk)
    return DecodeLaunch(num_branches=plan.num_branches, prefix_chunk=pc, prefix_splits=ps,
                        suffix_chunk=sc, suffix_splits=ss)
