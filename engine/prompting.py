"""Prompts as token ids: the system prompt, the chat template, and text joined after a prefix.

Contract: :func:`format_prompt` turns a problem into the token ids every backend starts
from (the tokenizer's chat template with ``add_generation_prompt=True``; a plain
"system, blank line, question" layout for tokenizers without one). The default system
prompt asks for reasoning steps separated by a blank line (``ttc.types.STEP_DELIMITER``,
``"\\n\\n"``, the stop string of a reasoning step) and the final answer in ``\\boxed{}``.
:func:`eos_ids` is the one rule every backend uses for end-of-sequence tokens.
:func:`continuation_ids` tokenizes text that is appended to an existing token prefix,
in the prefix's context, so the ids are what running text would give after the seam
(tokenizers merge across boundaries and mark leading spaces; compare ids, not strings).
Must NOT know: models, pages, handles, rewards, strategies.
"""

from __future__ import annotations

from typing import Any, Sequence

from ttc.types import Problem

__all__ = ["DEFAULT_SYSTEM_PROMPT", "chat_messages", "format_prompt", "prompt_text", "continuation_ids",
           "eos_ids"]

DEFAULT_SYSTEM_PROMPT = (
    "Solve the problem step by step. Write each step as a short paragraph and separate "
    "consecutive steps with a blank line. End with the final answer in the form "
    "\\boxed{answer}."
)

# Tokens of the prefix re-tokenized with the appended text: enough context for a merge or
# a leading-space marker at the seam, short enough to keep the cost independent of length.
_SEAM_WINDOW = 16


def _question(problem: Problem | str) -> str:
    if isinstance(problem, Problem):
        return problem.question
    if isinstance(problem, str) and problem.strip():
        return problem
    raise ValueError(f"problem must be a ttc.types.Problem or a non-empty string; got {problem!r}.")


def chat_messages(problem: Problem | str, *,
                  system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> list[dict[str, str]]:
    """The conversation a prompt renders: the problem's context (earlier turns), then the
    question as the last user turn. ``system_prompt`` opens it only when the context has
    no system message of its own (a client's system prompt is never overridden)."""
    question = _question(problem)
    context = list(problem.context) if isinstance(problem, Problem) else []
    messages = [{"role": m.role, "content": m.content} for m in context]
    messages.append({"role": "user", "content": question})
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def prompt_text(tokenizer: Any, problem: Problem | str, *,
                system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> str:
    """The prompt as text (chat template rendered, generation prompt appended)."""
    messages = chat_messages(problem, system_prompt=system_prompt)
    if getattr(tokenizer, "chat_template", None):
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True)
        except Exception:  # noqa: BLE001  (templates that refuse a system role raise anything)
            if messages[0]["role"] != "system":
                raise
            # A template without a system role: put the system text before the first turn.
            system, rest = messages[0]["content"], messages[1:]
            merged = [{**rest[0], "content": f"{system}\n\n{rest[0]['content']}"}, *rest[1:]]
            return tokenizer.apply_chat_template(merged, tokenize=False,
                                                 add_generation_prompt=True)
    # No template: system text, earlier turns as "Problem:"/"Solution:" pairs, the question.
    parts = []
    for m in messages:
        if m["role"] == "system":
            parts.append(f"{m['content']}\n\n")
        elif m["role"] == "user":
            parts.append(f"Problem: {m['content']}\n\n")
        else:
            parts.append(f"Solution:\n{m['content']}\n\n")
    return "".join(parts) + "Solution:\n"


def format_prompt(tokenizer: Any, problem: Problem | str, *,
                  system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> list[int]:
    """The prompt's token ids (what a backend prefills for ``problem``).

    A rendered chat template already holds its special tokens (BOS, role markers), so it
    is tokenized without adding more; the plain layout gets the tokenizer's usual ones.
    """
    text = prompt_text(tokenizer, problem, system_prompt=system_prompt)
    templated = bool(getattr(tokenizer, "chat_template", None))
    return list(tokenizer(text, add_special_tokens=not templated)["input_ids"])


def continuation_ids(tokenizer: Any, prefix_ids: Sequence[int], text: str) -> list[int]:
    """Token ids that append ``text`` to a sequence whose ids are ``prefix_ids``.

    The prefix's ids are kept as they are (its KV may be cached). The text is tokenized
    together with the last few prefix tokens, so a leading space or a word continuing
    across the seam is tokenized as in running text; if the joint tokenization re-splits
    those prefix tokens (the seam merges, e.g. ``"\\n"`` + ``"\\n"`` -> ``"\\n\\n"``), the
    text is tokenized on its own instead, which still decodes to prefix + text.
    """
    if not text:
        return []
    tail = list(prefix_ids[-_SEAM_WINDOW:])
    if tail:
        joint = tokenizer(tokenizer.decode(tail) + text, add_special_tokens=False)["input_ids"]
        if list(joint[:len(tail)]) == tail and len(joint) > len(tail):
            return list(joint[len(tail):])
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def eos_ids(tokenizer: Any, *configs: Any) -> frozenset[int]:
    """End-of-sequence ids: every ``eos_token_id`` (an int or a list) of the given configs
    (a model config, a generation config, ...) and of the tokenizer."""
    ids: set[int] = set()
    for src in (*(getattr(c, "eos_token_id", None) for c in configs),
                getattr(tokenizer, "eos_token_id", None)):
        if isinstance(src, int):
            ids.add(src)
        elif isinstance(src, (list, tuple)):
            ids.update(int(x) for x in src)
    return frozenset(ids)
