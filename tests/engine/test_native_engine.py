"""The native engine's Generator behaviour: stops, budget, seeds, sharing, release, errors."""

from __future__ import annotations

import pytest
import torch
from fakes import ByteTokenizer, tiny_engine, tiny_hf_model

from ttc.engine.native.kv_cache import KVCacheFull
from ttc.engine.native.engine import NativeGenerator
from ttc.engine.native.scheduler import StopTracker
from ttc.protocols import Generator
from ttc.types import ExpandRequest, FinishReason, SamplingParams


@pytest.fixture(scope="module")
def tiny():
    return tiny_hf_model("llama", seed=5)


def _engine(tiny, **kw):
    return tiny_engine(tiny, **kw)


PROMPT = list(b"Question: what is 3 + 5? Answer:")


def test_implements_generator_protocol(tiny):
    cfg, hf = tiny
    gen = NativeGenerator.from_hf(cfg, hf.state_dict(), ByteTokenizer(), dtype=torch.float32,
                                  page_size=8, kv_memory_gb=0.002)
    assert isinstance(gen, Generator)


def test_seeded_sampling_is_reproducible_and_independent_of_batch(tiny):
    eng = _engine(tiny)
    h = eng.handle_for_tokens(PROMPT)
    p = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_tokens=10, seed=7)
    a = eng.expand([ExpandRequest(prefix=h, n=4, params=p)]).continuations[0]
    # same seed, different batch mates: branch i draws the same tokens
    other = SamplingParams(temperature=0.7, max_tokens=5, seed=1)
    b = eng.expand([ExpandRequest(prefix=h, n=2, params=other),
                    ExpandRequest(prefix=h, n=4, params=p)]).continuations[1]
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert len({c.token_ids for c in a}) > 1          # branches differ from each other
    eng.check_invariants()


def test_top_k_one_is_greedy(tiny):
    eng = _engine(tiny)
    h = eng.handle_for_tokens(PROMPT)
    greedy = eng.expand([ExpandRequest(prefix=h, n=1, params=SamplingParams(
        temperature=0, max_tokens=8))]).continuations[0][0]
    topk = eng.expand([ExpandRequest(prefix=h, n=3, params=SamplingParams(
        temperature=1.5, top_k=1, max_tokens=8, seed=3))]).continuations[0]
    assert all(c.token_ids == greedy.token_ids for c in topk)


def test_stop_strings_eos_and_max_tokens(tiny):
    eng = _engine(tiny)
    h = eng.handle_for_tokens(PROMPT)
    free = eng.expand([ExpandRequest(prefix=h, n=1, params=SamplingParams(
        temperature=0, max_tokens=30))]).continuations[0][0]
    assert free.finish is FinishReason.MAX_TOKENS and free.num_tokens == 30
    text = ByteTokenizer().decode(free.token_ids)
    # stop on a string that appears in the greedy text: the text keeps it, nothing after
    stop = text[5:7]
    cut = eng.expand([ExpandRequest(prefix=h, n=1, params=SamplingParams(
        temperature=0, max_tokens=30, stop=(stop,)))]).continuations[0][0]
    assert cut.finish is FinishReason.STOP
    assert cut.text.endswith(stop) and stop not in cut.text[:-1]
    assert free.token_ids[:cut.num_tokens] == cut.token_ids
    eng.check_invariants()


def test_eos_stops_a_branch_and_is_kept(tiny):
    free = _engine(tiny)
    h = free.handle_for_tokens(PROMPT)
    greedy = free.expand([ExpandRequest(prefix=h, n=1, params=SamplingParams(
        temperature=0, max_tokens=10))]).continuations[0][0].token_ids
    eos = greedy[3]
    first = greedy.index(eos)                   # the first time that token comes out
    eng = _engine(tiny, eos_ids=[eos])
    h = eng.handle_for_tokens(PROMPT)
    (c,) = eng.expand([ExpandRequest(prefix=h, n=1, params=SamplingParams(
        temperature=0, max_tokens=10))]).continuations[0]
    assert c.finish is FinishReason.EOS and c.ended
    assert c.token_ids == greedy[:first + 1]
    eng.check_invariants()


def test_token_limit_cuts_with_budget_and_counts_exactly(tiny):
    eng = _engine(tiny)
    h = eng.handle_for_tokens(PROMPT)
    out = eng.expand([ExpandRequest(prefix=h, n=4, params=SamplingParams(
        temperature=1.0, max_tokens=50, seed=0))], token_limit=22)
    conts = out.continuations[0]
    assert out.usage.generated_tokens == sum(c.num_tokens for c in conts) <= 22
    assert all(c.finish is FinishReason.BUDGET for c in conts)
    assert out.usage.generated_tokens == 20               # lockstep: 5 tokens x 4 branches
    # zero budget: empty continuations, still valid handles
    out = eng.expand([ExpandRequest(prefix=h, n=2, params=SamplingParams(max_tokens=5))],
                     token_limit=0)
    assert all(c.num_tokens == 0 and c.finish is FinishReason.BUDGET
               for c in out.continuations[0])
    eng.check_invariants()


