"""The HTTP backend against a real ``ttc serve`` (simulated backend) on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from ttc.config import load_run_config
from ttc.engine.backends.http import HTTPBackendConfig, HTTPGenerator, ServerUnavailable
from ttc.registry import ConfigError
from ttc.server import make_server
from ttc.types import ExpandRequest, FinishReason, Problem, SamplingParams


@pytest.fixture(scope="module")
def server():
    s = make_server(load_run_config({"backend": "simulated", "verifier": "simulated",
                                     "strategy": "best_of_n"}), port=0)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    yield s
    s.shutdown()
    s.server_close()


@pytest.fixture()
def gen(server):
    return HTTPGenerator.from_config(HTTPBackendConfig(base_url=server.url, model="raw",
                                                       max_concurrency=4))


STEP = SamplingParams(temperature=0.8, max_tokens=200, stop=("\n\n",), seed=5)


def test_steps_come_back_with_stop_strings_token_ids_and_logprobs(gen):
    root = gen.root(Problem(question="What is 2 + 2?"))
    out = gen.expand([ExpandRequest(prefix=root, n=3, params=STEP)])
    conts = out.continuations[0]
    assert len(conts) == 3
    for c in conts:
        assert c.finish is FinishReason.STOP and c.text.endswith("\n\n")
        assert len(c.token_ids) == len(c.logprobs) > 0
    assert out.usage.generated_tokens == sum(c.num_tokens for c in conts)
    assert len({c.text for c in conts}) > 1            # three seeds, three samples


def test_each_seeded_continuation_gets_its_own_derived_seed(gen):
    from ttc.engine.backends.token_handles import derive_seed

    seen = []
    real = gen._generate
    gen._generate = lambda jobs: (seen.extend(gen.body(j) for j in jobs), real(jobs))[1]
    gen.expand([ExpandRequest(prefix=gen.root(Problem(question="Seeded?")), n=3, params=STEP)])
    assert [b["seed"] for b in seen] == [derive_seed(5, k) for k in range(3)]
    assert all(b["n"] == 1 and b["stop"] == ["\n\n"] and b["logprobs"] == 1 for b in seen)


def test_continuing_a_step_hits_the_servers_prefix_cache(gen):
    root = gen.root(Problem(question="Continue me."))
    first = gen.expand([ExpandRequest(prefix=root, n=1, params=STEP)])
    child = first.continuations[0][0]
    second = gen.expand([ExpandRequest(prefix=child.handle, n=2, params=STEP)])
    assert second.usage.cached_tokens > 0 and second.usage.prefill_tokens == 0
    assert gen.text_of(second.continuations[0][0].handle).startswith(child.text)


def test_token_limit_is_a_hard_cap(gen):
    root = gen.root(Problem(question="Long answer please."))
    params = SamplingParams(temperature=0.8, max_tokens=300, seed=1)
    out = gen.expand([ExpandRequest(prefix=root, n=4, params=params)], token_limit=50)
    conts = out.continuations[0]
    assert out.usage.generated_tokens == sum(c.num_tokens for c in conts) <= 50
    assert any(c.finish is FinishReason.BUDGET for c in conts)


def test_a_strategy_runs_over_http(gen):
    from ttc.pipeline import Pipeline

    pipe = Pipeline(generator=gen, verifier="simulated", strategy={"name": "beam", "n": 4,
                                                                   "width": 2}, budget=4000)
    result = pipe.solve("What is 10 - 3?")
    assert result.answer is not None
    assert 0 < result.ledger.generated_tokens <= 4000


def test_release_frees_bookkept_tokens(server):
    g = HTTPGenerator.from_config(HTTPBackendConfig(base_url=server.url, model="raw",
                                                    kv_bytes_per_token=10))
    root = g.root(Problem(question="Q"))
    out = g.expand([ExpandRequest(prefix=root, n=2, params=STEP)])
    before = g.kv_bytes()
    g.release([out.continuations[0][0].handle])
    assert g.kv_bytes() == before - 10 * out.continuations[0][0].num_tokens


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_clearly_after_retries():
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    g = HTTPGenerator.from_config(HTTPBackendConfig(base_url=url, max_retries=2, backoff_s=0.01,
                                                    connect_timeout_s=1))
    root = g.root(Problem(question="Q"))
    t0 = time.perf_counter()
    with pytest.raises(ServerUnavailable, match="after 3 attempts") as info:
        g.expand([ExpandRequest(prefix=root, n=1, params=STEP)])
    assert url in str(info.value)
    assert time.perf_counter() - t0 < 20


def test_server_4xx_is_a_value_error_with_its_message(server):
    g = HTTPGenerator.from_config(HTTPBackendConfig(base_url=server.url, model="no-such-model"))
    root = g.root(Problem(question="Q"))
    with pytest.raises(ValueError, match="unknown model"):
        g.expand([ExpandRequest(prefix=root, n=1, params=STEP)])


def test_config_errors():
    with pytest.raises(ConfigError, match="base_url"):
        HTTPGenerator(HTTPBackendConfig(base_url="localhost:8000"))
    with pytest.raises(ConfigError, match="tokenizer"):
        HTTPGenerator(HTTPBackendConfig(prompt_format="tokens"))
