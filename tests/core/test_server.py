"""``ttc serve`` on the simulated backend: models, strategy answers, validation, load,
and the transport rules (key before body, chunked bodies, limits, timeouts, JSON errors)."""

from __future__ import annotations

import json
import socket
import time
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from server_helpers import chunked, connect, exchange, read_all, request, start, stop

from ttc.server import ServerLimits, exposure_warning


def _start(**kwargs):
    return start(**kwargs)


@pytest.fixture(scope="module")
def server():
    s = start()
    yield s
    stop(s)


def _post(server, path, body, **kw):
    return httpx.post(server.url + path, json=body, timeout=30, **kw)


def test_models_lists_raw_and_strategies(server):
    data = httpx.get(server.url + "/models", timeout=10).json()
    ids = {m["id"] for m in data["data"]}
    assert {"raw", "best_of_n", "beam", "self_consistency"} <= ids


def test_chat_completion_runs_the_named_strategy_with_its_width(server):
    r = _post(server, "/chat/completions", {
        "model": "best_of_n-6", "messages": [{"role": "user", "content": "What is 6 * 7?"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["ttc"]["strategy"] == "best_of_n"
    assert len(body["ttc"]["candidate_answers"]) == 6
    text = body["choices"][0]["message"]["content"]
    assert "\\boxed{" in text and body["ttc"]["answer"] is not None
    assert body["usage"]["completion_tokens"] == body["ttc"]["ledger"]["generated_tokens"] > 0


def test_the_search_budget_is_its_own_field_and_max_tokens_the_completion_length(server):
    """Before: max_tokens was the whole search's budget, so clients' usual 256 starved it."""
    for body in ({"model": "beam-4", "prompt": "Q?", "ttc": {"budget": 150}},
                 {"model": "beam-4@150", "prompt": "Q?"}):
        r = _post(server, "/completions", body)
        assert r.status_code == 200, r.text
        assert r.json()["ttc"]["ledger"]["generated_tokens"] <= 150
    r = _post(server, "/completions", {"model": "beam-4", "prompt": "Q?", "max_tokens": 150})
    assert r.status_code == 200, r.text
    assert r.json()["ttc"]["ledger"]["generated_tokens"] > 150       # the default budget


@pytest.mark.parametrize("path,body,status,param", [
    ("/chat/completions", {"model": "nope-3", "messages": [{"role": "user", "content": "x"}]},
     404, "model"),
    ("/chat/completions", {"model": "beam", "messages": []}, 400, "messages"),
    ("/chat/completions", {"model": "beam", "messages": [{"role": "bot", "content": "x"}]},
     400, "messages[0]"),
    ("/chat/completions", {"model": "beam", "n": 0,
                           "messages": [{"role": "user", "content": "x"}]}, 400, "n"),
    ("/chat/completions", {"model": "beam", "logprobs": True,
                           "messages": [{"role": "user", "content": "x"}]}, 400, "logprobs"),
    ("/chat/completions", {"model": "beam", "response_format": {"type": "json_object"},
                           "messages": [{"role": "user", "content": "x"}]}, 400,
     "response_format"),
    ("/chat/completions", {"model": "beam", "tools": [{"type": "function"}],
                           "messages": [{"role": "user", "content": "x"}]}, 400, "tools"),
    ("/chat/completions", {"model": "beam", "frobnicate": 1,
                           "messages": [{"role": "user", "content": "x"}]}, 400, "frobnicate"),
    ("/chat/completions", {"model": "beam", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     400, "messages[0].content[0]"),
    ("/completions", {"model": "raw", "prompt": "x", "logit_bias": {"5": 3}}, 400,
     "logit_bias"),
    ("/completions", {"model": "raw", "prompt": "x", "best_of": 3}, 400, "best_of"),
    ("/completions", {"model": "raw", "prompt": "x", "suffix": "y"}, 400, "suffix"),
    ("/completions", {"model": "raw", "prompt": "x", "echo": True}, 400, "echo"),
    ("/completions", {"model": "raw", "prompt": [1, 2]}, 400, None),
    ("/completions", {"model": "beam", "prompt": "x", "stream_options": {
        "include_usage": True}}, 400, "stream_options"),
    ("/completions", {"model": "beam", "prompt": "x", "ttc": {"budget": 0}}, 400,
     "ttc.budget"),
    ("/completions", {"model": "raw", "prompt": "x", "temperature": -1}, 400, "temperature"),
    ("/completions", {"model": "raw", "prompt": "x", "stop": [""]}, 400, "stop"),
    ("/completions", {"model": "raw", "prompt": ""}, 400, "prompt"),
    ("/completions", {"model": "beam", "prompt": "x", "stream": "yes"}, 400, "stream"),
])
def test_bad_requests_get_json_4xx_naming_the_field(server, path, body, status, param):
    r = _post(server, path, body)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["param"] == param and err["message"]


def test_bad_json_wrong_method_unknown_path(server):
    r = httpx.post(server.url + "/completions", content=b"{not json", timeout=10,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    assert httpx.get(server.url + "/completions", timeout=10).status_code == 405
    assert httpx.get(server.url + "/nothing", timeout=10).status_code == 404


def test_api_key_is_required_when_set():
    s = _start(api_key="sekret")
    try:
        assert httpx.get(s.url + "/models", timeout=10).status_code == 401
        bad = httpx.get(s.url + "/models", timeout=10, headers={"Authorization": "Bearer x"})
        assert bad.status_code == 401 and bad.json()["error"]["type"] == "authentication_error"
        ok = httpx.get(s.url + "/models", timeout=10, headers={"Authorization": "Bearer sekret"})
        assert ok.status_code == 200
        with httpx.Client(timeout=10) as client:     # one keep-alive connection
            body = {"model": "raw", "prompt": "Q", "max_tokens": 5}
            denied = client.post(s.url + "/completions", json=body)
            fine = client.post(s.url + "/completions", json=body,
                               headers={"Authorization": "Bearer sekret"})
            assert denied.status_code == 401 and fine.status_code == 200
    finally:
        s.shutdown()
        s.server_close()


def test_binds_loopback_by_default(server):
    assert server.server_address[0] == "127.0.0.1"


def test_raw_completions_keep_stop_strings_and_continue_handles(server):
    body = {"model": "raw", "prompt": "Solve 2+2.", "n": 3, "max_tokens": 200, "stop": ["\n\n"],
            "seed": 1, "logprobs": 1, "include_stop_str_in_output": True,
            "return_tokens_as_token_ids": True, "temperature": 0.8}
    first = _post(server, "/completions", body).json()
    assert len(first["choices"]) == 3
    for c in first["choices"]:
        assert c["finish_reason"] == "stop" and c["text"].endswith("\n\n")
        assert all(t.startswith("token_id:") for t in c["logprobs"]["tokens"])
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    again = dict(body, prompt=body["prompt"] + first["choices"][0]["text"], n=1)
    second = _post(server, "/completions", again).json()
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] > 0   # same handle


def test_load_many_concurrent_requests_all_answered(server):
    def one(i):
        if i % 4 == 0:
            return _post(server, "/chat/completions", {
                "model": "best_of_n-2", "messages": [{"role": "user", "content": f"Q{i}?"}]})
        return _post(server, "/completions", {"model": "raw", "prompt": f"Q{i}?", "n": 2,
                                              "max_tokens": 30, "seed": i})

    with ThreadPoolExecutor(max_workers=24) as pool:
        responses = list(pool.map(one, range(48)))
    assert all(r.status_code == 200 for r in responses)
    assert all(len(r.json()["choices"]) in (1, 2) for r in responses)
    assert len({json.dumps(r.json()["choices"]) for r in responses}) == 48


@contextmanager
def _serve_command(*overrides: str, env: dict[str, str] | None = None):
    """Run ``ttc serve --port 0 OVERRIDES`` as a user would (``env``: extra variables);
    yield its base URL."""
    import os
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "ttc.cli", "serve", "--port", "0",
                             *overrides], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})
    try:
        line = proc.stdout.readline()
        assert line.startswith("ttc serve: http://127.0.0.1:"), line + proc.stderr.read()
        yield line.split()[2]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_ttc_serve_command_starts_and_answers():
    with _serve_command("strategy=beam", "backend=simulated", "verifier=simulated") as url:
        r = httpx.post(url + "/chat/completions", timeout=30, json={
            "model": "beam", "messages": [{"role": "user", "content": "1+1?"}]})
        assert r.status_code == 200 and r.json()["ttc"]["strategy"] == "beam"


def test_serve_command_rejects_bad_overrides():
    from typer.testing import CliRunner

    from ttc.cli import app

    result = CliRunner().invoke(app, ["serve", "strategy=nope"])
    assert result.exit_code == 2 and "unknown strategy 'nope'" in result.output


@pytest.mark.parametrize("cpu_bf16", ["1", "0"], ids=["detected", "bf16-absent"])
def test_readme_serve_command_on_the_native_backend_answers_a_chat(cpu_bf16):
    """`ttc serve --port 8000 strategy=beam` as the README gives it: the native engine on
    the embedded model with the default verifier (the model as its own judge); again with
    the CPU's bf16 support reported absent (ttc.engine.hardware), as on an AVX2 CPU."""
    with _serve_command("strategy=beam", env={"TTC_CPU_BF16": cpu_bf16}) as url:
        r = httpx.post(url + "/chat/completions", timeout=300, json={
            "model": "beam-4", "max_tokens": 20, "ttc": {"budget": 48},
            "messages": [{"role": "user", "content": "What is 3 + 5?"}]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["ttc"]["strategy"] == "beam"
        text = body["choices"][0]["message"]["content"]
        assert text
        # usage counts the search's tokens (the budget); the reply is at most max_tokens
        assert 0 < body["usage"]["completion_tokens"] <= 48
        tok = httpx.post(url.removesuffix("/v1") + "/tokenize", timeout=30,
                         json={"prompt": text}).json()
        assert tok["count"] <= 20
        assert body["ttc"]["ledger"]["verifier_calls"] > 0


# -- transport rules (issue 20: server hardening) ---------------------------------------
RAW = json.dumps({"model": "raw", "prompt": "Q?", "max_tokens": 5, "seed": 3}).encode()


def _json_error(reply, status):
    assert reply.status == status, (reply.status, reply.body[:300])
    assert reply.headers["content-type"] == "application/json"
    err = reply.json()["error"]
    assert err["code"] == status and err["message"]
    return err


def test_api_key_is_checked_before_the_body_is_read():
    """A wrong key gets its 401 while the announced 500 KB body never arrives (before, the
    server waited for the whole body first), and the connection is closed."""
    s = start(api_key="sekret", limits=ServerLimits(read_timeout_s=60))
    try:
        data = request("POST", "/v1/completions", headers={
            "Content-Length": "500000", "Authorization": "Bearer wrong"}, close=False)
        [reply] = exchange(s, data, timeout=20)
        err = _json_error(reply, 401)
        assert err["type"] == "authentication_error"
        assert reply.headers["connection"] == "close"
        odd = request("GET", "/v1/models", headers={"Authorization": "Bearer s\xe9kret"})
        [reply] = exchange(s, odd)                    # a non-ASCII header: 401, not 500
        _json_error(reply, 401)
    finally:
        stop(s)


def test_a_chunked_body_is_read_and_the_connection_stays_in_step(server):
    first = request("POST", "/v1/completions", chunked(RAW),
                    headers={"Transfer-Encoding": "chunked"}, close=False)
    second = request("GET", "/v1/models")
    replies = exchange(server, first + second)
    assert [r.status for r in replies] == [200, 200]
    assert replies[0].json()["object"] == "text_completion"
    assert replies[1].json()["object"] == "list"
    with httpx.Client(timeout=20) as client:       # httpx sends a generator body chunked
        r = client.post(server.url + "/completions", content=iter([RAW[:9], RAW[9:]]))
        assert r.status_code == 200 and r.json()["choices"]


@pytest.mark.parametrize("body,headers,status,words", [
    (chunked(b"x" * 3000, size=1000), {"Transfer-Encoding": "chunked"}, 413, "2048 bytes"),
    (b"zz\r\nxx\r\n0\r\n\r\n", {"Transfer-Encoding": "chunked"}, 400, "hexadecimal"),
    (chunked(RAW), {"Transfer-Encoding": "chunked", "Content-Length": "5"}, 400, "both"),
    (RAW, {"Transfer-Encoding": "gzip"}, 400, "'gzip' is not supported"),
    (b"", {"Content-Length": "9999"}, 413, "9999 bytes; at most 2048"),
    (RAW, {"Content-Length": "-5"}, 400, "Content-Length must be"),
    (None, {}, 411, "Content-Length"),
])
def test_bodies_are_framed_or_refused_in_json(body, headers, status, words):
    s = start(limits=ServerLimits(max_body_bytes=2048))
    try:
        replies = exchange(s, request("POST", "/v1/completions", body, headers=headers,
                                      close=False))
        assert len(replies) == 1                   # nothing parsed as a second request
        assert words in _json_error(replies[0], status)["message"]
    finally:
        stop(s)


def test_every_status_has_a_json_body(server):
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
        [reply] = exchange(server, request(method, "/v1/completions", RAW))
        assert method in _json_error(reply, 405)["message"]
        assert reply.headers["allow"] == "GET, POST"
    [head] = exchange(server, request("HEAD", "/v1/models"))
    assert head.status == 405 and head.body == b""   # HEAD: status and headers only
    [garbage] = exchange(server, b"NOT A REQUEST LINE AT ALL\r\n\r\n")
    _json_error(garbage, 400)
    [long_url] = exchange(server, request("GET", "/" + "a" * 70000))
    _json_error(long_url, 414)
    [headers] = exchange(server, request("GET", "/v1/models",
                                         headers={f"X-{i}": "y" for i in range(120)}))
    _json_error(headers, 431)


def test_malformed_and_too_deep_json_are_400(server):
    deep = b"[" * 200_000 + b"]" * 200_000                 # 400 KB (was a RecursionError)
    [reply] = exchange(server, request("POST", "/v1/completions", deep))
    assert "nested more than 32 levels" in _json_error(reply, 400)["message"]
    x: object = 1
    for _ in range(32):
        x = [x]
    nested = json.dumps({"model": "raw", "prompt": "Q?", "x": x}).encode()   # 33 levels
    [reply] = exchange(server, request("POST", "/v1/completions", nested))
    assert "nested more than 32 levels" in _json_error(reply, 400)["message"]
    for bad, words in ((b"\xff\xfe\x00", "not valid JSON"), (b"[1, 2]", "a JSON list"),
                       (b"1" * 5000, "not valid JSON"), (b"", "not valid JSON")):
        [reply] = exchange(server, request("POST", "/v1/completions", bad))
        assert words in _json_error(reply, 400)["message"]


def test_widths_and_budgets_are_bounded_with_a_clear_400(server):
    r = _post(server, "/chat/completions", {
        "model": "best_of_n-100000", "messages": [{"role": "user", "content": "Q?"}]})
    assert r.status_code == 400
    assert "width must be in [1, 64] (the server's --max-width); got 100000" in r.text
    r = _post(server, "/completions", {"model": "raw", "prompt": "Q", "n": 65})
    assert r.status_code == 400 and r.json()["error"]["param"] == "n" and "--max-width" in r.text
    for body in ({"model": "raw", "prompt": "Q", "max_tokens": 32769},
                 {"model": "beam", "prompt": "Q", "max_tokens": 10 ** 9}):
        r = _post(server, "/completions", body)
        assert r.status_code == 400 and "--max-tokens" in r.json()["error"]["message"]
    r = _post(server, "/completions", {"model": "raw", "prompt": "Q", "stop": ["s"] * 17})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop"


def test_configured_maxima_bound_width_and_the_default_budget():
    s = start(limits=ServerLimits(max_width=4, max_tokens=60))
    try:
        assert _post(s, "/completions", {"model": "best_of_n-5", "prompt": "Q?"}).status_code == 400
        r = _post(s, "/completions", {"model": "best_of_n-4", "prompt": "Q?"})  # no max_tokens
        assert r.status_code == 200, r.text
        assert 0 < r.json()["ttc"]["ledger"]["generated_tokens"] <= 60   # config says 4096
    finally:
        stop(s)


def _wait_closed(sock: socket.socket, deadline_s: float) -> bool:
    sock.settimeout(deadline_s)
    try:
        return read_all(sock) == b""
    except TimeoutError:
        return False


def test_idle_connections_time_out_and_the_connection_count_is_capped():
    s = start(limits=ServerLimits(max_connections=2, read_timeout_s=1.0))
    try:
        idle = [connect(s), connect(s)]
        time.sleep(0.2)                             # both accepted, each holding a thread
        r = httpx.get(s.url + "/models", timeout=20)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "maximum of 2 connections" in r.json()["error"]["message"]
        assert all(_wait_closed(c, 20) for c in idle)   # closed by the server's read timeout
        deadline = time.monotonic() + 20
        while (r := httpx.get(s.url + "/models", timeout=20)).status_code == 503:
            assert time.monotonic() < deadline, "a slot was never freed"
            time.sleep(0.1)
        assert r.status_code == 200 and s.refused >= 1
    finally:
        for c in idle:
            c.close()
        stop(s)


def test_a_body_that_stops_arriving_gets_408():
    s = start(limits=ServerLimits(read_timeout_s=0.5))
    try:
        data = request("POST", "/v1/completions", headers={"Content-Length": "100"},
                       close=False) + b'{"model": '
        [reply] = exchange(s, data)
        assert "--read-timeout" in _json_error(reply, 408)["message"]
    finally:
        stop(s)


def test_binding_beyond_loopback_without_a_key_warns():
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        line = exposure_warning(host, 8000, None)
        assert line.startswith("WARNING:") and "--api-key" in line and host in line
    for host, key in (("127.0.0.1", None), ("::1", None), ("localhost", None),
                      ("127.0.0.2", None), ("0.0.0.0", "k")):
        assert exposure_warning(host, 8000, key) is None


def test_serve_prints_the_warning_and_checks_its_limits(monkeypatch):
    from typer.testing import CliRunner

    import ttc.server
    from ttc.cli import app

    class Fake:
        url = "http://0.0.0.0:1/v1"

        def warnings(self):
            return [exposure_warning("0.0.0.0", 1, None)]

        def serve_forever(self):
            raise KeyboardInterrupt

        def server_close(self):
            pass

    seen = {}
    monkeypatch.setattr(ttc.server, "make_server",
                        lambda config, **kw: seen.update(kw) or Fake())
    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--max-width", "8",
                                      "backend=simulated", "verifier=simulated"])
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("WARNING: ttc serve listens on 0.0.0.0:1 with no API key")
    assert seen["limits"].max_width == 8 and seen["host"] == "0.0.0.0"
    bad = CliRunner().invoke(app, ["serve", "--max-width", "0"])
    assert bad.exit_code == 2 and "--max-width must be a positive integer; got 0." in bad.output


def test_a_closed_server_ends_its_keep_alive_connections_too():
    """After shutdown + server_close no request is served, also not on a connection a
    client kept open (the HTTP backend keeps its connections alive)."""
    s = _start()
    with httpx.Client(timeout=5) as client:
        assert client.get(s.url + "/models").status_code == 200
        s.shutdown()
        s.server_close()
        with pytest.raises(httpx.TransportError):
            client.get(s.url + "/models")


@pytest.mark.parametrize("field,noop,refused", [
    ("frequency_penalty", 0, 0.5), ("presence_penalty", 0.0, -1), ("logit_bias", {}, {"1": 2}),
    ("tools", [], [{"type": "function", "function": {"name": "f"}}]),
    ("tool_choice", "none", "required"), ("response_format", {"type": "text"},
                                          {"type": "json_schema"}),
    ("store", False, True), ("user", "alice", 3)])
def test_no_op_values_pass_and_anything_else_is_named(server, field, noop, refused):
    """Clients send some fields with their do-nothing value; those pass, any other value is
    a 400 naming the field (never dropped silently)."""
    body = {"model": "best_of_n-2", "messages": [{"role": "user", "content": "1+1?"}]}
    assert _post(server, "/chat/completions", {**body, field: noop}).status_code == 200
    r = _post(server, "/chat/completions", {**body, field: refused})
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
