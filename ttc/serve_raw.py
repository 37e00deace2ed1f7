"""Raw completions for ``ttc serve``: the prompt as given, sampled by the shared engine.

Contract: :class:`RawJob` runs one ``model: "raw"`` request: every prompt (text or token
ids, no chat template) expanded ``n`` times in one engine call through a
:class:`~ttc.serve_search.Watched` view (a client that leaves cancels it), with the stop
string trimmed unless asked to keep it, log-probs as token text with top log-probs and
text offsets, and ``echo`` (the prompt's own log-probs, from the engine's
``score_tokens``). Handles are remembered in the service's
:class:`~ttc.service.RawPrefixes` (evictable cache). ``stream()`` yields chunks as tokens
are sampled.
Must NOT know: sockets, HTTP, engine internals, strategies.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from typing import Any, Iterator

from ttc.api_fields import usage_json
from ttc.serve_search import Disconnected, GoneFlag, Watched
from ttc.types import Continuation, ExpandRequest, FinishReason, Handle, Problem, SamplingParams


class RawJob:
    """One raw completion request: every prompt expanded ``n`` times in one engine call."""

    def __init__(self, service: TTCService, body: dict[str, Any],
                 prompts: list[tuple[str, list[int] | None]], params: SamplingParams, n: int,
                 echo: bool, gone: GoneFlag) -> None:
        self.s, self.body, self.prompts, self.params = service, body, prompts, params
        self.n, self.echo, self.gone = n, echo, gone
        self.keep_stop = bool(body.get("include_stop_str_in_output")
                              or body.get("no_stop_trim"))
        self.as_ids = bool(body.get("return_tokens_as_token_ids"))
        self.model = body.get("model")

    # handles: a remembered one for the prompt, else a fresh one (kept as evictable cache)
    def _acquire(self) -> list[tuple[Any, Handle, bool]]:
        held = []
        try:
            for text, ids in self.prompts:
                key: Any = tuple(ids) if ids is not None else text
                handle = self.s.raw.acquire(key)
                remembered = handle is not None
                if handle is None:
                    handle = self._handle(text, ids)
                    # False when another request remembered it meanwhile: ours is private.
                    remembered = self.s.raw.adopt(key, handle, in_use=True)
                held.append((key, handle, remembered))
        except BaseException:
            self._done(held)
            raise
        return held

    def _handle(self, text: str, ids: list[int] | None) -> Handle:
        """A pinned handle for the prompt as given. Engines without token handles (vLLM,
        HTTP, simulated) take text prompts only, which they format as a problem."""
        make = getattr(self.s.generator, "handle_for_tokens", None)
        if ids is not None and callable(make):
            return make(ids)
        return self.s.generator.root(Problem(question=text))

    def _done(self, held: list[tuple[Any, Handle, bool]]) -> None:
        for key, handle, remembered in held:
            if remembered:
                self.s.raw.done(handle, key)
            else:
                self.s.generator.release([handle])

    def _expand(self, on_token: Any = None) -> tuple[Any, list]:
        held = self._acquire()
        try:
            requests = []
            for j, (_, handle, _) in enumerate(held):
                cb = None if on_token is None else (lambda ev, j=j: on_token(j, ev))
                requests.append(ExpandRequest(prefix=handle, n=self.n, params=self.params,
                                              on_token=cb))
            watched = Watched(self.s.generator, gone=self.gone)
            try:
                out = watched.expand(requests)
            except Disconnected:
                with self.s._stats_lock:
                    self.s.stats["cancelled"] += 1
                self.s.cancelled += 1
                raise
            echoes = [self.s.generator.score_tokens(ids, top_k=max(1, self.params.top_logprobs))
                      for _, ids in self.prompts] if self.echo else []
        finally:
            self._done(held)
        for (key, _, _), conts in zip(held, out.continuations):
            for c in conts:
                ckey = key + tuple(c.token_ids) if isinstance(key, tuple) else key + c.text
                if c.handle is not None and not self.s.raw.adopt(ckey, c.handle, in_use=False):
                    self.s.generator.release([c.handle])
        return out, echoes

    def _finish(self, c: Continuation) -> tuple[str, str, str | None]:
        """(text, finish_reason, stop_reason) of a continuation, the stop string trimmed."""
        stop = next((s for s in self.params.stop if c.text.endswith(s)), None) \
            if c.finish is FinishReason.STOP else None
        text = c.text if self.keep_stop or stop is None else c.text[:-len(stop)]
        reason = "stop" if c.finish in (FinishReason.STOP, FinishReason.EOS) else "length"
        return text, reason, stop

    def _tok(self, t: int) -> str:
        return f"token_id:{t}" if self.as_ids else (
            self.s.decode([t]) if self.s.tokenizer is not None else f"token_id:{t}")

    def _top(self, top: Any, k: int) -> dict[str, float]:
        """Top log-probs keyed by token text; tokens with the same text (e.g. partial UTF-8
        bytes) keep the most likely one's value, so the first key is still the argmax."""
        out: dict[str, float] = {}
        for t, lp in list(top)[:k]:
            out.setdefault(self._tok(t), lp)
        return out

    def _logprobs(self, j: int, c: Continuation, echoes: list) -> dict[str, Any] | None:
        if not self.params.logprobs:
            return None
        ids, lps = list(c.token_ids), list(c.logprobs) or [None] * len(c.token_ids)
        tops = [self._top(top, self.params.top_logprobs) for top in c.top_logprobs] \
            if c.top_logprobs else [None] * len(c.token_ids)
        if self.echo:
            p_ids = self.prompts[j][1]
            p_lps, p_tops, _ = echoes[j]
            k = self.params.top_logprobs
            ids = p_ids + ids
            lps = list(p_lps) + lps
            tops = [None] + [self._top(top, max(k, 1)) for top in p_tops[1:]] + tops
        tokens = [self._tok(t) for t in ids]
        offsets, at = [], 0
        for tok in tokens:
            offsets.append(at)
            at += len(tok)
        out: dict[str, Any] = {"tokens": tokens, "token_logprobs": lps, "text_offset": offsets}
        out["top_logprobs"] = tops if (self.params.top_logprobs or self.echo) else None
        return out

    def reply(self) -> dict[str, Any]:
        out, echoes = self._expand()
        choices = []
        for j, conts in enumerate(out.continuations):
            for i, c in enumerate(conts):
                text, reason, stop = self._finish(c)
                if self.echo:
                    text = self.prompts[j][0] + text
                choices.append({"index": j * self.n + i, "text": text, "stop_reason": stop,
                                "finish_reason": reason,
                                "logprobs": self._logprobs(j, c, echoes)})
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": self.model, "choices": choices,
                "usage": self._usage(out, echoes)}

    def _usage(self, out: Any, echoes: list) -> dict[str, Any]:
        u = out.usage
        scored = sum(e[2] for e in echoes)
        self.s.count(prompt=u.prefill_tokens + u.cached_tokens + scored,
                     generated=u.generated_tokens)
        return usage_json(u.prefill_tokens + scored, u.cached_tokens, u.generated_tokens)

    def stream(self, include_usage: bool) -> Iterator[dict[str, Any]]:
        """Tokens as the engine samples them. Text that could still become a stop string
        is held back until the branch ends, so the streamed text equals the reply's."""
        events: queue.SimpleQueue = queue.SimpleQueue()
        box: list[Any] = []

        def work() -> None:
            try:
                box.append(self._expand(lambda j, ev: events.put((j, ev))))
            except BaseException as err:  # noqa: BLE001  (reported in the stream)
                box.append(err)
            finally:
                events.put(None)

        thread = threading.Thread(target=work, daemon=True, name="ttc-raw-stream")
        thread.start()
        return self._chunks(events, box, thread, include_usage)

    def _chunks(self, events: queue.SimpleQueue, box: list, thread: threading.Thread,
                include_usage: bool) -> Iterator[dict[str, Any]]:
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        hold = max((len(s) for s in self.params.stop), default=0)
        texts: dict[int, str] = {}
        sent: dict[int, int] = {}

        def chunk(choices: list, **extra: Any) -> dict[str, Any]:
            c = {"id": rid, "object": "text_completion", "created": created,
                 "model": self.model, "choices": choices, **extra}
            if include_usage and "usage" not in c:
                c["usage"] = None
            return c

        finished = False
        try:
            if self.echo:
                yield chunk([{"index": j * self.n + i, "text": p[0], "finish_reason": None,
                              "logprobs": None}
                             for j, p in enumerate(self.prompts) for i in range(self.n)])
            while True:
                item = events.get()
                if item is None:
                    break
                j, ev = item
                idx = j * self.n + ev.branch
                texts[idx] = texts.get(idx, "") + ev.text
                safe = len(texts[idx]) - hold
                if safe > sent.get(idx, 0):
                    yield chunk([{"index": idx, "text": texts[idx][sent.get(idx, 0):safe],
                                  "finish_reason": None, "logprobs": None}])
                    sent[idx] = safe
            thread.join()
            res = box[0]
            if isinstance(res, BaseException):
                raise res
            out, echoes = res
            for j, conts in enumerate(out.continuations):
                for i, c in enumerate(conts):
                    idx = j * self.n + i
                    text, reason, _ = self._finish(c)
                    yield chunk([{"index": idx, "text": text[sent.get(idx, 0):],
                                  "finish_reason": reason,
                                  "logprobs": self._logprobs(j, c, echoes)}])
            finished = True
            usage = self._usage(out, echoes)
            if include_usage:
                yield chunk([], usage=usage)
        finally:
            if not finished:
                self.gone.tripped.set()
            thread.join()
