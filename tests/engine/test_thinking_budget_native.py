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
