"""Prefix-shared decode attention and batched extend attention equal plain attention."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ttc.engine.native.attention import (decode_attention, extend_attention, merge_states,
                                  plan_decode, plan_extend)


def _dense(q, k, v, scale):
    # q: [heads, head_dim], k, v: [keys, kv_heads, head_dim] -> [heads, head_dim]
    rep = q.shape[0] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1).transpose(0, 1)       # [heads, keys, head_dim]
    v = v.repeat_interleave(rep, dim=1).transpose(0, 1)
    w = torch.softmax((q.unsqueeze(1) @ k.transpose(1, 2)).squeeze(1) * scale, dim=-1)
    return (w.unsqueeze(1) @ v).squeeze(1)


@st.composite
def decode_cases(draw):
    page_size = draw(st.sampled_from([1, 3, 4, 8]))
    kv_heads = draw(st.sampled_from([1, 2]))
    heads = kv_heads * draw(st.sampled_from([1, 2, 3]))
    groups = draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 20),
                                     st.lists(st.integers(1, 13), min_size=1, max_size=4)),
                           min_size=1, max_size=3))
    # each group: prefix pages, empty slots in its last prefix page, suffix lengths
    return page_size, kv_heads, heads, groups, draw(st.integers(0, 2**16))


@settings(max_examples=60, deadline=None)
@given(decode_cases())
def test_prefix_shared_decode_equals_plain_attention(case):
    page_size, kv_heads, heads, groups, seed = case
    g = torch.Generator().manual_seed(seed)
    head_dim = 32
    num_pages = 200
    k_cache = torch.randn(num_pages, page_size, kv_heads, head_dim, generator=g)
    v_cache = torch.randn(num_pages, page_size, kv_heads, head_dim, generator=g)
    perm = torch.randperm(num_pages, generator=g).tolist()    # pages in random order
    take = lambda n: [perm.pop() for _ in range(n)]          # noqa: E731
    sizes, gp, gl, sp, sl, seqs = [], [], [], [], [], []
    for prefix_pages, gap, suffixes in groups:
        plen = prefix_pages * page_size - (gap % page_size if prefix_pages else 0)
        pages = take(prefix_pages)
        if prefix_pages and seed % 2:   # consecutive prefix pages (the slicing path)
            start = 100 + 10 * len(gp)
            pages = list(range(start, start + prefix_pages))
        sizes.append(len(suffixes))
        gp.append(pages)
        gl.append(plen)
        for n in suffixes:
            own = take(-(-n // page_size))
            sp.append(own)
            sl.append(n)
            seqs.append((pages, plen, own, n))
    plan = plan_decode(group_sizes=sizes, group_prefix_pages=gp, group_prefix_lens=gl,
                       suffix_pages=sp, suffix_lens=sl, page_size=page_size)
    q = torch.randn(len(sl), heads, head_dim, generator=g)
    scale = 1 / math.sqrt(head_dim)
    out = decode_attention(q, k_cache, v_cache, plan, scale=scale, impl="torch")
    _assert_equals_dense(out, q, k_cache, v_cache, seqs, scale)


def _assert_equals_dense(out, q, k_cache, v_cache, seqs, scale):
    """Each branch's output equals plain attention over its prefix and suffix tokens."""
    page_size, kv_heads, head_dim = k_cache.shape[1:]
    for b, (pages, plen, own, n) in enumerate(seqs):
        idx = torch.tensor(pages + own, dtype=torch.long)
        keep = list(range(plen)) + [len(pages) * page_size + i for i in range(n)]
        k = k_cache[idx].reshape(-1, kv_heads, head_dim)[keep]
        v = v_cache[idx].reshape(-1, kv_heads, head_dim)[keep]
        torch.testing.assert_close(out[b], _dense(q[b], k, v, scale), atol=1e-5, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(st.sampled_from([1, 4, 5]), st.lists(st.tuples(st.integers(0, 17), st.integers(1, 9)),
                                           min_size=1, max_size=3), st.integers(0, 1000))
def test_extend_equals_causal_attention(page_size, seqs, seed):
    g = torch.Generator().manual_seed(seed)
    kv_heads, heads, head_dim = 2, 4, 32
    k_cache = torch.randn(96, page_size, kv_heads, head_dim, generator=g)   # 3 x 26 tokens fit
    v_cache = torch.randn(96, page_size, kv_heads, head_dim, generator=g)
    perm = torch.randperm(96, generator=g).tolist()
    tables = [[perm.pop() for _ in range(-(-(p + n) // page_size))] for p, n in seqs]
    plan = plan_extend(prefix_lens=[p for p, _ in seqs], new_lens=[n for _, n in seqs],
                       page_tables=tables, page_size=page_size)
    q = torch.randn(sum(n for _, n in seqs), heads, head_dim, generator=g)
    out = extend_attention(q, k_cache, v_cache, plan, scale=0.2, impl="torch")
    row = 0
    for (p, n), table in zip(seqs, tables):
        k = k_cache[torch.tensor(table)].reshape(-1, kv_heads, head_dim)
        v = v_cache[torch.tensor(table)].reshape(-1, kv_heads, head_dim)
        for i in range(n):
            ref = _dense(q[row], k[: p + i + 1], v[: p + i + 1], 0.2)
            torch.testing.assert_close(out[row], ref, atol=1e-5, rtol=1e-5)
            row += 1


def test_merge_states_with_empty_side_is_identity_and_exact_split():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 2, 8, generator=g)
    k = torch.randn(10, 1, 8, generator=g)
    v = torch.randn(10, 1, 8, generator=g)
    # split keys 0..3 | 4..9 and merge; compare with attention over all keys
    def part(lo, hi):
        s = torch.einsum("bhd,kd->bhk", q, k[lo:hi, 0])
        lse = torch.logsumexp(s, -1)
        return torch.softmax(s, -1) @ v[lo:hi, 0], lse
    o1, l1 = part(0, 4)
    o2, l2 = part(4, 10)
    o, lse = merge_states(o1, l1, o2, l2)
    full, full_lse = part(0, 10)
    torch.testing.assert_close(o, full)
    torch.testing.assert_close(lse, full_lse)
    empty = torch.full_like(l1, float("-inf"))
    o, lse = merge_states(o1, l1, torch.zeros_like(o1), empty)
    torch.testing.assert_close(o, o1)
    torch.testing.assert_close(lse, l1)


def test_bad_inputs_raise_clear_errors():
    k = torch.zeros(4, 4, 2, 32)
    plan = plan_decode(group_sizes=[1], group_prefix_pages=[[]], group_prefix_lens=[0],
                       suffix_pages=[[0]], suffix_lens=[3], page_size=4)
    with pytest.raises(ValueError, match="branches"):
        decode_attention(torch.zeros(2, 4, 32), k, k, plan, scale=1.0)
    with pytest.raises(ValueError, match="impl"):
        decode_attention(torch.zeros(1, 4, 32), k, k, plan, scale=1.0, impl="cuda")
    with pytest.raises(ValueError, match="KV heads"):
        decode_attention(torch.zeros(1, 3, 32), k, k, plan, scale=1.0)
    with pytest.raises(ValueError, match="pages"):
        plan_decode(group_sizes=[1], group_prefix_pages=[[1]], group_prefix_lens=[9],
                    suffix_pages=[[0]], suffix_lens=[3], page_size=4)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="triton"):
            decode_attention(torch.zeros(1, 4, 32), k, k, plan, scale=1.0, impl="triton")


def test_fused_cpu_path_equals_reference_ops():
    from ttc.engine.native.attention import _attend, _attend_reference

    g = torch.Generator().manual_seed(2)
    q = torch.randn(3, 2, 5, 32, generator=g)
    k = torch.randn(3, 2, 9, 32, generator=g)
    v = torch.randn(3, 2, 9, 32, generator=g)
    lens = torch.tensor([1, 4, 9])
    mask = torch.zeros(3, 9).masked_fill(torch.arange(9)[None] >= lens[:, None],
                                         float("-inf"))[:, None, None, :]
    o, lse = _attend(q, k, v, scale=0.3, mask=mask)
    o_ref, lse_ref = _attend_reference(q, k, v, scale=0.3, mask=mask)
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, lse_ref, atol=1e-5, rtol=1e-5)


def test_many_groups_run_their_prefixes_in_one_padded_batch():
    """Eight searches, each its own prompt (group), as concurrent searches give: the torch
    path batches all prefixes in one call; the result equals plain attention."""
    from ttc.engine.native.attention import _batch_groups

    g = torch.Generator().manual_seed(3)
    ps, kv_heads, heads, head_dim = 4, 2, 6, 32
    k_cache = torch.randn(300, ps, kv_heads, head_dim, generator=g)
    v_cache = torch.randn(300, ps, kv_heads, head_dim, generator=g)
    free = iter(torch.randperm(300, generator=g).tolist())
    sizes, gp, gl, sp, sl, seqs = [], [], [], [], [], []
    for grp in range(8):
        plen = 20 + 3 * grp                        # 20..41 tokens, uneven last pages
        pages = [next(free) for _ in range(-(-plen // ps))]
        sizes.append(1 + grp % 3)
        gp.append(pages)
        gl.append(plen)
        for j in range(sizes[-1]):
            n = 1 + (grp + 2 * j) % 9
            own = [next(free) for _ in range(-(-n // ps))]
            sp.append(own)
            sl.append(n)
            seqs.append((pages, plen, own, n))
    plan = plan_decode(group_sizes=sizes, group_prefix_pages=gp, group_prefix_lens=gl,
                       suffix_pages=sp, suffix_lens=sl, page_size=ps)
    assert _batch_groups(plan)
    q = torch.randn(len(sl), heads, head_dim, generator=g)
    scale = 1 / math.sqrt(head_dim)
    out = decode_attention(q, k_cache, v_cache, plan, scale=scale, impl="torch")
    _assert_equals_dense(out, q, k_cache, v_cache, seqs, scale)


def test_merge_into_suffix_equals_merge_states_when_the_suffix_is_not_empty():
    from ttc.engine.native.attention import merge_into_suffix

    g = torch.Generator().manual_seed(5)
    o_p, o_s = torch.randn(4, 3, 8, generator=g), torch.randn(4, 3, 8, generator=g)
    lse_p, lse_s = torch.randn(4, 3, generator=g) * 5, torch.randn(4, 3, generator=g) * 5
    lse_p[0] = float("-inf")                    # a branch whose group has no prefix
    ref, _ = merge_states(o_p, lse_p, o_s, lse_s)
    torch.testing.assert_close(merge_into_suffix(o_p, lse_p, o_s, lse_s), ref)
    torch.testing.assert_close(merge_into_suffix(o_p, lse_p, o_s, lse_s)[0], o_s[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_one_prefix_fast_path_equals_the_general_path(dtype):
    """One group with consecutive prefix pages (one search's step) takes the short path;
    it must give what the general path gives."""
    from ttc.engine.native.attention import (_decode_one_prefix, decode_attention_general,
                                             plan_decode)

    g = torch.Generator().manual_seed(11)
    ps, kv_heads, rep, d = 4, 2, 3, 16
    k = torch.randn(40, ps, kv_heads, d, generator=g).to(dtype)
    v = torch.randn(40, ps, kv_heads, d, generator=g).to(dtype)
    lens = [1, 5, 9]                                   # suffix tokens of three branches
    suffix = [[20 + 3 * b + i for i in range(-(-n // ps))] for b, n in enumerate(lens)]
    plan = plan_decode(group_sizes=[3], group_prefix_pages=[[2, 3, 4]], group_prefix_lens=[10],
                       suffix_pages=suffix, suffix_lens=lens, page_size=ps)
    q = torch.randn(3, kv_heads * rep, d, generator=g).to(dtype)
    fast = _decode_one_prefix(q, k, v, plan, scale=0.25)
    ref = decode_attention_general(q, k, v, plan, scale=0.25)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(fast, ref, atol=tol, rtol=tol)
    assert fast.shape == (3, kv_heads * rep, d) and fast.dtype == dtype
