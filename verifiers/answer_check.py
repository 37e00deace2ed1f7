"""Outcome checking: is a predicted final answer equivalent to the gold one?

Contract: :func:`is_equivalent(gold, pred)` starts from math-verify
(``verify(parse("$gold$"), parse("$pred$"))``, gold first, under a timeout) and adds
rules only where math-verify is wrong. Each rule is measured, row by row, against raw
math-verify in docs/answer_equivalence.md (``python -m ttc.verifiers.equivalence_cases``):

* **Plain numbers are exact.** A side that is a plain number (integers, decimals,
  ``a/b``, ``\\frac{a}{b}``, mixed numbers ``2\\frac12`` and ``2 1/2``, ``1.2e3``,
  repeating decimals ``0.\\overline{6}``, thousands separators, ``\\$``, ``x =``, trailing
  unit words such as ``\\text{12 inches}``, "1.45 million") is read as an exact rational.
  Two plain numbers are equal only when the rationals are; a plain number against a
  closed form (``3\\sqrt{13}``, ``\\frac{2}{21}``) is compared exactly with SymPy. So a
  rounded decimal never equals an exact answer (``\\frac23`` is not ``0.666667``,
  ``\\pi`` is not ``3.14159``): math-verify rounds to 6 places and would say yes.
* **Rewrites for forms math-verify misreads**, applied to both sides before it runs:
  ``\\sqrt13`` means ``\\sqrt{13}`` (math-verify reads ``\\sqrt{1}3``); ``274 i`` is
  ``274i``; inequalities in one variable (``x \\ge 2``, ``3 < \\lambda \\le 4``,
  ``x<3 \\text{ or } x>5``) become intervals and ``x \\in [a,b]`` becomes ``[a,b]``;
  ``\\backslash`` is ``\\setminus``.
* **Case matters for variables.** math-verify lower-cases every symbol, so it calls
  ``3R^2`` equal to ``3r^2``; a single-letter variable whose case differs between the
  sides makes them unequal. Words (``\\text{East}``) and a lone choice letter keep
  math-verify's case-blind comparison.

Gold answers are checked first (:func:`check_gold`): an empty gold, or one that neither
the rules nor math-verify can read, raises :class:`UngradableGold` (a ``ValueError``)
instead of grading every prediction wrong. An empty prediction is simply not equivalent.
The math-verify timeout uses signals, so it applies on the main thread only.
Must NOT know: models, engines, strategies.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction
from functools import lru_cache
from typing import Any

from ttc.answers import extract_answer

__all__ = ["is_equivalent", "grade", "check_gold", "UngradableGold", "as_number",
           "math_verify_equivalent"]


class UngradableGold(ValueError):
    """The gold answer is empty or cannot be read, so no prediction can be graded."""


# -- plain numbers -----------------------------------------------------------------------
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mbox|textnormal|operatorname)\s*\{([^{}]*)\}")
_SPACES_CMD = re.compile(r"\\[!,;: ]|~|\\quad|\\qquad")
_DEGREES = re.compile(r"\^\s*\{?\\circ\}?")
_PLAIN_NUM = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_SCI_E = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))[eE]([+-]?\d+)$")
_SCI_TIMES = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(?:\\times|\\cdot|\*|x)10\^\{?([+-]?\d+)\}?$")
_FRAC = re.compile(r"^([+-]?)\\frac\{?([+-]?\d+)\}?\{?([+-]?\d+)\}?$")
_SLASH = re.compile(r"^([+-]?\d+)/(\d+)$")
_MIXED_TEX = re.compile(r"^([+-]?)(\d+)\\frac\{?(\d+)\}?\{?(\d+)\}?$")
_MIXED_SLASH = re.compile(r"^([+-]?)(\d+) (\d+)/(\d+)$")
_REPEAT = re.compile(r"^([+-]?)(\d*)\.(\d*)\\overline\{(\d+)\}$")
_LEADING_VAR = re.compile(r"^[a-zA-Z]\s*=\s*(?=[^=]+$)")
# Trailing unit words ("12 inches", "15 cm^2", "18 dollars"): words of two or more
# letters after a space, optionally squared/cubed. Letters glued to the number ("5i",
# "3x", "2\pi") are not units, and neither are these words:
_NOT_UNITS = {"pi", "and", "or", "sqrt", "infty"}
_UNIT_WORD = r"\s+([a-zA-Z]{2,})\.?(?:\s*\^\s*\{?\d\}?)?"
_UNIT_TAIL = re.compile(rf"^(.*?\d\}}?)((?:{_UNIT_WORD})+)\s*$")
_SCALE_WORDS = {"thousand": 10**3, "million": 10**6, "billion": 10**9}


def _strip_wrappers(s: str) -> str:
    s = s.strip().strip("$").strip()
    if s.startswith("\\boxed{") and s.endswith("}"):
        s = s[7:-1]
    s = s.replace("\\left", "").replace("\\right", "")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = _DEGREES.sub("", s)
    prev = None
    while prev != s:
        prev = s
        s = _TEXT_WRAP.sub(lambda m: " " + m.group(1) + " ", s)
    s = _SPACES_CMD.sub(" ", s)
    s = s.replace("\\$", "").replace("\\%", "%")
    s = re.sub(r"\s+", " ", s).strip().rstrip(".").strip()
    return s


def _strip_units(s: str) -> tuple[str, int]:
    """``"1.45 million"`` -> ``("1.45", 10**6)``; ``"12 inches^2"`` -> ``("12", 1)``."""
    m = _UNIT_TAIL.match(s)
    if not m:
        return s, 1
    words = [w.lower() for w in re.findall(r"[a-zA-Z]{2,}", m.group(2))]
    if any(w in _NOT_UNITS for w in words):
        return s, 1
    scale = _SCALE_WORDS.get(words[0], 1)
    return m.group(1).strip(), scale


@lru_cache(maxsize=65536)
def as_number(text: str) -> Fraction | None:
    """An exact rational for a plain numeric answer (see the module docstring), or None."""
    s = _strip_wrappers(text)
    s = _LEADING_VAR.sub("", s)
    if s.endswith("%"):
        return None     # 25% may mean 25 or 1/4: math-verify decides
    s, scale = _strip_units(s)
    value = _plain_value(s)
    return None if value is None else value * scale


def _plain_value(s: str) -> Fraction | None:
    s = s.replace("{,}", ",")
    s = re.sub(r"(?<=\d),\s(?=\d{3}\b)", ",", s)       # "10, 080" after \! removal
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    m = _MIXED_SLASH.match(s)
    if m:
        return _mixed(*m.groups())
    compact = s.replace(" ", "")
    if _PLAIN_NUM.match(compact):
        return Fraction(compact)
    for pattern in (_SCI_E, _SCI_TIMES):
        m = pattern.match(compact)
        if m:
            return Fraction(m.group(1)) * Fraction(10) ** int(m.group(2))
    m = _FRAC.match(compact) or _SLASH.match(compact)
    if m:
        g = m.groups()
        sign = -1 if len(g) == 3 and g[0] == "-" else 1
        num, den = int(g[-2]), int(g[-1])
        return sign * Fraction(num, den) if den else None
    m = _MIXED_TEX.match(compact)
    if m:
        return _mixed(*m.groups())
    m = _REPEAT.match(compact)
    if m:
        sign, whole, fixed, rep = m.groups()
        base = Fraction(int(whole or "0")) + (Fraction(int(fixed), 10 ** len(fixed)) if fixed else 0)
        value = base + Fraction(int(rep), (10 ** len(rep) - 1) * 10 ** len(fixed))
        return -value if sign == "-" else value
    return None


def _mixed(sign: str, whole: str, num: str, den: str) -> Fraction | None:
    if int(den) == 0 or int(num) >= int(den):
        return None
    value = int(whole) + Fraction(int(num), int(den))
    return -value if sign == "-" else value


def _latex_number(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


# -- rewrites: forms math-verify misreads --------------------------------------------------
_SQRT_SHORT = re.compile(r"\\sqrt\s*(\d{2,})")          # \sqrt13 -> \sqrt{13}
_SPACED_I = re.compile(r"(\d)\s+i\b")                   # 274 i -> 274i
_VAR = r"(?:[a-zA-Z]|\\(?!infty\b|pi\b)[a-zA-Z]+)"
_IN_SET = re.compile(rf"^{_VAR}\s*\\in\s*(?=\S)")
_OP = r"(<=|>=|\\leqslant|\\geqslant|\\leq|\\geq|\\le|\\ge|\\lt|\\gt|<|>)"
_OPS = {"<": "<", ">": ">", "\\lt": "<", "\\gt": ">", "\\le": "<=", "\\leq": "<=",
        "\\ge": ">=", "\\geq": ">=", "\\leqslant": "<=", "\\geqslant": ">=",
        "<=": "<=", ">=": ">="}
_FLIP = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}
_DOUBLE = re.compile(rf"^(.+?){_OP}\s*({_VAR})\s*{_OP}(.+)$")
_SINGLE = re.compile(rf"^({_VAR})\s*{_OP}(.+)$")
_SINGLE_REV = re.compile(rf"^(.+?){_OP}\s*({_VAR})$")
_UNION_SEP = re.compile(r"\s*(?:\\cup|\\text\{\s*or\s*\}|\\mbox\{\s*or\s*\}|\bor\b|\\lor|\\vee)\s*")


def _inequality_to_interval(s: str) -> tuple[str, str] | None:
    """``2 \\le x < 5`` -> ``("x", "[2,5)")``; ``x > 3`` -> ``("x", "(3,\\infty)")``."""
    s = s.strip()
    m = _DOUBLE.match(s)
    if m:
        lo, op1, var, op2, hi = m.groups()
        o1, o2 = _OPS[op1], _OPS[op2]
        if o1[0] == ">" and o2[0] == ">":         # 5 > x > 2  ->  2 < x < 5
            lo, hi, o1, o2 = hi, lo, _FLIP[o2], _FLIP[o1]
        if o1[0] == "<" and o2[0] == "<":
            return var, (("[" if o1 == "<=" else "(") + f"{lo.strip()},{hi.strip()}"
                         + ("]" if o2 == "<=" else ")"))
        return None
    m = _SINGLE.match(s)
    if m:
        var, op, v = m.groups()
    else:
        m = _SINGLE_REV.match(s)
        if not m:
            return None
        v, op, var = m.groups()
        op = _FLIP[_OPS[op]]
    o, v = _OPS[op], v.strip()
    if o[0] == "<":
        return var, f"(-\\infty,{v}" + ("]" if o == "<=" else ")")
    return var, ("[" if o == ">=" else "(") + f"{v},\\infty)"


def _inequalities_as_intervals(s: str) -> str | None:
    """A union of inequalities in one variable (and intervals) as a union of intervals."""
    pieces = _UNION_SEP.split(s)
    out, names = [], set()
    for piece in pieces:
        piece = piece.strip()
        found = _inequality_to_interval(piece)
        if found is not None:
            names.add(found[0])
            out.append(found[1])
        elif re.fullmatch(r"(?:\\left)?[(\[].*,.*(?:\\right)?[)\]]", piece):
            out.append(piece)
        else:
            return None
    if not names or len(names) > 1:
        return None
    return " \\cup ".join(out)


@lru_cache(maxsize=65536)
def _rewrite(text: str) -> str:
    """The form of ``text`` handed to math-verify (see the module docstring)."""
    s = text.strip().strip("$").strip()
    value = as_number(s)
    if value is not None:
        return _latex_number(value)
    s = _SQRT_SHORT.sub(r"\\sqrt{\1}", s)
    s = _SPACED_I.sub(r"\1i", s)
    s = s.replace("\\backslash", "\\setminus")
    s = _IN_SET.sub("", s)
    intervals = _inequalities_as_intervals(s)
    return intervals if intervals is not None else s


# -- math-verify ---------------------------------------------------------------------------
def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@lru_cache(maxsize=65536)
def _mv_parse(latex: str) -> tuple[Any, ...] | None:
    """math-verify's parse of ``$latex$``; None when it raises."""
    from math_verify import parse

    t = 3 if _in_main_thread() else None
    try:
        return tuple(parse(f"${latex.strip().strip('$')}$", parsing_timeout=t))
    except Exception:   # math-verify raises many kinds on odd input; treat as unparsed
        return None


