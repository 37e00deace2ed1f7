"""NativeEngine.score_tokens: prompt log-probs from one prefill (what ``echo`` with
``logprobs`` and loglikelihood evaluation need), checked against the dense HF forward."""

from __future__ import annotations

import pytest
import torch
from fakes import tiny_engine, tiny_hf_model


@pytest.fixture(scope="module")
def tiny():
    return tiny_hf_model("llama", seed=3)


@pytest.mark.parametrize("length", [2, 9, 30])      # inside one page, across pages
def test_score_tokens_matches_the_dense_forward_and_frees_its_pages(tiny, length):
    cfg, hf = tiny
    engine = tiny_engine(tiny)
    try:
        ids = [int(t) for t in torch.randint(3, cfg.vocab_size, (length,),
                                             generator=torch.Generator().manual_seed(length))]
        before = engine.stats()
        logprobs, top, computed = engine.score_tokens(ids, top_k=3)
        with torch.no_grad():
            ref = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)
        assert logprobs[0] is None and top[0] == [] and computed == length
        want = [ref[i - 1, ids[i]].item() for i in range(1, length)]
        assert logprobs[1:] == pytest.approx(want, abs=1e-4)
        for i in range(1, length):
            vals, idx = ref[i - 1].topk(3)
            assert [t for t, _ in top[i]] == idx.tolist()
            assert [v for _, v in top[i]] == pytest.approx(vals.tolist(), abs=1e-4)
        after = engine.stats()
        assert after["handles"] == before["handles"]       # nothing left pinned
        engine.check_invariants()
        with pytest.raises(ValueError, match="top_k"):
            engine.score_tokens(ids, top_k=21)
    finally:
        engine.close()
