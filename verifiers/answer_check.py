"""Outcome checking: is a predicted final answer equivalent to the gold one?

Contract: :func:`is_equivalent(gold, pred)` decides equivalence of two final answers
(LaTeX or plain text, with or without ``$``). It first canonicalises both sides with
rules math-verify lacks (measured in docs/answer_equivalence.md by
``tests/verifiers/test_answer_table.py``):

* thousands separators (``10,\\!080``, ``1,000,000``), AIME zero padding (``033``);
* mixed numbers (``2\\frac{1}{2}``, ``2 1/2``), scientific notation (``1.2e3``,
  ``6.02\\times 10^{23}``), repeating decimals (``0.\\overline{6}``, ``0.1\\overline{6}``);
* ``\\text{}``/``\\mathrm{}`` wrappers and trailing units (``\\text{12 inches}``);
* intervals written as inequalities (``x \\ge 2``, ``x<3 \\text{ or } x>5``);
* tuples compared in order, brace sets and bare lists (solution sets) without order.

Plain numbers are compared exactly as rationals: an exact rational is never equal to a
rounded decimal of it (``\\frac23`` is not ``0.666667``), and a decimal never equals an
irrational gold (``\\pi`` is not ``3.14159``). Everything else goes to math-verify
(``verify(parse(gold), parse(pred))``, gold first, LaTeX wrapped in ``$...$``) under a
timeout (``timeout_s``, main thread only: signals), with string equality of the
canonical forms as the fallback when it cannot parse or times out.
Must NOT know: models, engines, strategies.
"""

from __future__ import annotations

import re
import threading
from fractions import Fraction
from functools import lru_cache

from ttc.answers import extract_answer

__all__ = ["is_equivalent", "grade", "canonical", "as_number", "math_verify_equivalent"]

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
_UNIT_TAIL = re.compile(r"^([+-]?[\d.,/\\{}a-z]*?\d[\d.,}]*)\s*(?:\\?[a-zA-Z]+\.?(?:\^\{?\d\}?)?\s*)+$")
_LEADING_VAR = re.compile(r"^[a-zA-Z]\s*=\s*(?=[^=]+$)")


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


def as_number(text: str) -> Fraction | None:
    """An exact rational for a plain numeric answer (see the module docstring), or None."""
    s = _strip_wrappers(text)
    s = _LEADING_VAR.sub("", s)
    if s.endswith("%"):
        return None
    m = _UNIT_TAIL.match(s)
    if m and not _PLAIN_NUM.match(s):
        s = m.group(1)
    s = s.replace("{,}", ",")
    s = re.sub(r"(?<=\d),\s(?=\d{3}\b)", ",", s)       # "10, 080" after \! removal
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    m = _MIXED_SLASH.match(s)
    if m:
        sign, whole, num, den = m.groups()
        if int(den) == 0 or int(num) >= int(den):
            return None
        value = int(whole) + Fraction(int(num), int(den))
        return -value if sign == "-" else value
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
        sign, whole, num, den = m.groups()
        if int(den) == 0 or int(num) >= int(den):
            return None
        value = int(whole) + Fraction(int(num), int(den))
        return -value if sign == "-" else value
    m = _REPEAT.match(compact)
    if m:
        sign, whole, fixed, rep = m.groups()
        base = Fraction(int(whole or "0")) + (Fraction(int(fixed), 10 ** len(fixed)) if fixed else 0)
        value = base + Fraction(int(rep), (10 ** len(rep) - 1) * 10 ** len(fixed))
        return -value if sign == "-" else value
    return None


def _is_decimal_literal(text: str) -> bool:
    s = _strip_wrappers(text).replace(" ", "")
    return bool(re.fullmatch(r"[+-]?\d*\.\d+", s))


