"""Random paged KV caches and plans for the kernel tests (pages in shuffled order)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ttc.engine.native.attention import plan_decode, plan_extend

TOLERANCE = {torch.float32: 2e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@dataclass(frozen=True)
class Case:
    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    plan: Any
    scale: float


def _pages(n_tokens: int, page_size: int, pool: list[int]) -> list[int]:
    return [pool.pop() for _ in range(-(-n_tokens // page_size))]


def _cache(num_pages, page_size, num_kv_heads, head_dim, dtype, device, gen):
    shape = (num_pages, page_size, num_kv_heads, head_dim)
    k = torch.randn(shape, generator=gen).to(dtype).to(device)
    v = torch.randn(shape, generator=gen).to(dtype).to(device)
    return k, v


def decode_case(groups: list[tuple[int, list[int]]], *, page_size: int = 4, num_kv_heads: int = 2,
                rep: int = 1, head_dim: int = 64, dtype=torch.float32, device="cpu",
                seed: int = 0) -> Case:
    """``groups``: ``(prefix_len, [suffix_len per member])`` for each group, in order."""
    gen = torch.Generator().manual_seed(seed)
    need = sum(-(-p // page_size) + sum(-(-s // page_size) for s in ss) for p, ss in groups)
    num_pages = need + 3
    pool = torch.randperm(num_pages, generator=gen).tolist()
    gp, gl, sizes, sp, sl = [], [], [], [], []
    for plen, suffixes in groups:
        gp.append(_pages(plen, page_size, pool))
        gl.append(plen)
        sizes.append(len(suffixes))
        for s in suffixes:
            sp.append(_pages(s, page_size, pool))
            sl.append(s)
    k, v = _cache(num_pages, page_size, num_kv_heads, head_dim, dtype, device, gen)
    plan = plan_decode(group_sizes=sizes, group_prefix_pages=gp, group_prefix_lens=gl,
                       suffix_pages=sp, suffix_lens=sl, page_size=page_size, device=device)
    q = torch.randn(len(sl), num_kv_heads * rep, head_dim, generator=gen).to(dtype).to(device)
    return Case(q, k, v, plan, head_dim ** -0.5)


def extend_case(seqs: list[tuple[int, int]], *, page_size: int = 4, num_kv_heads: int = 2,
                rep: int = 1, head_dim: int = 64, dtype=torch.float32, device="cpu",
                seed: int = 0) -> Case:
    """``seqs``: ``(prefix_len, new_len)`` per sequence."""
    gen = torch.Generator().manual_seed(seed)
    need = sum(-(-(p + n) // page_size) for p, n in seqs)
    num_pages = need + 2
    pool = torch.randperm(num_pages, generator=gen).tolist()
    tables = [_pages(p + n, page_size, pool) for p, n in seqs]
    k, v = _cache(num_pages, page_size, num_kv_heads, head_dim, dtype, device, gen)
    plan = plan_extend(prefix_lens=[p for p, _ in seqs], new_lens=[n for _, n in seqs],
                       page_tables=tables, page_size=page_size, device=device)
    q = torch.randn(plan.num_new_tokens, num_kv_heads * rep, head_dim,
                    generator=gen).to(dtype).to(device)
    return Case(q, k, v, plan, head_dim ** -0.5)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype) -> None:
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(actual.float(), expected.float(), atol=tol, rtol=tol)
