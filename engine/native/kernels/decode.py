"""Prefix-shared decode attention on the GPU: the Triton ``decode_attention``.

Contract: same inputs, output and meaning as ``ttc.engine.native.attention.decode_attention``
(which calls this on CUDA): one query per branch, each branch seeing its group's shared
prefix and then its own suffix. Per layer it launches

    1. ``_prefix_decode_kernel``  group queries x shared prefix (matrix-matrix, split-K)
                                  -> partial states in a float32 workspace
    2. ``_suffix_decode_kernel``  each branch x its suffix pages; with one suffix split it
                                  merges the prefix states and writes the output itself
    3. ``_reduce_splits_kernel``  only when the suffix needed several splits

The plan (page tables, grouping) comes from ``plan_decode`` once per step; the chunking
from :func:`~ttc.engine.native.kernels.launch.plan_decode_launch` (cheap; pass ``launch=`` to
build it once per step too). Nothing is cached between calls.
Must NOT know: models, tokens, radix trees, rewards, strategies.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ttc.engine.native.kernels._common import cdiv, check_q_and_cache, check_scale
from ttc.engine.native.kernels.launch import DecodeLaunch, plan_decode_launch
from ttc.engine.native.kernels.merge import launch_reduce_splits
from ttc.engine.native.kernels.prefix_decode import check_decode_plan, launch_prefix_partials
from ttc.engine.native.kernels.suffix_decode import launch_suffix

# -- reference ----------------------------------------------------------------------------


def decode_attention_reference(q: Tensor, k_cache: Tensor, v_cache: Tensor, plan, *,
                               scale: float) -> Tensor:
    """Each branch's query against its prefix + suffix tokens, gathered densely, float32 math.

    Returns ``[num_branches, num_heads, head_dim]`` in ``q``'s dtype (zeros for a branch
    with no keys at all).
    """
    num_branches, num_heads, head_dim = q.shape
    rep = num_heads // k_cache.shape[2]
    out = torch.zeros(num_branches, num_heads, head_dim, dtype=torch.float32, device=q.device)
    starts = plan.group_starts.tolist()
    plens = plan.group_prefix_lens.tolist()
    slens = plan.suffix_lens.tolist()
    ps = plan.page_size
    for g, plen in enumerate(plens):
        prefix = plan.group_prefix_pages[g, :cdiv(plen, ps)].long()
        for b in range(starts[g], starts[g + 1]):
            suffix = plan.suffix_pages[b, :cdiv(slens[b], ps)].long()
            keys = [k_cache[prefix].reshape(-1, *k_cache.shape[2:])[:plen],
                    k_cache[suffix].reshape(-1, *k_cache.shape[2:])[:slens[b]]]
            vals = [v_cache[prefix].reshape(-1, *v_cache.shape[2:])[:plen],
                    v_cache[suffix].reshape(-1, *v_cache.shape[2:])[:slens[b]]]
            k = torch.cat(keys).float().repeat_interleave(rep, dim=1).transpose(0, 1)
            v = torch.cat(vals).float().repeat_interleave(rep, dim=1).transpose(0, 1)
            if k.shape[1] == 0:
                continue
            s = torch.einsum("hd,hnd->hn", q[b].float(), k) * scale        # [heads, keys]
            out[b] = torch.einsum("hn,hnd->hd", torch.softmax(s, dim=-1), v)
    return out.to(q.dtype)


# -- launcher -----------------------------------------------------------------------------


def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, plan, *, scale: float,
                     launch: DecodeLaunch | None = None) -> Tensor:
    """Prefix-shared decode attention (Triton): one query per branch.

    Parameters
    ----------
    q : Tensor
        ``[num_branches, num_heads, head_dim]``, float16/bfloat16/float32, branches in
        plan order (each group's members contiguous).
    k_cache, v_cache : Tensor
        ``[num_pages, page_size, num_kv_heads, head_dim]``, dtype and device of ``q``,
        contiguous last dimension.
    plan : DecodePlan
        From ``ttc.engine.native.attention.plan_decode(..., device=q.device)``; valid until a page
        table changes; shared by every layer of the step.
    scale : float
        Score scale, usually ``head_dim ** -0.5``.
    launch : DecodeLaunch, optional
        Split-K chunking from :func:`plan_decode_launch` for this plan; built here if absent.

    Returns
    -------
    Tensor
        ``[num_branches, num_heads, head_dim]``, dtype of ``q``.
    """
    check_q_and_cache(q, k_cache, v_cache, q_doc="[num_branches, num_heads, head_dim]")
    check_decode_plan(q, k_cache, plan)
    scale = check_scale(scale)
    num_branches, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    if launch is None:
        launch = plan_decode_launch(plan, num_heads=num_heads, num_kv_heads=num_kv_heads,
                                    device=q.device)
    elif not isinstance(launch, DecodeLaunch):
        raise TypeError(f"launch must be a DecodeLaunch or None; got {type(launch).__name__}.")
    elif launch.num_branches != plan.num_branches:
        raise ValueError(f"launch was planned for {launch.num_branches} branches; the plan has "
                         f"{plan.num_branches}.")
    out = torch.empty_like(q)
    if num_branches == 0:
        return out
    ps, ss = launch.prefix_splits, launch.suffix_splits
    slots = ps + (ss if ss > 1 else 0)
    o_part = lse_part = None
    if slots:
        # o_part: [slots, num_branches, num_heads, head_dim]
        # lse_part: [slots, num_branches, num_heads]
        o_part = torch.empty(slots, num_branches, num_heads, head_dim, dtype=torch.float32,
                             device=q.device)
        lse_part = torch.empty(slots, num_branches, num_heads, dtype=torch.float32,
                               device=q.device)
    if ps:
        launch_prefix_partials(q, k_cache, v_cache, plan, scale=scale,
                               chunk_len=launch.prefix_chunk, num_splits=ps, o_part=o_part,
                               lse_part=lse_part)
    if ss == 1:
        launch_suffix(q, k_cache, v_cache, plan, scale=scale, chunk_len=launch.suffix_chunk,
                      num_splits=1, o_part=o_part, lse_part=lse_part, num_merge=ps,
                      slot_offset=0, out=out, lse_out=None)
    else:
        launch_suffix(q, k_cache, v_cache, plan, scale=scale, chunk_len=launch.suffix_chunk,
                      num_splits=ss, o_part=o_part, lse_part=lse_part, num_merge=0,
                      slot_offset=ps, out=None, lse_out=None)
        launch_reduce_splits(o_part, lse_part, out, None)
    return out
