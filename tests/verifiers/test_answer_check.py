"""Answer equivalence: the measured table is current, and the rules hold case by case."""

from pathlib import Path

import pytest

from ttc.verifiers.answer_check import as_number, grade, is_equivalent
from ttc.verifiers.equivalence_cases import CASES, render_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "answer_equivalence.md"


@pytest.mark.parametrize("cat,gold,pred,expected", CASES)
def test_expected_verdicts(cat, gold, pred, expected):
    assert is_equivalent(gold, pred) is expected, (cat, gold, pred)


def test_doc_table_is_measured_and_current():
    assert DOC.read_text() == render_table()


@pytest.mark.parametrize("text,value", [("10,\\!080", "10080"), ("2\\frac{1}{2}", "5/2"),
                                        ("0.\\overline{3}", "1/3"), ("1.5e-2", "3/200"),
                                        ("$\\$1{,}234$", "1234"), ("x = 7", "7")])
def test_as_number(text, value):
    assert str(as_number(text)) == value


def test_grade_extracts_final_answer():
    assert grade("72", "Natalia sold 48/2 = 24 clips.\n#### 72")
    assert grade("\\frac{1}{2}", "So the answer is \\boxed{0.5}.")
    assert not grade("\\frac{1}{2}", "The answer is 0.49.")
    assert not grade("3", "no answer here")


def test_empty_and_bad_input():
    assert not is_equivalent("3", "   ")
    with pytest.raises(ValueError, match="two strings"):
        is_equivalent("3", None)  # type: ignore[arg-type]


def test_cli_grade_exit_codes():
    from typer.testing import CliRunner

    from ttc.cli import app

    ok = CliRunner().invoke(app, ["grade", "\\frac{2}{3}", "0.\\overline{6}"])
    assert ok.exit_code == 0 and "equivalent" in ok.output
    bad = CliRunner().invoke(app, ["grade", "\\frac{2}{3}", "0.666667"])
    assert bad.exit_code == 1 and "not equivalent" in bad.output
