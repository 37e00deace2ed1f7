"""Paged attention for the native engine: prefix-shared decode and batched extend (prefill).

Contract: attention reads keys and values from a paged cache, one pair per layer,
``k_cache, v_cache: [num_pages, page_size, num_kv_heads, head_dim]``. A *plan* (built
once per model step from page tables, reused by every layer) says which pages each query
reads. Two kinds of step:

* decode: one query per branch. Branches are grouped by a shared prefix of pages; a
  group's queries attend to the shared prefix once, as one matrix-matrix product
  (``[group_size * heads_per_kv, head_dim] x [head_dim, prefix_len]`` per KV head), each
  branch attends to its own suffix pages, and the two partial results merge by
  log-sum-exp (docs/algorithms.md#shared-prefix-attention)::

      group g:   prefix pages  [p0][p1][p2]        (read once for all members)
      branch b0:                         [s0][s1]   (read by b0 only)
      branch b1:                         [s2]       (read by b1 only)
      o_b = merge_states(o_prefix_b, lse_prefix_b, o_suffix_b, lse_suffix_b)

* extend: the new tokens of many sequences (already written into their pages) attend
  to their cached prefix and, causally, to each other.

Log-sum-exp values (``lse``) are natural-log, float32, shape ``[num_branches, num_heads]``;
an empty key set has ``lse = -inf`` and output 0, and merges as the identity.

``impl="auto"`` uses the Triton functions of the same names in ``ttc.engine.native.kernels``
when CUDA is available and that module imports, otherwise the torch code here (the CPU
path); ``"torch"`` and ``"triton"`` force one.
Must NOT know: models, tokens, radix trees, rewards, strategies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IMPLS = ("auto", "torch", "triton")


# -- plans ------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class DecodePlan:
    """Which pages each decode query reads; built by :func:`plan_decode`.

    Branches are ordered so that each group's members are contiguous:
    group ``g`` owns branches ``group_starts[g]:group_starts[g+1]``.

    Fields (int32 tensors on the cache's device):
      num_branches, page_size, num_groups, max_prefix_pages, max_suffix_pages: ints
      group_starts        [num_groups + 1]           CSR offsets over branches
      group_prefix_pages  [num_groups, max_prefix_pages]  page ids (padding 0)
      group_prefix_lens   [num_groups]               prefix tokens (may be 0)
      suffix_pages        [num_branches, max_suffix_pages] page ids (padding 0)
      suffix_lens         [num_branches]             suffix tokens (>= 1 for a decode query)
      branch_group        [num_branches]             group of each branch
      prefix_ranges       per group ``(first_page, num_pages)`` when the group's prefix
                          pages are consecutive ids (the torch path then slices instead
                          of gathering), else ``None``
    """

    num_branches: int
    page_size: int
    num_groups: int
    max_prefix_pages: int
    max_suffix_pages: int
    group_starts: Tensor
    group_prefix_pages: Tensor
    group_prefix_lens: Tensor
    suffix_pages: Tensor
    suffix_lens: Tensor
    branch_group: Tensor
    prefix_ranges: tuple[tuple[int, int] | None, ...]
    # Python copies of the small index lists, so the torch path needs no device syncs.
    group_starts_list: tuple[int, ...]
    group_prefix_lens_list: tuple[int, ...]
    # Tensors derived once per plan by the torch path (masks), shared by every layer.
    memo: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def device(self) -> torch.device:
        return self.group_starts.device


def plan_decode(*, group_sizes: Sequence[int], group_prefix_pages: Sequence[Sequence[int]],
                group_prefix_lens: Sequence[int], suffix_pages: Sequence[Sequence[int]],
                suffix_lens: Sequence[int], page_size: int,
                device: torch.device | str = "cpu") -> DecodePlan:
    """Build a decode plan from Python page tables.

    ``group_sizes[g]`` branches form group ``g`` (contiguous, in order);
    ``group_prefix_pages[g]`` holds exactly ``ceil(group_prefix_lens[g] / page_size)``
    page ids; ``suffix_pages[b]`` holds ``ceil(suffix_lens[b] / page_size)`` page ids.
    """
    num_groups = len(group_sizes)
    num_branches = sum(group_sizes)
    if not (len(group_prefix_pages) == len(group_prefix_lens) == num_groups):
        raise ValueError(f"plan_decode needs one prefix per group; got {num_groups} groups, "
                         f"{len(group_prefix_pages)} prefix page lists and "
                         f"{len(group_prefix_lens)} prefix lengths.")
    if not (len(suffix_pages) == len(suffix_lens) == num_branches):
        raise ValueError(f"plan_decode needs one suffix per branch; got {num_branches} "
                         f"branches and {len(suffix_pages)} suffix page lists.")
    for g, (pages, n) in enumerate(zip(group_prefix_pages, group_prefix_lens)):
        if len(pages) != -(-n // page_size):
            raise ValueError(f"group {g}: {n} prefix tokens need {-(-n // page_size)} pages; "
                             f"got {len(pages)}.")
    for b, (pages, n) in enumerate(zip(suffix_pages, suffix_lens)):
        if n < 1 or len(pages) != -(-n // page_size):
            raise ValueError(f"branch {b}: suffix length must be >= 1 with "
                             f"ceil(len / page_size) pages; got {n} tokens, {len(pages)} pages.")
    starts = [0]
    for s in group_sizes:
        if s < 1:
            raise ValueError(f"every group needs at least one branch; got sizes {list(group_sizes)}.")
        starts.append(starts[-1] + s)
    max_pp = max((len(p) for p in group_prefix_pages), default=0)
    max_sp = max((len(p) for p in suffix_pages), default=0)
    gp = [list(p) + [0] * (max_pp - len(p)) for p in group_prefix_pages]
    sp = [list(p) + [0] * (max_sp - len(p)) for p in suffix_pages]
    ranges = tuple((p[0], len(p)) if p and list(p) == list(range(p[0], p[0] + len(p)))
                   else (None if p else (0, 0)) for p in group_prefix_pages)
    branch_group = [g for g, s in enumerate(group_sizes) for _ in range(s)]
    i32 = dict(dtype=torch.int32, device=device)
    return DecodePlan(
        num_branches=num_branches, page_size=page_size, num_groups=num_groups,
        max_prefix_pages=max_pp, max_suffix_pages=max_sp,
        group_starts=torch.tensor(starts, **i32),
        group_prefix_pages=torch.tensor(gp, **i32).reshape(num_groups, max_pp),
        group_prefix_lens=torch.tensor(list(group_prefix_lens), **i32),
        suffix_pages=torch.tensor(sp, **i32).reshape(num_branches, max_sp),
        suffix_lens=torch.tensor(list(suffix_lens), **i32),
        branch_group=torch.tensor(branch_group, **i32),
        prefix_ranges=ranges, group_starts_list=tuple(starts),
        group_prefix_lens_list=tuple(int(n) for n in group_prefix_lens))


@dataclass(frozen=True, kw_only=True)
class ExtendPlan:
    """Which pages the new tokens of many sequences read; built by :func:`plan_extend`.

    Sequence ``s`` has ``prefix_lens[s]`` cached tokens and ``new_lens[s]`` new tokens; its
    new tokens are rows ``q_starts[s]:q_starts[s+1]`` of ``q`` and sit at positions
    ``prefix_lens[s] ..`` of its page table (the new tokens' KV is already written).

    Fields: num_seqs, num_new_tokens, page_size, max_pages: ints
      q_starts     [num_seqs + 1]          CSR offsets over new tokens (int32)
      prefix_lens  [num_seqs]              cached tokens per sequence (int32)
      new_lens     [num_seqs]              new tokens per sequence (int32)
      page_tables  [num_seqs, max_pages]   pages of prefix + new tokens (int32, padding 0)
    """

    num_seqs: int
    num_new_tokens: int
    page_size: int
    max_pages: int
    q_starts: Tensor
    prefix_lens: Tensor
    new_lens: Tensor
    page_tables: Tensor
    q_starts_list: tuple[int, ...]
    prefix_lens_list: tuple[int, ...]
    page_tables_list: tuple[tuple[int, ...], ...]

    @property
    def device(self) -> torch.device:
        return self.q_starts.device


def plan_extend(*, prefix_lens: Sequence[int], new_lens: Sequence[int],
                page_tables: Sequence[Sequence[int]], page_size: int,
                device: torch.device | str = "cpu") -> ExtendPlan:
    """Build an extend plan; ``page_tables[s]`` covers ``prefix_lens[s] + new_lens[s]`` tokens."""
    if not (len(prefix_lens) == len(new_lens) == len(page_tables)):
        raise ValueError("plan_extend needs prefix_lens, new_lens and page_tables of one length; "
                         f"got {len(prefix_lens)}, {len(new_lens)}, {len(page_tables)}.")
    for s, (p, n, t) in enumerate(zip(prefix_lens, new_lens, page_tables)):
        if n < 1 or p < 0 or len(t) != -(-(p + n) // page_size):
            raise ValueError(f"sequence {s}: need new_lens >= 1 and ceil((prefix + new) / "
                             f"page_size) pages; got prefix {p}, new {n}, {len(t)} pages.")
    starts = [0]
    for n in new_lens:
        starts.append(starts[-1] + n)
    max_pages = max((len(t) for t in page_tables), default=0)
    padded = [list(t) + [0] * (max_pages - len(t)) for t in page_tables]
    i32 = dict(dtype=torch.int32, device=device)
    return ExtendPlan(
        num_seqs=len(new_lens), num_new_tokens=starts[-1], page_size=page_size,
        max_pages=max_pages, q_starts=torch.tensor(starts, **i32),
        prefix_lens=torch.tensor(list(prefix_lens), **i32),
        new_lens=torch.tensor(list(new_lens), **i32),
        page_tables=torch.tensor(padded, **i32).reshape(len(new_lens), max_pages),
        q_starts_list=tuple(starts), prefix_lens_list=tuple(int(p) for p in prefix_lens),
        page_tables_list=tuple(tuple(int(x) for x in t) for t in page_tables))


# -- merging ----------------------------------------------------------------------------

def merge_states(o1: Tensor, lse1: Tensor, o2: Tensor, lse2: Tensor) -> tuple[Tensor, Tensor]:
    """Merge two partial attention results over disjoint key sets.

    Parameters
    ----------
    o1, o2 : Tensor
        ``[num_rows, num_heads, head_dim]``, outputs normalised over their own keys
        (any float dtype; the merge runs in float32).
    lse1, lse2 : Tensor
        ``[num_rows, num_heads]``, float32 natural-log sum of ``exp(score)`` over each key
        set; ``-inf`` for an empty set.

    Returns
    -------
    (o, lse) : ``o`` is ``[num_rows, num_heads, head_dim]`` in float32 and ``lse`` the
    merged natural-log LSE, float32. Example: merging with ``lse2 = -inf`` returns ``o1``.
    """
    lse = torch.logaddexp(lse1, lse2)
    # Weight of part 1; both parts empty (lse = -inf) gives nan, read as 0 (o = o2 = 0).
    w1 = torch.exp(lse1 - lse).nan_to_num_(0.0).unsqueeze(-1)
    o = torch.lerp(o2.float(), o1.float(), w1)        # o2 + w1 * (o1 - o2)
    return o, lse


def merge_into_suffix(o_p: Tensor, lse_p: Tensor, o_s: Tensor, lse_s: Tensor) -> Tensor:
    """:func:`merge_states`' output when the suffix side is never empty (a decode query
    sees at least its own token, so ``lse_s`` is finite): the prefix's weight is
    ``sigmoid(lse_p - lse_s)``, 0 for an empty prefix (``lse_p = -inf``). Four ops
    instead of eight; float32 result."""
    w = torch.sigmoid(lse_p - lse_s).unsqueeze(-1)
    return torch.lerp(o_s.float(), o_p.float(), w)


# -- torch implementations (CPU path and reference) --------------------------------------

def _attend(q: Tensor, k: Tensor, v: Tensor, *, scale: float,
            mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Grouped attention with its LSE.

    q: [batch, num_kv_heads, rows, head_dim]; k, v: [batch, num_kv_heads, keys, head_dim];
    mask: additive, q's dtype, broadcastable to [batch, num_kv_heads, rows, keys]
    (0 = may attend, -inf = may not); every row must see at least one key. Returns
    o [batch, num_kv_heads, rows, head_dim] (q's dtype) and lse [batch, num_kv_heads, rows]
    (float32, natural log).
    """
    if _FLASH_CPU is not None and q.device.type == "cpu":
        # torch's fused CPU flash attention returns the natural-log LSE in float32.
        if mask is not None:
            mask = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
        return _FLASH_CPU(q, k, v, 0.0, False, attn_mask=mask, scale=scale)
    return _attend_reference(q, k, v, scale=scale, mask=mask)


def _attend_reference(q: Tensor, k: Tensor, v: Tensor, *, scale: float,
                      mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """:func:`_attend` in plain torch ops (the spec; any device)."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    if mask is not None:
        scores = scores + mask.float()
    lse = torch.logsumexp(scores, dim=-1)
    finite = torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)
    probs = torch.exp(scores - finite.unsqueeze(-1))
    o = torch.matmul(probs.to(v.dtype), v)
    return o, lse


_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _gather_pages(cache: Tensor, pages: Tensor) -> Tensor:
    # cache: [num_pages, page_size, num_kv_heads, head_dim], pages: [..., n]
    # -> [..., n * page_size, num_kv_heads, head_dim]
    out = cache.index_select(0, pages.reshape(-1).long())
    return out.reshape(*pages.shape[:-1], pages.shape[-1] * cache.shape[1], *cache.shape[2:])


def _decode_one_prefix(q: Tensor, k_cache: Tensor, v_cache: Tensor, plan: DecodePlan, *,
                       scale: float) -> Tensor:
    """:func:`decode_attention_torch` for the common step — one group whose prefix pages
    are consecutive (one search, or searches of one prompt), on the CPU — in about 25 ops
    instead of 40: both partial results stay in ``[branches, kv_heads, rep, head_dim]``
    (no reshapes between them), the suffix index and mask are made once per plan, and
    the merge is :func:`merge_into_suffix`'s."""
    num_branches, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    rep = num_heads // num_kv_heads
    ps = plan.page_size
    memo = plan.memo.get(("one_prefix", q.dtype))
    if memo is None:
        keys = plan.max_suffix_pages * ps
        pos = torch.arange(keys, device=q.device)
        valid = pos.unsqueeze(0) < plan.suffix_lens.unsqueeze(1).to(pos.dtype)
        mask = torch.zeros(valid.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~valid, float("-inf"))[:, None, None, :].expand(
            num_branches, num_kv_heads, rep, keys)
        memo = (plan.suffix_pages.reshape(-1).long(), mask, keys)
        plan.memo[("one_prefix", q.dtype)] = memo
    index, mask, keys = memo
    qg = q.view(num_branches, num_kv_heads, rep, head_dim)
    ks = k_cache.index_select(0, index).view(num_branches, keys, num_kv_heads, head_dim)
    vs = v_cache.index_select(0, index).view(num_branches, keys, num_kv_heads, head_dim)
    o_s, lse_s = _FLASH_CPU(qg, ks.transpose(1, 2), vs.transpose(1, 2), 0.0, False,
                            attn_mask=mask, scale=scale)
    first, count = plan.prefix_ranges[0]
    n = plan.group_prefix_lens_list[0]
    kp = k_cache[first:first + count].view(count * ps, num_kv_heads, head_dim)[:n]
    vp = v_cache[first:first + count].view(count * ps, num_kv_heads, head_dim)[:n]
    # the whole batch's queries by kv head: [1, kv_heads, branches * rep, head_dim]
    qp = qg.permute(1, 0, 2, 3).reshape(1, num_kv_heads, num_branches * rep, head_dim)
    o_p, lse_p = _FLASH_CPU(qp, kp.permute(1, 0, 2).unsqueeze(0),
                            vp.permute(1, 0, 2).unsqueeze(0), 0.0, False, scale=scale)
    o_p = o_p.view(num_kv_heads, num_branches, rep, head_dim).transpose(0, 1)
    lse_p = lse_p.view(num_kv_heads, num_branches, rep).transpose(0, 1)
    w = torch.sigmoid(lse_p - lse_s).unsqueeze(-1)
    if q.dtype == torch.float32:
        o = torch.lerp(o_s, o_p, w)
    else:
        o = torch.lerp(o_s.float(), o_p.float(), w).to(q.dtype)
    return o.reshape(num_branches, num_heads, head_dim)


def decode_attention_torch(q: Tensor, k_cache: Tensor, v_cache: Tensor, plan: DecodePlan, *,
                           scale: float) -> Tensor:
    """The torch implementation of :func:`decode_attention` (see there)."""
    if (plan.num_groups == 1 and plan.prefix_ranges[0] is not None
            and plan.group_prefix_lens_list[0] > 0 and q.device.type == "cpu"
            and _FLASH_CPU is not None):
        return _decode_one_prefix(q, k_cache, v_cache, plan, scale=scale)
    return decode_attention_general(q, k_cache, v_cache, plan, scale=scale)


def decode_attention_general(q: Tensor, k_cache: Tensor, v_cache: Tensor, plan: DecodePlan,
                             *, scale: float) -> Tensor:
    """:func:`decode_attention_torch` for any plan and device (the reference)."""
    num_branches, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[2]
    rep = num_heads // num_kv_heads
    ps = plan.page_size
    # q by kv head: [num_branches, num_kv_heads, rep, head_dim]
    qg = q.reshape(num_branches, num_kv_heads, rep, head_dim)

    # Suffix part: every branch against its own pages, padded to the longest.
    # ks: [num_branches, max_suffix_pages * page_size, num_kv_heads, head_dim]
    ks = _gather_pages(k_cache, plan.suffix_pages)
    vs = _gather_pages(v_cache, plan.suffix_pages)
    key = ("suffix_mask", q.dtype)
    smask = plan.memo.get(key)
    if smask is None:   # additive: 0 where a branch's suffix has a token, -inf after
        pos = torch.arange(plan.max_suffix_pages * ps, device=q.device)
        valid = pos.unsqueeze(0) < plan.suffix_lens.unsqueeze(1).to(pos.dtype)
        smask = torch.zeros(valid.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~valid, float("-inf"))[:, None, None, :]
        plan.memo[key] = smask
    o_s, lse_s = _attend(qg, ks.transpose(1, 2), vs.transpose(1, 2), scale=scale, mask=smask)
    o_s = o_s.reshape(num_branches, num_heads, head_dim)
    lse_s = lse_s.reshape(num_branches, num_heads)

    if plan.max_prefix_pages == 0:
        return o_s.to(q.dtype)
    # Prefix part: one matrix-matrix product per group over its shared prefix.
    if _batch_groups(plan):
        o_p, lse_p = _prefix_batched(qg, k_cache, v_cache, plan, scale=scale)
        return merge_into_suffix(o_p, lse_p, o_s, lse_s).to(q.dtype)
    if plan.num_groups == 1:    # one group holds every branch: no scatter needed
        o_p = lse_p = None
    else:
        o_p = torch.zeros_like(o_s)
        lse_p = torch.full_like(lse_s, float("-inf"))
    starts = plan.group_starts_list
    for g in range(plan.num_groups):
        n = plan.group_prefix_lens_list[g]
        if n == 0:
            continue
        b0, b1 = starts[g], starts[g + 1]
        rng = plan.prefix_ranges[g]
        if rng is not None:   # consecutive pages: a view, no copy
            first, count = rng
            kp = k_cache[first:first + count].reshape(count * ps, num_kv_heads, head_dim)[:n]
            vp = v_cache[first:first + count].reshape(count * ps, num_kv_heads, head_dim)[:n]
        else:
            npages = -(-n // ps)
            idx = plan.group_prefix_pages[g, :npages]
            kp = _gather_pages(k_cache, idx)[:n]
            vp = _gather_pages(v_cache, idx)[:n]
        # queries of the group by kv head: [1, num_kv_heads, size * rep, head_dim]
        qp = qg[b0:b1].permute(1, 0, 2, 3).reshape(1, num_kv_heads, (b1 - b0) * rep, head_dim)
        o, lse = _attend(qp, kp.permute(1, 0, 2).unsqueeze(0), vp.permute(1, 0, 2).unsqueeze(0),
                         scale=scale)
        o = o.reshape(num_kv_heads, b1 - b0, rep, head_dim).permute(1, 0, 2, 3).reshape(
            b1 - b0, num_heads, head_dim)
        lse = lse.reshape(num_kv_heads, b1 - b0, rep).permute(1, 0, 2).reshape(b1 - b0, num_heads)
        if o_p is None:
            o_p, lse_p = o, lse
        else:
            o_p[b0:b1] = o
            lse_p[b0:b1] = lse
    if o_p is None:             # the only group has an empty prefix
        return o_s.to(q.dtype)
    return merge_into_suffix(o_p, lse_p, o_s, lse_s).to(q.dtype)


def _batch_groups(plan: DecodePlan) -> bool:
    """Run every group's prefix in ONE padded attention call instead of a loop?

    Worth it with several groups (many concurrent searches, each its own prompt): the
    loop costs ~15 small ops per group per layer. Only when every group has a prefix
    and padding to the longest costs at most twice the keys of the loop.
    """
    lens = plan.group_prefix_lens_list
    if plan.num_groups < 2 or min(lens) == 0:
        return False
    return plan.num_groups * plan.max_prefix_pages * plan.page_size <= 2 * sum(lens) + \
        plan.num_groups * plan.page_size


def _prefix_batched(qg: Tensor, k_cache: Tensor, v_cache: Tensor, plan: DecodePlan, *,
                    scale: float) -> tuple[Tensor, Tensor]:
    """Every group's queries against its own prefix, as one batch padded to the longest
    prefix and the largest group. qg: [num_branches, num_kv_heads, rep, head_dim]; returns
    o [num_branches, num_heads, head_dim] and lse [num_branches, num_heads] (float32)."""
    num_branches, num_kv_heads, rep, head_dim = qg.shape
    num_groups, ps = plan.num_groups, plan.page_size
    memo = plan.memo.get("batched_prefix")
    if memo is None:
        starts = plan.group_starts_list
        size = max(starts[g + 1] - starts[g] for g in range(num_groups))
        # slot of every branch in the padded [num_groups * size] layout; padding rows read
        # an extra zero query (index num_branches) and are dropped afterwards
        gather = [num_branches] * (num_groups * size)
        slots = []
        for g in range(num_groups):
            for j, b in enumerate(range(starts[g], starts[g + 1])):
                gather[g * size + j] = b
                slots.append(g * size + j)
        keys = plan.max_prefix_pages * ps
        pos = torch.arange(keys, device=qg.device)
        valid = pos.unsqueeze(0) < plan.group_prefix_lens.unsqueeze(1).to(pos.dtype)
        mask = torch.zeros(valid.shape, dtype=qg.dtype, device=qg.device).masked_fill(
            ~valid, float("-inf"))[:, None, None, :]          # [groups, 1, 1, keys]
        memo = (size, torch.tensor(gather, device=qg.device),
                torch.tensor(slots, device=qg.device), mask)
        plan.memo["batched_prefix"] = memo
    size, gather, slots, mask = memo
    padded = torch.cat([qg, qg.new_zeros((1, num_kv_heads, rep, head_dim))])
    # [groups, size, kv, rep, d] -> [groups, kv, size * rep, d]
    qp = padded.index_select(0, gather).reshape(num_groups, size, num_kv_heads, rep, head_dim)
    qp = qp.permute(0, 2, 1, 3, 4).reshape(num_groups, num_kv_heads, size * rep, head_dim)
    kp = _gather_pages(k_cache, plan.group_prefix_pages)   # [groups, keys, kv, d]
    vp = _gather_pages(v_cache, plan.group_prefix_pages)
    o, lse = _attend(qp, kp.transpose(1, 2), vp.transpose(1, 2), scale=scale, mask=mask)
    o = o.reshape(num_groups, num_kv_heads, size, rep, head_dim).permute(0, 2, 1, 3, 4)
    o = o.reshape(num_groups * size, num_kv_heads * rep, head_dim).index_select(0, slots)
    lse = lse.reshape(num_groups, num_kv_heads, size, rep).permute(0, 2, 1, 3)
    lse = lse.reshape(num_groups * size, num_kv_heads * rep).index_select(0, slots)
    return o, lse


def extend_attention_torch(q: Tensor, k_cache: Tensor, v_cache: Tensor, plan: ExtendPlan, *,
                           scale: float) -> Tensor:
    """The torch implementation of :func:`extend_attention` (see there)."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k_cache.shape[2]
    rep = num_heads // num_kv_heads
    ps = plan.page_size
    out = torch.empty_like(q)
    for s in range(plan.num_seqs):
        q0, q1 = plan.q_starts_list[s], plan.q_starts_list[s + 1]
        p = plan.prefix_lens_list[s]
        n = q1 - q0
        total = p + n
        table = plan.page_tables_list[s]
        if table == tuple(range(table[0], table[0] + len(table))):
            k = k_cache[table[0]:table[0] + len(table)].reshape(-1, num_kv_heads, head_dim)[:total]
            v = v_cache[table[0]:table[0] + len(table)].reshape(-1, num_kv_heads, head_dim)[:total]
        else:
            idx = plan.page_tables[s, :len(table)]
            k = _gather_pages(k_cache, idx)[:total]
            v = _gather_pages(v_cache, idx)[:total]
        # causal over positions: query i (position p + i) sees keys j <= p + i
        qh = q[q0:q1].transpose(0, 1).unsqueeze(0)                 # [1, heads, n, head_dim]
        kh = k.transpose(0, 1).unsqueeze(0)                        # [1, kv_heads, total, head_dim]
        vh = v.transpose(0, 1).unsqueeze(0)
        if rep > 1:
            kh = kh.repeat_interleave(rep, dim=1)
            vh = vh.repeat_interleave(rep, dim=1)
        if p == 0:
            o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale)
        else:
            qi = torch.arange(n, device=q.device).unsqueeze(1) + p
            kj = torch.arange(total, device=q.device).unsqueeze(0)
            o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=kj <= qi, scale=scale)
        out[q0:q1] = o[0].transpose(0, 1)
    return out


# -- dispatch ----------------------------------------------------------------------------

def _kernels():
    """The Triton module, or None when it cannot be used here."""
    if not torch.cuda.is_available():
        return None
    try:
        from ttc.engine.native import kernels  # noqa: PLC0415  (optional, imported on demand)
    except ImportError:
        return None
    return kernels


def _check(q: Tensor, k_cache: Tensor, v_cache: Tensor, impl: str) -> None:
    if impl not in IMPLS:
        raise ValueError(f"attention impl must be one of {', '.join(IMPLS)}; got {impl!r}.")
    if q.dim() != 3:
        raise ValueError(f"q must be [rows, num_heads, head_dim]; got {tuple(q.shape)}.")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError("k_cache and v_cache must both be [num_pages, page_size, num_kv_heads, "
                         f"head_dim]; got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}.")
    if q.shape[2] != k_cache.shape[3] or q.shape[1] % k_cache.shape[2] != 0:
        raise ValueError(f"q {tuple(q.shape)} does not fit a cache of {k_cache.shape[2]} KV heads "
                         f"x {k_cache.shape[3]} dims (heads must be a multiple of KV heads).")


def _pick(impl: str, name: str):
    if impl == "torch":
        return None
    kernels = _kernels()
    fn = getattr(kernels, name, None) if kernels is not None else None
    if impl == "triton" and fn is None:
        raise ValueError(f"attention='triton' needs CUDA and ttc.engine.native.kernels.{name}; "
                         "use attention='torch' or 'auto' on this machine.")
    return fn


def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, plan: DecodePlan, *,
                     scale: float, impl: str = "auto") -> Tensor:
    """Prefix-shared decode attention: one query per branch.

    Parameters
    ----------
    q : Tensor
        ``[num_branches, num_heads, head_dim]``, branches in plan order.
    k_cache, v_cache : Tensor
        ``[num_pages, page_size, num_kv_heads, head_dim]``, dtype of ``q``.
    plan : DecodePlan
        From :func:`plan_decode`; valid until a page table changes.
    scale : float
        Score scale, usually ``head_dim ** -0.5``.

    Returns
    -------
    Tensor
        ``[num_branches, num_heads, head_dim]``, dtype of ``q``.
    """
    _check(q, k_cache, v_cache, impl)
    if q.shape[0] != plan.num_branches:
        raise ValueError(f"plan was built for {plan.num_branches} branches; q has {q.shape[0]}.")
    fn = _pick(impl, "decode_attention") if q.is_cuda or impl == "triton" else None
    if fn is not None:
        return fn(q, k_cache, v_cache, plan, scale=scale)
    return decode_attention_torch(q, k_cache, v_cache, plan, scale=scale)


def extend_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, plan: ExtendPlan, *,
                     scale: float, impl: str = "auto") -> Tensor:
    """Attention for the new tokens of many sequences (prefill / extend).

    Parameters
    ----------
    q : Tensor
        ``[num_new_tokens, num_heads, head_dim]``, sequences concatenated in plan order.
    k_cache, v_cache : Tensor
        ``[num_pages, page_size, num_kv_heads, head_dim]``; the new tokens' keys and
        values are already written at their positions.
    plan : ExtendPlan
        From :func:`plan_extend`.

    Returns
    -------
    Tensor
        ``[num_new_tokens, num_heads, head_dim]``, dtype of ``q``.
    """
    _check(q, k_cache, v_cache, impl)
    if q.shape[0] != plan.num_new_tokens:
        raise ValueError(f"plan was built for {plan.num_new_tokens} new tokens; q has {q.shape[0]}.")
    fn = _pick(impl, "extend_attention") if q.is_cuda or impl == "triton" else None
    if fn is not None:
        return fn(q, k_cache, v_cache, plan, scale=scale)
    return extend_attention_torch(q, k_cache, v_cache, plan, scale=scale)


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
