"""The transformers baseline backend's settings and registry entry (light: no torch at import).

Contract: :class:`HFBackendConfig` is the ``backend: hf`` schema; the registered factory
imports :mod:`ttc.engine.backends.hf_generator` (torch, transformers) only when a backend is built,
and ``from ttc.engine.backends.hf import HFGenerator`` imports it on first use, so
``import ttc.engine`` stays fast. The HF backend is the correctness and speed baseline
of the native engine: same loader, same prompt, same sampling.
Must NOT know: rewards, strategies.
"""

from __future__ import annotations

from typing import Any, Literal

from ttc.registry import BACKENDS
from ttc.types import Frozen

__all__ = ["HFBackendConfig", "HFGenerator", "build_hf"]


class HFBackendConfig(Frozen):
    """A transformers ``AutoModelForCausalLM`` with prefix KV reuse (``DynamicCache``)."""

    name: Literal["hf"] = "hf"
    model: str | None = None             # HF folder / hub id / GGUF path; None = embedded SmolLM2
    # auto: what this machine runs well (ttc.engine.hardware, as the native backend)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"                 # auto: cuda, else mps, else cpu
    system_prompt: str | None = None     # None: prompting.DEFAULT_SYSTEM_PROMPT; "": none
    seed: int = 0                        # for requests without a seed


@BACKENDS.register(HFBackendConfig)
def build_hf(config: HFBackendConfig, **kwargs: Any):
    from ttc.engine.backends.hf_generator import HFGenerator  # noqa: PLC0415  (heavy: torch)

    return HFGenerator.from_config(config)


def __getattr__(name: str) -> Any:
    if name == "HFGenerator":
        from ttc.engine.backends.hf_generator import HFGenerator  # noqa: PLC0415  (heavy: torch)

        return HFGenerator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
