"""Final-answer extraction and the canonical answer key used for voting.

Contract: :func:`extract_answer` finds the final answer in a solution's text (the last
``\\boxed{...}``/``\\fbox{...}`` with nested braces, GSM8K ``#### x``, "The (final)
answer is x"); :func:`answer_key` maps an answer to a canonical string so that
equivalent forms (``\\frac12``, ``1/2``, ``0.5``; ``1,000`` and ``1000``; ``033`` and ``33``)
fall in one voting class. Both are memoised: voting calls them in hot loops.
Grading against a gold answer with symbolic equivalence lives in
``ttc.verifiers.is_equivalent``, which goes further (math-verify, sets, intervals).
Must NOT know: models, engines, strategies.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache

_BOX_OPENERS = ("\\boxed{", "\\fbox{", "\\boxed {")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (braces matched), or None."""
    start = -1
    opener_len = 0
    for opener in _BOX_OPENERS:
        idx = text.rfind(opener)
        if idx > start:
            start, opener_len = idx, len(opener)
    if start < 0:
        return None
    depth = 1
    i = start + opener_len
    begin = i
    while i < len(text):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i].strip()
        i += 1
    return None   # unbalanced: the box was never closed


_ANSWER_IS = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*:?\s*(.+?)(?:\.\s*$|\n|$)",
                        re.IGNORECASE)
_GSM = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@lru_cache(maxsize=65536)
def extract_answer(text: str, *, fallback_last_number: bool = False) -> str | None:
    """The final answer in ``text``, or None when it states none."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    gsm = _GSM.findall(text)
    if gsm:
        return gsm[-1].strip()
    said = _ANSWER_IS.findall(text)
    if said:
        value = said[-1].strip().strip("$ ").rstrip(".")
        inner = last_boxed(value)
        if inner is not None:
            return inner
        # "The answer is 4 * 3 = 12": a worked equation ending in a number answers that
        # number; an equation such as "y = 2x + 3" stays whole.
        result = value.rsplit("=", 1)[-1].strip()
        return result if "=" in value and _NUMBER.fullmatch(result) else value
    if fallback_last_number:
        numbers = _NUMBER.findall(text)
        if numbers:
            return numbers[-1]
    return None


_STRIP = [
    (re.compile(r"\\text\{\s*([^{}]*)\}"), r"\1"),
    (re.compile(r"\\mathrm\{\s*([^{}]*)\}"), r"\1"),
    (re.compile(r"\\(?:left|right)"), ""),
    (re.compile(r"\\[!,;: ]"), ""),
    (re.compile(r"\^\{?\\circ\}?"), ""),
    (re.compile(r"\\[dt]frac"), r"\\frac"),
    (re.compile(r"\$"), ""),
    (re.compile(r"\s+"), ""),
]
_FRAC = re.compile(r"^(-?)\\frac\{?(-?\d+)\}?\{?(-?\d+)\}?$")
_SLASH = re.compile(r"^(-?\d+)/(-?\d+)$")
_DECIMAL = re.compile(r"^-?(?:\d+(?:\.\d*)?|\.\d+)$")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_LEADING_VAR = re.compile(r"^[a-zA-Z]\s*=")


def _as_fraction(s: str) -> Fraction | None:
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    if _DECIMAL.match(s):
        return Fraction(s)
    m = _FRAC.match(s) or _SLASH.match(s)
    if m:
        groups = m.groups()
        sign = -1 if len(groups) == 3 and groups[0] == "-" else 1
        num, den = int(groups[-2]), int(groups[-1])
        if den != 0:
            return sign * Fraction(num, den)
    return None


@lru_cache(maxsize=65536)
def answer_key(answer: str | None) -> str | None:
    """Canonical voting key: numbers become reduced fractions, LaTeX noise is dropped."""
    if answer is None:
        return None
    s = answer.strip()
    for pattern, repl in _STRIP:
        s = pattern.sub(repl, s)
    s = _LEADING_VAR.sub("", s).rstrip(".")
    if s.endswith("\\%") or s.endswith("%"):
        s = s.rstrip("%").rstrip("\\")
    value = _as_fraction(s)
    if value is not None:
        return str(value)   # "1/2", "33", "-7"
    return s
