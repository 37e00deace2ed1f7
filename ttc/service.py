"""What ``ttc serve`` does with a parsed request: models, strategy runs, raw completions.

Contract: :class:`TTCService` turns one decoded JSON body into one JSON-ready reply, or
raises :class:`RequestError` (an HTTP status, one sentence naming the field, the bad value
and what is allowed). :func:`error_reply` maps any other exception to a status the same
way ``ttc.faults`` maps it to an exit code, by built-in base classes only:

    ValueError (a prompt too long for the model, a bad setting)      -> 400
    a MemoryError subclass (the engine's KV pool cannot hold it)     -> 507, the message
                                                                        names the memory setting
    a bare MemoryError (the machine ran out)                         -> 503
    ConnectionError / TimeoutError (an upstream server)              -> 502 / 504
    anything else (a bug)                                            -> 500, one line

Bounded work: :class:`ServerLimits` caps a strategy's width (``<strategy>-N``) and a
raw request's ``n``, every request's ``max_tokens`` (a strategy's token budget; a raw
completion's length), and the number of raw handles remembered. A request over a cap is
a 400 naming the cap and the ``ttc serve`` option that sets it.

KV held by raw completions (:class:`RawPrefixes`): a prompt that equals an earlier prompt
plus one of its completions continues that handle, so the engine's prefix cache serves it.
On an engine with ``unpin`` (native, hf) a remembered handle is pinned only while a request
uses it (counted, so the last user unpins it); otherwise it is evictable cache, which the
engine drops under memory pressure (the entry is then forgotten on its next use). So raw
completions never hold KV that a later request needs. On engines whose handles are
bookkeeping only (simulated, vLLM, HTTP: the KV lives elsewhere), handles stay pinned and
at most ``max_raw_handles`` are kept, oldest released first. Strategy runs release every
handle they made before they return (``SearchStrategy.run``).

Must NOT know: sockets, headers or body framing (``ttc.server``; it knows HTTP statuses
only), engine internals (pages, the tree), concrete error classes of engines, Hydra.
"""

from __future__ import annotations

import concurrent.futures
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from ttc.config import RunConfig
from ttc.faults import describe
from ttc.registry import STRATEGIES, ConfigError
from ttc.sharing import shared_engine
from ttc.types import ExpandOutput, ExpandRequest, FinishReason, Handle, Problem, SamplingParams

RAW_MODEL = "raw"
WIDTH_FIELDS = ("n", "k", "max_n", "num_particles", "num_trees", "num_threads")
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
_MODEL_RE = re.compile(r"^([a-z_][a-z0-9_]*?)(?:-(\d{1,12}))?$")

ClientGone = Callable[[], bool]      # True once the client has closed its connection


