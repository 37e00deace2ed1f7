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
    (["solve", "Q", "--budget", "0"], "budget.max_generated_tokens: Input should be greater than 0; got 0"),
    (["solve", "Q", "--budget", "-5"], "budget.max_generated_tokens: Input should be greater than 0; got -5"),
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


# -- runtime faults: one line, the right exit code, nothing left behind ----------------------
def _one_error_line(result):
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def _dead_url():
    # port 9 (discard): nothing listens there, and unlike a closed ephemeral port no other
    # test's server can take it meanwhile
    return "http://127.0.0.1:9/v1"


def test_tree_naming_a_folder_is_refused_before_solving(tmp_path, monkeypatch):
    import ttc.pipeline

    solved = []
    monkeypatch.setattr(ttc.pipeline.Pipeline, "solve",
                        lambda self, q: solved.append(q))
    folder = tmp_path / "trees"
    folder.mkdir()
    result = runner.invoke(app, ["solve", "Q", "--tree", str(folder), *SIM])
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert "--tree" in line and "is a folder" in line and "tree.json" in line
    assert solved == []                                      # checked before any work
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trees"]
    assert list(folder.iterdir()) == []


def test_a_tree_that_cannot_be_written_keeps_the_answer_and_leaves_no_temp_file(tmp_path,
                                                                                monkeypatch):
    import errno
    import os

    import ttc.atomic

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))

    monkeypatch.setattr(ttc.atomic.os, "replace", disk_full)
    (tmp_path / "tree.json").write_text("old")
    result = runner.invoke(app, ["solve", "Q", "--tree", str(tmp_path / "tree.json"), *SIM])
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert "No space left on device" in line and "the disk is full" in line
    assert result.stdout.startswith("answer: ")              # the solve is not lost
    assert [p.name for p in tmp_path.iterdir()] == ["tree.json"]   # no stray temp file
    assert (tmp_path / "tree.json").read_text() == "old"


def test_server_unavailable_is_one_line_naming_the_url_setting(tmp_path):
    url = _dead_url()
    result = runner.invoke(app, ["solve", "What is 2+2?", "backend=http",
                                 f"backend.base_url={url}", "backend.max_retries=0",
                                 "verifier=simulated"])
    assert result.exit_code == 1
    line = _one_error_line(result)
    assert url in line and "backend.base_url" in line


def test_debug_flag_and_env_print_the_traceback_then_the_line(monkeypatch):
    import ttc.pipeline

    def broken(self, question):
        raise TypeError("an internal bug")

    monkeypatch.setattr(ttc.pipeline.Pipeline, "solve", broken)
    plain = runner.invoke(app, ["solve", "Q", *SIM])
    assert plain.exit_code == 1
    assert "internal error (TypeError: an internal bug)" in _one_error_line(plain)
    for args, env in (([ "--debug"], {}), ([], {"TTC_DEBUG": "1"})):
        loud = runner.invoke(app, ["solve", "Q", *SIM, *args], env=env)
        assert loud.exit_code == 1
        assert "Traceback" in loud.stderr and "an internal bug" in loud.stderr
        assert loud.stderr.strip().splitlines()[-1].startswith("error: internal error")


def test_tree_command_checks_its_output_before_reading(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    result = runner.invoke(app, ["tree", str(tmp_path / "missing.jsonl"), "-p", "x",
                                 "--out", str(folder)])
    assert result.exit_code == 2
    assert "--out" in _one_error_line(result) and "is a folder" in result.stderr
    assert list(folder.iterdir()) == []


def test_serve_refuses_a_bad_port_in_one_line():
    result = runner.invoke(app, ["serve", "backend=simulated", "--port", "70000"])
    assert result.exit_code == 2
    assert "--port must be in [0, 65535]; got 70000" in _one_error_line(result)
