"""``ttc serve``: an OpenAI-compatible HTTP server whose model names are search strategies.

Contract: :func:`make_server` builds one backend and one verifier from a
:class:`~ttc.config.RunConfig` and serves them with the standard library's
``ThreadingHTTPServer`` (one thread per connection; 127.0.0.1 by default):

* ``GET /v1/models``: every registered strategy (``beam``, ``best_of_n``, ``astar``, ...)
  plus ``raw`` (plain completions from the backend);
* ``POST /v1/chat/completions`` and ``POST /v1/completions`` with ``model`` =
  ``<strategy>`` or ``<strategy>-<N>``: the last user message (or the prompt) is solved by
  that strategy; ``N`` sets the strategy's width (its ``n``, else ``k``, ``max_n``,
  ``num_particles``, ``num_trees`` or ``num_threads`` field, whichever it has first);
  ``max_tokens`` caps the generated tokens of the whole search (the budget). The answer
  text is the chosen trajectory; the extra ``ttc`` object carries the extracted answer,
  the candidates' answers and the compute ledger;
* ``POST /v1/completions`` with ``model: "raw"``: ``prompt`` (text) continued ``n`` times
  by the backend with ``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``stop``
  (kept in the text when ``include_stop_str_in_output``), ``seed``, ``logprobs``
  (``return_tokens_as_token_ids`` gives ``token_id:N`` tokens). A prompt that equals an
  earlier prompt plus one of its completions continues that handle (the backend's
  prefix cache serves it); the last 4096 such handles are kept, older ones released.

Concurrency: every request runs on its own thread against ONE generator and ONE verifier
(:mod:`ttc.sharing`). The native engine is a continuous-batching step loop, so the
branches of every concurrent search and raw completion decode in the same batch, step by
step, with each search's token budget applied to its own requests; backends that are
not thread-safe are called one call at a time.

Errors are JSON ``{"error": {"message", "type", "param", "code"}}``: 400 for a bad body
(named field and what is allowed), 401 for a missing/wrong API key (when one is set),
404 for an unknown path or model, 405 for a wrong method, 500 for a backend failure.
Must NOT know: engine internals, Hydra.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ttc.config import RunConfig
from ttc.registry import BACKENDS, STRATEGIES, VERIFIERS, ConfigError
from ttc.sharing import shared_generator, shared_verifier
from ttc.types import ExpandRequest, FinishReason, Handle, Problem, SamplingParams

RAW_MODEL = "raw"
WIDTH_FIELDS = ("n", "k", "max_n", "num_particles", "num_trees", "num_threads")
MAX_BODY_BYTES = 1 << 20
_MODEL_RE = re.compile(r"^([a-z_][a-z0-9_]*?)(?:-(\d+))?$")


class RequestError(Exception):
    """A client error: HTTP status, message, and the offending field."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind


