"""Servers for the client tests: ``ttc serve`` on 127.0.0.1, driven by real client libraries.

``sim``: the simulated backend (fast strategies, no tokenizer). ``tiny``: the native engine
on a tiny random-weight Llama with a real BPE tokenizer and chat template (raw completions,
log-probs, tokenizer endpoints, stop strings, cancellation). Nothing reaches the network:
litellm is told to use its bundled model list.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")   # no fetch at import
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parents[1] / "core"))

from server_helpers import SIMULATED, start, stop  # noqa: E402


def tiny_config(model_dir: Path) -> dict:
    return {"backend": {"name": "native", "model": str(model_dir), "dtype": "float32",
                        "kv_memory_gb": 0.002},
            "verifier": "none", "strategy": "self_consistency"}


@pytest.fixture(scope="session")
def sim():
    s = start(SIMULATED)
    yield s
    stop(s)


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    s = start(tiny_config(tiny_model_dir))
    yield s
    stop(s)
