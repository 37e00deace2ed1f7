"""Engines behind the Generator protocol, registered by name in ``ttc.registry.BACKENDS``.

Layout: ``native/`` is ttc's own shared-prefix engine (step loop, scheduler, runner, paged
KV and radix tree, attention and its Triton kernels); ``backends/`` holds the other
engines (transformers, vLLM, OpenAI-compatible HTTP servers, the simulator) and the
token-handle table they share. ``prompting`` and ``loader`` serve both.

Importing this package registers every backend's config; heavy modules (torch models)
are imported only when a backend is built.
Must NOT know: rewards, scores, strategies.
"""

from ttc.engine.backends import simulated  # noqa: F401  (registers)
from ttc.engine.native import config as _native_config  # noqa: F401  (registers; torch when built)
from ttc.engine.backends import hf  # noqa: F401  (registers; torch imported when built)
from ttc.engine.backends import vllm  # noqa: F401  (registers; vllm imported when built)
from ttc.engine.backends import http  # noqa: F401  (registers; httpx imported when used)