def _mv_expression(latex: str) -> Any | None:
    """The first SymPy object math-verify reads from ``latex`` (not its raw-string echo)."""
    parsed = _mv_parse(latex) or ()
    return next((x for x in parsed if not isinstance(x, str)), None)


@lru_cache(maxsize=16384)
def math_verify_equivalent(gold: str, pred: str, *, timeout_s: int = 3) -> bool | None:
    """Raw math-verify on ``$gold$`` vs ``$pred$``; None when it cannot parse either side."""
    from math_verify import verify

    g, p = _mv_parse(gold), _mv_parse(pred)
    if not g or not p:
        return None
    try:
        return bool(verify(list(g), list(p),
                           timeout_seconds=timeout_s if _in_main_thread() else None))
    except Exception:   # as in _mv_parse
        return None


# -- rules on top of math-verify -------------------------------------------------------------
def _number_vs_closed_form(value: Fraction, other: str) -> bool | None:
    """Exact comparison of a plain number with a closed-form number; None if not one."""
    import sympy

    expr = _mv_expression(_rewrite(other))
    if expr is None or not isinstance(expr, sympy.Expr) or not expr.is_number:
        return None
    if expr.is_rational is False or expr.is_real is False:
        return False     # irrational or complex: no decimal or fraction equals it
    try:
        same = (expr - sympy.Rational(value.numerator, value.denominator)).equals(0)
    except Exception:   # SymPy may fail on exotic closed forms: let math-verify decide
        return None
    return same if isinstance(same, bool) else None


