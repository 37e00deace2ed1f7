"""The HTTP verifier against a tiny local server on 127.0.0.1."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ttc.registry import VERIFIERS
from ttc.types import Problem
from ttc.verifiers.http import VerifierHTTPError, judge_prompt

PROBLEM = Problem(id="h", question="What is 2+2?")


class _Handler(BaseHTTPRequestHandler):
    fail_next = 0
    requests: list = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append((self.path, body))
        if type(self).fail_next:
            type(self).fail_next -= 1
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b"busy")
            return
        if self.path == "/v1/completions":
            choices = []
            for i, prompt in enumerate(body["prompt"]):
                last = prompt.split("Solution so far:\n")[1].split("\n\nIs the last")[0]
                yes = -0.1 if "wrong" not in last.strip().splitlines()[-1] else -3.0
                choices.append({"index": i, "text": " Yes", "logprobs": {
                    "top_logprobs": [{" Yes": yes, " No": -1.5, " Maybe": -4.0}]}})
            out = {"choices": choices, "usage": {"prompt_tokens": 100,
                                                 "prompt_tokens_details": {"cached_tokens": 40}}}
        elif self.path == "/pooling":
            out = {"data": [{"data": [[0.25, 0.75]] * text.count("<extra_0>")}
                            for text in body["input"]], "usage": {"prompt_tokens": 30}}
        else:
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b"no such route")
            return
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _p(a, b):
    return math.exp(a) / (math.exp(a) + math.exp(b))


def test_completions_judge_scores_and_usage(server):
    v = VERIFIERS.build({"name": "http", "url": server})
    out = v.score(PROBLEM, [["2+2 = 4.\n\n", "So 4."], ["2+2 = 5, wrong.\n\n"]])
    assert out.scores[0] == pytest.approx((_p(-0.1, -1.5), _p(-0.1, -1.5)))
    assert out.scores[1] == pytest.approx((_p(-3.0, -1.5),))
    assert (out.usage.calls, out.usage.tokens, out.usage.cached_tokens) == (2, 60, 40)
    path, body = _Handler.requests[-1]
    assert path == "/v1/completions" and body["max_tokens"] == 1
    assert body["prompt"][1] == judge_prompt(PROBLEM.question, ["2+2 = 4.\n\n", "So 4."])


def test_reward_endpoint(server):
    v = VERIFIERS.build({"name": "http", "url": server, "mode": "reward"})
    out = v.score(PROBLEM, [["a", "b", "c"], ["d"]])
    assert out.scores == ((0.75, 0.75, 0.75), (0.75,))
    assert "<extra_0>" in _Handler.requests[-1][1]["input"][0]


def test_retries_then_succeeds(server):
    _Handler.fail_next = 2
    v = VERIFIERS.build({"name": "http", "url": server, "max_retries": 2})
    assert len(v.score(PROBLEM, [["x"]]).scores) == 1


def test_clear_errors(server):
    _Handler.fail_next = 5
    v = VERIFIERS.build({"name": "http", "url": server, "max_retries": 1})
    with pytest.raises(VerifierHTTPError, match="failed after 2 attempt.*HTTP 503"):
        v.score(PROBLEM, [["x"]])
    _Handler.fail_next = 0
    bad = VERIFIERS.build({"name": "http", "url": server + "/nope", "max_retries": 3})
    with pytest.raises(VerifierHTTPError, match="failed after 4.*HTTP 404"):
        bad.score(PROBLEM, [["x"]])
    closed = VERIFIERS.build({"name": "http", "url": "http://127.0.0.1:9", "max_retries": 0,
                              "timeout_s": 2})
    with pytest.raises(VerifierHTTPError, match="127.0.0.1:9.*ConnectError"):
        closed.score(PROBLEM, [["x"]])
