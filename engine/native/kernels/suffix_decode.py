"""Per-branch paged suffix decode attention, split-K, with the LSE merge fused in.

Contract: branch ``b``'s queries (all ``num_heads``, handled per KV head as a tile of
``heads_per_kv`` rows) attend to its own ``suffix_lens[b]`` tokens in pages
``suffix_pages[b]``. Grid ``(num_branches, num_kv_heads, num_splits)``; program ``split``
reads suffix tokens ``split*chunk .. (split+1)*chunk``.

Two endings (``FINAL``):

* one split: the program also merges the prefix kernel's partial states for its rows
  (workspace slots ``0..num_merge-1``) by LSE and writes the final output in ``q``'s dtype
  (and the merged LSE when asked): prefix + suffix + merge in two launches;
* several splits: each program writes its partial state to workspace slot
  ``slot_offset + split`` and ``reduce_splits`` merges every slot afterwards.

LSE is natural-log float32 outside the kernel, ``-inf`` for an empty key set (a suffix of
length 0 is allowed here even though decode plans always have one token).
Must NOT know: models, tokens, radix trees, groups (the prefix arrives as partial states).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ttc.engine.native.kernels._common import (LOG2E, cdiv, check_q_and_cache, check_scale,
                                        next_pow2)
from ttc.engine.native.kernels._paged import attend_pages
from ttc.engine.native.kernels._tl import dot_mode
from ttc.engine.native.kernels.launch import SUFFIX_BLOCK_N, split_suffix
from ttc.engine.native.kernels.merge import launch_reduce_splits
from ttc.engine.native.kernels.prefix_decode import check_decode_plan

_LOG2E = tl.constexpr(LOG2E)


# -- reference ----------------------------------------------------------------------------


def suffix_decode_reference(q: Tensor, k_cache: Tensor, v_cache: Tensor, plan, *,
                            scale: float) -> tuple[Tensor, Tensor]:
    """Each branch's query against its own suffix only, in float32, one branch at a time.

    Returns ``(o [num_branches, num_heads, head_dim], lse [num_branches, num_heads])``,
    float32; an empty suffix gives ``o = 0``, ``lse = -inf``.
    """
    num_branches, num_heads, head_dim = q.shape
    rep = num_heads // k_cache.shape[2]
    o = torch.zeros(num_branches, num_heads, head_dim, dtype=torch.float32, device=q.device)
    lse = torch.full((num_branches, num_heads), float("-inf"), dtype=torch.float32,
                     device=q.device)
    for b, n in enumerate(plan.suffix_lens.tolist()):
        if n == 0:
            continue
        pages = plan.suffix_pages[b, :cdiv(n, plan.page_size)].long()
        k = k_cache[pages].reshape(-1, *k_cache.shape[2:])[:n].float()   # [n, kv_heads, dim]
        v = v_cache[pages].reshape(-1, *v_cache.shape[2:])[:n].float()
        k = k.repeat_interleave(rep, dim=1).transpose(0, 1)               # [heads, n, dim]
        v = v.repeat_interleave(rep, dim=1).transpose(0, 1)
        s = torch.einsum("hd,hnd->hn", q[b].float(), k) * scale
        lse[b] = torch.logsumexp(s, dim=-1)
        o[b] = torch.einsum("hn,hnd->hd", torch.softmax(s, dim=-1), v)
    return o, lse


# -- kernel -------------------------------------------------------------------------------


@triton.jit
def _suffix_decode_kernel(
    q_ptr,                # [num_branches, num_heads, head_dim]
    k_ptr, v_ptr,         # [num_pages, page_size, num_kv_heads, head_dim]
    suffix_pages_ptr,     # [num_branches, max_suffix_pages] int32
    suffix_lens_ptr,      # [num_branches] int32
    o_part_ptr,           # [num_slots, num_branches, num_heads, head_dim] float32
    lse_part_ptr,         # [num_slots, num_branches, num_heads] float32, natural log
    out_ptr,              # [num_branches, num_heads, head_dim] (FINAL)
    lse_out_ptr,          # [num_branches, num_heads] float32 (FINAL and WRITE_LSE)
    stride_qb, stride_qh,
    stride_kp, stride_ks, stride_kh,
    stride_vp, stride_vs, stride_vh,
    stride_pages, stride_ob, stride_oh,
    num_branches, num_heads, page_size, chunk_len,
    num_merge,            # FINAL: prefix partial slots to merge in
    slot_offset,          # not FINAL: workspace slot of split 0
    scale_log2,
    REP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, DOT: tl.constexpr,
    FINAL: tl.constexpr, WRITE_LSE: tl.constexpr,
):
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    r = tl.arange(0, BLOCK_H)
    r_ok = r < REP
    head = kvh * REP + r                                   # [BLOCK_H]
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    rd_ok = r_ok[:, None] & d_ok[None, :]
    # q: [BLOCK_H, BLOCK_D]
    q = tl.load(q_ptr + b * stride_qb + head[:, None] * stride_qh + d[None, :], mask=rd_ok,
                other=0.0)
    slen = tl.load(suffix_lens_ptr + b)
    start = split * chunk_len
    end = tl.minimum(start + chunk_len, slen)
    # NOTE: finite floor for the running max: fully masked blocks and empty partial states
    # (lse = -inf) then contribute weight exactly 0 instead of NaN.
    m_i = tl.full([BLOCK_H], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    page_row = suffix_pages_ptr + b.to(tl.int64) * stride_pages
    m_i, l_i, acc = attend_pages(q, m_i, l_i, acc, page_row, start, end, k_ptr, v_ptr,
                                 stride_kp, stride_ks, stride_kh, stride_vp, stride_vs,
                                 stride_vh, kvh, d, d_ok, page_size, scale_log2, 0, BLOCK_N,
                                 DOT, False)
    if FINAL:
        # Merge the prefix partial states (o normalised, lse) into (m_i, l_i, acc): a state
        # with lse L is l = 1, m = L in this running form.
        for sl in range(0, num_merge):
            base = (sl * num_branches + b) * num_heads + head        # [BLOCK_H]
            lp = tl.load(lse_part_ptr + base, mask=r_ok, other=float("-inf")).to(tl.float32)
            lp = lp * _LOG2E
            op = tl.load(o_part_ptr + base[:, None] * HEAD_DIM + d[None, :], mask=rd_ok,
                         other=0.0).to(tl.float32)
            m_new = tl.maximum(m_i, lp)
            alpha = tl.exp2(m_i - m_new)
            w = tl.exp2(lp - m_new)
            acc = acc * alpha[:, None] + tl.where(w[:, None] > 0, op * w[:, None], 0.0)
            l_i = l_i * alpha + w
            m_i = m_new
        has = l_i > 0
        o = acc / tl.where(has, l_i, 1.0)[:, None]
        tl.store(out_ptr + b * stride_ob + head[:, None] * stride_oh + d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=rd_ok)
        if WRITE_LSE:
            lse = tl.where(has, (m_i + tl.log2(tl.where(has, l_i, 1.0))) / _LOG2E,
                           float("-inf"))
            tl.store(lse_out_ptr + b * num_heads + head, lse, mask=r_ok)
    else:
        has = l_i > 0
        o = acc / tl.where(has, l_i, 1.0)[:, None]
        lse = tl.where(has, (m_i + tl.log2(tl.where(has, l_i, 1.0))) / _LOG2E, float("-inf"))
        base = ((slot_offset + split) * num_branches + b) * num_heads + head
        tl.store(o_part_ptr + base[:, None] * HEAD_DIM + d[None, :], o, mask=rd_ok)
        tl.store(lse_part_ptr + base, lse, mask=r_ok)


# -- launchers ----------------------------------------------------------------------------


def launch_suffix(q: Tensor, k_cache: Tensor, v_cache: Tensor, plan, *, scale: float,
                  chunk_len: int, num_splits: int, o_part: Tensor | None,
                  lse_part: Tensor | None, num_merge: int, slot_offset: int,
                  out: Tensor | None, lse_out: Tensor | None) -> None:
    """Launch the suffix kernel; no checks (the public launchers check).

    ``out`` given: one split, merge ``num_merge`` workspace slots, write ``out`` (and
    ``lse_out``). ``out`` None: write ``num_splits`` partial states from ``slot_offset``.
    """
    num_branches, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    rep = num_heads // num_kv_heads
    final = out is not None
    if final and num_splits != 1:
        raise ValueError(f"the fused suffix ending needs exactly one split; got {num_splits}.")
    if num_branches == 0:
        return
    # Unused pointer arguments still need a tensor; a float32 one keeps every compiled
    # variant's arithmetic in float32.
    dummy = o_part if o_part is not None else torch.empty(1, dtype=torch.float32,
                                                          device=q.device)
    o_ptr = o_part if o_part is not None else dummy
    l_ptr = lse_part if lse_part is not None else dummy
    grid = (num_branches, num_kv_heads, num_splits)
    _suffix_decode_kernel[grid](
        q, k_cache, v_cache, plan.suffix_pages, plan.suffix_lens, o_ptr, l_ptr,
        out if final else dummy, lse_out if lse_out is not None else dummy,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        plan.suffix_pages.stride(0) if plan.max_suffix_pages else 0,
        out.stride(0) if final else 0, out.stride(1) if final else 0,
        num_branches, num_heads, plan.page_size, chunk_len, num_merge, slot_offset,
        scale * LOG2E,
        REP=rep, HEAD_DIM=head_dim, BLOCK_D=max(16, next_pow2(head_dim)),
        BLOCK_H=max(16, next_pow2(rep)), BLOCK_N=SUFFIX_BLOCK_N,
        DOT=dot_mode(q.dtype), FINAL=final, WRITE_LSE=lse_out is not None,
        num_warps=4, num_stages=2)


def suffix_decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, plan, *, scale: float,
                            chunk_len: int | None = None) -> tuple[Tensor, Tensor]:
    """Each branch's queries against its own suffix pages only (Triton, split-K), with LSE.

    Parameters
    ----------
    q : Tensor
        ``[num_branches, num_heads, head_dim]``, float16/bfloat16/float32.
    k_cache, v_cache : Tensor
        ``[num_pages, page_size, num_kv_heads, head_dim]``, dtype and device of ``q``.
    plan : DecodePlan
        From ``ttc.engine.native.attention.plan_decode`` on ``q``'s device (its prefixes are
        ignored here).
    scale : float
        Score scale.
    chunk_len : int, optional
        Suffix tokens per split-K program; by default chosen to fill the device.

    Returns
    -------
    (o, lse) : ``[num_branches, num_heads, head_dim]`` float32 and ``[num_branches, num_heads]``
    float32 natural-log LSE (``-inf`` for an empty suffix).
    """
    check_q_and_cache(q, k_cache, v_cache, q_doc="[num_branches, num_heads, head_dim]")
    check_decode_plan(q, k_cache, plan)
    scale = check_scale(scale)
    num_branches, num_heads, head_dim = q.shape
    chunk, splits = split_suffix(plan, num_kv_heads=k_cache.shape[2], device=q.device,
                                 chunk_len=chunk_len)
    o = torch.zeros(num_branches, num_heads, head_dim, dtype=torch.float32, device=q.device)
    lse = torch.full((num_branches, num_heads), float("-inf"), dtype=torch.float32,
                     device=q.device)
    if splits == 1:
        launch_suffix(q, k_cache, v_cache, plan, scale=scale, chunk_len=chunk, num_splits=1,
                      o_part=None, lse_part=None, num_merge=0, slot_offset=0, out=o,
                      lse_out=lse)
        return o, lse
    o_part = torch.empty(splits, num_branches, num_heads, head_dim, dtype=torch.float32,
                         device=q.device)
    lse_part = torch.empty(splits, num_branches, num_heads, dtype=torch.float32, device=q.device)
    launch_suffix(q, k_cache, v_cache, plan, scale=scale, chunk_len=chunk, num_splits=splits,
                  o_part=o_part, lse_part=lse_part, num_merge=0, slot_offset=0, out=None,
                  lse_out=None)
    launch_reduce_splits(o_part, lse_part, o, lse)
    return o, lse