# -- structure: tuples, sets, intervals --------------------------------------------------
def _split_top(s: str, sep: str = ",") -> list[str]:
    parts, depth, cur = [], 0, []
    i = 0
    while i < len(s):
        c = s[i]
        if s.startswith("\\{", i) or c in "([{":
            depth += 1
        elif s.startswith("\\}", i) or c in ")]}":
            depth -= 1
        if c == sep and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur).strip())
    return parts


_INEQ_OPS = {"<": "<", ">": ">", "\\lt": "<", "\\gt": ">", "\\le": "<=", "\\leq": "<=",
             "\\ge": ">=", "\\geq": ">=", "\\leqslant": "<=", "\\geqslant": ">=",
             "<=": "<=", ">=": ">="}
_OP = r"(<=|>=|\\leqslant|\\geqslant|\\leq|\\geq|\\le|\\ge|\\lt|\\gt|<|>)"
_DOUBLE = re.compile(rf"^(.+?){_OP}\s*([a-z])\s*{_OP}(.+)$")
_SINGLE = re.compile(rf"^([a-z])\s*{_OP}(.+)$")
_SINGLE_REV = re.compile(rf"^(.+?){_OP}\s*([a-z])$")


def _inequality_to_interval(s: str) -> str | None:
    """``2 \\le x < 5`` -> ``[2,5)``; ``x > 3`` -> ``(3,\\infty)``; or None."""
    s = s.strip()
    m = _DOUBLE.match(s)
    if m:
        lo, op1, _, op2, hi = m.groups()
        o1, o2 = _INEQ_OPS[op1], _INEQ_OPS[op2]
        if o1[0] == "<" and o2[0] == "<":
            return ("[" if o1 == "<=" else "(") + f"{lo.strip()},{hi.strip()}" + \
                ("]" if o2 == "<=" else ")")
        return None
    m = _SINGLE.match(s)
    if m:
        _, op, v = m.groups()
        o = _INEQ_OPS[op]
        v = v.strip()
        if o[0] == "<":
            return f"(-\\infty,{v}" + ("]" if o == "<=" else ")")
        return ("[" if o == ">=" else "(") + f"{v},\\infty)"
    m = _SINGLE_REV.match(s)
    if m:
        v, op, _ = m.groups()
        flipped = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}[_INEQ_OPS[op]]
        return _inequality_to_interval(f"x{flipped}{v}")
    return None


def _as_intervals(s: str) -> list[str] | None:
    pieces = re.split(r"\s*(?:\\cup|\bor\b|\\lor|\\vee)\s*", s)
    out = []
    for p in pieces:
        p = p.strip()
        iv = _inequality_to_interval(p)
        if iv is None:
            if re.fullmatch(r"[(\[].*,.*[)\]]", p):
                iv = p
            else:
                return None
        out.append(iv)
    return out if (len(out) > 1 or any(_inequality_to_interval(p) for p in pieces)) else None


@lru_cache(maxsize=65536)
def canonical(text: str) -> str:
    """A canonical string: wrappers dropped, numbers as reduced fractions."""
    num = as_number(text)
    if num is not None:
        return str(num)
    s = _strip_wrappers(text)
    s = _LEADING_VAR.sub("", s)
    return s.replace(" ", "")


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@lru_cache(maxsize=16384)
def math_verify_equivalent(gold: str, pred: str, *, timeout_s: int = 3) -> bool | None:
    """Raw math-verify on ``$gold$`` vs ``$pred$``; None when it cannot parse either side."""
    try:
        from math_verify import parse, verify
    except ImportError:   # pragma: no cover - math-verify is a dependency
        return None
    t = timeout_s if _in_main_thread() else None
    try:
        g = parse(f"${gold.strip().strip('$')}$", parsing_timeout=t)
        p = parse(f"${pred.strip().strip('$')}$", parsing_timeout=t)
        if not g or not p:
            return None
        return bool(verify(g, p, timeout_seconds=t))
    except Exception:   # math-verify raises many kinds on odd input; treat as unparsed
        return None


