"""Prompting: chat template with the system prompt, plain fallback, ids joined at a seam."""

from __future__ import annotations

import pytest

from fakes import tiny_tokenizer
from ttc.engine.prompting import (DEFAULT_SYSTEM_PROMPT, continuation_ids, format_prompt,
                                  prompt_text)
from ttc.types import STEP_DELIMITER, Problem


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_default_system_prompt_asks_for_steps_and_boxed():
    assert "\\boxed{" in DEFAULT_SYSTEM_PROMPT
    assert "blank line" in DEFAULT_SYSTEM_PROMPT and "step by step" in DEFAULT_SYSTEM_PROMPT
    assert STEP_DELIMITER == "\n\n"


def test_chat_template(tok):
    ids = format_prompt(tok, Problem(question="What is 12 and 30?"))
    expected = ("<|im_start|>system\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\n"
                "<|im_start|>user\nWhat is 12 and 30?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.decode(ids) == expected
    assert ids == tok(expected, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
    assert format_prompt(tok, "What is 12 and 30?") == ids


def test_no_system_prompt(tok):
    ids = format_prompt(tok, "Add 3 and 4.", system_prompt=None)
    assert tok.decode(ids) == "<|im_start|>user\nAdd 3 and 4.<|im_end|>\n<|im_start|>assistant\n"


def test_custom_system_prompt(tok):
    text = prompt_text(tok, "Add 3 and 4.", system_prompt="Be brief.")
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_template_without_system_role():
    strict = tiny_tokenizer(chat_template=(
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}"
        "{% endif %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"))
    text = prompt_text(strict, "Add 3 and 4.", system_prompt="Be brief.")
    assert text == "[user] Be brief.\n\nAdd 3 and 4.\n[assistant] "


def test_plain_fallback_without_template():
    plain = tiny_tokenizer(chat_template=None)
    ids = format_prompt(plain, "Add 3 and 4.", system_prompt="Be brief.")
    assert plain.decode(ids) == "Be brief.\n\nProblem: Add 3 and 4.\n\nSolution:\n"


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_bad_problem(tok, bad):
    with pytest.raises(ValueError, match="non-empty string"):
        format_prompt(tok, bad)


@pytest.mark.parametrize("prefix,text", [
    ("The answer", " is 42."),            # leading space joins the next word
    ("First, 12 + 30 = 4", "2.\n\nSo"),    # digits continue across the seam
    ("We add 3 and 4.\n", "\nThen"),       # newline + newline would merge
    ("Solve the prob", "lem step by step."),
    ("x", ""),
])
def test_continuation_ids_decode_to_joined_text(tok, prefix, text):
    prompt = format_prompt(tok, "Add 3 and 4.")
    prefix_ids = prompt + tok(prefix, add_special_tokens=False)["input_ids"]
    ids = continuation_ids(tok, prefix_ids, text)
    assert tok.decode(prefix_ids + ids) == tok.decode(prefix_ids) + text
    if not text:
        assert ids == []


def test_continuation_ids_match_running_text_when_seam_is_clean(tok):
    prefix_ids = tok("Then we add", add_special_tokens=False)["input_ids"]
    ids = continuation_ids(tok, prefix_ids, " 3 and 4 to get 7.")
    joint = tok("Then we add 3 and 4 to get 7.", add_special_tokens=False)["input_ids"]
    assert prefix_ids + ids == joint
    alone = tok(" 3 and 4 to get 7.", add_special_tokens=False)["input_ids"]
    assert ids == alone[-len(ids):]


def test_a_conversation_renders_whole_and_a_client_system_prompt_replaces_the_default():
    from ttc.engine.prompting import DEFAULT_SYSTEM_PROMPT, chat_messages
    from ttc.types import Message, Problem

    problem = Problem(question="And 2 + 2?", context=(
        Message(role="system", content="Reply with #### N."),
        Message(role="user", content="1 + 1?"), Message(role="assistant", content="#### 2")))
    assert chat_messages(problem) == [
        {"role": "system", "content": "Reply with #### N."},
        {"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": "#### 2"},
        {"role": "user", "content": "And 2 + 2?"}]
    no_system = Problem(question="And 2 + 2?", context=problem.context[1:])
    assert chat_messages(no_system)[0] == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT}
    assert chat_messages(no_system, system_prompt=None)[0]["role"] == "user"
