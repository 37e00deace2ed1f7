"""What ``ttc serve`` does with a parsed request: models, strategy runs, raw completions.

Contract: :class:`TTCService` turns one decoded JSON body into one JSON-ready reply (or,
for ``stream: true``, an iterator of chunk objects, returned only after the whole request
was checked), or raises :class:`RequestError` (an HTTP status, one sentence naming the
field, the bad value and what is allowed; fields are read by :mod:`ttc.api_fields`, and
one not honoured is refused there). :func:`error_reply` maps any other exception to a
status the same way ``ttc.faults`` maps it to an exit code, by built-in base classes only:

    ValueError (a prompt too long for the model, a bad setting)      -> 400
    a MemoryError subclass (the engine's KV pool cannot hold it)     -> 507, the message
                                                                        names the memory setting
    a bare MemoryError (the machine ran out)                         -> 503
    ConnectionError / TimeoutError (an upstream server)              -> 502 / 504
    anything else (a bug)                                            -> 500, one line

A strategy request (:class:`SearchPlan`) is the whole conversation as a
:class:`~ttc.types.Problem` (a client's system prompt replaces the engine's), the
request's sampling applied to every branch (:class:`~ttc.serve_search.RequestGeneration`),
``max_tokens`` / ``max_completion_tokens`` as the returned completion's length, and a
search budget of its own (``ttc.budget`` in the body, ``@B`` in the model name, else the
configured budget, else the server's ``--max-tokens``). ``n`` > 1 runs n independent
searches (seeds ``seed``, ``seed + 1``, ...) at once on the shared engine. A request whose
client disconnects is cancelled (:class:`~ttc.serve_search.Watched`).

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
import copy
import queue
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator

from ttc.api_fields import (CHAT_FIELDS, COMPLETION_FIELDS, RequestError, chat_conversation,
                            check_fields, float_field, int_field, seed_field, short,
                            stop_field, stream_fields, ttc_fields, unsupported, usage_json)
from ttc.config import RunConfig
from ttc.faults import describe
from ttc.registry import STRATEGIES, ConfigError
from ttc.serve_raw import RawJob
from ttc.serve_search import (ClientGone, Disconnected, GoneFlag, Progress, RequestGeneration,
                              StopStrings, Watched)
from ttc.sharing import shared_engine
from ttc.types import EventKind, Handle, Problem, Result, SamplingParams

__all__ = ["TTCService", "ServerLimits", "RequestError", "Disconnected", "error_reply",
           "RawPrefixes"]

RAW_MODEL = "raw"
WIDTH_FIELDS = ("n", "k", "max_n", "num_particles", "num_trees", "num_threads")
# "<strategy>", "<strategy>-<width>", either with "@<budget>" (generated tokens per search)
_MODEL_RE = re.compile(r"^([a-z_][a-z0-9_]*?)(?:-(\d{1,12}))?(?:@(\d{1,12}))?$")


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


# -- one strategy request, parsed -------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class SearchPlan:
    """A chat or completions request to a strategy model, checked."""

    model: str
    chat: bool
    strategy: dict[str, Any]          # the strategy's config (registry data)
    problem: Problem
    generation: RequestGeneration
    budget: Any                       # ttc.ledger.Budget
    n: int
    max_tokens: int | None            # the returned completion's length, in tokens
    stop: tuple[str, ...]
    keep_stop: bool
    stream: bool
    include_usage: bool


class TTCService:
    """What the HTTP handler calls: models, tokenizer, metrics, strategy runs, raw
    completions (see the module docstring of :mod:`ttc.server` for the endpoints)."""

    def __init__(self, config: RunConfig, *, generator: Any = None, verifier: Any = None,
                 limits: ServerLimits | None = None) -> None:
        self.config = config
        self.limits = limits or ServerLimits()
        self.generator, self.verifier = shared_engine(config, generator=generator,
                                                      verifier=verifier)
        self.raw = RawPrefixes(self.generator, max_handles=self.limits.max_raw_handles)
        self.cancelled = 0          # requests cancelled because their client left
        # The server's own tokenizer (a copy: a fast tokenizer is not safe to share across
        # threads with the engine's), for raw prompts, stop strings, /tokenize.
        inner = getattr(self.generator, "tokenizer", None)
        self.tokenizer = copy.deepcopy(inner) if inner is not None else None
        self._tok_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.stats = {"requests": 0, "failed": 0, "running": 0, "prompt_tokens": 0,
                      "generation_tokens": 0, "cancelled": 0}

    def close(self) -> None:
        """Release the raw-completion handles kept for continuations."""
        self.raw.clear()

    # -- models, tokenizer, metrics -----------------------------------------------------
    def _model_card(self, name: str) -> dict[str, Any]:
        card = {"id": name, "object": "model", "created": 0, "owned_by": "ttc"}
        limit = self.max_model_len()
        if limit is not None:
            card["max_model_len"] = limit
        return card

    def models(self) -> dict[str, Any]:
        names = [RAW_MODEL] + STRATEGIES.names()
        return {"object": "list", "data": [self._model_card(n) for n in names]}

    def model(self, name: str) -> dict[str, Any]:
        """``GET /v1/models/{name}``: any name a request may use (``beam-8@4096`` too)."""
        if name != RAW_MODEL:
            self._strategy_data(name)            # 404 / 400 for a name no request may use
        return self._model_card(name)

    def max_model_len(self) -> int | None:
        limit = getattr(getattr(getattr(self.generator, "model", None), "config", None),
                        "max_position", None)
        return int(limit) if isinstance(limit, int) else None

    def _need_tokenizer(self, what: str) -> Any:
        if self.tokenizer is None:
            raise RequestError(400, f"{what} needs a backend with a tokenizer (native or hf); "
                               f"this server's backend is {self.config.backend.name!r}.")
        return self.tokenizer

    def encode(self, text: str, *, special: bool = False) -> list[int]:
        tok = self._need_tokenizer("tokenizing")
        with self._tok_lock:
            return list(tok(text, add_special_tokens=special)["input_ids"])

    def decode(self, ids: Any) -> str:
        tok = self._need_tokenizer("detokenizing")
        with self._tok_lock:
            return tok.decode(list(ids), skip_special_tokens=False)

    def tokenizer_info(self) -> dict[str, Any]:
        tok = self._need_tokenizer("/tokenizer_info")
        return {"tokenizer_class": type(tok).__name__, "eos_token": tok.eos_token,
                "bos_token": tok.bos_token, "pad_token": tok.pad_token,
                "chat_template": getattr(tok, "chat_template", None),
                "model_max_length": self.max_model_len()}

    def tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        check_fields(body, {"model", "prompt", "messages", "add_special_tokens",
                            "add_generation_prompt"}, what="/tokenize")
        if "messages" in body:
            # The prompt a strategy request with these messages starts from (the engine's
            # own chat template and system-prompt rule).
            context, question = chat_conversation(body)
            fmt = getattr(self.generator, "format", None)
            if self.tokenizer is None or not callable(fmt):
                raise RequestError(400, f"tokenizing messages needs a backend with a chat "
                                   f"template (native or hf); this server's backend is "
                                   f"{self.config.backend.name!r}.", param="messages")
            ids = list(fmt(Problem(question=question, context=context)))
        else:
            text = body.get("prompt")
            if not isinstance(text, str):
                raise RequestError(400, f"prompt must be a string; got {short(text)}.",
                                   param="prompt")
            special = body.get("add_special_tokens", True)
            ids = self.encode(text, special=bool(special))
        return {"tokens": ids, "count": len(ids), "max_model_len": self.max_model_len()}

    def detokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        check_fields(body, {"model", "tokens"}, what="/detokenize")
        ids = body.get("tokens")
        vocab = len(self._need_tokenizer("/detokenize"))
        if not isinstance(ids, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in ids):
            raise RequestError(400, f"tokens must be a list of token ids in [0, {vocab}); got "
                               f"{short(ids)}.", param="tokens")
        return {"prompt": self.decode(ids)}

    def metrics(self) -> str:
        """Prometheus text: requests, tokens, KV in use, running and queued work."""
        with self._stats_lock:
            s = dict(self.stats)
        lines = []

        def metric(name: str, kind: str, help_: str, value: float) -> None:
            lines.extend([f"# HELP ttc_{name} {help_}", f"# TYPE ttc_{name} {kind}",
                          f"ttc_{name} {value}"])
        metric("requests_total", "counter", "Requests answered (any status).", s["requests"])
        metric("requests_failed_total", "counter", "Requests answered with an error.",
               s["failed"])
        metric("requests_cancelled_total", "counter",
               "Requests cancelled because their client disconnected.", s["cancelled"])
        metric("requests_running", "gauge", "Requests being computed now.", s["running"])
        metric("prompt_tokens_total", "counter", "Prompt tokens (prefilled or cached).",
               s["prompt_tokens"])
        metric("generation_tokens_total", "counter", "Tokens generated.",
               s["generation_tokens"])
        metric("kv_bytes", "gauge", "Resident KV cache bytes.", self.generator.kv_bytes())
        stats = getattr(self.generator, "stats", None)
        engine = stats() if callable(stats) else {}
        if "pages_total" in engine:
            metric("kv_pages_used", "gauge", "KV pages in use.", engine["pages_used"])
            metric("kv_pages_total", "gauge", "KV pages in the pool.", engine["pages_total"])
            metric("kv_usage_ratio", "gauge", "Share of KV pages in use.",
                   engine["pages_used"] / max(1, engine["pages_total"]))
        if "running" in engine:
            metric("branches_running", "gauge", "Branches in the engine's decode batch.",
                   engine["running"])
        if "prefills_waiting" in engine:
            metric("queue_prefills_waiting", "gauge",
                   "Prompts queued for KV pages (not yet prefilled).", engine["prefills_waiting"])
            metric("queue_branches_preempted", "gauge",
                   "Branches preempted, waiting to resume.", engine["preempted"])
        return "\n".join(lines) + "\n"

    def count(self, *, failed: bool = False, prompt: int = 0, generated: int = 0) -> None:
        with self._stats_lock:
            self.stats["failed"] += int(failed)
            self.stats["prompt_tokens"] += prompt
            self.stats["generation_tokens"] += generated

    def begin(self) -> None:
        with self._stats_lock:
            self.stats["requests"] += 1
            self.stats["running"] += 1

    def end(self) -> None:
        with self._stats_lock:
            self.stats["running"] -= 1

    # -- POST ----------------------------------------------------------------------------
    def post(self, path: str, body: dict[str, Any], *,
             client_gone: ClientGone | None = None) -> dict[str, Any] | Iterator[dict]:
        """The reply to ``POST path``: a JSON object, or (``stream: true``) an iterator of
        SSE chunk objects. Everything is checked before the iterator is returned."""
        if path in ("/tokenize", "/v1/tokenize"):
            return self.tokenize(body)
        if path in ("/detokenize", "/v1/detokenize"):
            return self.detokenize(body)
        chat = path == "/v1/chat/completions"
        model = body.get("model")
        gone = GoneFlag(client_gone)
        if model == RAW_MODEL:
            if chat:
                raise RequestError(400, "model 'raw' serves /v1/completions only (raw text, "
                                   "no chat template).", param="model")
            return self.complete(body, client_gone=gone)
        plan = self.plan(body, chat=chat)
        if plan.stream:
            return self._stream_searches(plan, gone)
        outcomes = self._run_searches(plan, gone)
        return self._reply(plan, outcomes)

    # -- strategies ----------------------------------------------------------------------
    def _strategy_data(self, model: Any) -> tuple[dict[str, Any], int | None]:
        if not isinstance(model, str) or not model:
            raise RequestError(400, f"model must be a strategy name such as 'beam-8' or "
                               f"'best_of_n-16@4096', or 'raw'; got {short(model)}.",
                               param="model")
        m = _MODEL_RE.match(model)
        if m is None or m.group(1) not in STRATEGIES:
            raise RequestError(404, f"unknown model {model[:80]!r}; available: "
                               f"{', '.join(STRATEGIES.names())} (optionally -N for the "
                               f"width and @B for the token budget), or raw.",
                               param="model", kind="not_found_error")
        name, width, budget = m.group(1), m.group(2), m.group(3)
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
        if budget is not None and not 1 <= int(budget) <= self.limits.max_tokens:
            raise RequestError(400, f"model {model!r}: the budget must be in [1, "
                               f"{self.limits.max_tokens}] (the server's --max-tokens); got "
                               f"{int(budget)}.", param="model")
        try:
            STRATEGIES.make_config(data)
        except ConfigError as err:
            raise RequestError(400, f"model {model!r}: {err}", param="model") from err
        return data, (int(budget) if budget is not None else None)

    def strategy_for(self, model: Any) -> Any:
        data, _ = self._strategy_data(model)
        return STRATEGIES.build(data, generation=self.config.generation)

    def plan(self, body: dict[str, Any], *, chat: bool) -> SearchPlan:
        """Check a strategy request and turn it into a :class:`SearchPlan`."""
        check_fields(body, CHAT_FIELDS if chat else COMPLETION_FIELDS,
                     what="/v1/chat/completions" if chat else "/v1/completions")
        model = body.get("model")
        data, name_budget = self._strategy_data(model)
        for key, ok in (("logprobs", (None, False)), ("top_logprobs", (None, 0)),
                        ("echo", (None, False)), ("best_of", (None, 1)),
                        ("return_tokens_as_token_ids", (None, False)),
                        ("add_special_tokens", (None,))):
            if key in body and body[key] not in ok:
                raise unsupported(key, body[key], f"{' or '.join(map(repr, ok))} on a strategy "
                                  f"model (a search returns its chosen answer; use model "
                                  f"'raw' on /v1/completions for token log-probs)")
        if chat:
            context, question = chat_conversation(body)
        else:
            question, context = body.get("prompt"), ()
            if not isinstance(question, str) or not question.strip():
                raise RequestError(400, f"prompt must be a non-empty string (the question) "
                                   f"for a strategy model; got {short(question)}.",
                                   param="prompt")
        stream, include_usage = stream_fields(body)
        cap = self.limits.max_tokens
        max_tokens = int_field(body, "max_tokens", None, lo=1, hi=cap, option="--max-tokens")
        mct = int_field(body, "max_completion_tokens", None, lo=1, hi=cap,
                        option="--max-tokens")
        if mct is not None:
            max_tokens = mct if max_tokens is None else min(mct, max_tokens)
        gen = self.config.generation
        seed = seed_field(body)
        stop = stop_field(body)
        update: dict[str, Any] = {
            "temperature": float_field(body, "temperature", gen.temperature, lo=0.0, hi=2.0),
            "top_p": float_field(body, "top_p", gen.top_p, lo=1e-6, hi=1.0),
            "top_k": max(0, int_field(body, "top_k", gen.top_k, lo=-1, hi=1 << 20)),
            "seed": gen.seed if seed is None else seed}
        if max_tokens is not None:
            update["max_tokens"] = max_tokens
            update["max_step_tokens"] = min(gen.max_step_tokens, max_tokens)
        if stop and self.tokenizer is not None and getattr(self.generator,
                                                            "supports_token_rules", False):
            update["stop_rules"] = (StopStrings(stop, self._decode_for_rules),)
        generation = RequestGeneration(**{**gen.model_dump(), **update})
        budget_tokens = ttc_fields(body, hi=cap) or name_budget
        if budget_tokens is None:
            configured = self.config.budget.max_generated_tokens
            budget_tokens = min(configured or cap, cap)
        budget = self.config.budget.model_copy(update={"max_generated_tokens": budget_tokens})
        return SearchPlan(
            model=model, chat=chat, strategy=data,
            problem=Problem(id="serve", question=question, context=context),
            generation=generation, budget=budget,
            n=int_field(body, "n", 1, lo=1, hi=self.limits.max_width, option="--max-width"),
            max_tokens=max_tokens, stop=stop,
            keep_stop=bool(body.get("include_stop_str_in_output")
                           or body.get("no_stop_trim")),
            stream=stream, include_usage=include_usage)

    def _decode_for_rules(self, ids: Any) -> str:
        with self._tok_lock:
            return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def search(self, plan: SearchPlan, i: int, gone: ClientGone,
               on_event: Any = None) -> Result:
        """Search ``i`` of a request (its seed is the request's seed + i)."""
        generation = plan.generation.model_copy(update={"seed": plan.generation.seed + i})
        strategy = STRATEGIES.build(plan.strategy, generation=generation)
        watched = Watched(self.generator, gone=gone,
                          on_expand=(lambda p: on_event(i, p)) if on_event else None)
        progress = (lambda ev: on_event(i, ev)) if on_event else None
        try:
            return strategy.run(plan.problem, generator=watched, verifier=self.verifier,
                                budget=plan.budget, progress=progress)
        except Disconnected:
            with self._stats_lock:
                self.stats["cancelled"] += 1
            self.cancelled += 1
            raise

    def outcome(self, plan: SearchPlan, result: Result) -> dict[str, Any]:
        """The client's view of one search: the chosen text cut at ``stop`` and at
        ``max_tokens`` tokens, its finish reason, usage, and the ``ttc`` extras."""
        text = result.text or (result.candidates[0].text if result.candidates else "")
        finish = "length" if result.budget_exhausted else "stop"
        cut = min(((text.find(s), s) for s in plan.stop if s in text), default=None)
        if cut is not None:
            text = text[:cut[0] + (len(cut[1]) if plan.keep_stop else 0)]
            finish = "stop"
        if plan.max_tokens is not None and self.tokenizer is not None:
            ids = self.encode(text)
            if len(ids) > plan.max_tokens:
                text, finish = self.decode(ids[:plan.max_tokens]), "length"
        led = result.ledger
        self.count(prompt=led.prefill_tokens + led.cached_tokens,
                   generated=led.generated_tokens)
        return {"text": text, "finish_reason": finish,
                "usage": (led.prefill_tokens, led.cached_tokens, led.generated_tokens),
                "ttc": {"answer": result.answer, "strategy": result.strategy,
                        "candidate_answers": [c.answer for c in result.candidates],
                        "budget_exhausted": result.budget_exhausted,
                        "ledger": led.model_dump(mode="json")}}

    def _run_searches(self, plan: SearchPlan, gone: GoneFlag) -> list[dict[str, Any]]:
        if plan.n == 1:
            return [self.outcome(plan, self.search(plan, 0, gone))]
        with concurrent.futures.ThreadPoolExecutor(max_workers=plan.n) as pool:
            futures = [pool.submit(self.search, plan, i, gone) for i in range(plan.n)]
            try:
                return [self.outcome(plan, f.result()) for f in futures]
            except BaseException:
                gone.tripped.set()             # one failed: stop the others
                raise

    def _reply(self, plan: SearchPlan, outcomes: list[dict[str, Any]]) -> dict[str, Any]:
        choices = []
        for i, out in enumerate(outcomes):
            if plan.chat:
                choices.append({"index": i, "message": {"role": "assistant",
                                                        "content": out["text"]},
                                "finish_reason": out["finish_reason"], "logprobs": None})
            else:
                choices.append({"index": i, "text": out["text"],
                                "finish_reason": out["finish_reason"], "logprobs": None})
        usage = usage_json(*[sum(o["usage"][k] for o in outcomes) for k in range(3)])
        ttc = outcomes[0]["ttc"] if len(outcomes) == 1 else {
            "searches": [o["ttc"] for o in outcomes]}
        return {"id": f"ttc-{uuid.uuid4().hex}",
                "object": "chat.completion" if plan.chat else "text_completion",
                "created": int(time.time()), "model": plan.model, "choices": choices,
                "usage": usage, "ttc": ttc}

    def _stream_searches(self, plan: SearchPlan, gone: GoneFlag) -> Iterator[dict[str, Any]]:
        """Start the searches and return the chunks: ``ttc`` progress events while they
        run, then each search's text and finish reason, then usage when asked."""
        events: queue.SimpleQueue = queue.SimpleQueue()
        results: list[Any] = [None] * plan.n

        def on_event(i: int, ev: Any) -> None:
            events.put(("progress", i, ev))

        def work(i: int) -> None:
            try:
                results[i] = self.search(plan, i, gone, on_event)
            except BaseException as err:  # noqa: BLE001  (reported in the stream)
                results[i] = err
            finally:
                events.put(("done", i, None))

        threads = [threading.Thread(target=work, args=(i,), daemon=True,
                                    name=f"ttc-search-{i}") for i in range(plan.n)]
        for t in threads:
            t.start()
        return self._search_chunks(plan, gone, events, results, threads)

    def _search_chunks(self, plan: SearchPlan, gone: GoneFlag, events: queue.SimpleQueue,
                       results: list[Any], threads: list[threading.Thread]
                       ) -> Iterator[dict[str, Any]]:
        rid, created = f"ttc-{uuid.uuid4().hex}", int(time.time())
        obj = "chat.completion.chunk" if plan.chat else "text_completion"

        def chunk(choices: list, **extra: Any) -> dict[str, Any]:
            c = {"id": rid, "object": obj, "created": created, "model": plan.model,
                 "choices": choices, **extra}
            if plan.include_usage and "usage" not in c:
                c["usage"] = None
            return c

        def piece(i: int, text: str | None, finish: str | None) -> dict[str, Any]:
            if plan.chat:
                delta = {} if text is None else {"content": text}
                if text is not None and finish is None and text == "":
                    delta = {"role": "assistant", "content": ""}
                return {"index": i, "delta": delta, "finish_reason": finish, "logprobs": None}
            return {"index": i, "text": text or "", "finish_reason": finish, "logprobs": None}

        totals = [0, 0, 0]
        done = 0
        try:
            if plan.chat:
                yield chunk([piece(i, "", None) for i in range(plan.n)])
            while done < plan.n:
                kind, i, payload = events.get()
                if kind == "progress":
                    yield chunk([], ttc=_event_json(i, payload))
                    continue
                done += 1
                res = results[i]
                if isinstance(res, BaseException):
                    raise res
                out = self.outcome(plan, res)
                totals = [a + b for a, b in zip(totals, out["usage"])]
                yield chunk([piece(i, out["text"], None)],
                            ttc={"event": "result", "search": i, **out["ttc"]})
                yield chunk([piece(i, None, out["finish_reason"])])
            if plan.include_usage:
                yield chunk([], usage=usage_json(*totals))
        finally:
            if done < plan.n:                  # the client left (or a search failed)
                gone.tripped.set()
            for t in threads:
                t.join()

    # -- raw completions --------------------------------------------------------------------
    def _raw_prompts(self, body: dict[str, Any]) -> list[tuple[str, list[int] | None]]:
        """(text, token ids or None) per prompt: a string, a list of strings, a list of
        token ids or a list of such lists."""
        prompt = body.get("prompt")
        bad = RequestError(400, f"prompt must be a non-empty string, a list of them, a list "
                           f"of token ids or a list of such lists for model 'raw'; got "
                           f"{short(prompt)}.", param="prompt")

        def is_ids(x: Any) -> bool:
            return isinstance(x, list) and bool(x) and all(
                isinstance(t, int) and not isinstance(t, bool) for t in x)
        if isinstance(prompt, str):
            items: list[Any] = [prompt]
        elif is_ids(prompt):
            items = [prompt]
        elif isinstance(prompt, list) and prompt:
            items = prompt
        else:
            raise bad
        if len(items) > self.limits.max_width:
            raise RequestError(400, f"prompt holds {len(items)} prompts; at most "
                               f"{self.limits.max_width} (the server's --max-width).",
                               param="prompt")
        special = body.get("add_special_tokens", True)
        if not isinstance(special, bool):
            raise RequestError(400, f"add_special_tokens must be true or false; got "
                               f"{short(special)}.", param="add_special_tokens")
        out = []
        for item in items:
            if isinstance(item, str) and item:
                ids = self.encode(item, special=special) if self.tokenizer is not None else None
                out.append((item, ids))
            elif is_ids(item):
                vocab = len(self._need_tokenizer("a token-id prompt"))
                if not callable(getattr(self.generator, "handle_for_tokens", None)):
                    raise RequestError(400, f"token-id prompts need a backend with token "
                                       f"handles (native or hf); this server's backend is "
                                       f"{self.config.backend.name!r}.", param="prompt")
                if not all(0 <= t < vocab for t in item):
                    raise RequestError(400, f"a token-id prompt holds ids outside [0, "
                                       f"{vocab}); got {short(item)}.", param="prompt")
                out.append((self.decode(item), list(item)))
            else:
                raise bad
        return out

    def _raw_params(self, body: dict[str, Any]) -> SamplingParams:
        lp = body.get("logprobs")
        if lp is not None and (isinstance(lp, bool) or not isinstance(lp, int)
                               or not 0 <= lp <= 20):
            raise RequestError(400, f"logprobs must be an integer in [0, 20] (the number of "
                               f"top log-probs per token); got {short(lp)}.", param="logprobs")
        n = int_field(body, "n", 1, lo=1, hi=self.limits.max_width, option="--max-width")
        best_of = body.get("best_of")
        if best_of is not None and best_of != n:
            raise unsupported("best_of", best_of, f"absent or equal to n ({n}): ttc serve "
                              f"returns every sample")
        return SamplingParams(
            temperature=float_field(body, "temperature", 1.0, lo=0.0, hi=2.0),
            top_p=float_field(body, "top_p", 1.0, lo=1e-6, hi=1.0),
            top_k=max(0, int_field(body, "top_k", 0, lo=-1, hi=1 << 20)),
            max_tokens=int_field(body, "max_tokens", 16, lo=1, hi=self.limits.max_tokens,
                                 option="--max-tokens"),
            stop=stop_field(body), seed=seed_field(body), logprobs=lp is not None,
            top_logprobs=lp or 0)

    def complete(self, body: dict[str, Any], *,
                 client_gone: ClientGone | None = None) -> dict[str, Any] | Iterator[dict]:
        """A raw completion: the prompt(s) as given (no chat template, no system prompt)."""
        check_fields(body, COMPLETION_FIELDS, what="/v1/completions")
        ttc_fields(body, hi=self.limits.max_tokens)
        if body.get("ttc") is not None:
            raise unsupported("ttc", body["ttc"], "absent on model 'raw' (no search)")
        stream, include_usage = stream_fields(body)
        params = self._raw_params(body)
        n = int_field(body, "n", 1, lo=1, hi=self.limits.max_width)
        echo = body.get("echo") or False
        if not isinstance(echo, bool):
            raise RequestError(400, f"echo must be true or false; got {short(echo)}.",
                               param="echo")
        if echo and not callable(getattr(self.generator, "score_tokens", None)):
            raise RequestError(400, f"echo needs prompt log-probs, which the "
                               f"{self.config.backend.name!r} backend cannot give (the "
                               f"native backend can).", param="echo")
        prompts = self._raw_prompts(body)
        gone = client_gone if isinstance(client_gone, GoneFlag) else GoneFlag(client_gone)
        job = RawJob(self, body, prompts, params, n, echo, gone)
        if stream:
            return job.stream(include_usage)
        return job.reply()


def _event_json(i: int, ev: Any) -> dict[str, Any]:
    """A progress event as the ``ttc`` object of a stream chunk."""
    if isinstance(ev, Progress):
        return {"event": "expand", "search": i, "expands": ev.expands,
                "live_branches": ev.branches, "tokens_so_far": ev.generated_tokens,
                "leader_answer": ev.leader_answer, "answers_seen": sum(ev.answers.values())}
    out: dict[str, Any] = {"event": "progress", "search": i, "kind": ev.kind.value,
                           "step": int(ev.step), "live_branches": int(ev.live),
                           "best_score": None if ev.best_score is None else float(ev.best_score),
                           "tokens_so_far": int(ev.generated_tokens),
                           "budget_tokens": ev.budget_tokens, "note": str(ev.note)}
    if ev.node is not None:             # a tree event: the node added, scored, pruned, chosen
        out["node"] = ev.node.to_json()
    if ev.kind is EventKind.CHOSEN:
        out["budget_exhausted"] = bool(ev.budget_exhausted)
    for key in ("answer", "leader", "leader_answer"):
        if ev.extra.get(key) is not None:
            out["leader_answer"] = str(ev.extra[key])
    return out
