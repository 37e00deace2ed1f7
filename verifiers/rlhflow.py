"""RLHFlow-style PRM (Llama3.1-8B-PRM-*): chat turns, next-token P('+') vs P('-').

Contract (docs/algorithms.md#process-reward-models): user turn 1 = question + " " + step 1, every assistant turn
is ``+``, each later step is a new user turn. The score of step t is the softmax over the
logits of ``+`` and ``-`` at the position that predicts assistant turn t (the last token
of its assistant header). The chat template is rendered once with placeholders and cut
into pieces: the prompt ends right before step 1's text; step t's body is its text plus
the template text up to the assistant header (for t > 1 it starts with the previous
assistant turn ``+`` and its trailer, which is constant, so caching through it is safe:
docs/algorithms.md#process-reward-models). Step texts are stripped (the template trims message content).
Checkpoints: any causal LM with a chat template (Llama 3.1 in the original).
Must NOT know: strategies, how trajectories were searched.
"""

from __future__ import annotations

from typing import Any, Literal


from ttc.registry import VERIFIERS
from ttc.types import Problem
from ttc.verifiers.prm_core import LogitPairPRM, ModelVerifierConfig, build_causal_lm_prm

_Q, _S0, _S1 = "\x00Q\x00", "\x00S0\x00", "\x00S1\x00"
_PLUS = "\x00PLUS\x00"


class RLHFlowConfig(ModelVerifierConfig):
    name: Literal["rlhflow"] = "rlhflow"
    model: str = "RLHFlow/Llama3.1-8B-PRM-Deepseek-Data"


class RLHFlowFormat:
    probe_ids: tuple[int, ...] = ()

    def __init__(self, tokenizer: Any, *, good: str = "+", bad: str = "-") -> None:
        from ttc.verifiers.hf_models import template_pieces
        from ttc.verifiers.prm_core import single_token_id

        self.tokenizer = tokenizer
        self.plus_id = single_token_id(tokenizer, good, what="positive label")
        self.minus_id = single_token_id(tokenizer, bad, what="negative label")
        # head | Q " " S0 | user->assistant | PLUS | assistant->user | S1 | user->assistant | PLUS | tail
        pieces = template_pieces(tokenizer, [
            {"role": "user", "content": f"{_Q} {_S0}"},
            {"role": "assistant", "content": _PLUS},
            {"role": "user", "content": _S1},
            {"role": "assistant", "content": _PLUS}], [_Q, _S0, _PLUS, _S1, _PLUS],
            add_generation_prompt=False)
        self.head, between_q_s0, self.to_assistant, self.after_plus, to_assistant2, _ = pieces
        if between_q_s0 != " " or to_assistant2 != self.to_assistant:
            raise ValueError("the chat template renders user turns unevenly; cannot split it "
                             "into cacheable step segments.")
        self.plus_text = good
        self._after_plus_ids: list[int] | None = None

    def prompt_ids(self, problem: Problem) -> list[int]:
        return self.tokenizer.encode(self.head + problem.question.strip(), add_special_tokens=False)

    def step_ids(self, step: str, index: int) -> list[int]:
        enc = lambda s: self.tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
        body = enc(" " + step.strip()) if index == 0 else \
            [self.plus_id] + enc(self.after_plus) + enc(step.strip())
        return body + enc(self.to_assistant)


class RLHFlowPRM(LogitPairPRM):
    def __init__(self, model: Any, tokenizer: Any, **options: Any) -> None:
        fmt = RLHFlowFormat(tokenizer)
        super().__init__(fmt, model, tokenizer, plus_id=fmt.plus_id, minus_id=fmt.minus_id,
                         **options)


@VERIFIERS.register(RLHFlowConfig)
def build_rlhflow(config: RLHFlowConfig, **_: object) -> RLHFlowPRM:
    return build_causal_lm_prm(config, RLHFlowPRM)
