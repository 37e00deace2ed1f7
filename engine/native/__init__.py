"""ttc's native shared-prefix engine: a continuous-batching step loop over paged KV.

``engine`` (NativeEngine, NativeGenerator, assembled from ``lock``, ``loop`` (the step
thread), ``handles``, ``prefill``, ``expand``, ``jobs``, ``extras`` (extend, score, embed)
and ``generator`` (from_config, chat prompts)), ``scheduler``
(which branches run each step, stop rules, preemption), ``runner`` (the model and the KV
tensor), ``kv_cache`` (page pool, radix tree), ``attention`` (plans, torch path),
``kernels/`` (Triton), ``model``, ``sampling``, ``threads`` (torch thread count),
``config`` (the Hydra-facing backend config; importing it does not import torch).
"""

from typing import Any

__all__ = ["NativeEngine", "NativeGenerator"]


def __getattr__(name: str) -> Any:           # torch is imported only when asked for
    if name in __all__:
        from ttc.engine.native import engine

        return getattr(engine, name)
    raise AttributeError(name)
