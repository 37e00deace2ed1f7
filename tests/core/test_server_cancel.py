"""A client that disconnects mid-stream cancels its search: the strategy stops, its engine
job is cancelled and its KV freed (the native engine's page and handle counts return to
where they were)."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from server_helpers import start, stop



@pytest.fixture(scope="module")
def server(tiny_model_dir):
    s = start({"backend": {"name": "native", "model": str(tiny_model_dir), "dtype": "float32",
                           "kv_memory_gb": 0.004},
               "verifier": "none", "strategy": "best_of_n"})
    yield s
    stop(s)


def _wait_until(check, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return check()


@pytest.mark.parametrize("body", [
    {"model": "best_of_n-48@30000", "stream": True, "temperature": 1.0,
     "messages": [{"role": "user", "content": "What is 6 * 7?"}]},
    {"model": "raw", "prompt": "The answer is", "n": 48, "max_tokens": 200, "stream": True,
     "temperature": 1.0},
], ids=["strategy", "raw"])
def test_a_client_leaving_mid_stream_cancels_its_work_and_frees_its_kv(server, body):
    service = server.service
    engine = service.generator
    service.raw.clear()
    before = engine.stats()
    cancelled = service.cancelled
    path = "/chat/completions" if "messages" in body else "/completions"
    with httpx.stream("POST", server.url + path, json=body, timeout=60) as r:
        assert r.status_code == 200
        first = next(line for line in r.iter_lines() if line.startswith("data: "))
        assert "error" not in json.loads(first[len("data: "):])
    # the connection is closed here, long before 48 branches of up to 200 tokens finish
    assert _wait_until(lambda: service.cancelled == cancelled + 1)
    assert _wait_until(lambda: service.stats["running"] == 0)
    service.raw.clear()
    after = engine.stats()
    assert after["handles"] == before["handles"]
    assert after["pages_used"] == before["pages_used"]
    assert after["running"] == 0
    engine.check_invariants()
    # the server still answers
    ok = httpx.post(server.url + "/completions", timeout=60,
                    json={"model": "raw", "prompt": "Then", "max_tokens": 2})
    assert ok.status_code == 200
