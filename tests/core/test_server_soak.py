"""Soak ``ttc serve`` on the native engine with a small KV pool (marker ``soak``, its own CI
stage: ``scripts/ci_soak.sh``; ``TTC_SOAK_SECONDS`` sets the length, 90 s by default).

Worker threads mix, until a deadline: raw completions (fresh prompts and continuations
of earlier replies), strategy runs (chat and completions), requests too big for the pool,
clients that disconnect mid-request, clients that give up (a short client timeout), bad
requests, model listings, and streamed strategy runs (read to the end, or dropped after
the first event, which cancels the search). Afterwards:

* every request got a reply with status 200, 400 or 507 (507 naming
  ``backend.kv_memory_gb``), or was dropped by its own client;
* nothing leaked: the engine's live handles are exactly the raw completions the server
  remembers (strategies released all of theirs), a request needing most of the pool
  still runs (the remembered KV is evictable), and once the server forgets its raw
  handles the pool's page count is back to its idle value.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
from collections import Counter

import httpx
import pytest
from server_helpers import start, stop

from ttc.server import ServerLimits


pytestmark = pytest.mark.soak

WORKERS = 6
PROMPTS = ["What is 2 + 2?", "Solve the problem step by step.", "A train leaves at noon.",
           "The answer is", "First, 12 + 30 = 42.", "Then we add 3 and 4"]
STRATEGIES = ["best_of_n-2", "best_of_n-4", "beam-4", "self_consistency-3"]
ACTIONS = ["raw"] * 7 + ["strategy"] * 4 + ["too_big", "disconnect", "disconnect",
                                             "give_up", "give_up", "bad", "bad", "models",
                                             "stream", "stream"]
LIMITS = ServerLimits(max_width=8, max_tokens=256, read_timeout_s=10, max_connections=64)


class Soak:
    """Shared counters of one soak run."""

    def __init__(self, server) -> None:
        self.server = server
        self.lock = threading.Lock()
        self.statuses: Counter[str] = Counter()
        self.failures: list[str] = []
        self.texts: list[str] = []        # prompt + completion, for continuations

    def record(self, action: str, status: int | str, detail: str = "") -> None:
        with self.lock:
            self.statuses[f"{action}:{status}"] += 1
            if detail:
                self.failures.append(f"{action}: {status} {detail[:300]}")


def _check(soak: Soak, action: str, r: httpx.Response, allowed: set[int]) -> None:
    try:
        body = r.json()
    except ValueError:
        return soak.record(action, r.status_code, f"not JSON: {r.text[:200]}")
    if r.status_code not in allowed:
        return soak.record(action, r.status_code, r.text)
    if r.status_code == 507 and "backend.kv_memory_gb" not in body["error"]["message"]:
        return soak.record(action, 507, f"507 without the setting: {r.text}")
    if r.status_code >= 400 and not body["error"]["message"]:
        return soak.record(action, r.status_code, "an error with no message")
    soak.record(action, r.status_code)


def _one(soak: Soak, rng: random.Random, client: httpx.Client) -> None:
    url = soak.server.url
    action = rng.choice(ACTIONS)
    if action == "raw":
        with soak.lock:
            prompt = rng.choice(soak.texts) if soak.texts and rng.random() < 0.4 \
                else rng.choice(PROMPTS)
        r = client.post(url + "/completions", json={
            "model": "raw", "prompt": prompt, "n": rng.randint(1, 4),
            "max_tokens": rng.randint(8, 64), "seed": rng.randint(0, 1 << 30),
            "temperature": rng.choice([0.0, 0.7, 1.0])})
        if r.status_code == 200:
            with soak.lock:
                soak.texts.append(prompt + r.json()["choices"][0]["text"])
                del soak.texts[:-50]
        # 400: a continuation past the model's 256-token context
        _check(soak, action, r, {200, 400, 507})
    elif action == "strategy":
        model = rng.choice(STRATEGIES)
        question = rng.choice(PROMPTS)
        budget = rng.randint(32, 200)
        if rng.random() < 0.5:
            r = client.post(url + "/chat/completions", json={
                "model": model, "ttc": {"budget": budget},
                "messages": [{"role": "user", "content": question}]})
        else:
            r = client.post(url + "/completions", json={
                "model": f"{model}@{budget}", "prompt": question})
        _check(soak, action, r, {200, 507})
    elif action == "too_big":                   # 8 branches x 13 pages > the 65-page pool
        r = client.post(url + "/completions", json={
            "model": "raw", "prompt": rng.choice(PROMPTS), "n": 8, "max_tokens": 200,
            "temperature": 1.0, "seed": rng.randint(0, 1000)})
        _check(soak, action, r, {200, 507})
    elif action == "disconnect":               # send a request, close before the reply
        body = json.dumps({"model": "raw", "prompt": rng.choice(PROMPTS), "n": 4,
                           "max_tokens": 150, "temperature": 1.0}).encode()
        host, port = soak.server.server_address[:2]
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
            time.sleep(rng.uniform(0.05, 0.5))
        soak.record(action, "closed")
    elif action == "give_up":                  # the client's own timeout ends the wait
        try:
            r = httpx.post(url + "/chat/completions", timeout=rng.uniform(0.1, 0.6), json={
                "model": rng.choice(STRATEGIES), "ttc": {"budget": 200},
                "messages": [{"role": "user", "content": rng.choice(PROMPTS)}]})
            _check(soak, action, r, {200, 507})
        except httpx.TimeoutException:
            soak.record(action, "client timeout")
    elif action == "bad":
        body = rng.choice([
            {"model": "best_of_n-100000", "prompt": "Q"},
            {"model": "raw", "prompt": "Q", "n": 100},
            {"model": "raw", "prompt": "x" * 2000, "max_tokens": 4},     # past the context
            {"model": "raw", "prompt": "Q", "max_tokens": 10 ** 6},
            {"model": "raw", "prompt": "Q", "logit_bias": {"5": 1.0}},
            {"model": "beam", "prompt": "Q", "response_format": {"type": "json_object"}}])
        _check(soak, action, client.post(url + "/completions", json=body), {400})
    elif action == "stream":                   # SSE: read to [DONE], or leave after one event
        leave = rng.random() < 0.5
        with client.stream("POST", url + "/chat/completions", json={
                "model": rng.choice(STRATEGIES), "stream": True, "ttc": {"budget": 200},
                "messages": [{"role": "user", "content": rng.choice(PROMPTS)}]}) as r:
            if r.status_code != 200:
                r.read()
                _check(soak, action, r, {200})
                return
            events = []
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[len("data: "):])
                    if leave:
                        break
        if leave:                   # leaving the block unread closed the connection
            soak.record(action, "left mid-stream")
        elif events[-1] == "[DONE]" and all(
                "507" in e or "error" not in e for e in events[:-1]):
            soak.record(action, "200 stream")
        else:
            soak.record(action, "bad stream", str(events[-2:]))
    else:
        _check(soak, action, client.get(url + "/models"), {200})


def _worker(soak: Soak, seed: int, deadline: float) -> None:
    rng = random.Random(seed)
    with httpx.Client(timeout=120) as client:
        while time.monotonic() < deadline:
            try:
                _one(soak, rng, client)
            except httpx.HTTPError as err:     # the server dropped a request it should answer
                soak.record("transport", type(err).__name__, str(err))


def test_soak_mixed_requests_on_a_small_pool(tiny_model_dir):
    seconds = float(os.environ.get("TTC_SOAK_SECONDS", "90"))
    config = {"backend": {"name": "native", "model": str(tiny_model_dir), "dtype": "float32",
                          "kv_memory_gb": 0.0005, "system_prompt": ""},
              "verifier": "simulated", "strategy": "self_consistency"}
    server = start(config, limits=LIMITS)     # 65 pages of 16 tokens
    engine = server.service.generator
    idle = engine.stats()
    try:
        soak = Soak(server)
        deadline = time.monotonic() + seconds
        threads = [threading.Thread(target=_worker, args=(soak, i, deadline), daemon=True)
                   for i in range(WORKERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=seconds + 300)
            assert not t.is_alive(), "a worker is stuck: a request never finished"
        settle = time.monotonic() + 60         # disconnected requests are being cancelled
        while engine.stats()["running"] or engine.scheduler.has_work():
            assert time.monotonic() < settle, f"the engine never went idle: {engine.stats()}"
            time.sleep(0.1)
        engine.check_invariants()
        after = engine.stats()
        assert after["handles"] == len(server.service.raw), (after, len(server.service.raw))
        big = httpx.post(server.url + "/completions", timeout=120, json={
            "model": "raw", "prompt": "Q", "n": 4, "max_tokens": 180, "seed": 1})
        assert big.status_code == 200, big.text   # the remembered KV gave way
        server.service.close()
        final = engine.stats()
        total = sum(soak.statuses.values())
        print(f"\nsoak: {total} requests in {seconds:g} s, {WORKERS} workers: "
              f"{dict(sorted(soak.statuses.items()))}; pages idle {idle['pages_used']} -> "
              f"after soak {after['pages_used']} (raw cache, {after['handles']} handles) -> "
              f"after forgetting {final['pages_used']} of {final['pages_total']}; peak batch "
              f"{final['peak_batch']}, preemptions {final['preemptions']}; raw requests cancelled "
              f"on disconnect {server.service.cancelled}")  # raw and strategy requests
        assert not soak.failures, "\n".join(soak.failures[:20])
        assert final["pages_used"] == idle["pages_used"] and final["handles"] == idle["handles"]
        kinds = {k.split(":")[0] for k in soak.statuses}
        assert {"raw", "strategy", "disconnect", "give_up", "bad", "stream"} <= kinds
        assert soak.statuses["raw:200"] > 0 and soak.statuses["strategy:200"] > 0
    finally:
        stop(server)
