"""A solution the model ended without a stated final answer answers with its last number."""

from __future__ import annotations

from typing import Sequence

import pytest

from ttc.config import GenerationConfig
from ttc.registry import STRATEGIES
from ttc.types import (Continuation, ExpandOutput, ExpandRequest, FinishReason,
                       GenerationUsage, Problem)


class ScriptedGenerator:
    """Answers every request with the given texts in turn, each ended by EOS or cut."""

    def __init__(self, texts: Sequence[tuple[str, FinishReason]]) -> None:
        self.texts = list(texts)
        self.next = 0

    def root(self, problem: Problem) -> int:
        return -1

    def expand(self, requests: Sequence[ExpandRequest], *, token_limit=None) -> ExpandOutput:
        out, generated = [], 0
        for req in requests:
            conts = []
            for _ in range(req.n):
                text, finish = self.texts[self.next % len(self.texts)]
                self.next += 1
                ids = tuple(range(len(text.split())))
                generated += len(ids)
                conts.append(Continuation(handle=self.next, token_ids=ids, text=text,
                                          logprobs=(-0.1,) * len(ids), finish=finish))
            out.append(tuple(conts))
        return ExpandOutput(continuations=tuple(out),
                            usage=GenerationUsage(generated_tokens=generated))

    def pin(self, handles, *, value=None) -> None:
        pass

    def release(self, handles) -> None:
        pass

    def kv_bytes(self) -> int:
        return 0


TEXTS = [("3 + 5 = 8.\n\nThis is a simple sum.", FinishReason.EOS),
         ("Adding them, 3 + 5 equals 8", FinishReason.EOS),
         ("The final answer is 45.", FinishReason.EOS),
         ("We start from 3 and count up to 7 and then", FinishReason.MAX_TOKENS)]


@pytest.mark.parametrize("fallback", [True, False])
def test_last_number_answers_only_solutions_the_model_ended(fallback):
    strategy = STRATEGIES.build({"name": "self_consistency", "n": 4},
                                generation=GenerationConfig(last_number_answer=fallback))
    result = strategy.run(Problem(question="What is 3 + 5?"), generator=ScriptedGenerator(TEXTS),
                          verifier=None, budget=None)
    answers = [c.answer for c in result.candidates]
    if fallback:
        # the cut solution's last number (7) is not an answer: it never finished
        assert answers == ["8", "8", "45", None]
        assert result.answer == "8"
    else:
        assert answers == [None, None, "45", None]
        assert result.answer == "45"
