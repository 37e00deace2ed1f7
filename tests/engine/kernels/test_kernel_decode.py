"""Triton decode kernels (shared prefix, split-K suffix, merge) equal their torch references."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from kernel_cases import assert_close, decode_case

import ttc.engine.native.kernels as K
from ttc.engine.native.attention import decode_attention as engine_decode
from ttc.engine.native.attention import merge_states as engine_merge
from ttc.engine.native.attention import plan_decode

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["fp32", "fp16", "bf16"]

# (prefix_len, [suffix lengths of the members]) per group; page_size 4.
SHAPES = {
    "no-prefix-one-token": [(0, [1])],
    "full-pages": [(4, [4, 1])],
    "one-past-boundary": [(5, [3, 8, 9])],
    "mixed-groups": [(37, [13, 1, 4, 7]), (0, [2]), (12, [5, 5])],
    "wide-group": [(9, [1] * 17)],   # 17 branches x rep rows: several query tiles
}


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("rep", [1, 4])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_decode_matches_reference(shape, rep, head_dim, dtype, kernel_device):
    case = decode_case(SHAPES[shape], rep=rep, head_dim=head_dim, dtype=dtype,
                       device=kernel_device, seed=len(shape) + rep)
    out = K.decode_attention(case.q, case.k_cache, case.v_cache, case.plan, scale=case.scale)
    ref = K.decode_attention_reference(case.q, case.k_cache, case.v_cache, case.plan,
                                       scale=case.scale)
    assert out.dtype == dtype and out.shape == case.q.shape
    assert_close(out, ref, dtype)


@pytest.mark.parametrize("prefix_chunk, suffix_chunk", [(4, 4), (8, 3), (64, 64), (2, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_split_k_matches_reference(prefix_chunk, suffix_chunk, dtype, kernel_device):
    # Several splits on both sides: prefix states merged in the suffix kernel (one suffix
    # split) or everything merged by reduce_splits (several).
    case = decode_case(SHAPES["mixed-groups"], rep=2, dtype=dtype, device=kernel_device, seed=3)
    launch = K.plan_decode_launch(case.plan, num_heads=4, num_kv_heads=2, device=kernel_device,
                                  prefix_chunk=prefix_chunk, suffix_chunk=suffix_chunk)
    assert launch.prefix_splits == -(-37 // prefix_chunk)
    out = K.decode_attention(case.q, case.k_cache, case.v_cache, case.plan, scale=case.scale,
                             launch=launch)
    ref = K.decode_attention_reference(case.q, case.k_cache, case.v_cache, case.plan,
                                       scale=case.scale)
    assert_close(out, ref, dtype)


def test_decode_matches_engine_torch_path(kernel_device):
    case = decode_case(SHAPES["mixed-groups"], rep=4, page_size=16, dtype=torch.float32,
                       device=kernel_device, seed=7)
    out = K.decode_attention(case.q, case.k_cache, case.v_cache, case.plan, scale=case.scale)
    ref = engine_decode(case.q, case.k_cache, case.v_cache, case.plan, scale=case.scale,
                        impl="torch")
    assert_close(out, ref, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("rep", [1, 3])
def test_prefix_and_suffix_states_match_references(rep, dtype, kernel_device):
    case = decode_case([(21, [6, 1, 9]), (0, [4])], rep=rep, dtype=dtype, device=kernel_device,
                       seed=rep)
    args = (case.q, case.k_cache, case.v_cache, case.plan)
    for fn, ref_fn, kw in ((K.prefix_decode_attention, K.prefix_decode_reference,
                            {"chunk_len": 8}),
                           (K.suffix_decode_attention, K.suffix_decode_reference,
                            {"chunk_len": 4}),
                           (K.suffix_decode_attention, K.suffix_decode_reference, {})):
        o, lse = fn(*args, scale=case.scale, **kw)
        o_ref, lse_ref = ref_fn(*args, scale=case.scale)
        assert o.dtype == lse.dtype == torch.float32
        assert_close(o, o_ref, dtype)
        torch.testing.assert_close(lse, lse_ref, atol=1e-3, rtol=1e-3)
    o, lse = K.prefix_decode_attention(*args, scale=case.scale)
    assert torch.isinf(lse[3]).all() and (lse[3] < 0).all()      # group without a prefix
    assert torch.equal(o[3], torch.zeros_like(o[3]))


def test_empty_suffix_gives_prefix_only(kernel_device):
    # plan_decode never makes an empty suffix, but the kernels accept one: -inf state.
    case = decode_case([(10, [3, 2])], rep=2, device=kernel_device, seed=5)
    plan = dataclasses.replace(case.plan, suffix_lens=torch.tensor(
        [0, 2], dtype=torch.int32, device=kernel_device))
    o_s, lse_s = K.suffix_decode_attention(case.q, case.k_cache, case.v_cache, plan,
                                           scale=case.scale)
    assert torch.isinf(lse_s[0]).all() and torch.equal(o_s[0], torch.zeros_like(o_s[0]))
    out = K.decode_attention(case.q, case.k_cache, case.v_cache, plan, scale=case.scale)
    o_p, _ = K.prefix_decode_reference(case.q, case.k_cache, case.v_cache, plan,
                                       scale=case.scale)
    assert_close(out[0], o_p[0], torch.float32)
    assert_close(out, K.decode_attention_reference(case.q, case.k_cache, case.v_cache, plan,
                                                   scale=case.scale), torch.float32)


# -- merging ------------------------------------------------------------------------------


def _states(rows, heads, head_dim, seed):
    g = torch.Generator().manual_seed(seed)
    o1, o2 = torch.randn(2, rows, heads, head_dim, generator=g)
    lse1, lse2 = torch.randn(2, rows, heads, generator=g) * 4
    lse2[0] = float("-inf")                          # one side empty
    lse1[1] = lse2[1] = float("-inf")                # both empty
    o2[0] = float("nan")                             # an empty side's o must not leak
    return o1, lse1, o2, lse2


@pytest.mark.parametrize("head_dim", [64, 128, 80])
def test_merge_states_matches_reference_and_engine(head_dim, kernel_device):
    o1, lse1, o2, lse2 = (t.to(kernel_device) for t in _states(5, 3, head_dim, head_dim))
    o, lse = K.merge_states(o1, lse1, o2, lse2)
    o_ref, lse_ref = K.merge_states_reference(o1, lse1, o2, lse2)
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, lse_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(o[0], o1[0])          # merging with an empty set: identity
    assert torch.equal(o[1], torch.zeros_like(o[1])) and torch.isinf(lse[1]).all()
    keep = torch.tensor([0, 2, 3, 4])                # the engine merge on rows it handles
    o_e, lse_e = engine_merge(o1[keep], lse1[keep], o2[keep].nan_to_num(), lse2[keep])
    torch.testing.assert_close(o[keep], o_e, atol=1e-5, rtol=1e-5)


def test_reduce_splits_matches_reference_and_pairwise_merge(kernel_device):
    g = torch.Generator().manual_seed(0)
    o_part = torch.randn(5, 3, 2, 64, generator=g)
    lse_part = torch.randn(5, 3, 2, generator=g)
    lse_part[1:3, 0] = float("-inf")
    lse_part[:, 2, 1] = float("-inf")                # a row with no keys at all
    o_part, lse_part = o_part.to(kernel_device), lse_part.to(kernel_device)
    o, lse = K.reduce_splits(o_part, lse_part)
    o_ref, lse_ref = K.reduce_splits_reference(o_part, lse_part)
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, lse_ref, atol=1e-5, rtol=1e-5)
    o_m, lse_m = o_part[0], lse_part[0]
    for s in range(1, 5):
        o_m, lse_m = K.merge_states_reference(o_m, lse_m, o_part[s], lse_part[s])
    torch.testing.assert_close(o, o_m, atol=1e-5, rtol=1e-5)


# -- the reference against SDPA on a dense layout -------------------------------------------


@pytest.mark.parametrize("rep", [1, 4])
def test_decode_reference_matches_sdpa_on_dense_layout(rep):
    # Pages 0.. in order hold [prefix | suffix b] contiguously per branch, so each branch's
    # keys are a dense slice and SDPA can run on it.
    page_size, kv_heads, head_dim, prefix, suffixes = 4, 2, 64, 12, [3, 8, 1]
    g = torch.Generator().manual_seed(rep)
    prefix_pages = list(range(3))
    suffix_pages, next_page = [], 3
    for s in suffixes:
        suffix_pages.append(list(range(next_page, next_page + -(-s // page_size))))
        next_page += -(-s // page_size)
    k = torch.randn(next_page, page_size, kv_heads, head_dim, generator=g)
    v = torch.randn(next_page, page_size, kv_heads, head_dim, generator=g)
    q = torch.randn(len(suffixes), kv_heads * rep, head_dim, generator=g)
    plan = plan_decode(group_sizes=[len(suffixes)], group_prefix_pages=[prefix_pages],
                       group_prefix_lens=[prefix], suffix_pages=suffix_pages,
                       suffix_lens=suffixes, page_size=page_size)
    ref = K.decode_attention_reference(q, k, v, plan, scale=head_dim ** -0.5)
    flat_k, flat_v = k.reshape(-1, kv_heads, head_dim), v.reshape(-1, kv_heads, head_dim)
    for b, s in enumerate(suffixes):
        start = suffix_pages[b][0] * page_size
        idx = torch.cat([torch.arange(prefix), torch.arange(start, start + s)])
        kb = flat_k[idx].transpose(0, 1).unsqueeze(0)      # [1, kv_heads, keys, head_dim]
        vb = flat_v[idx].transpose(0, 1).unsqueeze(0)
        expect = F.scaled_dot_product_attention(q[b].unsqueeze(0).unsqueeze(2), kb, vb,
                                                enable_gqa=True)   # [1, heads, 1, head_dim]
        torch.testing.assert_close(ref[b], expect[0, :, 0], atol=1e-5, rtol=1e-5)


# -- full shapes on the GPU ------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("groups", [[(4096, [256] * 64)], [(1024, [64] * 8), (0, [300] * 3),
                                                          (16383, [1, 17, 129])]],
                         ids=["B64-P4096-S256", "mixed"])
def test_decode_full_shapes_on_gpu(groups, dtype):
    case = decode_case(groups, page_size=16, num_kv_heads=8, rep=4, head_dim=64, dtype=dtype,
                       device="cuda", seed=0)
    out = K.decode_attention(case.q, case.k_cache, case.v_cache, case.plan, scale=case.scale)
    ref = engine_decode(case.q.float(), case.k_cache.float(), case.v_cache.float(),
                        case.plan, scale=case.scale, impl="torch")
    assert_close(out, ref, dtype)


@pytest.mark.gpu
def test_engine_auto_impl_uses_kernels_on_cuda():
    case = decode_case([(100, [5, 9])], page_size=16, num_kv_heads=2, rep=2, head_dim=128,
                       dtype=torch.bfloat16, device="cuda", seed=1)
    auto = engine_decode(case.q, case.k_cache, case.v_cache, case.plan, scale=case.scale)
    direct = K.decode_attention(case.q, case.k_cache, case.v_cache, case.plan, scale=case.scale)
    assert torch.equal(auto, direct)


def test_odd_shapes_and_strided_inputs(kernel_device):
    # head_dim 80 (padded to 128 lanes), page_size 3, rep 3, q a strided view of a fused
    # qkv projection, and caches that are views into one [num_pages, 2, ...] tensor.
    case = decode_case([(7, [2, 6]), (3, [1])], page_size=3, num_kv_heads=2, rep=3,
                       head_dim=80, device=kernel_device, seed=11)
    qkv = torch.randn(3, 10, 80, device=kernel_device)
    qkv[:, :6] = case.q
    q = qkv[:, :6]                                           # stride(0) = 800, not 480
    kv = torch.stack([case.k_cache, case.v_cache], dim=1)   # [num_pages, 2, ...]
    k_view, v_view = kv[:, 0], kv[:, 1]
    assert not q.is_contiguous() and not k_view.is_contiguous()
    out = K.decode_attention(q, k_view, v_view, case.plan, scale=case.scale)
    ref = K.decode_attention_reference(case.q, case.k_cache, case.v_cache, case.plan,
                                       scale=case.scale)
    assert_close(out, ref, torch.float32)
