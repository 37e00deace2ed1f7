"""The OpenAI request fields ``ttc serve`` reads: which it honours, their checks, messages.

Contract: every field of a chat or completions body is either honoured (checked here and
applied by :mod:`ttc.service`), accepted only with its no-op value (``frequency_penalty``
0, ``logit_bias`` {}, ``response_format`` text, no ``tools``, ...), or refused: any other
value, and any field this module does not list, is a 400 :class:`RequestError` naming
the field, never silently dropped. Chat messages (``system``, ``developer``, ``user``,
``assistant``; content as a string or a list of text parts) become the conversation of a
:class:`~ttc.types.Problem`.
Must NOT know: sockets, engines, strategies.
"""

from __future__ import annotations

from typing import Any

from ttc.types import Message

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256

# Fields a body may carry; what each means is in docs/backends.md ("Serving").
_COMMON = {"model", "stream", "stream_options", "n", "temperature", "top_p", "top_k", "seed",
           "stop", "max_tokens", "user", "frequency_penalty", "presence_penalty",
           "logit_bias", "ttc", "include_stop_str_in_output", "no_stop_trim"}
CHAT_FIELDS = _COMMON | {"messages", "max_completion_tokens", "response_format", "tools",
                         "tool_choice", "parallel_tool_calls", "logprobs", "top_logprobs",
                         "store", "metadata", "service_tier"}
COMPLETION_FIELDS = _COMMON | {"prompt", "echo", "logprobs", "best_of", "suffix",
                               "return_tokens_as_token_ids", "add_special_tokens"}


class RequestError(Exception):
    """A client error: HTTP status, message, and the offending field."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def reply(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.status}}


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def unsupported(field: str, value: Any, allowed: str) -> RequestError:
    return RequestError(400, f"{field} is not supported by ttc serve (allowed: {allowed}); "
                        f"got {short(value)}.", param=field)


def check_fields(body: dict[str, Any], allowed: set[str], *, what: str) -> None:
    """400 for a field no endpoint of this kind reads, or a field's unhonoured value."""
    for key in body:
        if key not in allowed:
            raise RequestError(400, f"{key!r} is not a field ttc serve honours on {what}; "
                               f"it reads: {', '.join(sorted(allowed))}.", param=str(key))
    noop = {"frequency_penalty": (None, 0, 0.0), "presence_penalty": (None, 0, 0.0),
            "logit_bias": (None, {}), "tools": (None, []), "suffix": (None, ""),
            "tool_choice": (None, "none", "auto"), "store": (None, False),
            "metadata": (None, {}), "service_tier": (None, "auto", "default")}
    for key, ok in noop.items():
        if key in body and body[key] not in ok:
            raise unsupported(key, body[key], " or ".join(repr(v) for v in ok))
    fmt = body.get("response_format")
    if fmt is not None and fmt != {"type": "text"}:
        raise unsupported("response_format", fmt, "{'type': 'text'} (plain text replies)")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise RequestError(400, f"user must be a string; got {short(user)}.", param="user")


def int_field(body: dict[str, Any], key: str, default: int | None, *, lo: int, hi: int,
              option: str | None = None) -> int:
    value = body.get(key, default)
    if value is None:
        return default  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        cap = f" (the server's {option})" if option else ""
        raise RequestError(400, f"{key} must be an integer in [{lo}, {hi}]{cap}; got "
                           f"{short(value)}.", param=key)
    return value


def float_field(body: dict[str, Any], key: str, default: float, *, lo: float, hi: float
                ) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise RequestError(400, f"{key} must be a number in [{lo}, {hi}]; got "
                           f"{short(value)}.", param=key)
    return float(value)


def stop_field(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, list | tuple) or not all(
            isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in stop) \
            or len(stop) > MAX_STOP_STRINGS:
        raise RequestError(400, f"stop must be a non-empty string or a list of at most "
                           f"{MAX_STOP_STRINGS} of them, each at most {MAX_STOP_CHARS} "
                           f"characters; got {short(body.get('stop'))}.", param="stop")
    return tuple(stop)


