"""The HTTP backend against a real ``ttc serve`` (simulated backend) on 127.0.0.1, and
against a fake completions server that proves concurrent calls overlap."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
    return 9        # discard: nothing listens, and no test's server can take it meanwhile


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


# -- concurrency: a fake OpenAI server that proves requests overlap -----------------------

class _FakeCompletions(ThreadingHTTPServer):
    """``/v1/completions`` answering deterministically from (prompt, seed, index).

    With ``barrier`` set, each request waits there until ``barrier.parties`` requests are
    in flight at once; if that never happens within the barrier's timeout the request
    gets a 400 saying so. ``max_in_flight`` is the most requests it ever held at once.
    """

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FakeHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"
        self.barrier: threading.Barrier | None = None
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0


class _FakeHandler(BaseHTTPRequestHandler):
    server: _FakeCompletions

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802  (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        with srv.lock:
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        try:
            if srv.barrier is not None:
                srv.barrier.wait()
            reply, status = _fake_completion(body), 200
        except threading.BrokenBarrierError:
            reply = {"error": {"message": f"fewer than {srv.barrier.parties} requests were "
                                          f"ever in flight at once"}}
            status = 400
        finally:
            with srv.lock:
                srv.in_flight -= 1
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _fake_completion(body: dict) -> dict:
    choices = []
    for i in range(body["n"]):
        digest = hashlib.sha256(f"{body['prompt']}|{body.get('seed')}|{i}".encode()).digest()
        ids = [b % 50 for b in digest[:body["max_tokens"]]]
        choices.append({"index": i, "text": "".join(f"<{t}>" for t in ids),
                        "finish_reason": "length",
                        "logprobs": {"tokens": [f"token_id:{t}" for t in ids],
                                     "token_logprobs": [-0.5] * len(ids)}})
    return {"choices": choices, "usage": {"prompt_tokens": 3, "completion_tokens": 0}}


@pytest.fixture()
def fake():
    s = _FakeCompletions()
    threading.Thread(target=s.serve_forever, daemon=True).start()
    yield s
    s.shutdown()
    s.server_close()


def _fake_gen(fake: _FakeCompletions, *, max_concurrency: int = 32) -> HTTPGenerator:
    return HTTPGenerator(HTTPBackendConfig(base_url=fake.url, max_concurrency=max_concurrency,
                                           max_retries=0))


def _expand_in_threads(gen: HTTPGenerator, questions: list[str], params: SamplingParams
                       ) -> list[list[str]]:
    out: list[list[str] | BaseException] = [[] for _ in questions]

    def work(i: int) -> None:
        try:
            root = gen.root(Problem(question=questions[i]))
            conts = gen.expand([ExpandRequest(prefix=root, n=1, params=params)])
            out[i] = [c.text for c in conts.continuations[0]]
        except BaseException as err:  # noqa: BLE001  (re-raised in the test thread)
            out[i] = err

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for r in out:
        if isinstance(r, BaseException):
            raise r
    return out  # type: ignore[return-value]


def test_concurrent_expands_from_threads_are_in_flight_together(fake):
    k = 4
    gen = _fake_gen(fake)
    questions = [f"Question {i}?" for i in range(k)]
    params = SamplingParams(temperature=0.8, max_tokens=6, seed=3)
    alone = [_expand_in_threads(gen, [q], params)[0] for q in questions]
    fake.barrier = threading.Barrier(k, timeout=30)    # releases only with k in flight
    together = _expand_in_threads(gen, questions, params)
    assert together == alone                           # each thread got its own answers
    assert fake.max_in_flight == k
    gen.close()


def test_one_expands_jobs_are_in_flight_together(fake):
    gen = _fake_gen(fake)
    root = gen.root(Problem(question="Fan out."))
    params = SamplingParams(temperature=0.8, max_tokens=5, seed=9)   # seeded: one job each
    alone = [c.text for c in gen.expand([ExpandRequest(prefix=root, n=4, params=params)])
             .continuations[0]]
    fake.barrier = threading.Barrier(4, timeout=30)
    out = gen.expand([ExpandRequest(prefix=root, n=4, params=params)])
    assert [c.text for c in out.continuations[0]] == alone
    assert fake.max_in_flight == 4
    gen.close()


def test_max_concurrency_bounds_requests_in_flight_across_threads(fake):
    gen = _fake_gen(fake, max_concurrency=2)
    fake.barrier = threading.Barrier(2, timeout=30)    # progress needs 2 in flight at once
    _expand_in_threads(gen, [f"Q{i}" for i in range(6)], SamplingParams(max_tokens=3))
    assert fake.max_in_flight == 2                     # 3 would exceed the shared cap
    gen.close()


def test_close_stops_the_io_thread_and_a_later_call_restarts_it(fake):
    gen = _fake_gen(fake)
    root = gen.root(Problem(question="Q"))
    params = SamplingParams(max_tokens=2, seed=1)
    first = gen.expand([ExpandRequest(prefix=root, n=1, params=params)])
    io_thread = gen._io._thread
    gen.close()
    assert not io_thread.is_alive()
    again = gen.expand([ExpandRequest(prefix=root, n=1, params=params)])
    assert again.continuations[0][0].text == first.continuations[0][0].text
    gen.close()


# -- fault injection: a server that hangs or answers garbage -----------------------------

class _Misbehaving(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mode: str) -> None:
        super().__init__(("127.0.0.1", 0), _MisbehavingHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}/v1"
        self.mode = mode
        self.release = threading.Event()
        self.requests = 0


class _MisbehavingHandler(BaseHTTPRequestHandler):
    server: _Misbehaving

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests += 1
        if self.server.mode == "slow":
            self.server.release.wait(30)        # hangs until the test ends
        body = b"<html>502 from a proxy</html>" if self.server.mode == "garbage" \
            else b'{"object": "error"}'
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.mark.parametrize("mode", ["garbage", "not_a_completion"])
def test_a_server_answering_garbage_fails_in_one_line_after_retries(mode):
    srv = _Misbehaving("garbage" if mode == "garbage" else "json")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        g = HTTPGenerator.from_config(HTTPBackendConfig(base_url=srv.url, max_retries=1,
                                                        backoff_s=0.01))
        with pytest.raises(ServerUnavailable, match="not a completion") as info:
            g.expand([ExpandRequest(prefix=g.root(Problem(question="Q")), n=1, params=STEP)])
        assert "\n" not in str(info.value) and srv.requests == 2
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_hanging_server_is_bounded_by_the_total_deadline():
    srv = _Misbehaving("slow")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        # each attempt may take 5 s and there are 4 attempts; the request may take 1 s
        g = HTTPGenerator.from_config(HTTPBackendConfig(base_url=srv.url, timeout_s=5,
                                                        max_retries=3, deadline_s=1.0))
        t0 = time.perf_counter()
        with pytest.raises(ServerUnavailable, match="backend.deadline_s=1 s") as info:
            g.expand([ExpandRequest(prefix=g.root(Problem(question="Q")), n=1, params=STEP)])
        assert time.perf_counter() - t0 < 4.5 and "\n" not in str(info.value)
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()


def test_text_prompts_carry_the_whole_conversation():
    from ttc.types import Message, Problem

    g = HTTPGenerator(HTTPBackendConfig(base_url="http://127.0.0.1:9/v1", model="m",
                                        system_prompt="Be brief."))
    try:
        assert g.format_prompt(Problem(question="2 + 2?")) == ((), "Be brief.\n\n2 + 2?")
        chat = Problem(question="2 + 2?", context=(
            Message(role="system", content="Use ####."), Message(role="user", content="1 + 1?"),
            Message(role="assistant", content="#### 2")))
        assert g.format_prompt(chat) == ((), "Use ####.\n\n1 + 1?\n\n#### 2\n\n2 + 2?")
    finally:
        g.close()
