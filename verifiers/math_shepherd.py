"""Math-Shepherd-style PRM: each step ends with the tag ``ки``; score = P('+') vs P('-').

Contract (docs/algorithms.md#process-reward-models): the input is ``"{question} {step 1} ки\\n{step 2} ки..."``
(the question tokenized with BOS as the cached prompt; every step tokenized alone as
separator + step + " ки", which must end in the tag token). At each tag position the LM's next-token logits
of ``+`` and ``-`` only are softmaxed; the score is P(``+``). The tag id is the
last token of ``encode('ки')`` (``▁ки`` on SentencePiece, as the original takes it); ``+``/``-`` ids are those of ``"+ -"`` as the
original code takes them. A tokenizer without a single ``ки`` token is refused.
Checkpoints: any causal LM folder (Mistral in the original), loaded by transformers.
Must NOT know: strategies, how trajectories were searched.
"""

from __future__ import annotations

from typing import Any, Literal


from ttc.registry import VERIFIERS
from ttc.types import Problem
from ttc.verifiers.prm_core import LogitPairPRM, ModelVerifierConfig, build_causal_lm_prm

STEP_TAG = "ки"


class MathShepherdConfig(ModelVerifierConfig):
    name: Literal["math_shepherd"] = "math_shepherd"
    model: str = "peiyi9979/math-shepherd-mistral-7b-prm"


def plus_minus_ids(tokenizer: Any, good: str = "+", bad: str = "-") -> tuple[int, int]:
    from ttc.verifiers.prm_core import single_token_id

    ids = tokenizer.encode(f"{good} {bad}", add_special_tokens=False)
    ids = [i for i in ids if tokenizer.decode([i]).strip()]
    if len(ids) == 2:
        return int(ids[0]), int(ids[1])
    return (single_token_id(tokenizer, good, what="positive label"),
            single_token_id(tokenizer, bad, what="negative label"))


class MathShepherdFormat:
    probe_ids: tuple[int, ...] = ()

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        ids = tokenizer.encode(STEP_TAG, add_special_tokens=False)
        if not ids or tokenizer.decode(ids[-1:]).strip() != STEP_TAG:
            raise ValueError(f"the tokenizer has no single token for the step tag "
                             f"{STEP_TAG!r} (it encodes to {ids}); not a Math-Shepherd "
                             f"tokenizer.")
        self.tag_id = int(ids[-1])

    def prompt_ids(self, problem: Problem) -> list[int]:
        return self.tokenizer.encode(problem.question.strip(), add_special_tokens=True)

    def step_ids(self, step: str, index: int) -> list[int]:
        sep = " " if index == 0 else "\n"
        ids = self.tokenizer.encode(f"{sep}{step.strip()} {STEP_TAG}", add_special_tokens=False)
        if ids[-1] != self.tag_id:
            raise ValueError(f"step {index} ({step!r}) does not end in the step tag token "
                             f"after tokenization; the tokenizer merges {STEP_TAG!r} with "
                             f"its text.")
        return ids


class MathShepherdPRM(LogitPairPRM):
    def __init__(self, model: Any, tokenizer: Any, **options: Any) -> None:
        plus, minus = plus_minus_ids(tokenizer)
        super().__init__(MathShepherdFormat(tokenizer), model, tokenizer, plus_id=plus,
                         minus_id=minus, **options)


@VERIFIERS.register(MathShepherdConfig)
def build_math_shepherd(config: MathShepherdConfig, **_: object) -> MathShepherdPRM:
    return build_causal_lm_prm(config, MathShepherdPRM)
