"""The launchers reject bad input with one clear ValueError / TypeError, before any kernel."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from kernel_cases import decode_case, extend_case

import ttc.engine.native.kernels as K


@pytest.fixture
def dcase():
    return decode_case([(6, [3, 5])], rep=2, device="cpu", seed=0)


def _call(case, **changes):
    args = {"q": case.q, "k_cache": case.k_cache, "v_cache": case.v_cache, "plan": case.plan,
            "scale": case.scale}
    args.update(changes)
    scale = args.pop("scale")
    return K.decode_attention(*args.values(), scale=scale)


@pytest.mark.parametrize("change, error, words", [
    (lambda c: {"q": c.q[0]}, ValueError, "q must be [num_branches, num_heads, head_dim]"),
    (lambda c: {"q": c.q.to(torch.int32)}, TypeError, "q.dtype must be float16"),
    (lambda c: {"q": c.q.half()}, TypeError, "must share a dtype"),
    (lambda c: {"q": c.q[:, :3]}, ValueError, "multiple of num_kv_heads"),
    (lambda c: {"q": c.q[..., :32].contiguous()}, ValueError, "head_dim 32 but the cache"),
    (lambda c: {"q": c.q[:1]}, ValueError, "plan was built for 2 branches"),
    (lambda c: {"q": c.q.transpose(1, 2).contiguous().transpose(1, 2)}, ValueError,
     "contiguous last dimension"),
    (lambda c: {"v_cache": c.v_cache[:, :2]}, ValueError, "one shape"),
    (lambda c: {"k_cache": c.k_cache[:, :2], "v_cache": c.v_cache[:, :2]}, ValueError,
     "page_size 4"),
    (lambda c: {"k_cache": "pages"}, TypeError, "k_cache must be a torch.Tensor"),
    (lambda c: {"scale": 0.0}, ValueError, "scale must be a positive finite float"),
    (lambda c: {"scale": float("nan")}, ValueError, "scale must be a positive finite float"),
    (lambda c: {"plan": object()}, TypeError, "plan must be a DecodePlan"),
    (lambda c: {"plan": dataclasses.replace(c.plan, suffix_lens=c.plan.suffix_lens.long())},
     TypeError, "plan.suffix_lens must be int32"),
    (lambda c: {"plan": dataclasses.replace(
        c.plan, group_prefix_pages=c.plan.group_prefix_pages[:, :1])},
     ValueError, "plan.group_prefix_pages must have shape"),
])
def test_decode_rejects_bad_input(dcase, change, error, words):
    with pytest.raises(error) as info:
        _call(dcase, **change(dcase))
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_decode_rejects_a_launch_for_another_plan(dcase):
    other = decode_case([(6, [3])], rep=2, device="cpu", seed=0)
    launch = K.plan_decode_launch(other.plan, num_heads=4, num_kv_heads=2, device="cpu")
    with pytest.raises(ValueError, match="planned for 1 branches"):
        K.decode_attention(dcase.q, dcase.k_cache, dcase.v_cache, dcase.plan,
                           scale=dcase.scale, launch=launch)
    with pytest.raises(ValueError, match="chunk_len must be a positive"):
        K.plan_decode_launch(dcase.plan, num_heads=4, num_kv_heads=2, device="cpu",
                             prefix_chunk=0)


def test_cpu_tensors_need_the_interpreter(dcase, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="must be on a CUDA device"):
        _call(dcase)


def test_extend_rejects_bad_input():
    case = extend_case([(3, 2)], rep=2, device="cpu")
    with pytest.raises(ValueError, match="plan was built for 2 new tokens"):
        K.extend_attention(case.q[:1], case.k_cache, case.v_cache, case.plan, scale=case.scale)
    with pytest.raises(TypeError, match="plan must be an ExtendPlan"):
        K.extend_attention(case.q, case.k_cache, case.v_cache, object(), scale=case.scale)
    bad = dataclasses.replace(case.plan, page_tables=case.plan.page_tables.long())
    with pytest.raises(TypeError, match="plan.page_tables must be int32"):
        K.extend_attention(case.q, case.k_cache, case.v_cache, bad, scale=case.scale)


def test_merge_states_rejects_bad_input():
    o, lse = torch.zeros(2, 3, 8), torch.zeros(2, 3)
    with pytest.raises(TypeError, match="lse must be float32"):
        K.merge_states(o, lse.double(), o, lse)
    with pytest.raises(ValueError, match="lse must be"):
        K.merge_states(o, lse[:1], o, lse)
    with pytest.raises(ValueError, match="one shape"):
        K.merge_states(o, lse, o[:, :, :4], lse)
    with pytest.raises(ValueError, match="o_part must be"):
        K.reduce_splits(o, lse)