def seed_field(body: dict[str, Any]) -> int | None:
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                             or not -(1 << 63) <= seed < (1 << 64)):
        raise RequestError(400, f"seed must be a 64-bit integer; got {short(seed)}.",
                           param="seed")
    return seed


def stream_fields(body: dict[str, Any]) -> tuple[bool, bool]:
    """(stream, include_usage) from ``stream`` and ``stream_options``."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise RequestError(400, f"stream must be true or false; got {short(stream)}.",
                           param="stream")
    opts = body.get("stream_options")
    if opts is None:
        return bool(stream), False
    if not stream:
        raise RequestError(400, "stream_options is only allowed with stream=true.",
                           param="stream_options")
    if not isinstance(opts, dict) or set(opts) - {"include_usage", "continuous_usage_stats"} \
            or not all(isinstance(v, bool) for v in opts.values()) \
            or opts.get("continuous_usage_stats"):
        raise RequestError(400, f"stream_options takes include_usage (true or false); got "
                           f"{short(opts)}.", param="stream_options")
    return True, bool(opts.get("include_usage"))


def ttc_fields(body: dict[str, Any], *, hi: int) -> int | None:
    """The search budget from the body's ``ttc`` object (``{"budget": tokens}``)."""
    extra = body.get("ttc")
    if extra is None:
        return None
    if not isinstance(extra, dict) or set(extra) - {"budget"}:
        raise RequestError(400, f"ttc must be an object with the field budget (generated "
                           f"tokens for the whole search); got {short(extra)}.", param="ttc")
    value = extra.get("budget")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= hi:
        raise RequestError(400, f"ttc.budget must be an integer in [1, {hi}] (the server's "
                           f"--max-tokens); got {short(value)}.", param="ttc.budget")
    return value


def _content(value: Any, where: str) -> str:
    """A message's content as text: a string, or a list of text parts joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        texts = []
        for j, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" \
                    or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RequestError(400, f"{where}.content[{j}] must be a text part "
                                   f"{{type: 'text', text: ...}} (ttc serves text only); got "
                                   f"{short(kind)}.", param=f"{where}.content[{j}]")
            texts.append(part["text"])
        return "".join(texts)
    raise RequestError(400, f"{where}.content must be a string or a non-empty list of text "
                       f"parts; got {short(value)}.", param=f"{where}.content")


def chat_conversation(body: dict[str, Any]) -> tuple[tuple[Message, ...], str]:
    """(the turns before the question, the question): the last message is the user's
    question; ``developer`` messages are system messages (as OpenAI treats them)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, f"messages must be a non-empty list of {{role, content}} "
                           f"objects; got {short(messages)}.", param="messages")
    turns: list[Message] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in (
                "system", "developer", "user", "assistant"):
            raise RequestError(400, f"{where} must be an object with role system, developer, "
                               f"user or assistant; got {short(m)}.", param=where)
        extra = set(m) - {"role", "content", "name"}
        if extra:
            raise RequestError(400, f"{where} has fields ttc serve does not honour: "
                               f"{', '.join(sorted(extra))} (it reads role and content).",
                               param=where)
        role = "system" if m["role"] == "developer" else m["role"]
        turns.append(Message(role=role, content=_content(m.get("content"), where)))
    last = turns[-1]
    if last.role != "user" or not last.content.strip():
        raise RequestError(400, "the last message must be a non-empty user message (the "
                           "question).", param="messages")
    return tuple(turns[:-1]), last.content


def usage_json(prefill: int, cached: int, generated: int) -> dict[str, Any]:
    return {"prompt_tokens": prefill + cached, "completion_tokens": generated,
            "total_tokens": prefill + cached + generated,
            "prompt_tokens_details": {"cached_tokens": cached}}
