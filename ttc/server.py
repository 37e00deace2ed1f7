"""``ttc serve``: an OpenAI-compatible HTTP server whose model names are search strategies.

Contract: :func:`make_server` builds one :class:`~ttc.service.TTCService` (one backend and
one verifier from a :class:`~ttc.config.RunConfig`) and serves it with the standard
library's ``ThreadingHTTPServer`` (one thread per connection; 127.0.0.1 by default):

* ``GET /v1/models`` (every registered strategy plus ``raw``), ``GET /v1/models/{id}``,
  ``GET /health``, ``GET /metrics`` (Prometheus text), ``GET /tokenizer_info``,
  ``POST /tokenize`` and ``POST /detokenize`` (also under ``/v1``; vLLM's shapes);
* ``POST /v1/chat/completions`` and ``POST /v1/completions`` with ``model`` =
  ``<strategy>[-<N>][@<B>]``: the conversation (or the prompt) is solved by that strategy;
  ``N`` sets the strategy's width (its ``n``, else ``k``, ``max_n``, ``num_particles``,
  ``num_trees`` or ``num_threads`` field, whichever it has first), ``B`` its token budget.
  What each field means is :mod:`ttc.service`'s; the extra ``ttc`` object of a reply
  carries the extracted answer, the candidates' answers and the compute ledger;
* ``POST /v1/completions`` with ``model: "raw"``: plain completions from the backend (no
  chat template, no system prompt), prompts as text, lists or token ids, with ``echo``
  and ``logprobs`` (token text, top log-probs, text offsets);
* ``stream: true`` on both: server-sent events (``data: {chunk}`` ... ``data: [DONE]``);
  a strategy streams ``ttc`` progress chunks (``choices: []``, which clients skip) while
  it searches, then the chosen text; ``raw`` streams tokens. A client that disconnects
  mid-stream has its work cancelled and its KV freed;
* an ``X-Request-Id`` header is echoed on the reply.

Concurrency: every request runs on its own thread against ONE generator and ONE verifier
(:mod:`ttc.sharing`). The native engine is a continuous-batching step loop, so the
branches of every concurrent search and raw completion decode in the same batch.

Transport rules (this module), each bounded by :class:`~ttc.service.ServerLimits`:

* the API key (when set) is compared in constant time before any body byte is read;
* a body is read by ``Content-Length`` or ``Transfer-Encoding: chunked`` (both at once, or
  another coding, is refused), at most ``max_body_bytes`` (413), JSON nested at most
  ``max_json_depth`` deep (400);
* every connection has a read timeout (an idle keep-alive connection is closed; a body
  that stops arriving gets a 408); at most ``max_connections`` are open at once, and
  one more is answered 503 and closed without a thread;
* every status carries a JSON body ``{"error": {"message", "type", "param", "code"}}``,
  including the standard library's own (400, 414, 431, ...); unknown methods get 405;
* a response left unread is dropped when the client is gone; a raw completion whose
  client disconnects is cancelled (its KV freed) on engines that can cancel.

Must NOT know: engine internals, strategies' fields, Hydra. What a request means
(models, widths, budgets, raw handles) is :mod:`ttc.service`'s.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import select
import socket
import sys
import threading
import time
import traceback
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ttc.config import RunConfig
from ttc.registry import ConfigError
from ttc.service import Disconnected, RequestError, ServerLimits, TTCService, error_reply

__all__ = ["TTCServer", "make_server", "exposure_warning", "ServerLimits", "TTCService"]

ROUTES = {"/v1/models": "GET", "/v1/completions": "POST", "/v1/chat/completions": "POST",
          "/health": "GET", "/metrics": "GET", "/tokenizer_info": "GET",
          "/tokenize": "POST", "/detokenize": "POST", "/v1/tokenize": "POST",
          "/v1/detokenize": "POST"}
_ALLOW = "GET, POST"
_METHODS = ("this server takes GET (" + ", ".join(p for p, m in ROUTES.items() if m == "GET")
            + ", /v1/models/{id}) and POST ("
            + ", ".join(p for p, m in ROUTES.items() if m == "POST") + ")")
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")     # printable ASCII, no spaces
_DIGITS = re.compile(r"[0-9]{1,15}")
_HEX = re.compile(rb"[0-9a-fA-F]{1,8}")
_MAX_TRAILERS = 32
_REFUSED_LINGER_S = 1.0     # a refused connection's socket is drained and closed after this


class _Handler(BaseHTTPRequestHandler):
    server: "TTCServer"
    protocol_version = "HTTP/1.1"

    # -- framing ---------------------------------------------------------------------
    def setup(self) -> None:
        self.timeout = self.server.limits.read_timeout_s   # read by StreamRequestHandler
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.server.verbose:
            super().log_message(format, *args)

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """The standard library's errors (bad request line, headers too long, unknown
        method) as JSON; the connection closes, since its stream may be out of step."""
        self.close_connection = True
        self._no_http09()
        if code == 501:                          # no do_<METHOD>: an unknown method
            err = RequestError(405, f"method {str(self.command)[:20]!r} is not allowed; "
                               f"{_METHODS}.")
        else:
            err = RequestError(code, message or "the request could not be parsed.")
        self._send(err.status, err.reply())

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self._no_http09()
        return ok

    def _no_http09(self) -> None:
        # HTTP/0.9 replies have no status line or headers; every reply here has both.
        if self.request_version == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        self._body_left = _has_body(self.headers)   # True until the body is consumed
        rid = self.headers.get("X-Request-Id")
        self._request_id = rid if rid and _REQUEST_ID.fullmatch(rid) else None
        service = self.server.service
        service.begin()
        try:
            self._check_key()                         # NOTE: before any body byte is read
            path = self.path.split("?", 1)[0].rstrip("/")
            if method == "GET" and path.startswith("/v1/models/"):
                return self._send(200, service.model(path[len("/v1/models/"):]))
            if path not in ROUTES:
                raise RequestError(404, f"unknown path {path[:80]!r}; available: "
                                   f"{', '.join(ROUTES)}, /v1/models/{{id}}.",
                                   kind="not_found_error")
            if ROUTES[path] != method:
                raise RequestError(405, f"{path} takes {ROUTES[path]}, not {method}.")
            if path == "/health":
                return self._send(200, {"status": "ok"})
            if path == "/v1/models":
                return self._send(200, service.models())
            if path == "/tokenizer_info":
                return self._send(200, service.tokenizer_info())
            if path == "/metrics":
                return self._send_text(200, service.metrics(),
                                       "text/plain; version=0.0.4; charset=utf-8")
            body = parse_json(self._read_body_in_time(),
                              max_depth=self.server.limits.max_json_depth)
            reply = service.post(path, body, client_gone=self._client_gone)
            if isinstance(reply, dict):
                self._send(200, reply)
            else:
                self._send_stream(reply)
        except Disconnected:
            self.close_connection = True               # nobody is left to answer
        except Exception as err:  # noqa: BLE001  (every failure is one JSON reply)
            reply = error_reply(err)
            service.count(failed=True)
            if reply.status == 500:                    # a bug: the operator hears of it
                sys.stderr.write(f"ttc serve: {self.command} {self.path[:80]}: "
                                 f"{reply.message}\n")
                if self.server.verbose:
                    traceback.print_exc()
            self._send_error(reply)
        finally:
            service.end()

    def _send_error(self, err: RequestError) -> None:
        self._send(err.status, err.reply())

    def _check_key(self) -> None:
        key = self.server.api_key
        if not key:
            return
        sent = self.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        want = f"Bearer {key}".encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(sent, want):
            raise RequestError(401, "missing or wrong API key; send 'Authorization: Bearer "
                               "<key>'.", kind="authentication_error")

    # -- the body --------------------------------------------------------------------
    def _read_body_in_time(self) -> bytes:
        """The body; after any failure to read it the connection closes (out of step)."""
        try:
            return self._read_body()
        except RequestError:
            self.close_connection = True
            raise
        except TimeoutError as err:
            self.close_connection = True
            raise RequestError(408, f"the request body did not arrive within "
                               f"{self.server.limits.read_timeout_s:g} s (the server's "
                               f"--read-timeout).") from err
        except ConnectionError as err:
            raise Disconnected("the client closed the connection mid-body.") from err

    def _read_body(self) -> bytes:
        limit = self.server.limits.max_body_bytes
        coding = self.headers.get("Transfer-Encoding")
        lengths = self.headers.get_all("Content-Length") or []
        if coding is not None:
            if lengths:
                raise RequestError(400, "the request has both Content-Length and "
                                   "Transfer-Encoding; send one of them.")
            if coding.strip().lower() != "chunked":
                raise RequestError(400, f"Transfer-Encoding {coding[:40]!r} is not "
                                   f"supported; send 'chunked' or a Content-Length.")
            data = self._read_chunked(limit)
        else:
            if not lengths:
                raise RequestError(411, "the request needs a JSON body with a Content-Length "
                                   "(or Transfer-Encoding: chunked).")
            if len(set(lengths)) > 1 or not _DIGITS.fullmatch(lengths[0].strip()):
                raise RequestError(400, f"Content-Length must be one non-negative integer; "
                                   f"got {', '.join(lengths)[:60]!r}.")
            n = int(lengths[0])
            if n > limit:
                raise RequestError(413, f"the body has {n} bytes; at most {limit} (the "
                                   f"server's --max-body-bytes).")
            data = self._read_exact(n)
        self._body_left = False
        return data

    def _read_exact(self, n: int) -> bytes:
        data = self.rfile.read(n)
        if len(data) < n:
            raise Disconnected("the client closed the connection mid-body.")
        return data

    def _read_chunked(self, limit: int) -> bytes:
        chunks, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            if not line:
                raise Disconnected("the client closed the connection mid-body.")
            size = line.split(b";", 1)[0].strip()
            if not line.endswith(b"\n") or not _HEX.fullmatch(size):
                raise RequestError(400, f"a chunk size must be a hexadecimal number on its "
                                   f"own line; got {line[:40]!r}.")
            n = int(size, 16)
            if n == 0:
                break
            total += n
            if total > limit:
                raise RequestError(413, f"the chunked body passed {limit} bytes (the "
                                   f"server's --max-body-bytes).")
            chunks.append(self._read_exact(n))
            if self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise RequestError(400, "a chunk must end with CRLF right after its data.")
        for _ in range(_MAX_TRAILERS):               # trailer lines, then an empty line
            if self.rfile.readline(8192) in (b"\r\n", b"\n", b""):
                break
        else:
            raise RequestError(400, f"a chunked body may end with at most {_MAX_TRAILERS} "
                               f"trailer lines.")
        return b"".join(chunks)

    def _client_gone(self) -> bool:
        """True when the client has closed its end (or reset it) while we compute."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    # -- the reply -------------------------------------------------------------------
    def _head(self, status: int, content_type: str, length: int | None) -> None:
        if getattr(self, "_body_left", False):
            self.close_connection = True           # the unread body would be a next request
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        if getattr(self, "_request_id", None):
            self.send_header("X-Request-Id", self._request_id)
        if status == 405:
            self.send_header("Allow", _ALLOW)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _send(self, status: int, data: dict[str, Any]) -> None:
        self._send_text(status, json.dumps(data), "application/json")

    def _send_text(self, status: int, text: str, content_type: str) -> None:
        payload = text.encode()
        try:
            self._head(status, content_type, len(payload))
            if self.command != "HEAD":
                self.wfile.write(payload)
        except OSError:      # the client is gone (reset, broken pipe, timed out): nobody
            self.close_connection = True           # is left to tell

    def _send_stream(self, chunks: Any) -> None:
        """Server-sent events: ``data: <chunk>`` per chunk, then ``data: [DONE]``. The
        response ends when the connection closes. A client that leaves (a failed write)
        closes the iterator, which cancels its work; an error after the first chunk is
        sent as one ``{"error": ...}`` event."""
        self.close_connection = True
        try:
            self._head(200, "text/event-stream; charset=utf-8", None)
            self.wfile.flush()
        except OSError:
            chunks.close()
            return
        try:
            try:
                for chunk in chunks:
                    self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                    self.wfile.flush()
            except OSError:
                raise                              # the client is gone: handled below
            except Exception as err:  # noqa: BLE001  (the stream's one error event)
                reply = error_reply(err)
                self.server.service.count(failed=True)
                self.wfile.write(b"data: " + json.dumps(reply.reply()).encode() + b"\n\n")
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except OSError:
            pass
        finally:
            chunks.close()                         # NOTE: cancels searches still running


