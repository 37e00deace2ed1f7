"""One generator and one verifier shared by many concurrent searches.

Contract: :func:`shared_generator` returns a generator that many threads may call at
once. An engine that declares ``thread_safe = True`` (the native engine: a
continuous-batching step loop where every concurrent search shares every decode step;
the vLLM and HTTP backends) is returned as it is. Any other backend is wrapped in
:class:`Serialized`, which runs one call at a time (a lock per call, never around a
whole search) and passes every attribute that is not one of the engine's methods
through untouched (a verifier may read the engine's tokenizer). :func:`shared_verifier`
does the same for verifiers: ``score`` calls of a verifier that is not declared
``thread_safe`` run one at a time (they keep per-trajectory caches).

:func:`shared_engine` builds both from a run config (or wraps the ones given), so
``ttc serve``, ``ttc eval`` (``share_engine``, the default where one engine serves every
worker) and the Ray actors build their shared pair in one way.
Must NOT know: concrete engines, verifiers, strategies (it builds them by registry name).
"""

from __future__ import annotations

import threading
from typing import Any

# The engine methods a wrapper serialises; everything else passes through as it is.
ENGINE_METHODS = frozenset({
    "root", "expand", "pin", "unpin", "release", "kv_bytes", "text_of", "token_ids",
    "token_count", "embed", "extend", "extend_batch", "logits", "handle_for_tokens",
    "probe", "truncate", "format", "prompt_text", "extend_batch_usage", "embed_usage"})


def is_thread_safe(obj: Any) -> bool:
    return bool(getattr(obj, "thread_safe", False))


class Serialized:
    """A generator whose engine methods run one call at a time."""

    thread_safe = True

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in ENGINE_METHODS or not callable(attr):
            return attr

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return attr(*args, **kwargs)
        locked.__name__ = name
        return locked

    # Protocol methods spelled out, so isinstance(x, Generator) holds for the wrapper.
    def root(self, problem: Any) -> Any:
        with self._lock:
            return self.inner.root(problem)

    def expand(self, requests: Any, *, token_limit: int | None = None) -> Any:
        with self._lock:
            return self.inner.expand(requests, token_limit=token_limit)

    def pin(self, handles: Any, *, value: float | None = None) -> None:
        with self._lock:
            self.inner.pin(handles, value=value)

    def release(self, handles: Any) -> None:
        with self._lock:
            self.inner.release(handles)

    def kv_bytes(self) -> int:
        with self._lock:
            return self.inner.kv_bytes()


class SerializedVerifier:
    """A verifier whose ``score`` calls run one at a time."""

    thread_safe = True

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._lock = threading.Lock()

    @property
    def incremental(self) -> bool:
        return self.inner.incremental

    def score(self, problem: Any, trajectories: Any) -> Any:
        with self._lock:
            return self.inner.score(problem, trajectories)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def shared_generator(generator: Any) -> Any:
    return generator if is_thread_safe(generator) else Serialized(generator)


def shared_verifier(verifier: Any) -> Any:
    return verifier if is_thread_safe(verifier) else SerializedVerifier(verifier)


def shared_engine(config: Any, *, generator: Any = None, verifier: Any = None
                  ) -> tuple[Any, Any]:
    """One generator and one verifier for ``config`` (a RunConfig) that every thread may
    call at once; ``generator`` / ``verifier`` are used instead of building them when
    given. The verifier is built on the shared generator (a judge then shares it)."""
    from ttc.registry import BACKENDS, VERIFIERS  # noqa: PLC0415  (registers the parts)

    gen = shared_generator(generator if generator is not None
                           else BACKENDS.build(config.backend))
    ver = shared_verifier(verifier if verifier is not None
                          else VERIFIERS.build(config.verifier, generator=gen))
    return gen, ver
