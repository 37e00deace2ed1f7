"""The measured answer-equivalence cases behind docs/answer_equivalence.md.

Contract: :data:`CASES` lists (category, gold, pred, expected verdict); :func:`render_table`
runs raw math-verify and :func:`ttc.verifiers.answer_check.is_equivalent` on every case
and returns the Markdown table. Regenerate the doc with
``python -m ttc.verifiers.equivalence_cases > docs/answer_equivalence.md``; a test checks
the file is current and every expected verdict holds.
Must NOT know: models, strategies.
"""

from __future__ import annotations

from ttc.verifiers.answer_check import is_equivalent, math_verify_equivalent

CASES: list[tuple[str, str, str, bool]] = [
    ("mixed number", r"\frac{5}{2}", r"2\frac{1}{2}", True),
    ("mixed number", r"\frac{5}{2}", "2 1/2", True),
    ("mixed number", "1", r"2\frac{1}{2}", False),
    ("thousands separator", "10080", r"10,\!080", True),
    ("thousands separator", "1000000", "1{,}000{,}000", True),
    ("thousands separator", "10.08", r"10,\!080", False),
    ("scientific notation", "1200", "1.2e3", True),
    ("scientific notation", r"6.02\times 10^{23}", "6.02e23", True),
    ("scientific notation", "0.03", r"3\times10^{-2}", True),
    ("repeating decimal", r"\frac{2}{3}", r"0.\overline{6}", True),
    ("repeating decimal", r"\frac{1}{6}", r"0.1\overline{6}", True),
    ("repeating decimal", r"\frac{1}{3}", r"0.\overline{4}", False),
    ("rational vs rounded decimal", r"\frac{2}{3}", "0.666667", False),
    ("rational vs rounded decimal", r"\frac{1}{7}", "0.142857", False),
    ("rational vs rounded decimal", "1/3", "0.3333333333333333", False),
    ("rational vs exact decimal", r"\frac{1}{2}", "0.5", True),
    ("irrational vs decimal", r"\pi", "3.14159", False),
    ("interval as inequality", r"(-\infty,3)", "x<3", True),
    ("interval as inequality", "[2,5]", r"2\le x\le 5", True),
    ("interval as inequality", r"[2,\infty)", r"x\ge 2", True),
    ("interval as inequality", r"(-\infty,3)\cup(5,\infty)", r"x<3 \text{ or } x>5", True),
    ("interval as inequality", "[2,5]", r"2< x\le 5", False),
    ("units and text", "12", r"\text{12 inches}", True),
    ("units and text", "5", r"5\text{ cm}", True),
    ("units and text", "B", r"\text{(B)}", True),
    ("AIME zero padding", "33", "033", True),
    ("AIME zero padding", "7", "033", False),
    ("tuple order", "(1,2)", "(2,1)", False),
    ("tuple order", "(1,2)", r"\left(1, 2\right)", True),
    ("solution set order", r"\{1,2\}", r"\{2,1\}", True),
    ("solution set order", "1, 3", "3, 1", True),
    ("solution set order", r"x=1 \text{ or } x=2", "2, 1", True),
    ("symbolic", r"\frac{\sqrt{3}}{2}", r"\frac{\sqrt3}{2}", True),
    ("symbolic", "2x+2", "2(x+1)", True),
]


def render_table() -> str:
    lines = ["# Answer equivalence: raw math-verify vs `is_equivalent`", "",
             "Measured by `python -m ttc.verifiers.equivalence_cases` (checked by",
             "`tests/verifiers/test_answer_table.py`). Raw math-verify is",
             "`verify(parse('$gold$'), parse('$pred$'))` with its defaults; \"n/a\" = it parsed",
             "nothing. A row is a failure of raw math-verify when its verdict differs from the",
             "expected one.", "",
             "| case | gold | prediction | expected | math-verify | is_equivalent |",
             "|---|---|---|---|---|---|"]
    mv_wrong = ours_wrong = 0
    for cat, gold, pred, expected in CASES:
        mv = math_verify_equivalent(gold, pred)
        ours = is_equivalent(gold, pred)
        mv_wrong += mv is not expected
        ours_wrong += ours is not expected
        def mark(v: bool | None) -> str:
            word = "n/a" if v is None else ("yes" if v else "no")
            return f"**{word}**" if v is not expected else word
        lines.append(f"| {cat} | `{gold}` | `{pred}` | {'yes' if expected else 'no'} | "
                     f"{mark(mv)} | {mark(ours)} |")
    lines += ["", f"Wrong verdicts (bold): math-verify {mv_wrong} of {len(CASES)}, "
              f"is_equivalent {ours_wrong} of {len(CASES)}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_table(), end="")
