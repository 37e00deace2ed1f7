"""Shared-prefix decode attention: every query of a group against its group's prefix, once.

Contract: for a :class:`~ttc.engine.native.attention.DecodePlan`, group ``g`` owns branches
``group_starts[g]:group_starts[g+1]`` and one prefix of ``group_prefix_lens[g]`` tokens
in pages ``group_prefix_pages[g]``. For each KV head ``h`` the group's queries form one
tile of ``rows = group_size * heads_per_kv`` (GQA: the query heads ``h*rep .. h*rep+rep-1``
of every member), and the kernel computes ``[rows, head_dim] x [head_dim, prefix_len]`` as
a matrix-matrix product, reading the prefix's keys and values once per tile instead of
once per branch::

    rows (branch, head):   (b0,h0) (b0,h1) .. (b1,h0) ..      <- one query tile
    keys:                  prefix pages [p0][p1][p2] .. split into chunks of split-K
    grid:                  (num_groups * m_tiles, num_kv_heads, num_splits)

Each program writes a partial state ``(o, lse)`` for its rows over one chunk of the
prefix into a float32 workspace slot; the suffix kernel or ``reduce_splits`` merges them.
LSE is natural-log float32 outside the kernel (base 2 inside), ``-inf`` for no keys.
Must NOT know: models, tokens, radix trees, how the plan was built.
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
from ttc.engine.native.kernels.launch import PREFIX_BLOCK_N, prefix_tile_rows, split_prefix
from ttc.engine.native.kernels.merge import launch_reduce_splits

_LOG2E = tl.constexpr(LOG2E)


# -- reference ----------------------------------------------------------------------------


def prefix_decode_reference(q: Tensor, k_cache: Tensor, v_cache: Tensor, plan, *,
                            scale: float) -> tuple[Tensor, Tensor]:
    """Each branch's query against its group's prefix only, in float32, one branch at a time.

    Returns ``(o [num_branches, num_heads, head_dim], lse [num_branches, num_heads])``, both
    float32; a group with an empty prefix gives ``o = 0``, ``lse = -inf``.
    """
    num_branches, num_heads, head_dim = q.shape
    rep = num_heads // k_cache.shape[2]
    o = torch.zeros(num_branches, num_heads, head_dim, dtype=torch.float32, device=q.device)
    lse = torch.full((num_branches, num_heads), float("-inf"), dtype=torch.float32,
                     device=q.device)
    starts = plan.group_starts.tolist()
    lens = plan.group_prefix_lens.tolist()
    for g in range(len(lens)):
        n = lens[g]
        if n == 0:
            continue
        pages = plan.group_prefix_pages[g, :cdiv(n, plan.page_size)].long()
        k = k_cache[pages].reshape(-1, *k_cache.shape[2:])[:n].float()   # [n, kv_heads, dim]
        v = v_cache[pages].reshape(-1, *v_cache.shape[2:])[:n].float()
        k = k.repeat_interleave(rep, dim=1).transpose(0, 1)               # [heads, n, dim]
        v = v.repeat_interleave(rep, dim=1).transpose(0, 1)
        for b in range(starts[g], starts[g + 1]):
            s = torch.einsum("hd,hnd->hn", q[b].float(), k) * scale        # [heads, n]
            lse[b] = torch.logsumexp(s, dim=-1)
            o[b] = torch.einsum("hn,hnd->hd", torch.softmax(s, dim=-1), v)
    return o, lse


# -- kernel -------------------------------------------------------------------------------


@triton.jit
def _prefix_decode_kernel(
    q_ptr,                # [num_branches, num_heads, head_dim]
    k_ptr, v_ptr,         # [num_pages, page_size, num_kv_heads, head_dim]
    group_starts_ptr,     # [num_groups + 1] int32
    prefix_pages_ptr,     # [num_groups, max_prefix_pages] int32
    prefix_lens_ptr,      # [num_groups] int32
    o_part_ptr,           # [num_splits, num_branches, num_heads, head_dim] float32 (out)
    lse_part_ptr,         # [num_splits, num_branches, num_heads] float32 (out, natural log)
    stride_qb, stride_qh,
    stride_kp, stride_ks, stride_kh,
    stride_vp, stride_vs, stride_vh,
    stride_pages,
    num_branches, num_heads, page_size, chunk_len, m_tiles,
    scale_log2,           # scale * log2(e)
    REP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT: tl.constexpr,
):
    pid = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    g = pid // m_tiles
    tile = pid % m_tiles
    b0 = tl.load(group_starts_ptr + g)
    b1 = tl.load(group_starts_ptr + g + 1)
    n_rows = (b1 - b0) * REP
    if tile * BLOCK_M < n_rows:
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        branch = b0 + rows // REP                      # [BLOCK_M]
        head = kvh * REP + rows % REP                  # [BLOCK_M]
        d = tl.arange(0, BLOCK_D)
        d_ok = d < HEAD_DIM
        # q: [BLOCK_M, BLOCK_D]
        q = tl.load(q_ptr + branch[:, None] * stride_qb + head[:, None] * stride_qh + d[None, :],
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        plen = tl.load(prefix_lens_ptr + g)
        start = split * chunk_len
        end = tl.minimum(start + chunk_len, plen)
        # NOTE: a finite floor for the running max keeps exp2(m_old - m_new) finite when a
        # whole block is masked (-inf scores), so empty chunks end with l = 0 and no NaN.
        m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        page_row = prefix_pages_ptr + g * stride_pages
        m_i, l_i, acc = attend_pages(q, m_i, l_i, acc, page_row, start, end, k_ptr, v_ptr,
                                     stride_kp, stride_ks, stride_kh, stride_vp, stride_vs,
                                     stride_vh, kvh, d, d_ok, page_size, scale_log2, 0, BLOCK_N,
                                     DOT, False)
        has = l_i > 0
        o = acc / tl.where(has, l_i, 1.0)[:, None]
        lse = tl.where(has, (m_i + tl.log2(tl.where(has, l_i, 1.0))) / _LOG2E, float("-inf"))
        slot_base = (split * num_branches + branch) * num_heads + head   # [BLOCK_M]
        tl.store(o_part_ptr + slot_base[:, None] * HEAD_DIM + d[None, :], o,
                 mask=row_ok[:, None] & d_ok[None, :])
        tl.store(lse_part_ptr + slot_base, lse, mask=row_ok)


# -- launchers ----------------------------------------------------------------------------


def check_decode_plan(q: Tensor, k_cache: Tensor, plan) -> None:
    """The fields of a DecodePlan the kernels read, against ``q`` and the cache."""
    for name in ("num_branches", "num_groups", "page_size", "max_prefix_pages",
                 "max_suffix_pages", "group_starts_list", "group_prefix_lens_list"):
        if not hasattr(plan, name):
            raise TypeError(f"plan must be a DecodePlan (from ttc.engine.native.attention.plan_decode); "
                            f"{type(plan).__name__} has no field {name!r}.")
    if q.shape[0] != plan.num_branches:
        raise ValueError(f"plan was built for {plan.num_branches} branches; q has {q.shape[0]}.")
    check_page_size(plan.page_size, k_cache)
    dev = q.device
    check_index("group_starts", plan.group_starts, (plan.num_groups + 1,), dev)
    check_index("group_prefix_pages", plan.group_prefix_pages,
                (plan.num_groups, plan.max_prefix_pages), dev)
    check_index("group_prefix_lens", plan.group_prefix_lens, (plan.num_groups,), dev)
    check_index("suffix_pages", plan.suffix_pages, (plan.num_branches, plan.max_suffix_pages), dev)
    check_index("suffix_lens", plan.suffix_lens, (plan.num_branches,), dev)
    if len(plan.group_starts_list) != plan.num_groups + 1 or \
            plan.group_starts_list[-1] != plan.num_branches:
        raise ValueError(f"plan.group_starts_list must be CSR offsets ending at num_branches "
                         f"({plan.num_branches}); got {plan.group_starts_list}.")
    room = plan.max_prefix_pages * plan.page_size
    too_long = [n for n in plan.group_prefix_lens_list if n > room]
    if too_long:
        raise ValueError(f"a group prefix of {too_long[0]} tokens does not fit in max_prefix_pages "
                         f"({plan.max_prefix_pages}) x page_size ({plan.page_size}).")


def launch_prefix_partials(q: Tensor, k_cache: Tensor, v_cache: Tensor, plan, *, scale: float,
                           chunk_len: int, num_splits: int, o_part: Tensor,
                           lse_part: Tensor) -> None:
    """Fill workspace slots ``0..num_splits-1`` with prefix partial states; no checks.

    ``o_part``: ``[>= num_splits, num_branches, num_heads, head_dim]`` float32 contiguous;
    ``lse_part``: ``[>= num_splits, num_branches, num_heads]`` float32 contiguous.
    """
    num_branches, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    rep = num_heads // num_kv_heads
    block_m, m_tiles = prefix_tile_rows(plan, rep)
    grid = (plan.num_groups * m_tiles, num_kv_heads, num_splits)
    _prefix_decode_kernel[grid](
        q, k_cache, v_cache, plan.group_starts, plan.group_prefix_pages, plan.group_prefix_lens,
        o_part, lse_part,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        plan.group_prefix_pages.stride(0) if plan.max_prefix_pages else 0,
        num_branches, num_heads, plan.page_size, chunk_len, m_tiles, scale * LOG2E,
        REP=rep, HEAD_DIM=head_dim, BLOCK_D=max(16, next_pow2(head_dim)), BLOCK_M=block_m,
        BLOCK_N=PREFIX_BLOCK_N, DOT=dot_mode(q.dtype),
        num_warps=4 if head_dim <= 64 else 8, num_stages=2)   # 64 x 128 float32 accumulators


def prefix_decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, plan, *, scale: float,
                            chunk_len: int | None = None) -> tuple[Tensor, Tensor]:
    """Each branch's queries against its group's shared prefix (Triton), with LSE.

    Parameters
    ----------
    q : Tensor
        ``[num_branches, num_heads, head_dim]``, float16/bfloat16/float32, branches in plan
        order.
    k_cache, v_cache : Tensor
        ``[num_pages, page_size, num_kv_heads, head_dim]``, dtype and device of ``q``.
    plan : DecodePlan
        From ``ttc.engine.native.attention.plan_decode`` on ``q``'s device.
    scale : float
        Score scale, usually ``head_dim ** -0.5``.
    chunk_len : int, optional
        Prefix tokens per split-K program (a multiple of 64); by default chosen to fill the
        device.

    Returns
    -------
    (o, lse) : ``[num_branches, num_heads, head_dim]`` float32 and ``[num_branches, num_heads]``
    float32 natural-log LSE (``-inf`` where the group's prefix is empty).
    """
    check_q_and_cache(q, k_cache, v_cache, q_doc="[num_branches, num_heads, head_dim]")
    check_decode_plan(q, k_cache, plan)
    scale = check_scale(scale)
    chunk, splits = split_prefix(plan, num_kv_heads=k_cache.shape[2],
                                 rep=q.shape[1] // k_cache.shape[2], device=q.device,
                                 chunk_len=chunk_len)
    num_branches, num_heads, head_dim = q.shape
    o = torch.zeros(num_branches, num_heads, head_dim, dtype=torch.float32, device=q.device)
    lse = torch.full((num_branches, num_heads), float("-inf"), dtype=torch.float32,
                     device=q.device)
    if splits == 0 or num_branches == 0:
        return o, lse
    o_part = torch.empty(splits, num_branches, num_heads, head_dim, dtype=torch.float32,
                         device=q.device)
    lse_part = torch.empty(splits, num_branches, num_heads, dtype=torch.float32, device=q.device)
    launch_prefix_partials(q, k_cache, v_cache, plan, scale=scale, chunk_len=chunk,
                           num_splits=splits, o_part=o_part, lse_part=lse_part)
    launch_reduce_splits(o_part, lse_part, o, lse)
    return o, lse
