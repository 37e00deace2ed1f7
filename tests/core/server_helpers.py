"""Test helpers for ``ttc serve``: start a server in a thread, speak raw HTTP to it."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass
from typing import Any

from ttc.config import load_run_config
from ttc.server import make_server

SIMULATED = {"backend": "simulated", "verifier": "simulated", "strategy": "best_of_n"}


def start(config: dict | None = None, **kwargs: Any):
    """A server on 127.0.0.1, an ephemeral port, serving in a daemon thread."""
    server = make_server(load_run_config(config or SIMULATED), port=0, **kwargs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


def stop(server) -> None:
    server.shutdown()
    server.server_close()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]      # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def connect(server, *, timeout: float = 20.0) -> socket.socket:
    return socket.create_connection(server.server_address[:2], timeout=timeout)


def exchange(server, data: bytes, *, timeout: float = 20.0) -> list[Reply]:
    """Send ``data`` on one connection, read until the server closes it, parse every reply.

    A reply that never comes fails the test with ``socket.timeout`` after ``timeout``.
    """
    with connect(server, timeout=timeout) as sock:
        sock.sendall(data)
        raw = read_all(sock)
    return parse_replies(raw)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def parse_replies(raw: bytes) -> list[Reply]:
    replies = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, f"an incomplete reply: {raw[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        n = int(headers.get("content-length", "0"))
        replies.append(Reply(status, headers, rest[:n]))
        raw = rest[n:]
    return replies


def request(method: str, path: str, body: bytes | None = None, *,
            headers: dict[str, str] | None = None, close: bool = True) -> bytes:
    """The bytes of one HTTP/1.1 request (``Content-Length`` set when there is a body)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    hdrs = dict(headers or {})
    if body is not None and not any(k.lower() in ("content-length", "transfer-encoding")
                                    for k in hdrs):
        hdrs["Content-Length"] = str(len(body))
    if close:
        hdrs["Connection"] = "close"
    lines += [f"{k}: {v}" for k, v in hdrs.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def chunked(data: bytes, size: int = 7) -> bytes:
    """``data`` as a chunked body (chunks of ``size`` bytes, then the last chunk)."""
    parts = [f"{len(data[i:i + size]):x}\r\n".encode() + data[i:i + size] + b"\r\n"
             for i in range(0, len(data), size)]
    return b"".join(parts) + b"0\r\n\r\n"
