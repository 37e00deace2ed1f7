"""``ttc serve`` on the native engine with a tiny saved model and a small KV pool: raw
completions hold KV only as evictable cache, a request too big for the pool is a 507
naming the memory setting, an over-long prompt is a 400, a disconnected client's job is
cancelled."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path

import httpx
import pytest
from server_helpers import SIMULATED, start, stop

from ttc.service import Disconnected, ServerLimits, TTCService
from ttc.config import load_run_config
from ttc.types import ExpandOutput, GenerationUsage



def native_config(model_dir: Path, *, kv_memory_gb: float = 0.0005,
                  verifier: str = "none") -> dict:
    """The tiny model (context 256 tokens) on a pool of 65 pages of 16 tokens."""
    return {"backend": {"name": "native", "model": str(model_dir), "dtype": "float32",
                        "kv_memory_gb": kv_memory_gb, "system_prompt": ""},
            "verifier": verifier, "strategy": "self_consistency"}


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    s = start(native_config(tiny_model_dir))
    yield s
    stop(s)


def _raw(server, prompt, **kw):
    body = {"model": "raw", "prompt": prompt, "seed": 0, **kw}
    return httpx.post(server.url + "/completions", json=body, timeout=120)


def test_raw_completions_hold_kv_only_as_evictable_cache(server):
    """Before: every raw handle stayed pinned, so the fourth of these made every later
    request (strategies too) a 500 KVCacheFull until restart."""
    engine = server.service.generator
    for i in range(8):                     # each leaves ~20 pages; the pool has 65
        r = _raw(server, f"Q{i} what", n=4, max_tokens=60)
        assert r.status_code == 200, r.text
    first = r.json()["choices"][0]["text"]
    again = _raw(server, "Q7 what" + first, max_tokens=4)       # still cached: continued
    assert again.status_code == 200
    assert again.json()["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    r = httpx.post(server.url + "/chat/completions", timeout=120, json={
        "model": "self_consistency-3", "max_tokens": 120,
        "messages": [{"role": "user", "content": "What is 2 + 2?"}]})
    assert r.status_code == 200, r.text
    engine.check_invariants()
    server.service.close()                 # forget the raw handles: the pool empties
    assert engine.stats()["pages_used"] == 0 and engine.stats()["handles"] == 0


def test_a_request_too_big_for_the_pool_is_507_and_later_requests_work(server):
    r = _raw(server, "big", n=8, max_tokens=200)      # 8 x 13 pages > 65
    assert r.status_code == 507, r.text
    err = r.json()["error"]
    assert err["type"] == "insufficient_storage" and "backend.kv_memory_gb" in err["message"]
    assert "\n" not in err["message"]
    assert _raw(server, "small", n=2, max_tokens=30).status_code == 200


def test_an_over_long_raw_prompt_is_400_naming_the_context(server):
    r = _raw(server, "x" * 2000, max_tokens=4)
    assert r.status_code == 400
    assert "the model's context is 256 tokens" in r.json()["error"]["message"]


class _NeverDone:
    """A submitted job that finishes only when cancelled."""

    def __init__(self):
        self.future: Future = Future()
        self.cancelled = threading.Event()

    def cancel(self):
        self.cancelled.set()
        self.future.cancel()

    def result(self):
        return self.future.result()


class _SubmitGenerator:
    """Just enough of a thread-safe engine with ``submit`` for TTCService.complete."""

    thread_safe = True

    def __init__(self):
        self.jobs: list[_NeverDone] = []
        self.released: list = []

    def root(self, problem):
        return "h"

    def submit(self, requests, *, token_limit=None):
        self.jobs.append(_NeverDone())
        return self.jobs[-1]

    def expand(self, requests):
        return ExpandOutput(continuations=((),), usage=GenerationUsage())

    def pin(self, handles, *, value=None):
        pass

    def unpin(self, handles, *, value=None):
        pass

    def release(self, handles):
        self.released.extend(handles)


def test_a_raw_request_whose_client_is_gone_is_cancelled():
    gen = _SubmitGenerator()
    service = TTCService(load_run_config(SIMULATED),
                         generator=gen, verifier=object(), limits=ServerLimits())
    checks = []

    def gone():
        checks.append(1)
        return len(checks) >= 2            # connected at the first check, gone at the second

    with pytest.raises(Disconnected):
        service.complete({"prompt": "Q", "max_tokens": 5}, client_gone=gone)
    assert gen.jobs[0].cancelled.is_set() and len(checks) == 2
    assert service.raw.acquire("Q") == "h"  # the prompt's handle is kept as evictable cache
