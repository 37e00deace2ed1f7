"""Answer equivalence: the measured table is current, and the rules hold case by case."""

from pathlib import Path

import pytest

from ttc.verifiers.answer_check import UngradableGold, as_number, grade, is_equivalent
from ttc.verifiers.equivalence_cases import CASES, measure, render_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "answer_equivalence.md"


@pytest.mark.parametrize("cat,gold,pred,expected", CASES)
def test_expected_verdicts(cat, gold, pred, expected):
    assert is_equivalent(gold, pred) is expected, (cat, gold, pred)


def test_ahead_of_math_verify_and_never_behind_it():
    rows = measure()
    lost = [(r.gold, r.pred) for r in rows
            if r.math_verify is r.expected and r.ours is not r.expected]
    assert lost == []
    ours = sum(r.ours is r.expected for r in rows)
    theirs = sum(r.math_verify is r.expected for r in rows)
    assert ours > theirs


def test_doc_table_is_measured_and_current():
    assert DOC.read_text() == render_table()


@pytest.mark.parametrize("text,value", [("10,\\!080", "10080"), ("2\\frac{1}{2}", "5/2"),
                                        ("0.\\overline{3}", "1/3"), ("1.5e-2", "3/200"),
                                        ("$\\$1{,}234$", "1234"), ("x = 7", "7"),
                                        ("864 \\mbox{ inches}^2", "864"),
                                        ("1.45 million", "1450000"),
                                        ("\\text{12 inches}", "12")])
def test_as_number(text, value):
    assert str(as_number(text)) == value


@pytest.mark.parametrize("text", ["5i", "2\\pi", "3x", "2 pi", "25\\%", "7 or 8", "(1,2)"])
def test_as_number_leaves_non_numbers_alone(text):
    assert as_number(text) is None


def test_grade_extracts_final_answer():
    assert grade("72", "Natalia sold 48/2 = 24 clips.\n#### 72")
    assert grade("\\frac{1}{2}", "So the answer is \\boxed{0.5}.")
    assert not grade("\\frac{1}{2}", "The answer is 0.49.")
    assert not grade("3", "no answer here")


def test_exported_from_the_package():
    import ttc.verifiers

    assert ttc.verifiers.is_equivalent is is_equivalent


def test_empty_and_bad_input():
    assert not is_equivalent("3", "   ")
    assert not is_equivalent("3", "$$")
    with pytest.raises(ValueError, match="two strings"):
        is_equivalent("3", None)  # type: ignore[arg-type]


@pytest.mark.parametrize("gold", ["", "   ", "$ $", "\\boxed{}", "???", "\\frac{1}{", "---"])
def test_ungradable_gold_raises(gold):
    with pytest.raises(UngradableGold, match="gold answer"):
        is_equivalent(gold, "3")


def test_cli_grade_exit_codes():
    from typer.testing import CliRunner

    from ttc.cli import app

    ok = CliRunner().invoke(app, ["grade", "\\frac{2}{3}", "0.\\overline{6}"])
    assert ok.exit_code == 0 and "equivalent" in ok.output
    bad = CliRunner().invoke(app, ["grade", "\\frac{2}{3}", "0.666667"])
    assert bad.exit_code == 1 and "not equivalent" in bad.output
    for gold in ("", "???"):
        err = CliRunner().invoke(app, ["grade", gold, "3"])
        assert err.exit_code == 2, err.output
        assert "gold answer" in err.output and len(err.output.strip().splitlines()) == 1
