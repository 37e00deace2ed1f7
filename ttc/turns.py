"""A follow-up user turn written after an open assistant turn, as text to append.

Contract: :func:`follow_up_text` returns the text that closes the assistant turn a branch
is in, opens a user turn holding ``user_text``, then opens the assistant's reply with
``assistant_prefix`` (a judge's "the quality score is: "). With a chat template it is the
template's own rendering (role markers included, so the engine's tokenizer maps them to
their special tokens); without one it is the plain "Problem:" / "Solution:" layout that
``ttc.engine.prompting`` uses for such tokenizers.
Must NOT know: engines, models, strategies; it sees a tokenizer-like object or None.
"""

from __future__ import annotations

from typing import Any

_MARK = "\x00ttc-assistant-turn\x00"


def follow_up_text(tokenizer: Any, user_text: str, assistant_prefix: str) -> str:
    """``user_text`` as the next user turn and ``assistant_prefix`` opening the reply."""
    if not user_text.strip():
        raise ValueError("a follow-up turn needs a non-empty user text; got "
                         f"{user_text!r}.")
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": "question"},
                    {"role": "assistant", "content": _MARK},
                    {"role": "user", "content": user_text}]
        text = tokenizer.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
        return text[text.index(_MARK) + len(_MARK):] + assistant_prefix
    return f"\n\nProblem: {user_text}\n\nSolution:\n{assistant_prefix}"
