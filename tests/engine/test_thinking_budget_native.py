"""Budget forcing on the native engine: the cap forces the end delimiter inside the one
decode job (no restart, no re-prefill of the trace), and the rule's count is exact."""

from __future__ import annotations

import pytest

from fakes import tiny_engine, tiny_hf_model
from ttc.engine.native.engine import thinking_delimiters_of
from ttc.stopping import ThinkingBudget
from ttc.types import ExpandRequest, SamplingParams

PROMPT = list(b"Think about 3 + 5. <think>")
END = "</think>"


@pytest.fixture(scope="module")
def tiny():
    return tiny_hf_model("llama", seed=5)


def test_the_cap_is_forced_in_the_batch_without_re_prefill(tiny):
    eng = tiny_engine(tiny, kv_memory_gb=0.004)
    h = eng.handle_for_tokens(PROMPT)
    end_ids = tuple(END.encode())                 # the byte tokenizer: 8 tokens
    rule = ThinkingBudget(end_ids=end_ids, end_text=END, cap=5, answer_text=" A:")
    out = eng.expand([ExpandRequest(prefix=h, n=2, params=SamplingParams(
        temperature=0.0, max_tokens=20, stop_rules=(rule,)))])
    for c in out.continuations[0]:
        assert bytes(c.token_ids[5:5 + len(end_ids) + 3]) == b"</think> A:"
        assert c.stats["thinking_tokens"] == 5.0 and c.stats["thinking_forced"] == 1.0
        assert c.stats["forced_tokens"] == float(len(end_ids) + 3)
        assert c.num_tokens == 20
    # One job: the prompt was prefilled once and nothing of the trace was run again.
    assert out.usage.prefill_tokens == len(PROMPT)


def test_extension_needs_a_one_token_delimiter():
    with pytest.raises(ValueError, match="one-token end delimiter"):
        ThinkingBudget(end_ids=tuple(END.encode()), end_text=END, extend=1)


def test_thinking_delimiters_are_read_from_the_vocabulary():
    class Vocab:
        def __init__(self, words):
            self.words = words

        def get_vocab(self):
            return {w: i for i, w in enumerate(self.words)}

    assert thinking_delimiters_of(Vocab(["a", "<think>", "</think>"])) == ("<think>", END)
    assert thinking_delimiters_of(Vocab(["a", "<think>"])) is None
    assert thinking_delimiters_of(object()) is None


def test_wait_replaces_the_end_delimiter_in_the_batch_and_the_kv_stays_exact(tiny):
    """Extension on the native engine: the sampled end delimiter is taken back before the
    model runs it and "W" is put in its place; the rest of the branch equals a fresh greedy
    continuation of the replaced sequence (so no KV of the dropped token remains)."""
    eng = tiny_engine(tiny, kv_memory_gb=0.004)
    greedy = SamplingParams(temperature=0.0, max_tokens=16)
    h = eng.handle_for_tokens(PROMPT)
    plain = eng.expand([ExpandRequest(prefix=h, n=1, params=greedy)]).continuations[0][0]
    pos = 0                               # the "end delimiter": the first greedy token
    end = plain.token_ids[pos]
    assert end != ord("W")
    rule = ThinkingBudget(end_ids=(end,), end_text=bytes([end]).decode("latin-1"), extend=1,
                          extend_text="W")
    out = eng.expand([ExpandRequest(prefix=h, n=1, params=SamplingParams(
        temperature=0.0, max_tokens=16, stop_rules=(rule,)))])
    (c,) = out.continuations[0]
    assert c.token_ids[:pos] == plain.token_ids[:pos] and c.token_ids[pos] == ord("W")
    assert c.stats["waits"] == 1.0 and c.stats["forced_tokens"] == 1.0
    assert out.usage.prefill_tokens == 0                 # the prompt was cached, nothing re-run
    ref = eng.expand([ExpandRequest(prefix=eng.handle_for_tokens(
        PROMPT + list(c.token_ids[:pos + 1])), n=1, params=SamplingParams(
            temperature=0.0, max_tokens=16 - pos - 1))]).continuations[0][0]
    assert c.token_ids[pos + 1:] == ref.token_ids
    eng.check_invariants()
