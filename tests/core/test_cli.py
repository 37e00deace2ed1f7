"""The CLI: answers and ledgers on stdout; every user error is one line and exit code 2."""

import json

import pytest
from typer.testing import CliRunner

from ttc.cli import app

runner = CliRunner()
SIM = ["--backend", "simulated", "--verifier", "simulated"]


def test_solve_prints_answer_and_ledger(tmp_path):
    tree = tmp_path / "tree.json"
    result = runner.invoke(app, ["solve", "What is 2+2?", "--backend", "simulated", "--verifier", "simulated",
                                 "--strategy", "best_of_n", "--budget", "4096",
                                 "--tree", str(tree)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("answer: ")
    assert "ledger: generated" in result.output
    data = json.loads(tree.read_text())
    assert len(data["nodes"]) == 1 + 8      # root + best_of_n's default n=8 samples


def test_flag_and_override_spellings_mean_the_same():
    a = runner.invoke(app, ["solve", "Q", "--strategy", "self_consistency", "--json", "-q", *SIM])
    b = runner.invoke(app, ["solve", "Q", "strategy=self_consistency", "--json", "-q", "backend=simulated", "verifier=simulated"])
    assert a.exit_code == b.exit_code == 0
    ra, rb = json.loads(a.output), json.loads(b.output)
    assert ra["strategy"] == rb["strategy"] == "self_consistency"
    assert ra["answer"] == rb["answer"]


def test_overrides_reach_the_strategy():
    out = runner.invoke(app, ["solve", "Q", "strategy.n=3", "--json", *SIM])
    assert out.exit_code == 0
    assert len(json.loads(out.output)["candidates"]) == 3


def test_budget_caps_generated_tokens():
    out = runner.invoke(app, ["solve", "Q", "--budget", "100", "--json", *SIM])
    assert out.exit_code == 0
    record = json.loads(out.output)
    assert record["ledger"]["generated_tokens"] <= 100
    assert record["budget_exhausted"] is True


@pytest.mark.parametrize("args, message", [
    (["solve", "", "-q"], "non-empty"),
    (["solve", "Q", "--strategy", "nope"], "unknown strategy 'nope'; available: "),
    (["solve", "Q", "--backend", "nope"], "unknown backend 'nope'"),
    (["solve", "Q", "strategy.bogus=1"], "strategy.bogus is not a known setting"),
    (["solve", "Q", "--budget", "0"], "--budget must be a positive"),
    (["solve", "Q", "--budget", "-5"], "--budget must be a positive"),
    (["solve", "Q", "strategy.n=0"], "strategy.n"),
    (["solve", "Q", "notanoverride"], "must look like key=value"),
    (["bench", "nope"], "unknown benchmark 'nope'"),
    (["bench", "overhead", "--backends", "native"], "takes no --backends option"),
    (["bench", "engine", "--backends", "native,tgi"], "--backends must be a comma list"),
    (["bench", "overhead", "--cotenant", "1"], "takes no --cotenant option"),
    (["bench", "engine", "--cotenant", "-1"], "--cotenant must be a number of busy processes"),
    (["bench", "engine", "--backends", "hf", "--cotenant", "1"], "add native to --backends"),
    (["bench", "concurrency", "--cotenant", "1"], "takes no --cotenant option"),
    (["bench", "concurrency", "--backends", "hf"], "--backends for concurrency must be"),
])
def test_user_errors_are_one_line_and_exit_2(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_strategies_lists_parameters():
    result = runner.invoke(app, ["strategies"])
    assert result.exit_code == 0
    assert "best_of_n" in result.output and "self_consistency" in result.output
    assert "n=8" in result.output


def test_config_prints_composed_config():
    result = runner.invoke(app, ["config", "strategy=self_consistency", "strategy.n=5"])
    assert result.exit_code == 0
    assert "name: self_consistency" in result.output and "n: 5" in result.output