def test_prefix_cache_accounting_and_release_frees_pages(tiny):
    eng = _engine(tiny)
    h = eng.handle_for_tokens(PROMPT)
    p = SamplingParams(temperature=0.8, max_tokens=12, seed=1)
    out = eng.expand([ExpandRequest(prefix=h, n=3, params=p)])
    assert out.usage.prefill_tokens == len(PROMPT)
    assert out.usage.cached_tokens == 0
    conts = out.continuations[0]
    used = eng.pool.num_used
    assert eng.kv_bytes() == used * eng.runner.bytes_per_page
    # pages: prompt pages + per branch ceil((tail of prompt page + 12) / 8)
    ps = 8
    prompt_pages = -(-len(PROMPT) // ps)
    branch_pages = -(-(len(PROMPT) % ps + 12) // ps)
    assert used == prompt_pages + 3 * branch_pages
    # a second root for the same prompt is fully cached
    h2 = eng.handle_for_tokens(PROMPT)
    out2 = eng.expand([ExpandRequest(prefix=h2, n=1, params=p)])
    assert out2.usage.prefill_tokens == 0 and out2.usage.cached_tokens == len(PROMPT)
    eng.release([c.handle for c in out2.continuations[0]])
    before = eng.pool.num_used
    eng.release([conts[0].handle])
    assert eng.pool.num_used == before - branch_pages
    eng.release([h, h2])                          # prompt still shared by live branches
    assert eng.pool.num_used == before - branch_pages
    eng.release([c.handle for c in conts[1:]])
    assert eng.pool.num_used == 0
    eng.check_invariants()
    with pytest.raises(ValueError, match="not live"):
        eng.expand([ExpandRequest(prefix=h, n=1, params=p)])


def test_pool_exhausted_names_the_setting(tiny):
    eng = _engine(tiny, kv_memory_gb=20 * 8 * eng_bytes(tiny) / 2**30)
    assert eng.pool.num_pages == 20
    h = eng.handle_for_tokens(PROMPT)
    with pytest.raises(KVCacheFull, match="backend.kv_memory_gb"):
        eng.expand([ExpandRequest(prefix=h, n=8, params=SamplingParams(
            temperature=0, max_tokens=64))])
    eng.check_invariants()
    # nothing leaked: only the prompt's pages remain
    assert eng.pool.num_used == -(-len(PROMPT) // 8)


def eng_bytes(tiny):
    """KV bytes of one token (fp32)."""
    cfg, _ = tiny
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (64 // 4) * 4


def test_bad_inputs(tiny):
    eng = _engine(tiny)
    with pytest.raises(ValueError, match="context"):
        eng.handle_for_tokens(list(range(100)) * 6)
    with pytest.raises(ValueError, match="at least one"):
        eng.handle_for_tokens([])
    h = eng.handle_for_tokens(PROMPT)
    with pytest.raises(ValueError, match="token_limit"):
        eng.expand([ExpandRequest(prefix=h, n=1, params=SamplingParams())], token_limit=-1)
    with pytest.raises(ValueError):
        SamplingParams(stop=("",))
    with pytest.raises(ValueError, match="max_tokens|greater"):
        SamplingParams(max_tokens=0)


def test_stop_tracker_handles_split_utf8():
    tok = ByteTokenizer()
    tr = StopTracker(tok, ["é!"])
    hits = [tr.push(b) for b in "caf".encode() + "é".encode() + b"!"]
    assert hits == [False] * 5 + [True]
    assert tr.text == "café!"


def test_unpinned_cache_is_reused_then_evicted_under_pressure(tiny):
    eng = _engine(tiny, kv_memory_gb=16 * 8 * eng_bytes(tiny) / 2**30)
    assert eng.pool.num_pages == 16
    h = eng.handle_for_tokens(PROMPT)
    out = eng.expand([ExpandRequest(prefix=h, n=1, params=SamplingParams(
        temperature=0, max_tokens=8))])
    c = out.continuations[0][0]
    eng.unpin([h, c.handle], value=0.5)
    h2 = eng.handle_for_tokens(PROMPT)            # served from the unpinned cache
    again = eng.expand([ExpandRequest(prefix=h2, n=1, params=SamplingParams(
        temperature=0, max_tokens=1))])
    assert again.usage.prefill_tokens == 0
    eng.release([h2, again.continuations[0][0].handle])   # frees nothing: h is cached
    assert eng.pool.num_used == 5 and c.handle in eng._handles
    other = eng.handle_for_tokens(list(b"A different and much longer prompt text here!!"))
    eng.expand([ExpandRequest(prefix=other, n=2, params=SamplingParams(
        temperature=0, max_tokens=16))])            # 12 pages: evicts the cached ones
    eng.check_invariants()
    with pytest.raises(ValueError, match="not live"):
        eng.pin([c.handle])


def test_context_limit_ends_branches_then_refuses_to_grow(tiny):
    eng = _engine(tiny, kv_memory_gb=0.004)
    h = eng.handle_for_tokens([65 + i % 26 for i in range(500)])     # context is 512
    out = eng.expand([ExpandRequest(prefix=h, n=1, params=SamplingParams(
        temperature=0, max_tokens=50))])
    c = out.continuations[0][0]
    assert c.finish is FinishReason.MAX_TOKENS and c.num_tokens == 12
    with pytest.raises(ValueError, match="context"):
        eng.expand([ExpandRequest(prefix=c.handle, n=1, params=SamplingParams())])


def test_config_errors_name_the_setting():
    from ttc.engine.native.config import NativeBackendConfig
    from ttc.registry import BACKENDS, ConfigError

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="backend.attention"):
            BACKENDS.build(NativeBackendConfig(attention="triton", device="cpu"))
    with pytest.raises(ConfigError, match="backend.dtype"):
        BACKENDS.build(NativeBackendConfig(dtype="float16", device="cpu"))
    with pytest.raises(ConfigError, match="page_size"):
        BACKENDS.make_config({"name": "native", "page_size": 0})
