"""The HTTP backend: the Generator protocol over an OpenAI-compatible ``/v1/completions``.

Contract: ``backend: http`` drives a running server (vLLM's OpenAI server, SGLang,
``ttc serve``) with async httpx, through
:class:`~ttc.engine.backends.token_handles.TokenHandleGenerator` (handles keep token ids and
text; the server's prefix cache shares the KV; lockstep token limits; seeds per
continuation).

Concurrency: ``expand`` may be called from many threads at once (concurrent searches),
and nothing is serialised: one background thread runs an asyncio loop that owns the one
``httpx.AsyncClient`` (so the client and its connection pool are only ever used from
that loop); each ``expand`` hands its jobs to the loop and waits, and every job of every
caller goes out as its own request, at most ``max_concurrency`` in flight for the whole
generator. A caller that stops waiting (an exception, Ctrl-C) has its requests
cancelled; when one job of a call fails, the call's other requests are cancelled.
Request bodies are built and responses parsed in the calling thread. The loop thread
starts on the first request and stops at :meth:`HTTPGenerator.close` or when the
generator is garbage-collected.

Prompts. With ``tokenizer`` set (a HF folder or hub id; the same tokenizer as the
served model), ``root`` applies the chat template locally and every request sends the
prompt as **token ids** (``prompt: [ids]``): the seam between a prefix and its
continuation is exactly the tokens the model produced, and the server's prefix cache
matches token for token. Without a tokenizer the prompt is sent as **text** (the question
itself for the root, then the root text plus the generated text), which any
OpenAI-compatible server accepts; ``prompt_format`` forces one or the other.

Each request asks for ``n``, ``max_tokens``, ``temperature``, ``top_p``, ``top_k`` (when
set), ``stop``, ``seed``, ``logprobs: 1`` and the server extensions
``include_stop_str_in_output`` (vLLM) / ``no_stop_trim`` (SGLang), which keep the stop
string in the text as the protocol requires, and ``return_tokens_as_token_ids`` (vLLM,
``ttc serve``), which gives the generated token ids; otherwise they are recovered by
tokenizing the text locally. A server that trims the stop string anyway gets it put
back from ``stop_reason``. Finish: ``stop`` with a stop string -> STOP, ``stop`` without
(EOS) -> EOS, ``length`` -> MAX_TOKENS. ``usage.prompt_tokens_details.cached_tokens``
(vLLM with ``--enable-prompt-tokens-details``, SGLang) splits prompt tokens into cached
and prefilled; a server that does not report it has all its prompt tokens counted as
prefilled.

Failures: connection errors, timeouts, 429 and 5xx are retried ``max_retries`` times with
exponential backoff (``backoff_s * 2**attempt``); then :class:`ServerUnavailable` (a
``ConnectionError``) names the URL and the last error. ``deadline_s`` bounds one request
over all its attempts and waits (``timeout_s`` bounds one attempt): past it, the request
fails with :class:`ServerUnavailable` naming both settings. A reply that is not the JSON
of a completion (garbage, a proxy's HTML page) is retried like a 5xx, then named in one
line. Other 4xx raise ``ValueError`` with the server's message. Nothing already returned is lost: the caller (an eval run)
keeps the records it wrote.
Must NOT know: rewards, strategies.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any, Awaitable, Literal, Sequence, TypeVar

from pydantic import Field, PositiveInt

from ttc.engine.backends.token_handles import Job, JobResult, Sample, TokenHandleGenerator
from ttc.registry import BACKENDS, ConfigError
from ttc.types import FinishReason, Frozen, Problem


class HTTPBackendConfig(Frozen):
    """An OpenAI-compatible completions server (vLLM, SGLang, ``ttc serve``)."""

    name: Literal["http"] = "http"
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "default"                  # the served model name
    api_key: str | None = None              # sent as "Authorization: Bearer <key>"
    tokenizer: str | None = None            # HF folder / hub id of the served model
    prompt_format: Literal["auto", "tokens", "text"] = "auto"   # auto: tokens iff tokenizer
    system_prompt: str | None = None        # with a tokenizer, None: the default; "": none
    max_concurrency: PositiveInt = 32       # requests in flight at once, all threads
    timeout_s: float = Field(default=600.0, gt=0)       # one attempt
    deadline_s: float = Field(default=900.0, gt=0)      # one request, all attempts and waits
    connect_timeout_s: float = Field(default=10.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    backoff_s: float = Field(default=0.5, ge=0)
    kv_bytes_per_token: int = Field(default=0, ge=0)   # for kv_bytes(); 0 = not reported


class ServerUnavailable(ConnectionError):
    """The server could not be reached (or kept failing) after every retry."""


_RETRY_STATUS = {408, 429, 500, 502, 503, 504}

_T = TypeVar("_T")


class _IOLoop:
    """An asyncio loop on a daemon thread with the httpx client and gate used on it.

    ``client`` and ``gate`` belong to the loop: they are touched only by coroutines
    running on it. :meth:`run` may be called from any thread.
    """

    def __init__(self, config: HTTPBackendConfig) -> None:
        import httpx  # noqa: PLC0415

        headers = {"Content-Type": "application/json"}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="ttc-http-io",
                                        daemon=True)
        self._thread.start()

        async def make() -> tuple[Any, asyncio.Semaphore]:
            timeout = httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s)
            limits = httpx.Limits(max_connections=config.max_concurrency)
            return (httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers),
                    asyncio.Semaphore(config.max_concurrency))

        self.client, self.gate = asyncio.run_coroutine_threadsafe(make(), self.loop).result()
        self.closed = False

    def run(self, coro: Awaitable[_T]) -> _T:
        """Run ``coro`` on the loop and wait for it; if the wait is interrupted, cancel it."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if threading.current_thread() is self._thread:
            # Collected by the loop's own thread: it cannot wait for itself; just stop.
            self.loop.call_soon(self.loop.stop)
            return
        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self.client.aclose(), self.loop).result(timeout=10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()


class HTTPGenerator(TokenHandleGenerator):
    """Completions over HTTP behind the Generator protocol. See the module docstring."""

    def __init__(self, config: HTTPBackendConfig, *, tokenizer: Any = None) -> None:
        super().__init__()
        if not config.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"backend.base_url must start with http:// or https://; "
                              f"got {config.base_url!r}.")
        self.config = config
        self.tokenizer = tokenizer
        self.system_prompt = config.system_prompt or None
        self.kv_bytes_per_token = config.kv_bytes_per_token
        fmt = config.prompt_format
        if fmt == "tokens" and tokenizer is None:
            raise ConfigError("backend.prompt_format='tokens' needs backend.tokenizer "
                              "(the served model's tokenizer folder or hub id).")
        self._tokens = fmt == "tokens" or (fmt == "auto" and tokenizer is not None)
        self.url = config.base_url.rstrip("/") + "/completions"
        self._io: _IOLoop | None = None
        self._io_lock = threading.Lock()

    def close(self) -> None:
        """Close the HTTP client and stop its loop thread (a later call starts them again)."""
        with self._io_lock:
            io, self._io = self._io, None
        if io is not None:
            io.close()

    def _io_loop(self) -> _IOLoop:
        with self._io_lock:
            if self._io is None:
                self._io = _IOLoop(self.config)
                # NOTE: the finalizer holds the loop, not self, so an unused generator is
                # still collected and its thread stopped.
                weakref.finalize(self, self._io.close)
            return self._io

    @classmethod
    def from_config(cls, config: HTTPBackendConfig) -> "HTTPGenerator":
        tokenizer = None
        if config.tokenizer is not None:
            from transformers import AutoTokenizer  # noqa: PLC0415  (heavy)

            tokenizer = AutoTokenizer.from_pretrained(config.tokenizer)
        gen = cls(config, tokenizer=tokenizer)
        if tokenizer is not None and config.system_prompt is None:
            from ttc.engine.prompting import DEFAULT_SYSTEM_PROMPT  # noqa: PLC0415

            gen.system_prompt = DEFAULT_SYSTEM_PROMPT
        return gen

    # -- TokenHandleGenerator hooks --------------------------------------------------------
    def _uses_token_prompts(self) -> bool:
        return self._tokens

    def format_prompt(self, problem: Problem) -> tuple[tuple[int, ...], str]:
        if self.tokenizer is None:
            # No template: the conversation's texts (system prompt, earlier turns, the
            # question) separated by blank lines.
            from ttc.engine.prompting import chat_messages  # noqa: PLC0415

            messages = chat_messages(problem, system_prompt=self.system_prompt)
            return (), "\n\n".join(m["content"] for m in messages)
        return self.chat_prompt(self.tokenizer, problem)

    def decode(self, token_ids: Sequence[int]) -> str | None:
        if self.tokenizer is None or not self._tokens:
            return None
        with self.tokenizer_lock:
            return self.tokenizer.decode(list(token_ids), skip_special_tokens=True)

    def _generate(self, jobs: Sequence[Job]) -> list[JobResult]:
        bodies = [self.body(job) for job in jobs]
        io = self._io_loop()
        replies = io.run(self._post_all(io, bodies))
        return [self._parse(job, data) for job, data in zip(jobs, replies)]

    # -- HTTP ------------------------------------------------------------------------------
    def body(self, job: Job) -> dict[str, Any]:
        """The JSON body of one completions request."""
        p = job.params
        body: dict[str, Any] = {
            "model": self.config.model,
            "prompt": list(job.prompt_ids) if self._tokens else job.prompt_text,
            "n": job.n, "max_tokens": job.max_tokens, "temperature": p.temperature,
            "top_p": p.top_p, "logprobs": 1, "echo": False,
            "include_stop_str_in_output": True, "no_stop_trim": True,
            "return_tokens_as_token_ids": True,
        }
        if p.top_k > 0:
            body["top_k"] = p.top_k
        if p.stop:
            body["stop"] = list(p.stop)
        if job.seed is not None:
            body["seed"] = job.seed
        return body

    async def _post_all(self, io: _IOLoop, bodies: list[dict[str, Any]]
                        ) -> list[dict[str, Any]]:
        """POST every body at once (within the shared gate); runs on ``io``'s loop."""
        async def one(body: dict[str, Any]) -> dict[str, Any]:
            async with io.gate:
                return await self._post(io.client, body)

        tasks = [asyncio.ensure_future(one(b)) for b in bodies]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:       # one request failed, or the caller gave up: stop the rest
                t.cancel()
            raise

    async def _post(self, client: Any, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(self._attempts(client, body),
                                          timeout=self.config.deadline_s)
        except asyncio.TimeoutError:
            raise ServerUnavailable(
                f"no completion from {self.url} within backend.deadline_s="
                f"{self.config.deadline_s:g} s (each attempt may take backend.timeout_s="
                f"{self.config.timeout_s:g} s); check the server, or raise the deadline."
            ) from None

    async def _attempts(self, client: Any, body: dict[str, Any]) -> dict[str, Any]:
        import httpx  # noqa: PLC0415

        last = ""
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                await asyncio.sleep(self.config.backoff_s * 2 ** (attempt - 1))
            try:
                resp = await client.post(self.url, json=body)
            except httpx.TransportError as err:
                last = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
                continue
            if resp.status_code in _RETRY_STATUS:
                last = f"HTTP {resp.status_code}: {_error_message(resp)}"
                continue
            if resp.status_code >= 400:
                raise ValueError(f"{self.url} refused the request (HTTP {resp.status_code}): "
                                 f"{_error_message(resp)}")
            try:
                data = resp.json()
            except ValueError:
                data = None
            if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
                last = f"the reply is not a completion: {resp.text[:80]!r}"
                continue
            return data
        raise ServerUnavailable(f"could not get a completion from {self.url} after "
                                f"{self.config.max_retries + 1} attempts; last error: {last}.")

    def _parse(self, job: Job, data: dict[str, Any]) -> JobResult:
        choices = sorted(data.get("choices", []), key=lambda c: c.get("index", 0))
        if len(choices) != job.n:
            raise RuntimeError(f"{self.url} returned {len(choices)} choices; asked for {job.n}.")
        samples = []
        for c in choices:
            text = c.get("text") or ""
            reason = c.get("finish_reason")
            stop_reason = c.get("stop_reason", c.get("matched_stop"))
            if reason == "stop":
                if isinstance(stop_reason, str):
                    finish = FinishReason.STOP
                    if not text.endswith(stop_reason):
                        text += stop_reason          # a server that trimmed the stop string
                elif stop_reason is None and any(text.endswith(s) for s in job.params.stop):
                    finish = FinishReason.STOP
                else:
                    finish = FinishReason.EOS
            elif reason == "length":
                finish = FinishReason.MAX_TOKENS
            else:
                raise RuntimeError(f"{self.url} finished a choice with reason {reason!r} "
                                   f"(expected 'stop' or 'length').")
            ids, lps = _tokens_of(c.get("logprobs"))
            if ids is None:
                if self.tokenizer is None:
                    raise RuntimeError(f"{self.url} returned no token ids; set "
                                       f"backend.tokenizer to the served model's tokenizer.")
                with self.tokenizer_lock:
                    ids = tuple(self.tokenizer(text, add_special_tokens=False)["input_ids"])
                lps = lps if len(lps) == len(ids) else ()
            samples.append(Sample(token_ids=ids, text=text, logprobs=lps, finish=finish))
        usage = data.get("usage") or {}
        prompt_tokens = len(job.prompt_ids) if self._tokens else int(usage.get("prompt_tokens") or 0)
        details = usage.get("prompt_tokens_details") or {}
        cached = int(details.get("cached_tokens") or 0)
        return JobResult(samples=tuple(samples), prompt_tokens=prompt_tokens,
                         cached_tokens=min(cached, prompt_tokens))


def _tokens_of(logprobs: Any) -> tuple[tuple[int, ...] | None, tuple[float, ...]]:
    """Token ids (from ``token_id:N`` tokens) and per-token logprobs of one choice."""
    if not logprobs:
        return None, ()
    tokens = logprobs.get("tokens") or []
    lps = tuple(float(x) if x is not None else 0.0 for x in logprobs.get("token_logprobs") or [])
    ids = []
    for t in tokens:
        if not (isinstance(t, str) and t.startswith("token_id:")):
            return None, lps
        ids.append(int(t[len("token_id:"):]))
    return tuple(ids), lps


def _error_message(resp: Any) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:200] or "(empty body)"
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        return str(err.get("message", err))[:200]
    return str(err)[:200]


@BACKENDS.register(HTTPBackendConfig)
def build_http(config: HTTPBackendConfig, **_: object) -> HTTPGenerator:
    return HTTPGenerator.from_config(config)
