"""The native backend's settings and registry entry (light: no torch at import time).

Contract: :class:`NativeBackendConfig` is the ``backend: native`` schema; the registered
factory imports :mod:`ttc.engine.native.engine` (torch, transformers) only when a backend is
built, so ``import ttc.engine`` stays fast.
Must NOT know: rewards, strategies.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, field_validator
from pydantic_core import PydanticCustomError

from ttc.engine.native.threads import is_threads_setting
from ttc.registry import BACKENDS
from ttc.types import Frozen


class NativeBackendConfig(Frozen):
    """The shared-prefix engine: paged KV, radix tree, prefix-shared decode attention."""

    name: Literal["native"] = "native"
    model: str | None = None             # HF folder / hub id / GGUF path; None = embedded SmolLM2
    # auto: what this machine runs well (ttc.engine.hardware): bf16 on CUDA with bf16 and on
    # CPUs with bf16 dot products (AVX512-BF16, AMX, ARM BF16), else float32 (fp16 on older GPUs)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"                 # auto: cuda, else mps, else cpu
    page_size: PositiveInt = 16          # tokens per KV page
    kv_memory_gb: float = Field(default=2.0, gt=0)   # KV pool size, preallocated
    attention: Literal["auto", "torch", "triton"] = "auto"
    system_prompt: str | None = None     # None: prompting.DEFAULT_SYSTEM_PROMPT; "": none
    max_batch_tokens: PositiveInt = 2048  # prefill tokens per forward when nothing decodes
    prefill_chunk_tokens: PositiveInt = 256  # prefill tokens per step while branches decode
    seed: int = 0                         # for requests without a seed
    # torch intra-op threads of the thread that runs the model (engine/native/threads.py):
    # "auto" = chosen from the engine's own step times (trials of the affinity mask's CPU
    # count against 1, repeated, and at once when steps slow down); an int pins it.
    threads: int | Literal["auto"] = "auto"

    @field_validator("threads", mode="before")
    @classmethod
    def _threads_positive_or_auto(cls, value: object) -> object:
        if is_threads_setting(value):
            return value
        raise PydanticCustomError("threads", "must be a positive integer or 'auto'")


@BACKENDS.register(NativeBackendConfig)
def build_native(config: NativeBackendConfig, **kwargs):
    from ttc.engine.native.engine import NativeGenerator  # noqa: PLC0415  (heavy: torch)

    return NativeGenerator.from_config(config)
