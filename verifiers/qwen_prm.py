"""Qwen2.5-Math-PRM-style process reward model: ``<extra_0>`` step tags and a 2-class head.

Contract (docs/algorithms.md#process-reward-models): the input is the chat template with system "Please reason
step by step, and put your final answer within \\boxed{}.", user = the question,
assistant = the steps each followed by ``<extra_0>``; the score of step t is
``softmax(head(h))[1]`` (the positive class) at the t-th ``<extra_0>``, where ``head`` is
``Linear(hidden, hidden) -> ReLU -> Linear(hidden, 2)`` on the final-norm hidden state
of a Qwen2 backbone. The cached prompt ends right after the assistant header (the
``<|im_end|>`` trailer is never scored, so never cached); each step is tokenized alone.
Checkpoints: a folder (or hub id) whose config names ``Qwen2ForProcessRewardModel``
with weights ``model.*`` (the backbone) and ``score.0.*`` / ``score.2.*`` (the head), read
without ``trust_remote_code``. Anything else is refused with a clear error.
Must NOT know: strategies, how trajectories were searched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal


from ttc.registry import VERIFIERS, ConfigError
from ttc.types import Problem
from ttc.verifiers.prm_core import ModelVerifier, ModelVerifierConfig

SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
STEP_TOKEN = "<extra_0>"
ARCHITECTURES = ("Qwen2ForProcessRewardModel",)


class QwenPRMConfig(ModelVerifierConfig):
    name: Literal["qwen_prm"] = "qwen_prm"
    model: str = "Qwen/Qwen2.5-Math-PRM-7B"


class QwenPRMFormat:
    probe_ids: tuple[int, ...] = ()

    def __init__(self, tokenizer: Any, *, system: str = SYSTEM) -> None:
        from ttc.verifiers.prm_core import single_token_id

        self.tokenizer = tokenizer
        self.system = system
        self.step_id = single_token_id(tokenizer, STEP_TOKEN, what="step token")

    def prompt_ids(self, problem: Problem) -> list[int]:
        from ttc.verifiers.hf_models import template_pieces

        head, _ = template_pieces(self.tokenizer, [
            {"role": "system", "content": self.system},
            {"role": "user", "content": problem.question},
            {"role": "assistant", "content": "\x00STEPS\x00"}], ["\x00STEPS\x00"],
            add_generation_prompt=False)
        return self.tokenizer.encode(head, add_special_tokens=False)

    def step_ids(self, step: str, index: int) -> list[int]:
        return self.tokenizer.encode(step.strip(), add_special_tokens=False) + [self.step_id]


class RewardHead:
    """``Linear -> ReLU -> Linear(2)`` on hidden states; returns P(positive class)."""

    def __init__(self, w0: Any, b0: Any, w2: Any, b2: Any) -> None:
        self.w0, self.b0, self.w2, self.b2 = (t.detach().float() for t in (w0, b0, w2, b2))
        if self.w2.shape[0] != 2:
            raise ValueError(f"the reward head must have 2 classes; it has {self.w2.shape[0]}.")

    def __call__(self, hidden: Any) -> Any:
        h = (hidden.float() @ self.w0.T + self.b0).relu()
        return (h @ self.w2.T + self.b2).softmax(-1)[:, 1]


class QwenPRM(ModelVerifier):
    """The adapter: format + backbone + reward head, scored through a StepScorer."""

    def __init__(self, backbone: Any, head: RewardHead, tokenizer: Any, *,
                 incremental: bool = True, max_cache_tokens: int = 65536) -> None:
        from ttc.verifiers.prm_core import StepScorer, TorchHost

        self.format = QwenPRMFormat(tokenizer)
        self.incremental = incremental
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.scorer = StepScorer(self.format, TorchHost(backbone, pad_id=pad), head,
                                 incremental=incremental, max_cache_tokens=max_cache_tokens)

    @classmethod
    def from_pretrained(cls, spec: str, *, dtype: str = "float32", device: str = "cpu",
                        tokenizer: Any = None, **kw: Any) -> "QwenPRM":
        """Load a checkpoint folder or hub id; ``tokenizer`` overrides the folder's own."""
        from ttc.verifiers.hf_models import (load_tokenizer, read_config, resolve_checkpoint,
                                             torch_dtype)

        folder = resolve_checkpoint(spec)
        cfg = read_config(folder)
        archs = tuple(cfg.get("architectures") or ())
        if not any(a in ARCHITECTURES for a in archs) or cfg.get("model_type") != "qwen2":
            raise ConfigError(f"{spec!r} is not a Qwen2.5-Math-PRM-style checkpoint "
                              f"(architectures {list(archs)}, model_type "
                              f"{cfg.get('model_type')!r}); expected {ARCHITECTURES[0]} on "
                              f"qwen2.")
        backbone, head = _load_weights(Path(folder), torch_dtype(dtype), device)
        return cls(backbone, head, tokenizer or load_tokenizer(Path(folder)), **kw)

def _load_weights(folder: Path, dtype: Any, device: str) -> tuple[Any, RewardHead]:
    import torch
    from safetensors.torch import load_file
    from transformers import Qwen2Config, Qwen2Model

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"PRM folder {str(folder)!r} has no *.safetensors weights.")
    state: dict[str, Any] = {}
    for f in files:
        state.update(load_file(str(f)))
    head_keys = ("score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias")
    missing = [k for k in head_keys if k not in state]
    if missing:
        raise ConfigError(f"PRM folder {str(folder)!r} lacks the reward head weights "
                          f"{missing}; not a Qwen2.5-Math-PRM-style checkpoint.")
    config = Qwen2Config.from_pretrained(str(folder))
    backbone = Qwen2Model(config)
    body = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    result = backbone.load_state_dict(body, strict=False)
    if result.missing_keys:
        raise ConfigError(f"PRM folder {str(folder)!r} misses backbone weights "
                          f"{result.missing_keys[:3]}...")
    backbone = backbone.to(device=device, dtype=dtype).eval()
    head = RewardHead(*(state[k].to(device=device, dtype=torch.float32) for k in head_keys))
    return backbone, head


@VERIFIERS.register(QwenPRMConfig)
def build_qwen_prm(config: QwenPRMConfig, **_: object) -> QwenPRM:
    return QwenPRM.from_pretrained(config.model, dtype=config.dtype, device=config.device,
                                   **config.scorer_options())
