"""A solution the model ended without a stated final answer answers with its last number."""

from __future__ import annotations

import pytest
from fakes import ScriptedGenerator

from ttc.config import GenerationConfig
from ttc.registry import STRATEGIES
from ttc.types import FinishReason, Problem


TEXTS = [("3 + 5 = 8.\n\nThis is a simple sum.", FinishReason.EOS),
         ("Adding them, 3 + 5 equals 8", FinishReason.EOS),
         ("The final answer is 45.", FinishReason.EOS),
         ("We start from 3 and count up to 7 and then", FinishReason.MAX_TOKENS)]


@pytest.mark.parametrize("fallback", [True, False])
def test_last_number_answers_only_solutions_the_model_ended(fallback):
    strategy = STRATEGIES.build({"name": "self_consistency", "n": 4},
                                generation=GenerationConfig(last_number_answer=fallback))
    gen = ScriptedGenerator(lambda call, request, sample: TEXTS[sample])
    result = strategy.run(Problem(question="What is 3 + 5?"), generator=gen,
                          verifier=None, budget=None)
    answers = [c.answer for c in result.candidates]
    if fallback:
        # the cut solution's last number (7) is not an answer: it never finished
        assert answers == ["8", "8", "45", None]
        assert result.answer == "8"
    else:
        assert answers == [None, None, "45", None]
        assert result.answer == "45"