_TEXTLIKE = re.compile(r"\\(?:text|textbf|mathrm|mbox|textnormal|operatorname|mathbb"
                       r"|begin|end)\s*\{[^{}]*\}")
_LONE_LETTER = re.compile(r"(?<![A-Za-z\\])[A-Za-z](?![A-Za-z])")


def _variables(text: str) -> set[str]:
    """Single-letter symbols outside words and LaTeX commands (``3R^2`` -> ``{"R"}``)."""
    s = _TEXTLIKE.sub(" ", text)
    s = re.sub(r"\\[A-Za-z]+", " ", s)
    s = re.sub(r"^\s*[A-Za-z]\s*=", " ", s)          # "x = 5": the name is not the answer
    return set(_LONE_LETTER.findall(s))


def _variable_case_differs(gold: str, pred: str) -> bool:
    """The same letters in a different case (``R`` vs ``r``); a lone choice letter exempt."""
    lone = re.compile(r"^\W*[A-Za-z]\W*$")
    if lone.match(_strip_wrappers(gold)) and lone.match(_strip_wrappers(pred)):
        return False
    g, p = _variables(gold), _variables(pred)
    return g != p and {c.lower() for c in g} == {c.lower() for c in p}


def _readable(text: str) -> bool:
    return as_number(text) is not None or _mv_expression(_rewrite(text)) is not None