def _equiv(gold: str, pred: str, depth: int = 0) -> bool:
    if depth > 4:
        return canonical(gold) == canonical(pred)
    g_num, p_num = as_number(gold), as_number(pred)
    if g_num is not None and p_num is not None:
        return g_num == p_num
    gs, ps = _strip_wrappers(gold), _strip_wrappers(pred)
    if gs.replace(" ", "") == ps.replace(" ", ""):
        return True
    # intervals and inequalities
    g_iv, p_iv = _as_intervals(gs), _as_intervals(ps)
    if g_iv is not None or p_iv is not None:
        g_iv = g_iv or [gs]
        p_iv = p_iv or [ps]
        if len(g_iv) != len(p_iv):
            return False
        return _match_unordered(g_iv, p_iv, depth, interval=True)
    # tuples (ordered) and sets (unordered)
    g_struct, p_struct = _structure(gs), _structure(ps)
    if g_struct is not None and p_struct is not None:
        (gk, ge), (pk, pe) = g_struct, p_struct
        if len(ge) != len(pe):
            return False
        if gk == "tuple" and pk == "tuple":
            return all(_equiv(a, b, depth + 1) for a, b in zip(ge, pe))
        if gk == "tuple" or pk == "tuple":
            return False
        return _match_unordered(ge, pe, depth)
    if p_num is not None and g_num is None and _is_decimal_literal(pred):
        return False     # a rounded decimal never equals an exact non-rational/expression
    verdict = math_verify_equivalent(gs, ps)
    if verdict is None:
        return canonical(gold) == canonical(pred)
    return verdict


def _structure(s: str) -> tuple[str, list[str]] | None:
    if s.startswith("\\{") and s.endswith("\\}"):
        return "set", _split_top(s[2:-2])
    if s.startswith("(") and s.endswith(")") and len(_split_top(s[1:-1])) > 1 \
            and _balanced(s[1:-1]):
        return "tuple", _split_top(s[1:-1])
    parts = _split_top(s)
    if len(parts) > 1:
        return "list", parts
    parts = re.split(r"\s*(?:\\text\{\s*or\s*\}|\bor\b|\band\b)\s*", s)
    if len(parts) > 1:
        return "list", parts
    return None


def _balanced(s: str) -> bool:
    depth = 0
    for c in s:
        depth += c in "([{"
        depth -= c in ")]}"
        if depth < 0:
            return False
    return depth == 0


def _match_unordered(golds: list[str], preds: list[str], depth: int, *,
                     interval: bool = False) -> bool:
    remaining = list(preds)
    for g in golds:
        for i, p in enumerate(remaining):
            ok = _interval_equal(g, p, depth) if interval else _equiv(g, p, depth + 1)
            if ok:
                del remaining[i]
                break
        else:
            return False
    return not remaining


def _interval_equal(a: str, b: str, depth: int) -> bool:
    a, b = a.replace(" ", ""), b.replace(" ", "")
    if not (a and b) or a[0] != b[0] or a[-1] != b[-1]:
        return False
    ea, eb = _split_top(a[1:-1]), _split_top(b[1:-1])
    if len(ea) != 2 or len(eb) != 2:
        return False
    return all(x.replace(" ", "") == y.replace(" ", "") or _equiv(x, y, depth + 1)
               for x, y in zip(ea, eb))


@lru_cache(maxsize=65536)
def is_equivalent(gold: str, pred: str) -> bool:
    """True when ``pred`` states the same final answer as ``gold`` (see the module docstring)."""
    if not isinstance(gold, str) or not isinstance(pred, str):
        raise ValueError(f"is_equivalent takes two strings; got {type(gold).__name__} and "
                         f"{type(pred).__name__}.")
    if not gold.strip() or not pred.strip():
        return False
    return _equiv(gold, pred)


def grade(gold: str, solution_text: str) -> bool:
    """Extract the final answer from a whole solution and compare it with ``gold``."""
    pred = extract_answer(solution_text, fallback_last_number=True)
    return pred is not None and is_equivalent(gold, pred)