class RequestError(Exception):
    """A client error: HTTP status, message, and the offending field."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def reply(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.status}}


class Disconnected(Exception):
    """The client closed its connection while its request ran; the work was cancelled."""


@dataclass(frozen=True, kw_only=True)
class ServerLimits:
    """What one request or connection may ask of the server (the ``ttc serve`` options)."""

    max_width: int = 64            # --max-width: N in "<strategy>-N"; a raw request's n
    max_tokens: int = 32768        # --max-tokens: a request's max_tokens (strategy budget)
    max_body_bytes: int = 1 << 20  # --max-body-bytes: a request body, after de-chunking
    max_json_depth: int = 32       # nesting of the JSON body (a chat body needs 3)
    max_connections: int = 256     # --max-connections: open at once; more get a 503
    read_timeout_s: float = 30.0   # --read-timeout: a silent client's connection closes
    max_raw_handles: int = 4096    # raw-completion handles remembered for continuations

    def __post_init__(self) -> None:
        for name, option in (("max_width", "--max-width"), ("max_tokens", "--max-tokens"),
                             ("max_body_bytes", "--max-body-bytes"),
                             ("max_json_depth", "max_json_depth"),
                             ("max_connections", "--max-connections"),
                             ("max_raw_handles", "max_raw_handles")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{option} must be a positive integer; got {value!r}.")
        t = self.read_timeout_s
        if isinstance(t, bool) or not isinstance(t, int | float) or not 0 < t <= 3600:
            raise ConfigError(f"--read-timeout must be a number of seconds in (0, 3600]; "
                              f"got {t!r}.")


def error_reply(err: BaseException) -> RequestError:
    """The status and one-line message a client gets for an exception (see the module doc)."""
    if isinstance(err, RequestError):
        return err
    first = describe(err).split(": ", 1)[-1]
    if isinstance(err, MemoryError) and type(err) is not MemoryError:
        return RequestError(507, first, kind="insufficient_storage")
    if isinstance(err, MemoryError):
        return RequestError(503, f"the server is out of memory ({first}); retry later or "
                            f"ask for less (a smaller n, width or max_tokens).",
                            kind="server_error")
    if isinstance(err, ConnectionError):
        return RequestError(502, first, kind="upstream_error")
    if isinstance(err, TimeoutError):
        return RequestError(504, first, kind="upstream_error")
    if isinstance(err, ValueError):
        return RequestError(400, first)
    return RequestError(500, f"internal error ({describe(err)}).", kind="server_error")


# -- raw handles ---------------------------------------------------------------------
@dataclass
class _Entry:
    handle: Handle
    users: int = 0        # requests using the handle now; pinned while > 0


class RawPrefixes:
    """Text -> handle for raw completions; see the module docstring for the KV rule."""

    def __init__(self, generator: Any, *, max_handles: int) -> None:
        self.generator = generator
        self.max_handles = max_handles
        self.evictable = callable(getattr(generator, "unpin", None))
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        # NOTE: pin/unpin of a shared entry happen under this lock, so a handle's pinned
        # state always matches ``users > 0`` (the engine waits at most one step).
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def acquire(self, text: str) -> Handle | None:
        """The remembered handle for ``text``, pinned for the caller; None if none lives."""
        with self._lock:
            entry = self._entries.get(text)
            if entry is None:
                return None
            if entry.users == 0 and self.evictable:
                try:
                    self.generator.pin([entry.handle])
                except ValueError:           # evicted while it was cache: forget it
                    del self._entries[text]
                    self.generator.release([entry.handle])
                    return None
            entry.users += 1
            self._entries.move_to_end(text)
            return entry.handle

    def adopt(self, text: str, handle: Handle, *, in_use: bool) -> bool:
        """Remember a fresh pinned ``handle`` for ``text``; False (and nothing kept) when
        ``text`` already has one, so the caller keeps (and later releases) its own."""
        with self._lock:
            if text in self._entries:
                return False
            self._entries[text] = _Entry(handle, users=1 if in_use else 0)
            if not in_use and self.evictable:
                self.generator.unpin([handle])
            self._trim()
            return True

    def done(self, handle: Handle, text: str) -> None:
        """The caller stops using the handle it got from :meth:`acquire` or adopted in use."""
        with self._lock:
            entry = self._entries.get(text)
            if entry is None or entry.handle != handle:
                return
            entry.users -= 1
            if entry.users == 0 and self.evictable:
                self.generator.unpin([handle])
            self._trim()

    def clear(self) -> None:
        """Release every remembered handle no request is using."""
        with self._lock:
            idle = [t for t, e in self._entries.items() if e.users == 0]
            self.generator.release([self._entries.pop(t).handle for t in idle])

    def _trim(self) -> None:
        excess = len(self._entries) - self.max_handles
        if excess <= 0:
            return
        old = [t for t, e in self._entries.items() if e.users == 0][:excess]
        self.generator.release([self._entries.pop(t).handle for t in old])


# -- the service ------------------------------------------------------------------------
class TTCService:
    """What the HTTP handler calls: model listing, strategy runs, raw completions."""

    def __init__(self, config: RunConfig, *, generator: Any = None, verifier: Any = None,
                 limits: ServerLimits | None = None) -> None:
        self.config = config
        self.limits = limits or ServerLimits()
        self.generator, self.verifier = shared_engine(config, generator=generator,
                                                      verifier=verifier)
        self.raw = RawPrefixes(self.generator, max_handles=self.limits.max_raw_handles)
        self.cancelled = 0          # raw requests cancelled because their client left

    def close(self) -> None:
        """Release the raw-completion handles kept for continuations."""
        self.raw.clear()

    # models
    def models(self) -> dict[str, Any]:
        names = [RAW_MODEL] + STRATEGIES.names()
        return {"object": "list", "data": [
            {"id": n, "object": "model", "created": 0, "owned_by": "ttc"} for n in names]}

    def post(self, path: str, body: dict[str, Any], *,
             client_gone: ClientGone | None = None) -> dict[str, Any]:
        """The reply to ``POST path`` (``/v1/completions`` or ``/v1/chat/completions``)."""
        if body.get("stream"):
            raise RequestError(400, f"stream must be false or absent (streaming is not "
                               f"supported); got {body.get('stream')!r}.", param="stream")
        model = body.get("model")
        created = int(time.time())
        if path == "/v1/completions" and model == RAW_MODEL:
            out = self.complete(body, client_gone=client_gone)
            return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                    "created": created, "model": model, **out}
        if path == "/v1/chat/completions":
            if model == RAW_MODEL:
                raise RequestError(400, "model 'raw' serves /v1/completions only.",
                                   param="model")
            question = chat_question(body)
        else:
            question = body.get("prompt")
            if not isinstance(question, str) or not question.strip():
                raise RequestError(400, "prompt must be a non-empty string (the question).",
                                   param="prompt")
        if body.get("n", 1) != 1:
            raise RequestError(400, f"n must be 1 for a strategy model (the strategy samples "
                               f"its own branches); got {body.get('n')!r}.", param="n")
        max_tokens = _int(body, "max_tokens", None, lo=1, hi=self.limits.max_tokens,
                          option="--max-tokens")
        out = self.solve(model, question, max_tokens)
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

    # strategies
    def strategy_for(self, model: Any) -> Any:
        if not isinstance(model, str) or not model:
            raise RequestError(400, f"model must be a strategy name such as 'beam-8' or "
                               f"'best_of_n-16', or 'raw'; got {model!r}.", param="model")
        m = _MODEL_RE.match(model)
        if m is None or m.group(1) not in STRATEGIES:
            raise RequestError(404, f"unknown model {model[:80]!r}; available: "
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
            if not 1 <= int(width) <= self.limits.max_width:
                raise RequestError(400, f"model {model!r}: the width must be in [1, "
                                   f"{self.limits.max_width}] (the server's --max-width); "
                                   f"got {int(width)}.", param="model")
            data[fld] = int(width)
        try:
            return STRATEGIES.build(data, generation=self.config.generation)
        except ConfigError as err:
            raise RequestError(400, f"model {model!r}: {err}", param="model") from err

    def solve(self, model: str, question: str, max_tokens: int | None) -> dict[str, Any]:
        """Run the named strategy; its token budget is ``max_tokens``, else the configured
        one, never more than the server's ``max_tokens`` limit."""
        strategy = self.strategy_for(model)
        budget = self.config.budget
        cap = self.limits.max_tokens
        configured = budget.max_generated_tokens
        tokens = max_tokens if max_tokens is not None else min(configured or cap, cap)
        budget = budget.model_copy(update={"max_generated_tokens": tokens})
        problem = Problem(id="serve", question=question)
        result = strategy.run(problem, generator=self.generator, verifier=self.verifier,
                              budget=budget)
        led = result.ledger
        return {"text": result.text or (result.candidates[0].text if result.candidates else ""),
                "finish_reason": "length" if result.budget_exhausted else "stop",
                "usage": _usage(led.prefill_tokens, led.cached_tokens, led.generated_tokens),
                "ttc": {"answer": result.answer, "strategy": result.strategy,
                        "candidate_answers": [c.answer for c in result.candidates],
                        "budget_exhausted": result.budget_exhausted,
                        "ledger": led.model_dump(mode="json")}}

    # raw completions
    def complete(self, body: dict[str, Any], *,
                 client_gone: ClientGone | None = None) -> dict[str, Any]:
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise RequestError(400, f"prompt must be a non-empty string for model 'raw'; got "
                               f"{_short(prompt)}.", param="prompt")
        n = _int(body, "n", 1, lo=1, hi=self.limits.max_width, option="--max-width")
        params = sampling_params(body, max_tokens=self.limits.max_tokens)
        handle = self.raw.acquire(prompt)
        remembered = handle is not None
        if handle is None:
            handle = self.generator.root(Problem(question=prompt))
            # False when another request remembered this text meanwhile: ours is private.
            remembered = self.raw.adopt(prompt, handle, in_use=True)
        try:
            out = self._expand(handle, n, params, client_gone)
        finally:
            if remembered:
                self.raw.done(handle, prompt)
            else:
                self.generator.release([handle])
        keep_stop = bool(body.get("include_stop_str_in_output") or body.get("no_stop_trim"))
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        choices = []
        for i, c in enumerate(out.continuations[0]):
            if c.handle is not None and not self.raw.adopt(prompt + c.text, c.handle,
                                                           in_use=False):
                self.generator.release([c.handle])
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
        return {"choices": choices,
                "usage": _usage(u.prefill_tokens, u.cached_tokens, u.generated_tokens)}

    def _expand(self, handle: Handle, n: int, params: SamplingParams,
                client_gone: ClientGone | None) -> ExpandOutput:
        """One expand; on an engine that can ``submit`` (and cancel), a client that
        disconnects has its job cancelled, which frees the job's KV at once."""
        requests = [ExpandRequest(prefix=handle, n=n, params=params)]
        submit = getattr(self.generator, "submit", None)
        if client_gone is None or not callable(submit):
            return self.generator.expand(requests)
        job = submit(requests)
        while True:
            done, _ = concurrent.futures.wait([job.future], timeout=0.25)
            if done:
                return job.result()
            if client_gone():
                job.cancel()
                self.cancelled += 1
                raise Disconnected("the client closed the connection; its request was "
                                   "cancelled.")