# -- the service ------------------------------------------------------------------------
class TTCService:
    """What the HTTP handler calls: model listing, strategy runs, raw completions."""

    def __init__(self, config: RunConfig, *, generator: Any = None, verifier: Any = None,
                 max_handles: int = 4096) -> None:
        self.config = config
        inner = generator if generator is not None else BACKENDS.build(config.backend)
        self.generator = shared_generator(inner)
        self.verifier = shared_verifier(verifier if verifier is not None else VERIFIERS.build(
            config.verifier, generator=self.generator))
        self._texts: OrderedDict[str, Handle] = OrderedDict()
        self._texts_lock = threading.Lock()
        self.max_handles = max_handles

    # models
    def models(self) -> dict[str, Any]:
        names = [RAW_MODEL] + STRATEGIES.names()
        return {"object": "list", "data": [
            {"id": n, "object": "model", "created": 0, "owned_by": "ttc"} for n in names]}

    def strategy_for(self, model: Any) -> Any:
        if not isinstance(model, str) or not model:
            raise RequestError(400, "model must be a strategy name such as 'beam-8' or "
                               "'best_of_n-16', or 'raw'.", param="model")
        m = _MODEL_RE.match(model)
        if m is None or m.group(1) not in STRATEGIES:
            raise RequestError(404, f"unknown model {model!r}; available: "
                               f"{', '.join(STRATEGIES.names())} (optionally -N), or raw.",
                               param="model", kind="not_found_error")
        name, width = m.group(1), m.group(2)
        data: dict[str, Any] = {"name": name}
        if name == self.config.strategy.name:
            data = self.config.strategy.model_dump()
        if width is not None:
            cls = STRATEGIES.config_class(name)
            fld = next((f for f in WIDTH_FIELDS if f in cls.model_fields), None)
            if fld is None:
                raise RequestError(400, f"model {model!r}: strategy {name!r} has no width to "
                                   f"set; use {name!r} alone.", param="model")
            data[fld] = int(width)
        try:
            return STRATEGIES.build(data, generation=self.config.generation)
        except ConfigError as err:
            raise RequestError(400, f"model {model!r}: {err}", param="model") from err

    # strategies
    def solve(self, model: str, question: str, max_tokens: int | None) -> dict[str, Any]:
        strategy = self.strategy_for(model)
        budget = self.config.budget
        if max_tokens is not None:
            budget = budget.model_copy(update={"max_generated_tokens": max_tokens})
        problem = Problem(id="serve", question=question)
        result = strategy.run(problem, generator=self.generator, verifier=self.verifier,
                              budget=budget)
        led = result.ledger
        return {"text": result.text or (result.candidates[0].text if result.candidates else ""),
                "finish_reason": "length" if result.budget_exhausted else "stop",
                "usage": {"prompt_tokens": led.prefill_tokens + led.cached_tokens,
                          "completion_tokens": led.generated_tokens,
                          "total_tokens": led.prefill_tokens + led.cached_tokens
                          + led.generated_tokens,
                          "prompt_tokens_details": {"cached_tokens": led.cached_tokens}},
                "ttc": {"answer": result.answer, "strategy": result.strategy,
                        "candidate_answers": [c.answer for c in result.candidates],
                        "budget_exhausted": result.budget_exhausted,
                        "ledger": led.model_dump(mode="json")}}

    # raw completions
    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise RequestError(400, "prompt must be a non-empty string for model 'raw'.",
                               param="prompt")
        n = _int(body, "n", 1, lo=1, hi=256)
        params = _sampling(body)
        with self._texts_lock:
            handle = self._texts.get(prompt)
            if handle is not None:
                self._texts.move_to_end(prompt)
        if handle is None:
            handle = self.generator.root(Problem(question=prompt))
            self._remember(prompt, handle)
        out = self.generator.expand([ExpandRequest(prefix=handle, n=n, params=params)])
        keep_stop = bool(body.get("include_stop_str_in_output") or body.get("no_stop_trim"))
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        choices = []
        for i, c in enumerate(out.continuations[0]):
            self._remember(prompt + c.text, c.handle)
            stop = next((s for s in params.stop if c.text.endswith(s)), None) \
                if c.finish is FinishReason.STOP else None
            text = c.text if keep_stop or stop is None else c.text[:-len(stop)]
            choice: dict[str, Any] = {
                "index": i, "text": text, "stop_reason": stop,
                "finish_reason": "stop" if c.finish in (FinishReason.STOP, FinishReason.EOS)
                else "length", "logprobs": None}
            if body.get("logprobs") is not None:
                choice["logprobs"] = {
                    "tokens": [f"token_id:{t}" if as_ids else str(t) for t in c.token_ids],
                    "token_logprobs": list(c.logprobs) if c.logprobs else
                    [None] * len(c.token_ids)}
            choices.append(choice)
        u = out.usage
        return {"choices": choices, "usage": {
            "prompt_tokens": u.prefill_tokens + u.cached_tokens,
            "completion_tokens": u.generated_tokens,
            "total_tokens": u.prefill_tokens + u.cached_tokens + u.generated_tokens,
            "prompt_tokens_details": {"cached_tokens": u.cached_tokens}}}

    def _remember(self, text: str, handle: Handle) -> None:
        evicted = []
        with self._texts_lock:
            old = self._texts.pop(text, None)
            if old is not None and old != handle:
                evicted.append(old)
            self._texts[text] = handle
            while len(self._texts) > self.max_handles:
                evicted.append(self._texts.popitem(last=False)[1])
        if evicted:
            self.generator.release(evicted)


def _int(body: dict[str, Any], key: str, default: int | None, *, lo: int, hi: int) -> int:
    value = body.get(key, default)
    if value is None:
        return default  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise RequestError(400, f"{key} must be an integer in [{lo}, {hi}]; got {value!r}.",
                           param=key)
    return value


