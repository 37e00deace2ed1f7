"""The native model runner against transformers on tiny random-weight models (fp32)."""

from __future__ import annotations

import pytest
import torch
from fakes import ByteTokenizer, tiny_hf_model

from ttc.engine.native.engine import NativeEngine
from ttc.types import ExpandRequest, SamplingParams

KINDS = ["llama", "qwen2", "qwen3"]


def _engine(cfg, hf, *, page_size=8, **kw):
    return NativeEngine.from_hf(cfg, hf.state_dict(), ByteTokenizer(), dtype=torch.float32,
                                page_size=page_size, kv_memory_gb=0.002, attention="torch", **kw)


@pytest.mark.parametrize("kind", KINDS)
def test_prefill_hidden_and_logits_match_transformers(kind):
    cfg, hf = tiny_hf_model(kind)
    eng = _engine(cfg, hf)
    ids = torch.randint(0, 256, (29,), generator=torch.Generator().manual_seed(1)).tolist()
    hidden, handle = eng.extend(ids[:11], ids[11:])       # 11 cached-prefix tokens, 18 new
    with torch.no_grad():
        ref = hf(torch.tensor([ids]), output_hidden_states=True)
    torch.testing.assert_close(hidden, ref.hidden_states[-1][0, 11:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(eng.logits(hidden), ref.logits[0, 11:], atol=1e-4, rtol=1e-4)
    # Extending the returned handle reuses its KV: same as running everything at once.
    more = [5, 7, 11, 13, 17, 19, 23, 29, 31, 37]
    h2, _ = eng.extend(handle, more)
    with torch.no_grad():
        ref2 = hf(torch.tensor([ids + more])).logits[0, len(ids):]
    torch.testing.assert_close(eng.logits(h2), ref2, atol=1e-4, rtol=1e-4)
    eng.check_invariants()


def test_llama3_rope_scaling_matches_transformers():
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    cfg, hf = tiny_hf_model("llama", rope_scaling=scaling, rope_theta=500000.0, tie=False)
    eng = _engine(cfg, hf)
    ids = list(range(40, 140))
    hidden, _ = eng.extend(ids[:1], ids[1:])
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0, 1:]
    torch.testing.assert_close(eng.logits(hidden), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("page_size", [4, 16])
def test_greedy_decode_matches_hf_generate_with_logprobs(kind, page_size):
    cfg, hf = tiny_hf_model(kind, seed=3)
    eng = _engine(cfg, hf, page_size=page_size)
    prompt = list(b"Shared prefix: 3 + 5 = ?")
    h = eng.handle_for_tokens(prompt)
    out = eng.expand([ExpandRequest(prefix=h, n=3,
                                    params=SamplingParams(temperature=0, max_tokens=12))])
    with torch.no_grad():
        gen = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                          eos_token_id=None, pad_token_id=0, output_scores=True,
                          return_dict_in_generate=True)
    ref = gen.sequences[0, len(prompt):].tolist()
    for c in out.continuations[0]:
        assert list(c.token_ids) == ref
        # per decode step: the chosen token's log-probability under transformers' logits
        ref_lp = [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(gen.scores, ref)]
        assert c.logprobs == pytest.approx(ref_lp, abs=1e-4)
    # A second step from the continuation reuses the tree and still matches.
    first = out.continuations[0][0]
    out2 = eng.expand([ExpandRequest(prefix=first.handle, n=1,
                                     params=SamplingParams(temperature=0, max_tokens=6))])
    with torch.no_grad():
        ref2 = hf.generate(torch.tensor([prompt + ref]), max_new_tokens=6, do_sample=False,
                           eos_token_id=None, pad_token_id=0)[0, len(prompt) + 12:].tolist()
    assert list(out2.continuations[0][0].token_ids) == ref2
    assert out2.usage.prefill_tokens == 0
    assert out2.usage.cached_tokens == len(prompt) + 12
    eng.check_invariants()


def test_bfloat16_cpu_close_to_fp32():
    cfg, hf = tiny_hf_model("llama")
    ids = list(range(50, 90))
    f32 = _engine(cfg, hf)
    bf = NativeEngine.from_hf(cfg, hf.state_dict(), ByteTokenizer(), dtype=torch.bfloat16,
                              page_size=8, kv_memory_gb=0.002)
    a, _ = f32.extend(ids[:1], ids[1:])
    b, _ = bf.extend(ids[:1], ids[1:])
    assert b.dtype == torch.bfloat16
    torch.testing.assert_close(bf.logits(b), f32.logits(a), atol=0.15, rtol=0.05)


def test_mixed_prefixes_in_one_call_match_transformers():
    """Two prompts and a deeper continuation decode together (several groups, shared and
    private ancestor pages) and each equals transformers' greedy continuation."""
    cfg, hf = tiny_hf_model("qwen2", seed=9)
    eng = _engine(cfg, hf, page_size=4)
    p1, p2 = list(b"First prompt, eleven"), list(b"Second one")
    h1, h2 = eng.handle_for_tokens(p1), eng.handle_for_tokens(p2)
    greedy = SamplingParams(temperature=0, max_tokens=7)
    step = eng.expand([ExpandRequest(prefix=h1, n=1, params=greedy)]).continuations[0][0]
    out = eng.expand([ExpandRequest(prefix=h1, n=2, params=greedy),
                      ExpandRequest(prefix=step.handle, n=2, params=greedy),
                      ExpandRequest(prefix=h2, n=1, params=greedy)])

    def ref(prompt):
        with torch.no_grad():
            return hf.generate(torch.tensor([prompt]), max_new_tokens=7, do_sample=False,
                               eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()

    expected = [ref(p1), ref(p1 + list(step.token_ids)), ref(p2)]
    for conts, exp in zip(out.continuations, expected):
        for c in conts:
            assert list(c.token_ids) == exp
    assert out.usage.prefill_tokens == len(p2)
    eng.check_invariants()


def test_extend_batch_reuses_partial_matches_and_embeds():
    """Token-id prefixes that end inside cached nodes split them at page boundaries; the
    hidden states still equal transformers' and cached tokens are not recomputed twice."""
    cfg, hf = tiny_hf_model("qwen3", seed=4)
    eng = _engine(cfg, hf, page_size=4)
    base = list(range(60, 90))                              # 30 tokens
    _, h0 = eng.extend(base[:1], base[1:])
    items = [(base[:13], [7, 8, 9]), (base[:22], [1, 2]), (base + [5], [3])]
    hidden, handles = eng.extend_batch(items)
    for (prefix, new), hid in zip(items, hidden):
        with torch.no_grad():
            ref = hf(torch.tensor([prefix + new]), output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(hid, ref[0, -len(new):], atol=1e-4, rtol=1e-4)
    # base[:13] matched up to the page boundary at 12, which split the cached node there
    assert eng.tree.match(base[:12]).end == 12
    vecs = eng.embed(handles)
    assert len(vecs) == 3 and all(abs(sum(x * x for x in v) - 1) < 1e-4 for v in vecs)
    eng.release(handles + [h0])
    assert eng.pool.num_used == 0
    eng.check_invariants()


def test_unsupported_architecture_and_missing_weights_raise_clear_errors():
    from transformers import GPT2Config

    from ttc.engine.native.model import from_hf

    with pytest.raises(ValueError, match="model_type must be one of"):
        from_hf(GPT2Config(), {})
    cfg, hf = tiny_hf_model("llama")
    sd = dict(hf.state_dict())
    del sd["model.layers.1.mlp.down_proj.weight"]
    with pytest.raises(ValueError, match="down_proj"):
        from_hf(cfg, sd)


def test_packed_bf16_linear_equals_plain_linear():
    from ttc.engine.native.model import linear, pack_linear

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(96, 40, generator=gen).to(torch.bfloat16)
    bias = torch.randn(96, generator=gen).to(torch.bfloat16)
    from ttc.engine.hardware import can_pack_linear

    packed = pack_linear(w)
    # the CPU bf16 path really uses the packed layout where this CPU's oneDNN runs bf16, and
    # keeps the plain weight elsewhere (an AVX2 CPU, or TTC_CPU_BF16=0)
    assert packed.is_mkldnn == can_pack_linear(torch.bfloat16, "cpu")
    assert pack_linear(w, enabled=False) is w
    for rows in (1, 16, 100):
        x = torch.randn(rows, 40, generator=gen).to(torch.bfloat16)
        torch.testing.assert_close(linear(x, packed, bias),
                                   torch.nn.functional.linear(x, w, bias), atol=2e-2, rtol=1e-2)
    # float32 weights are packed on x86 (oneDNN), plain elsewhere; both compute the same
    w32 = w.float()
    p32 = pack_linear(w32)
    assert p32.is_mkldnn == can_pack_linear(torch.float32, "cpu")
    x32 = torch.randn(16, 40, generator=gen)
    torch.testing.assert_close(linear(x32, p32, bias.float()),
                               torch.nn.functional.linear(x32, w32, bias.float()))


def test_engine_never_reads_uninitialised_memory(monkeypatch):
    """Attention reads the unwritten tail of partly filled pages under a -inf mask, and a
    mask cannot cancel NaN (0 * NaN = NaN): no buffer the engine reads may come from
    ``torch.empty`` unwritten. Model dirty memory by making every ``torch.empty`` NaN."""
    cfg, hf = tiny_hf_model("qwen2", seed=9)
    prompt = list(b"First prompt, eleven")
    with torch.no_grad():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=7, do_sample=False,
                          eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    real_empty = torch.empty

    def dirty_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", dirty_empty)
    eng = _engine(cfg, hf, page_size=4)
    out = eng.expand([ExpandRequest(prefix=eng.handle_for_tokens(prompt), n=2,
                                    params=SamplingParams(temperature=0, max_tokens=7))])
    assert [list(c.token_ids) for c in out.continuations[0]] == [ref, ref]


def test_zeroed_pool_reads_zero_and_keeps_writes():
    from ttc.engine.native.runner import zeroed_pool

    pool = zeroed_pool((2, 3, 5, 4), dtype=torch.bfloat16, device=torch.device("cpu"))
    assert pool.shape == (2, 3, 5, 4) and pool.dtype == torch.bfloat16
    assert pool.is_contiguous() and torch.count_nonzero(pool) == 0
    pool[1, 2].fill_(1.5)
    pool.view(-1, 4).index_copy_(0, torch.tensor([0]),
                                 torch.full((1, 4), 2.0, dtype=torch.bfloat16))
    assert pool[1, 2].eq(1.5).all() and pool[0, 0, 0].eq(2.0).all()
    assert torch.count_nonzero(pool) == 5 * 4 + 4


def _greedy(eng, prompt, *, n=3, tokens=12):
    root = eng.handle_for_tokens(prompt)
    out = eng.expand([ExpandRequest(prefix=root, n=n, params=SamplingParams(
        temperature=0, max_tokens=tokens))])
    return [list(c.token_ids) for c in out.continuations[0]]


@pytest.mark.parametrize("kind", KINDS)
def test_fused_forward_gives_the_reference_forwards_greedy_tokens(kind):
    """The fused decode path (one-op norms, residual inside the matmuls, rolled RoPE) and
    forward_reference, float32, same prompts (a shared prefix, branches, a second call
    on the cached prefix): identical greedy tokens and close hidden states."""
    cfg, hf = tiny_hf_model(kind, seed=4)
    fused, ref = _engine(cfg, hf, page_size=4), _engine(cfg, hf, page_size=4)
    ref.model.fused = False
    prompt = list(b"The shared prefix of several branches")
    for _ in range(2):
        assert _greedy(fused, prompt) == _greedy(ref, prompt)
    hf_, _ = fused.extend(prompt, [5, 6, 7])
    hr, _ = ref.extend(prompt, [5, 6, 7])
    torch.testing.assert_close(hf_, hr, atol=1e-4, rtol=1e-4)
    fused.close()
    ref.close()


def test_fused_forward_on_the_embedded_model_gives_the_reference_greedy_tokens():
    from ttc.engine.native.config import NativeBackendConfig
    from ttc.registry import BACKENDS

    gen = BACKENDS.build(NativeBackendConfig(dtype="float32", device="cpu",
                                             kv_memory_gb=0.1, threads=1))
    prompt = gen.format(__import__("ttc.types", fromlist=["Problem"]).Problem(
        question="What is 12 + 30? Explain step by step."))
    fused = _greedy(gen, prompt, n=2, tokens=24)
    gen.model.fused = False
    reference = _greedy(gen, prompt, n=2, tokens=24)
    assert fused == reference and len(fused[0]) >= 8
    gen.close()
