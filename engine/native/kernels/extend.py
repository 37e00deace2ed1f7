"""Paged extend (prefill) attention: new tokens of many sequences, causal, one launch.

Contract: same inputs, output and meaning as ``ttc.engine.native.attention.extend_attention``.
Sequence ``s`` has ``prefix_lens[s]`` cached tokens and ``new_lens[s]`` new tokens (rows
``q_starts[s]:q_starts[s+1]`` of ``q``; their keys and values are already in the pages at
positions ``prefix_lens[s]..``). New token ``i`` at position ``p = prefix_lens[s] + i``
sees keys ``0..p``: the whole cached prefix plus the new tokens up to itself::

    keys:    [ cached prefix ............ ][ new 0 ][ new 1 ][ new 2 ]
    new 0:   xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx x
    new 1:   xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx x        x
    new 2:   xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx x        x        x

GQA-aware: a program owns one KV head and a tile of ``(token, query head)`` rows, so each
key block is read once for all the query heads that share it. Grid
``(num_seqs * m_tiles, num_kv_heads)``; tiles past a sequence's end exit at once.
Must NOT know: models, tokens' ids, radix trees, rewards, strategies.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ttc.engine.native.kernels._common import (LOG2E, cdiv, check_index, check_page_size,
                                        check_q_and_cache, check_scale, next_pow2)
from ttc.engine.native.kernels._paged import attend_pages
from ttc.engine.native.kernels._tl import dot_mode

_LOG2E = tl.constexpr(LOG2E)
BLOCK_N = 64
MAX_BLOCK_M = 64


# -- reference ----------------------------------------------------------------------------


def extend_attention_reference(q: Tensor, k_cache: Tensor, v_cache: Tensor, plan, *,
                               scale: float) -> Tensor:
    """Each sequence gathered densely, causal softmax in float32, one sequence at a time.

    Returns ``[num_new_tokens, num_heads, head_dim]`` in ``q``'s dtype.
    """
    num_heads = q.shape[1]
    rep = num_heads // k_cache.shape[2]
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    starts = plan.q_starts.tolist()
    prefix = plan.prefix_lens.tolist()
    for s in range(len(prefix)):
        q0, q1, p = starts[s], starts[s + 1], prefix[s]
        total = p + (q1 - q0)
        pages = plan.page_tables[s, :cdiv(total, plan.page_size)].long()
        k = k_cache[pages].reshape(-1, *k_cache.shape[2:])[:total].float()
        v = v_cache[pages].reshape(-1, *v_cache.shape[2:])[:total].float()
        k = k.repeat_interleave(rep, dim=1).transpose(0, 1)               # [heads, total, dim]
        v = v.repeat_interleave(rep, dim=1).transpose(0, 1)
        qs = q[q0:q1].float().transpose(0, 1)                             # [heads, new, dim]
        scores = torch.einsum("hnd,hkd->hnk", qs, k) * scale
        pos = torch.arange(q1 - q0, device=q.device).unsqueeze(1) + p
        visible = torch.arange(total, device=q.device).unsqueeze(0) <= pos  # [new, total]
        scores = scores.masked_fill(~visible, float("-inf"))
        out[q0:q1] = torch.einsum("hnk,hkd->hnd", torch.softmax(scores, dim=-1), v).transpose(0, 1)
    return out.to(q.dtype)


# -- kernel -------------------------------------------------------------------------------


@triton.jit
def _extend_kernel(
    q_ptr,                # [num_new_tokens, num_heads, head_dim]
    k_ptr, v_ptr,         # [num_pages, page_size, num_kv_heads, head_dim]
    q_starts_ptr,         # [num_seqs + 1] int32
    prefix_lens_ptr,      # [num_seqs] int32
    page_tables_ptr,      # [num_seqs, max_pages] int32
    out_ptr,              # [num_new_tokens, num_heads, head_dim]
    stride_qt, stride_qh,
    stride_kp, stride_ks, stride_kh,
    stride_vp, stride_vs, stride_vh,
    stride_pages, stride_ot, stride_oh,
    page_size, m_tiles,
    scale_log2,
    REP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT: tl.constexpr,
):
    pid = tl.program_id(0)
    kvh = tl.program_id(1)
    seq = pid // m_tiles
    tile = pid % m_tiles
    q0 = tl.load(q_starts_ptr + seq)
    n_new = tl.load(q_starts_ptr + seq + 1) - q0
    if tile * BLOCK_M < n_new * REP:
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        token = rows // REP                            # [BLOCK_M] index among new tokens
        head = kvh * REP + rows % REP
        row_ok = token < n_new
        d = tl.arange(0, BLOCK_D)
        d_ok = d < HEAD_DIM
        rd_ok = row_ok[:, None] & d_ok[None, :]
        q = tl.load(q_ptr + (q0 + token)[:, None].to(tl.int64) * stride_qt
                    + head[:, None] * stride_qh + d[None, :], mask=rd_ok, other=0.0)
        plen = tl.load(prefix_lens_ptr + seq)
        qpos = plen + token                            # [BLOCK_M] position of each row's token
        last = tl.minimum(tile * BLOCK_M + BLOCK_M - 1, n_new * REP - 1) // REP
        kv_end = plen + last + 1                       # keys the tile's last row can see
        m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)   # finite floor: no NaN on masks
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        page_row = page_tables_ptr + seq.to(tl.int64) * stride_pages
        m_i, l_i, acc = attend_pages(q, m_i, l_i, acc, page_row, 0, kv_end, k_ptr, v_ptr,
                                     stride_kp, stride_ks, stride_kh, stride_vp, stride_vs,
                                     stride_vh, kvh, d, d_ok, page_size, scale_log2, qpos,
                                     BLOCK_N, DOT, True)
        o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(out_ptr + (q0 + token)[:, None].to(tl.int64) * stride_ot
                 + head[:, None] * stride_oh + d[None, :], o.to(out_ptr.dtype.element_ty),
                 mask=rd_ok)


# -- launcher -----------------------------------------------------------------------------


def check_extend_plan(q: Tensor, k_cache: Tensor, plan) -> None:
    for name in ("num_seqs", "num_new_tokens", "page_size", "max_pages", "q_starts_list"):
        if not hasattr(plan, name):
            raise TypeError(f"plan must be an ExtendPlan (from ttc.engine.native.attention.plan_extend); "
                            f"{type(plan).__name__} has no field {name!r}.")
    if q.shape[0] != plan.num_new_tokens:
        raise ValueError(f"plan was built for {plan.num_new_tokens} new tokens; q has "
                         f"{q.shape[0]}.")
    check_page_size(plan.page_size, k_cache)
    dev = q.device
    check_index("q_starts", plan.q_starts, (plan.num_seqs + 1,), dev)
    check_index("prefix_lens", plan.prefix_lens, (plan.num_seqs,), dev)
    check_index("page_tables", plan.page_tables, (plan.num_seqs, plan.max_pages), dev)
    if len(plan.q_starts_list) != plan.num_seqs + 1 or \
            plan.q_starts_list[-1] != plan.num_new_tokens:
        raise ValueError(f"plan.q_starts_list must be CSR offsets ending at num_new_tokens "
                         f"({plan.num_new_tokens}); got {plan.q_starts_list}.")


def extend_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, plan, *,
                     scale: float) -> Tensor:
    """Attention for the new tokens of many sequences (Triton): cached prefix + causal.

    Parameters
    ----------
    q : Tensor
        ``[num_new_tokens, num_heads, head_dim]``, float16/bfloat16/float32, sequences
        concatenated in plan order.
    k_cache, v_cache : Tensor
        ``[num_pages, page_size, num_kv_heads, head_dim]``, dtype and device of ``q``; the
        new tokens' keys and values are already written at their positions.
    plan : ExtendPlan
        From ``ttc.engine.native.attention.plan_extend(..., device=q.device)``.
    scale : float
        Score scale.

    Returns
    -------
    Tensor
        ``[num_new_tokens, num_heads, head_dim]``, dtype of ``q``.
    """
    check_q_and_cache(q, k_cache, v_cache, q_doc="[num_new_tokens, num_heads, head_dim]")
    check_extend_plan(q, k_cache, plan)
    scale = check_scale(scale)
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    rep = num_heads // num_kv_heads
    out = torch.empty_like(q)
    if num_tokens == 0:
        return out
    starts = plan.q_starts_list
    max_new = max(b - a for a, b in zip(starts, starts[1:]))
    block_m = min(MAX_BLOCK_M, max(16, next_pow2(max_new * rep)))
    m_tiles = cdiv(max_new * rep, block_m)
    grid = (plan.num_seqs * m_tiles, num_kv_heads)
    _extend_kernel[grid](
        q, k_cache, v_cache, plan.q_starts, plan.prefix_lens, plan.page_tables, out,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        plan.page_tables.stride(0) if plan.max_pages else 0, out.stride(0), out.stride(1),
        plan.page_size, m_tiles, scale * LOG2E,
        REP=rep, HEAD_DIM=head_dim, BLOCK_D=max(16, next_pow2(head_dim)), BLOCK_M=block_m,
        BLOCK_N=BLOCK_N, DOT=dot_mode(q.dtype), num_warps=4 if head_dim <= 64 else 8,
        num_stages=2)
    return out