def _unwrapped(text: str) -> str:
    s = text.strip().strip("$").strip()
    inner = extract_answer(s) if s.startswith(("\\boxed", "\\fbox")) else None
    return inner if inner is not None else s


def check_gold(gold: str) -> str:
    """The gold answer without ``$``/``\\boxed{}``; raises :class:`UngradableGold`."""
    if not isinstance(gold, str):
        raise ValueError(f"the gold answer must be a string; got {type(gold).__name__}.")
    s = _unwrapped(gold)
    if not s:
        raise UngradableGold(f"the gold answer {gold!r} is empty, so no prediction can be "
                             f"graded against it.")
    if not _readable(s):
        raise UngradableGold(f"the gold answer {gold!r} cannot be parsed (math-verify reads "
                             f"no expression from it), so no prediction can be graded.")
    return s


def _equivalent(gold: str, pred: str) -> bool:
    g_num, p_num = as_number(gold), as_number(pred)
    if g_num is not None and p_num is not None:
        return g_num == p_num
    if g_num is not None or p_num is not None:
        exact = (_number_vs_closed_form(g_num, pred) if g_num is not None
                 else _number_vs_closed_form(p_num, gold))
        if exact is not None:
            return exact
    verdict = math_verify_equivalent(_rewrite(gold), _rewrite(pred))
    if verdict is None:     # math-verify read nothing on one side: compare the text
        return _strip_wrappers(gold).replace(" ", "") == _strip_wrappers(pred).replace(" ", "")
    return verdict and not _variable_case_differs(gold, pred)


@lru_cache(maxsize=65536)
def is_equivalent(gold: str, pred: str) -> bool:
    """True when ``pred`` states the same final answer as ``gold`` (see the module docstring).

    Raises :class:`UngradableGold` when ``gold`` is empty or unreadable.
    """
    if not isinstance(gold, str) or not isinstance(pred, str):
        raise ValueError(f"is_equivalent takes two strings; got {type(gold).__name__} and "
                         f"{type(pred).__name__}.")
    gold = check_gold(gold)
    pred = _unwrapped(pred)
    if not pred:
        return False
    return _equivalent(gold, pred)


def grade(gold: str, solution_text: str) -> bool:
    """Extract the final answer from a whole solution and compare it with ``gold``."""
    pred = extract_answer(solution_text, fallback_last_number=True)
    return pred is not None and is_equivalent(gold, pred)
