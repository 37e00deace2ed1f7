"""Triton extend attention equals its torch reference, the engine's torch path and SDPA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_cases import assert_close, extend_case

import ttc.engine.native.kernels as K
from ttc.engine.native.attention import extend_attention as engine_extend
from ttc.engine.native.attention import plan_extend

# (prefix_len, new_len) per sequence; page_size 4.
SHAPES = {
    "prefill-one-token": [(0, 1)],
    "page-boundaries": [(4, 4), (8, 1), (0, 8)],
    "mixed": [(0, 7), (5, 1), (9, 20), (3, 3)],
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("rep", [1, 4])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_extend_matches_reference(shape, rep, head_dim, dtype, kernel_device):
    case = extend_case(SHAPES[shape], rep=rep, head_dim=head_dim, dtype=dtype,
                       device=kernel_device, seed=rep + head_dim)
    out = K.extend_attention(case.q, case.k_cache, case.v_cache, case.plan, scale=case.scale)
    ref = K.extend_attention_reference(case.q, case.k_cache, case.v_cache, case.plan,
                                       scale=case.scale)
    assert out.dtype == dtype and out.shape == case.q.shape
    assert_close(out, ref, dtype)


def test_extend_matches_engine_torch_path(kernel_device):
    case = extend_case(SHAPES["mixed"], rep=3, page_size=16, device=kernel_device, seed=2)
    out = K.extend_attention(case.q, case.k_cache, case.v_cache, case.plan, scale=case.scale)
    ref = engine_extend(case.q, case.k_cache, case.v_cache, case.plan, scale=case.scale,
                        impl="torch")
    assert_close(out, ref, torch.float32)


@pytest.mark.parametrize("rep", [1, 2])
def test_extend_reference_matches_sdpa_on_dense_layout(rep):
    # One sequence in pages 0.. in order: its keys are a dense prefix of the flat cache.
    page_size, kv_heads, head_dim, prefix, new = 4, 2, 64, 6, 9
    g = torch.Generator().manual_seed(rep)
    pages = -(-(prefix + new) // page_size)
    k = torch.randn(pages, page_size, kv_heads, head_dim, generator=g)
    v = torch.randn(pages, page_size, kv_heads, head_dim, generator=g)
    q = torch.randn(new, kv_heads * rep, head_dim, generator=g)
    plan = plan_extend(prefix_lens=[prefix], new_lens=[new], page_tables=[list(range(pages))],
                       page_size=page_size)
    ref = K.extend_attention_reference(q, k, v, plan, scale=head_dim ** -0.5)
    kd = k.reshape(-1, kv_heads, head_dim)[:prefix + new].transpose(0, 1).unsqueeze(0)
    vd = v.reshape(-1, kv_heads, head_dim)[:prefix + new].transpose(0, 1).unsqueeze(0)
    # query i sits at position prefix + i: it sees keys 0..prefix+i
    mask = torch.arange(prefix + new).unsqueeze(0) <= torch.arange(new).unsqueeze(1) + prefix
    expect = F.scaled_dot_product_attention(q.transpose(0, 1).unsqueeze(0), kd, vd,
                                            attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(ref, expect[0].transpose(0, 1), atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_extend_full_shapes_on_gpu(dtype):
    case = extend_case([(0, 1000), (4096, 256), (17, 1), (300, 129)], page_size=16,
                       num_kv_heads=8, rep=4, head_dim=64, dtype=dtype, device="cuda")
    out = K.extend_attention(case.q, case.k_cache, case.v_cache, case.plan, scale=case.scale)
    ref = engine_extend(case.q.float(), case.k_cache.float(), case.v_cache.float(), case.plan,
                        scale=case.scale, impl="torch")
    assert_close(out, ref, dtype)


def test_extend_odd_shapes_and_strided_inputs(kernel_device):
    case = extend_case([(4, 5), (0, 2)], page_size=3, num_kv_heads=2, rep=3, head_dim=80,
                       device=kernel_device, seed=4)
    qkv = torch.randn(7, 10, 80, device=kernel_device)
    qkv[:, :6] = case.q
    kv = torch.stack([case.k_cache, case.v_cache], dim=1)
    out = K.extend_attention(qkv[:, :6], kv[:, 0], kv[:, 1], case.plan, scale=case.scale)
    ref = K.extend_attention_reference(case.q, case.k_cache, case.v_cache, case.plan,
                                       scale=case.scale)
    assert_close(out, ref, torch.float32)
