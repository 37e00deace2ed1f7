"""The engine as a backend: built from ``backend=native`` settings, prompts from problems.

Contract: :class:`ChatPrompts` is what :class:`~ttc.engine.native.engine.NativeGenerator`
adds to the engine. ``from_config`` asks :mod:`ttc.engine.hardware` for the device, dtype,
attention and weight packing (printing its one-line note when it picked float32), loads
the model and builds the engine; ``root(problem)`` formats the problem with the model's
chat template (:mod:`ttc.engine.prompting`) and returns a pinned handle; ``encode`` gives
token ids of plain text (probe suffixes, delimiters). ``thinking_delimiters`` is
``("<think>", "</think>")`` where the tokenizer has each as one token, for budget forcing
(:class:`ttc.stopping.ThinkingBudget`): the cap is a ``Force`` inside the batch, a "Wait"
extension a ``Replace`` of the sampled end delimiter, and the scheduler runs both.
Must NOT know: jobs, the step loop, pages (it asks the engine for handles).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from ttc.engine.hardware import Choice, choose
from ttc.engine.prompting import DEFAULT_SYSTEM_PROMPT, format_prompt
from ttc.types import Handle, Problem

if TYPE_CHECKING:
    from ttc.engine.native.config import NativeBackendConfig
    from ttc.engine.native.engine import NativeGenerator
    from ttc.engine.native.lock import TicketLock

__all__ = ["ChatPrompts", "thinking_delimiters_of"]


class ChatPrompts:
    """``from_config``, ``root``, ``format``, ``encode`` (a mixin over the engine)."""

    tokenizer: Any
    _lock: TicketLock
    # and the engine's from_hf and handle_for_tokens (engine.py, handles.py)

    system_prompt: str | None = None
    hardware: Choice | None = None       # what ttc.engine.hardware chose for this machine
    thinking_delimiters: tuple[str, str] | None = None

    @classmethod
    def from_config(cls, config: NativeBackendConfig) -> NativeGenerator:
        choice = choose(device=config.device, dtype=config.dtype, attention=config.attention)
        if choice.note:
            print(f"ttc: {choice.note}", file=sys.stderr)
        from ttc.engine.loader import load_model  # noqa: PLC0415  (heavy)

        device, dtype = choice.device, choice.dtype
        loaded = load_model(config.model, dtype=dtype, device=device)
        gen = cls.from_hf(loaded.hf_config, loaded.state_dict, loaded.tokenizer, dtype=dtype,
                          device=device, attention=choice.attention, pack=choice.pack_linear,
                          page_size=config.page_size,
                          kv_memory_gb=config.kv_memory_gb,
                          max_batch_tokens=config.max_batch_tokens,
                          prefill_chunk=config.prefill_chunk_tokens, seed=config.seed,
                          threads=config.threads)
        # None: the default system prompt; "": none (the hf backend's rule).
        gen.system_prompt = (DEFAULT_SYSTEM_PROMPT if config.system_prompt is None
                             else config.system_prompt or None)
        gen.thinking_delimiters = thinking_delimiters_of(loaded.tokenizer)
        gen.hardware = choice
        return gen

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (probe suffixes, delimiters)."""
        with self._lock:                  # NOTE: one thread at a time in the tokenizer
            return list(self.tokenizer.encode(text, add_special_tokens=False))

    def root(self, problem: Problem) -> Handle:
        with self._lock:                  # NOTE: one thread at a time in the tokenizer
            ids = self.format(problem)
            return self.handle_for_tokens(ids)

    def format(self, problem: Problem) -> list[int]:
        """The prompt's token ids (the model's chat template when it has one)."""
        return list(format_prompt(self.tokenizer, problem, system_prompt=self.system_prompt))


def thinking_delimiters_of(tokenizer: Any) -> tuple[str, str] | None:
    """``("<think>", "</think>")`` when the tokenizer has each as one token (R1, Qwen3)."""
    try:
        vocab = tokenizer.get_vocab()
    except (AttributeError, NotImplementedError):
        return None
    pair = ("<think>", "</think>")
    return pair if all(t in vocab for t in pair) else None