def _usage(prefill: int, cached: int, generated: int) -> dict[str, Any]:
    return {"prompt_tokens": prefill + cached, "completion_tokens": generated,
            "total_tokens": prefill + cached + generated,
            "prompt_tokens_details": {"cached_tokens": cached}}


# -- request fields -------------------------------------------------------------------
def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _int(body: dict[str, Any], key: str, default: int | None, *, lo: int, hi: int,
         option: str | None = None) -> int:
    value = body.get(key, default)
    if value is None:
        return default  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        cap = f" (the server's {option})" if option else ""
        raise RequestError(400, f"{key} must be an integer in [{lo}, {hi}]{cap}; got "
                           f"{_short(value)}.", param=key)
    return value


def _float(body: dict[str, Any], key: str, default: float, *, lo: float, hi: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise RequestError(400, f"{key} must be a number in [{lo}, {hi}]; got "
                           f"{_short(value)}.", param=key)
    return float(value)


def sampling_params(body: dict[str, Any], *, max_tokens: int) -> SamplingParams:
    """A raw request's sampling fields, checked (``max_tokens`` caps its ``max_tokens``)."""
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, list | tuple) or not all(
            isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stop) \
            or len(stop) > MAX_STOP_STRINGS:
        raise RequestError(400, f"stop must be a non-empty string or a list of at most "
                           f"{MAX_STOP_STRINGS} of them, each at most {MAX_STOP_CHARS} "
                           f"characters; got {_short(body.get('stop'))}.", param="stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                             or not -(1 << 63) <= seed < (1 << 64)):
        raise RequestError(400, f"seed must be a 64-bit integer; got {_short(seed)}.",
                           param="seed")
    return SamplingParams(temperature=_float(body, "temperature", 1.0, lo=0.0, hi=2.0),
                          top_p=_float(body, "top_p", 1.0, lo=1e-6, hi=1.0),
                          top_k=max(0, _int(body, "top_k", 0, lo=-1, hi=1 << 20)),
                          max_tokens=_int(body, "max_tokens", 16, lo=1, hi=max_tokens,
                                          option="--max-tokens"),
                          stop=tuple(stop), seed=seed, logprobs=body.get("logprobs") is not None)


def chat_question(body: dict[str, Any]) -> str:
    """The question of a chat body: its last message, which must be the user's."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, f"messages must be a non-empty list of {{role, content}} "
                           f"objects; got {_short(messages)}.", param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise RequestError(400, f"messages[{i}] must be an object with role system, user "
                               f"or assistant and a string content; got {_short(m)}.",
                               param=f"messages[{i}]")
    if messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
        raise RequestError(400, "the last message must be a non-empty user message (the "
                           "question).", param="messages")
    return messages[-1]["content"]
