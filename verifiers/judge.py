"""A generative judge on any causal LM: P(Yes) to "Is the last step correct?".

Contract (docs/algorithms.md#generative-judges): the judge's prompt is the model's chat template around one
user message::

    Question:\\n{question}\\n\\nSolution so far:\\n{step 1}{step 2}...{step t}
    \\n\\nIs the last step correct? Answer Yes or No.

followed by the assistant header. Step t's score is ``P(Yes) / (P(Yes) + P(No))`` from
the next-token logits after the assistant header (one forward, no sampling). The prompt
up to "Solution so far:\\n" and the steps are cached and extended (each step tokenized
alone); the question and chat trailer after the steps (the *probe*) are run per scored
step on top of the cached steps and never cached. Without a chat template the plain text
``"...\\nIs the last step correct? Answer Yes or No.\\nAnswer:"`` and `` Yes``/`` No`` are used.

Which model: ``model=None`` with ``share_policy=True`` (the defaults) judges with the
policy model itself when the factory gets a ``generator=`` that hosts one: a native
engine (the judge then runs through its public ``extend_batch``, sharing the policy's
weights, KV pool and radix tree: the question prefix the policy already prefilled is
reused) or the transformers generator (shared weights, own prefix cache). Otherwise
(``simulated``/``http`` backends, or ``share_policy=False``) the embedded
SmolLM2-135M-Instruct (``model=None``) or the named checkpoint is loaded. This is the
offline default verifier.
Must NOT know: strategies, how trajectories were searched.
"""

from __future__ import annotations

from typing import Any, Literal


from ttc.protocols import HostsCausalLM, SupportsExtend
from ttc.registry import VERIFIERS
from ttc.types import Problem
from ttc.verifiers.prm_core import ModelVerifier, ModelVerifierConfig

QUESTION = "Is the last step correct? Answer Yes or No."
_STEPS = "\x00STEPS\x00"


class JudgeConfig(ModelVerifierConfig):
    name: Literal["judge"] = "judge"
    share_policy: bool = True


class JudgeFormat:
    def __init__(self, tokenizer: Any) -> None:
        from ttc.verifiers.prm_core import single_token_id

        self.tokenizer = tokenizer
        self.chat = bool(getattr(tokenizer, "chat_template", None))
        yes, no = ("Yes", "No") if self.chat else (" Yes", " No")
        self.yes_id = single_token_id(tokenizer, yes, what="judge answer")
        self.no_id = single_token_id(tokenizer, no, what="judge answer")
        if self.chat:
            from ttc.verifiers.hf_models import template_pieces

            head, tail = template_pieces(tokenizer, [
                {"role": "user", "content": f"Question:\n\x00Q\x00\n\nSolution so far:\n{_STEPS}"
                                            f"\n\n{QUESTION}"}], [_STEPS],
                add_generation_prompt=True)
            self._head, self._tail = head, tail
        else:
            self._head = "Question:\n\x00Q\x00\n\nSolution so far:\n"
            self._tail = f"\n\n{QUESTION}\nAnswer:"
        self.probe_ids = tuple(tokenizer.encode(self._tail, add_special_tokens=False))

    def prompt_ids(self, problem: Problem) -> list[int]:
        text = self._head.replace("\x00Q\x00", problem.question.strip())
        return self.tokenizer.encode(text, add_special_tokens=not self.chat)

    def step_ids(self, step: str, index: int) -> list[int]:
        return self.tokenizer.encode(step, add_special_tokens=False)


class _NativeLogitPair:
    def __init__(self, engine: Any, pos_id: int, neg_id: int) -> None:
        self.engine, self.ids = engine, [pos_id, neg_id]

    def __call__(self, hidden: Any) -> Any:
        return self.engine.logits(hidden)[:, self.ids].float().softmax(-1)[:, 0]


class Judge(ModelVerifier):
    """The judge verifier (see the module docstring)."""

    def __init__(self, *, tokenizer: Any, model: Any = None, engine: Any = None,
                 incremental: bool = True, max_cache_tokens: int = 65536) -> None:
        from ttc.verifiers.prm_core import LogitPairReadout, NativeHost, StepScorer, TorchHost

        self.format = JudgeFormat(tokenizer)
        self.incremental = incremental
        if engine is not None:
            host: Any = NativeHost(engine)
            readout: Any = _NativeLogitPair(engine, self.format.yes_id, self.format.no_id)
            self.shares = "native"
        else:
            head = model.get_output_embeddings()
            readout = LogitPairReadout(head.weight, self.format.yes_id, self.format.no_id,
                                       getattr(head, "bias", None))
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            host = TorchHost(model.base_model, pad_id=pad)
            self.shares = "weights" if model is not None else "none"
        self.scorer = StepScorer(self.format, host, readout, incremental=incremental,
                                 max_cache_tokens=max_cache_tokens)


@VERIFIERS.register(JudgeConfig)
def build_judge(config: JudgeConfig, *, generator: Any = None, **_: object) -> Judge:
    kw = config.scorer_options()
    if config.share_policy and config.model is None and generator is not None:
        if isinstance(generator, SupportsExtend):
            return Judge(tokenizer=generator.tokenizer, engine=generator, **kw)
        if isinstance(generator, HostsCausalLM):
            model, tok = generator.causal_lm()
            return Judge(tokenizer=tok, model=model, **kw)
    from ttc.verifiers.hf_models import load_causal_lm

    model, tok = load_causal_lm(config.model, dtype=config.dtype, device=config.device)
    judge = Judge(tokenizer=tok, model=model, **kw)
    judge.shares = "none"
    return judge