def parse_json(raw: bytes, *, max_depth: int) -> dict[str, Any]:
    """A request body as a JSON object; 400 for anything else, naming what is wrong."""
    try:
        body = json.loads(raw)
    except RecursionError:
        body = None
        depth = max_depth + 1
    except (ValueError, UnicodeDecodeError) as err:
        raise RequestError(400, f"the body is not valid JSON ({str(err)[:120]}).") from err
    else:
        depth = _depth(body, max_depth)
    if depth > max_depth:
        raise RequestError(400, f"the body's JSON is nested more than {max_depth} levels "
                           f"deep; at most {max_depth} are allowed.")
    if not isinstance(body, dict):
        raise RequestError(400, f"the body must be a JSON object; got a JSON "
                           f"{type(body).__name__}.")
    return body


def _depth(value: Any, stop_at: int) -> int:
    """Nesting depth of decoded JSON (a scalar is 0), counted up to ``stop_at + 1``."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            d += 1
            deepest = max(deepest, d)
            if deepest > stop_at:
                return deepest
            stack.extend((c, d) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def _has_body(headers: Any) -> bool:
    length = headers.get("Content-Length")
    return headers.get("Transfer-Encoding") is not None or (
        length is not None and length.strip() not in ("", "0"))


class TTCServer(ThreadingHTTPServer):
    """The HTTP server: one thread per connection, at most ``limits.max_connections``."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], service: TTCService, *,
                 api_key: str | None = None, verbose: bool = False) -> None:
        super().__init__(address, _Handler)
        self.service = service
        self.limits = service.limits
        self.api_key = api_key
        self.verbose = verbose
        self._slots = threading.BoundedSemaphore(self.limits.max_connections)
        self._refused: deque[tuple[float, socket.socket]] = deque()
        self.refused = 0                           # connections answered 503 (a counter)
        self._open: set[socket.socket] = set()     # client connections being served
        self._open_lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def warnings(self) -> list[str]:
        """What an operator must hear at start-up (printed by ``ttc serve``)."""
        text = exposure_warning(self.server_address[0], self.server_address[1], self.api_key)
        return [text] if text else []

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)   # starts the thread
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.discard(request)
            self._slots.release()

    def _refuse(self, sock: socket.socket) -> None:
        """Answer 503 on the accepting thread (no handler thread) and close the socket a
        moment later (after draining it, so the client reads the reply, not a reset)."""
        self.refused += 1
        err = RequestError(503, f"the server already holds its maximum of "
                           f"{self.limits.max_connections} connections (--max-connections); "
                           f"retry shortly.", kind="server_busy")
        payload = json.dumps(err.reply()).encode()
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nRetry-After: 1\r\nConnection: close\r\n"
                f"\r\n").encode()
        try:
            sock.setblocking(False)
            sock.send(head + payload)              # a fresh socket's buffer takes it
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._refused.append((time.monotonic() + _REFUSED_LINGER_S, sock))
        if len(self._refused) > self.limits.max_connections:
            _drain_close(self._refused.popleft()[1])

    def service_actions(self) -> None:
        """Called by ``serve_forever`` between polls: close refused sockets whose time is up."""
        now = time.monotonic()
        while self._refused and self._refused[0][0] <= now:
            _drain_close(self._refused.popleft()[1])

    def server_close(self) -> None:
        """Stop listening and end every open connection too (a keep-alive client must not
        go on being served by a server that was closed)."""
        while self._refused:
            _drain_close(self._refused.popleft()[1])
        super().server_close()
        with self._open_lock:
            open_now = list(self._open)
        for sock in open_now:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that broke outside a request (the client vanished): one line when
        verbose, never a traceback."""
        err = sys.exc_info()[1]
        if self.verbose or not isinstance(err, OSError):
            sys.stderr.write(f"ttc serve: connection from {client_address[0]} ended: "
                             f"{type(err).__name__}: {err}\n")


def _drain_close(sock: socket.socket) -> None:
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def exposure_warning(host: str, port: int, api_key: str | None) -> str | None:
    """A loud line when the server listens beyond loopback with no API key, else None."""
    if api_key:
        return None
    try:
        loopback = ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    return (f"WARNING: ttc serve listens on {host}:{port} with no API key: anyone who can "
            f"reach this address can run searches on this machine; set --api-key (or "
            f"TTC_API_KEY), or bind --host 127.0.0.1.")


def make_server(config: RunConfig, *, host: str = "127.0.0.1", port: int = 8000,
                api_key: str | None = None, generator: Any = None, verifier: Any = None,
                verbose: bool = False, limits: ServerLimits | None = None) -> TTCServer:
    """A ready (not yet serving) server; call ``serve_forever()`` or run it in a thread."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"port must be in [0, 65535]; got {port!r}.")
    service = TTCService(config, generator=generator, verifier=verifier, limits=limits)
    try:
        return TTCServer((host, port), service, api_key=api_key, verbose=verbose)
    except OSError as err:
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror}.") from err