def _float(body: dict[str, Any], key: str, default: float, *, lo: float, hi: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise RequestError(400, f"{key} must be a number in [{lo}, {hi}]; got {value!r}.",
                           param=key)
    return float(value)


def _sampling(body: dict[str, Any]) -> SamplingParams:
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, list | tuple) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(400, f"stop must be a non-empty string or a list of them; got "
                           f"{body.get('stop')!r}.", param="stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RequestError(400, f"seed must be an integer; got {seed!r}.", param="seed")
    return SamplingParams(temperature=_float(body, "temperature", 1.0, lo=0.0, hi=2.0),
                          top_p=_float(body, "top_p", 1.0, lo=1e-6, hi=1.0),
                          top_k=max(0, _int(body, "top_k", 0, lo=-1, hi=1 << 20)),
                          max_tokens=_int(body, "max_tokens", 16, lo=1, hi=1 << 20),
                          stop=tuple(stop), seed=seed, logprobs=body.get("logprobs") is not None)


def _chat_question(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages must be a non-empty list of {role, content} objects.",
                           param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise RequestError(400, f"messages[{i}] must be an object with role system, user "
                               f"or assistant and a string content; got {m!r}.",
                               param=f"messages[{i}]")
    if messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
        raise RequestError(400, "the last message must be a non-empty user message (the "
                           "question).", param="messages")
    return messages[-1]["content"]


# -- HTTP ------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    server: "TTCServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.server.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        self._raw = self._read_raw()      # always consumed, so keep-alive stays in sync
        try:
            self._check_key()
            path = self.path.split("?", 1)[0].rstrip("/")
            routes = {"/v1/models": "GET", "/v1/completions": "POST",
                      "/v1/chat/completions": "POST", "/health": "GET"}
            if path not in routes:
                raise RequestError(404, f"unknown path {path!r}; available: "
                                   f"{', '.join(routes)}.", kind="not_found_error")
            if routes[path] != method:
                raise RequestError(405, f"{path} takes {routes[path]}, not {method}.")
            if path == "/health":
                return self._send(200, {"status": "ok"})
            if path == "/v1/models":
                return self._send(200, self.server.service.models())
            body = self._body()
            self._send(200, self._post(path, body))
        except RequestError as err:
            self._send(err.status, {"error": {"message": err.message, "type": err.kind,
                                              "param": err.param, "code": err.status}})
        except Exception as err:  # noqa: BLE001  (a backend failure: one JSON 500)
            self._send(500, {"error": {"message": f"{type(err).__name__}: {err}",
                                       "type": "server_error", "param": None, "code": 500}})

    def _check_key(self) -> None:
        key = self.server.api_key
        if key and self.headers.get("Authorization", "") != f"Bearer {key}":
            raise RequestError(401, "missing or wrong API key; send 'Authorization: Bearer "
                               "<key>'.", kind="authentication_error")

    def _read_raw(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            return None
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            return None
        return self.rfile.read(int(length))

    def _body(self) -> dict[str, Any]:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RequestError(400, "the request needs a JSON body with a Content-Length.")
        if int(length) > MAX_BODY_BYTES:
            raise RequestError(400, f"the body has {length} bytes; at most {MAX_BODY_BYTES}.")
        raw = self._raw or b""
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise RequestError(400, f"the body is not valid JSON ({err}).") from err
        if not isinstance(body, dict):
            raise RequestError(400, "the body must be a JSON object.")
        if body.get("stream"):
            raise RequestError(400, "stream=true is not supported; omit it.", param="stream")
        return body

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        service = self.server.service
        model = body.get("model")
        created = int(time.time())
        if path == "/v1/completions" and model == RAW_MODEL:
            out = service.complete(body)
            return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                    "created": created, "model": model, **out}
        if path == "/v1/chat/completions":
            question = _chat_question(body)
        else:
            question = body.get("prompt")
            if not isinstance(question, str) or not question.strip():
                raise RequestError(400, "prompt must be a non-empty string (the question).",
                                   param="prompt")
        if body.get("n", 1) != 1:
            raise RequestError(400, f"n must be 1 for a strategy model (the strategy samples "
                               f"its own branches); got {body.get('n')!r}.", param="n")
        max_tokens = _int(body, "max_tokens", None, lo=1, hi=1 << 30)
        if path == "/v1/chat/completions" and model == RAW_MODEL:
            raise RequestError(400, "model 'raw' serves /v1/completions only.", param="model")
        out = service.solve(model, question, max_tokens)
        if path == "/v1/chat/completions":
            choice = {"index": 0, "message": {"role": "assistant", "content": out["text"]},
                      "finish_reason": out["finish_reason"]}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": out["text"], "finish_reason": out["finish_reason"],
                      "logprobs": None}
            obj = "text_completion"
        return {"id": f"ttc-{uuid.uuid4().hex}", "object": obj, "created": created,
                "model": model, "choices": [choice], "usage": out["usage"], "ttc": out["ttc"]}

    def _send(self, status: int, data: dict[str, Any]) -> None:
        payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class TTCServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], service: TTCService, *,
                 api_key: str | None = None, verbose: bool = False) -> None:
        super().__init__(address, _Handler)
        self.service = service
        self.api_key = api_key
        self.verbose = verbose

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


def make_server(config: RunConfig, *, host: str = "127.0.0.1", port: int = 8000,
                api_key: str | None = None, generator: Any = None, verifier: Any = None,
                verbose: bool = False) -> TTCServer:
    """A ready (not yet serving) server; call ``serve_forever()`` or run it in a thread."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be in [0, 65535]; got {port!r}.")
    service = TTCService(config, generator=generator, verifier=verifier)
    try:
        return TTCServer((host, port), service, api_key=api_key, verbose=verbose)
    except OSError as err:
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror}.") from err
