"""Engines behind the Generator protocol, registered by name in ``ttc.registry.BACKENDS``.

Importing this package registers every backend's config; heavy modules (torch models)
are imported only when a backend is built.
Must NOT know: rewards, scores, strategies.
"""

from ttc.engine import simulated  # noqa: F401  (registers)
from ttc.engine import native_config  # noqa: F401  (registers; torch imported when built)
from ttc.engine import hf  # noqa: F401  (registers; torch imported when built)
from ttc.engine import vllm_backend  # noqa: F401  (registers; vllm imported when built)
from ttc.engine import http_backend  # noqa: F401  (registers; httpx imported when used)
