"""The HF baseline backend: greedy == model.generate, budgets, stops, usage, seeds, release."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fakes import save_tiny, tiny_llama, tiny_tokenizer
from ttc.engine.backends.hf import HFBackendConfig
from ttc.engine.backends.hf_generator import HFGenerator
from ttc.registry import BACKENDS
from ttc.types import ExpandRequest, FinishReason, Problem, SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=12)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny matmuls gain nothing from a second thread, and on a busy machine OpenMP's
    # hand-off can cost milliseconds per call.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def parts():
    tok = tiny_tokenizer()
    return tiny_llama(tok), tok


@pytest.fixture()
def gen(parts):
    model, tok = parts
    return HFGenerator(model, tok)


def _generate(model, ids, n):
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False,
                         output_scores=True, return_dict_in_generate=True)
    return out.sequences[0, len(ids):].tolist(), out.scores


def _one(gen, handle, params, n=1, token_limit=None):
    return gen.expand([ExpandRequest(prefix=handle, n=n, params=params)], token_limit=token_limit)


def test_greedy_matches_generate_and_is_deterministic(gen, parts):
    model, _ = parts
    root = gen.root(Problem(question="What is 12 and 30?"))
    out = _one(gen, root, GREEDY, n=3)
    ref, scores = _generate(model, gen.token_ids(root), 12)
    conts = out.continuations[0]
    assert [list(c.token_ids) for c in conts] == [ref] * 3
    assert conts[0].finish is (FinishReason.EOS if ref[-1] == gen.tokenizer.eos_token_id
                               else FinishReason.MAX_TOKENS)
    expected_lp = [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(scores, ref)]
    assert conts[0].logprobs == pytest.approx(expected_lp, abs=1e-4)
    again = _one(gen, root, GREEDY)
    assert again.continuations[0][0].token_ids == conts[0].token_ids


def test_child_continuation_matches_generate(gen, parts):
    model, _ = parts
    root = gen.root(Problem(question="Add 3 and 4."))
    first = _one(gen, root, SamplingParams(temperature=0, max_tokens=5)).continuations[0][0]
    child = first.handle
    assert gen.token_ids(child) == gen.token_ids(root) + list(first.token_ids)
    out = _one(gen, child, GREEDY, n=2)
    ref, _ = _generate(model, gen.token_ids(child), 12)
    assert [list(c.token_ids) for c in out.continuations[0]] == [ref, ref]
    assert out.usage.prefill_tokens == 1                   # the child's last sampled token
    assert out.usage.cached_tokens == gen.token_count(child) - 1


def test_usage_counts(gen):
    root = gen.root(Problem(question="Add 3 and 4."))
    n_prompt = gen.token_count(root)
    out = _one(gen, root, GREEDY, n=4)
    assert out.usage.prefill_tokens == n_prompt and out.usage.cached_tokens == 0
    assert out.usage.generated_tokens == sum(c.num_tokens for c in out.continuations[0])
    assert out.usage.peak_kv_bytes >= gen.kv_bytes() > 0
    req = ExpandRequest(prefix=root, n=2, params=GREEDY)
    out2 = gen.expand([req, req])
    assert out2.usage.prefill_tokens == 0 and out2.usage.cached_tokens == 2 * n_prompt
    assert [c.token_ids for c in out2.continuations[1]] == [c.token_ids for c in out2.continuations[0]]


def test_token_limit_is_a_hard_cap(gen):
    root = gen.root(Problem(question="Add 3 and 4."))
    no_eos = SamplingParams(temperature=1.0, max_tokens=50, seed=3)
    free = _one(gen, root, no_eos, n=4).continuations[0]
    steps = min(c.num_tokens for c in free)
    assert steps >= 3, "the tiny model should not end at once"
    # Lockstep: 4 branches, 10 tokens -> two full steps (8 tokens), then all cut.
    out = _one(gen, root, no_eos, n=4, token_limit=10)
    conts = out.continuations[0]
    assert [c.num_tokens for c in conts] == [2, 2, 2, 2]
    assert all(c.finish is FinishReason.BUDGET for c in conts)
    assert out.usage.generated_tokens == 8
    assert [c.token_ids for c in conts] == [f.token_ids[:2] for f in free]  # seeds per branch
    # A budget-cut branch keeps KV for all its tokens: continuing it prefills nothing.
    more = _one(gen, conts[0].handle, no_eos, n=1)
    assert more.usage.prefill_tokens == 0
    zero = _one(gen, root, no_eos, n=3, token_limit=0).continuations[0]
    assert all(c.num_tokens == 0 and c.finish is FinishReason.BUDGET for c in zero)
    assert gen.token_ids(zero[0].handle) == gen.token_ids(root)


def test_token_limit_across_requests(gen):
    a = gen.root(Problem(question="Add 3 and 4."))
    b = gen.root(Problem(question="A train leaves at noon."))
    p = SamplingParams(temperature=1.0, max_tokens=50, seed=1)
    out = gen.expand([ExpandRequest(prefix=a, n=2, params=p), ExpandRequest(prefix=b, n=3, params=p)],
                     token_limit=12)
    total = sum(c.num_tokens for cs in out.continuations for c in cs)
    assert total == out.usage.generated_tokens <= 12
    assert [len(cs) for cs in out.continuations] == [2, 3]
    with pytest.raises(ValueError, match="token_limit"):
        _one(gen, a, p, token_limit=-1)


def test_stop_string_kept_and_nothing_after(gen):
    root = gen.root(Problem(question="Add 3 and 4."))
    params = SamplingParams(temperature=0, max_tokens=40)
    full = _one(gen, root, params).continuations[0][0]
    text = full.text
    assert len(text) > 8
    start = next(i for i in range(2, len(text) - 1) if "\ufffd" not in text[i:i + 2])
    stop = text[start:start + 2]
    cut = text.index(stop) + len(stop)
    out = _one(gen, root, params.model_copy(update={"stop": (stop, "never-seen-stop")}))
    c = out.continuations[0][0]
    assert c.finish is FinishReason.STOP
    assert c.text == text[:cut] and c.text.endswith(stop)
    assert c.token_ids == full.token_ids[:c.num_tokens]
    assert gen.tokenizer.decode(list(c.token_ids), skip_special_tokens=True).startswith(c.text)


def test_seeded_sampling_per_branch(gen):
    root = gen.root(Problem(question="Add 3 and 4."))
    p = SamplingParams(temperature=0.9, top_p=0.9, top_k=50, max_tokens=8, seed=7)
    four = [c.token_ids for c in _one(gen, root, p, n=4).continuations[0]]
    two = [c.token_ids for c in _one(gen, root, p, n=2).continuations[0]]
    assert two == four[:2]
    assert len(set(four)) > 1
    other = [c.token_ids for c in _one(gen, root, p.model_copy(update={"seed": 8}), n=4)
             .continuations[0]]
    assert other != four
    no_lp = _one(gen, root, p.model_copy(update={"logprobs": False})).continuations[0][0]
    assert no_lp.logprobs == () and no_lp.num_tokens > 0


def test_release_frees_kv(gen):
    assert gen.kv_bytes() == 0
    root = gen.root(Problem(question="Add 3 and 4."))
    assert gen.kv_bytes() == 0                          # computed at the first expand
    out = _one(gen, root, SamplingParams(temperature=1.0, max_tokens=6, seed=0), n=3)
    kids = [c.handle for c in out.continuations[0]]
    with_kids = gen.kv_bytes()
    gen.release(kids)
    after_root = gen.kv_bytes()
    assert 0 < after_root < with_kids
    per_token = 2 * 2 * 2 * 16 * 4                      # layers * (k, v) * kv_heads * head_dim * fp32
    assert after_root == gen.token_count(root) * per_token
    gen.pin([root], value=0.5)
    gen.release([root])
    assert gen.kv_bytes() == 0
    with pytest.raises(ValueError, match="is not live"):
        _one(gen, root, GREEDY)
    with pytest.raises(ValueError, match="is not live"):
        gen.release([root])


def test_children_share_the_prefix_kv(gen):
    root = gen.root(Problem(question="Add 3 and 4."))
    out = _one(gen, root, SamplingParams(temperature=1.0, max_tokens=6, seed=0), n=3)
    per_token = 2 * 2 * 2 * 16 * 4
    own = sum(c.num_tokens - 1 for c in out.continuations[0])   # last token: no KV yet
    n_prompt = gen.token_count(root)
    assert gen.kv_bytes() == (n_prompt + own) * per_token
    gen.release([root])                   # the children still use the prompt's KV
    assert gen.kv_bytes() == (n_prompt + own) * per_token


def test_context_limit(gen):
    h = gen.handle_for_tokens([5] * 250)           # max_position_embeddings = 256
    out = _one(gen, h, SamplingParams(temperature=0, max_tokens=50))
    c = out.continuations[0][0]
    assert c.num_tokens <= 6 and (c.finish in (FinishReason.MAX_TOKENS, FinishReason.EOS))
    full = gen.handle_for_tokens([5] * 256)
    with pytest.raises(ValueError, match="context is 256 tokens"):
        _one(gen, full, GREEDY)


def test_registry_yaml_and_factory(tmp_path):
    conf = Path(__file__).parents[2] / "ttc" / "conf" / "backend" / "hf.yaml"
    data = yaml.safe_load(conf.read_text())
    assert set(data) == set(HFBackendConfig.model_fields)
    assert BACKENDS.make_config(data) == HFBackendConfig()
    save_tiny(tmp_path / "m")
    gen = BACKENDS.build({"name": "hf", "model": str(tmp_path / "m"), "dtype": "float32",
                          "device": "cpu", "system_prompt": ""})
    assert isinstance(gen, HFGenerator)
    root = gen.root(Problem(question="Add 3 and 4."))
    assert "system" not in gen.tokenizer.decode(gen.token_ids(root))
    out = gen.expand([ExpandRequest(prefix=root, n=2, params=GREEDY)])
    assert len(out.continuations[0]) == 2


def test_engine_import_stays_light():
    code = ("import sys, ttc.engine, ttc.engine.backends.hf; "
            "print('ttc.engine.backends.hf_generator' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_sliding_window_model_is_refused(parts):
    from transformers import MistralConfig, MistralForCausalLM

    _, tok = parts
    cfg = MistralConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                        sliding_window=16)
    with pytest.raises(ValueError, match="sliding-window attention"):
        HFGenerator(MistralForCausalLM(cfg), tok)
