"""Fuzzing ``ttc serve`` (simulated backend) with hypothesis: whatever arrives, the reply
is JSON with a status below 500 (or the connection closes), within a bounded time.

Two levels: JSON bodies built from the API's own fields with hostile values (wrong types,
huge or negative numbers, NaN, deep or odd structures), and raw bytes on a socket (odd
methods, paths, headers, lengths that lie, chunked framing, garbage). The server runs
with a 0.2 s read timeout, so a request that never completes is closed, not waited on.
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_helpers import connect, parse_replies, read_all, start, stop

from ttc.server import ServerLimits

LIMITS = ServerLimits(max_width=8, max_tokens=256, read_timeout_s=0.2, max_body_bytes=4096)
FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def server():
    s = start(limits=LIMITS)
    yield s
    stop(s)


json_scalars = (st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=8)
models = (st.sampled_from(["raw", "best_of_n", "best_of_n-2", "beam-4", "self_consistency-3",
                           "best_of_n-100000", "best_of_n-0", "beam-3", "nope", "", "RAW",
                           "astar-2", "best_of_n-99999999999999999999"]) | json_values)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "bot"]) | json_scalars,
     "content": st.text(max_size=30) | json_scalars}, optional={"name": json_values})
messages = st.lists(message | json_values, max_size=3) | json_values
fields = {
    "model": models,
    "prompt": st.text(max_size=40) | json_values,
    "messages": messages,
    "n": st.integers(-2, 10) | json_scalars,
    "max_tokens": st.integers(-2, 300) | st.integers(-(1 << 64), 1 << 64) | json_scalars,
    "temperature": st.floats(allow_nan=True, allow_infinity=True) | json_scalars,
    "top_p": st.floats(-1, 2) | json_scalars,
    "top_k": st.integers(-5, 1 << 22) | json_scalars,
    "stop": st.lists(st.text(max_size=4), max_size=20) | json_scalars,
    "seed": st.integers(-(1 << 70), 1 << 70) | json_scalars,
    "logprobs": json_scalars,
    "stream": st.booleans() | json_scalars,
    "include_stop_str_in_output": json_scalars,
    "return_tokens_as_token_ids": json_scalars,
}


def _body(required: str) -> st.SearchStrategy:
    """Bodies that carry the path's main field (so the checks behind it are reached),
    any of the others, or any JSON value at all."""
    optional = {k: v for k, v in fields.items() if k != required}
    return (st.fixed_dictionaries({required: fields[required]}, optional=optional)
            | st.fixed_dictionaries({}, optional=fields) | json_values)


@FUZZ
@given(data=st.data())
def test_json_bodies_never_get_a_500(server, data):
    path, required = data.draw(st.sampled_from([("/completions", "prompt"),
                                                ("/chat/completions", "messages")]))
    body = data.draw(_body(required))
    r = httpx.post(server.url + path, content=json.dumps(body).encode(), timeout=60,
                   headers={"Content-Type": "application/json"})
    assert r.status_code < 500 or r.status_code == 507, r.text
    reply = r.json()
    if r.status_code >= 400:
        assert reply["error"]["code"] == r.status_code and reply["error"]["message"]
        assert "\n" not in reply["error"]["message"]
    else:
        assert reply["choices"]


tokens = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
methods = st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]) | tokens
paths = (st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/models", "/health",
                          "/", "*", "/v1/models?x=1", "//v1/completions"]) | tokens)
headers = st.dictionaries(
    st.sampled_from(["Content-Length", "Transfer-Encoding", "Authorization", "Connection",
                     "Expect", "Content-Type"]) | tokens,
    st.sampled_from(["0", "5", "-1", "99999999", "chunked", "gzip", "close", "100-continue",
                     "keep-alive", ""]) | tokens, max_size=4)
VALID = json.dumps({"model": "raw", "prompt": "Q", "max_tokens": 3}).encode()


@st.composite
def raw_requests(draw) -> bytes:
    kind = draw(st.sampled_from(["bytes", "request", "chunked"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    body = draw(st.sampled_from([VALID, b"", b"{", b"[" * 100]) | st.binary(max_size=100))
    hdrs = draw(headers)
    if kind == "chunked":
        size = draw(st.sampled_from([f"{len(body):x}", "zz", "ffffffff", "0", "1"]))
        hdrs["Transfer-Encoding"] = "chunked"
        body = f"{size}\r\n".encode() + body + draw(st.sampled_from([b"\r\n0\r\n\r\n", b"",
                                                                     b"\r\n"]))
    elif draw(st.booleans()):
        hdrs["Content-Length"] = str(len(body))
    if draw(st.booleans()):
        hdrs["Connection"] = "close"
    version = draw(st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", ""]))
    head = [f"{draw(methods)} {draw(paths)} {version}"]
    head += [f"{k}: {v}" for k, v in hdrs.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


@FUZZ
@given(data=raw_requests())
def test_raw_bytes_get_json_replies_below_500_or_a_close(server, data):
    with connect(server, timeout=30) as sock:      # no reply and no close in 30 s fails
        sock.sendall(data)
        raw = read_all(sock)
    for reply in parse_replies(raw):
        assert reply.status < 500 or reply.status == 507, (data[:200], reply.body[:200])
        if reply.body:
            assert "error" in reply.json() or reply.status == 200
