"""ttc eval: resumable, crash-safe, refuses mixed configs, validates before writing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ttc.cli import app
from ttc.evals.cli import run_eval_command
from ttc.evals.runner import read_results
from ttc.registry import ConfigError

BASE = ["dataset=sim_mixed", "strategy=beam", "budget=1024", "limit=24", "progress=false"]


def _stable(records):
    """Records without wall-clock fields, keyed by problem id."""
    out = {}
    for r in records:
        r = json.loads(json.dumps(r))
        r.pop("wall_seconds")
        r.pop("index")
        r["ledger"].pop("wall_seconds")
        out[r["id"]] = r
    return out


def _quiet(_msg):
    pass


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    run_eval_command(BASE + [f"output={out}"], echo=_quiet)
    return _stable(read_results(out / "results.jsonl"))


def test_reference_run_writes_config_results_and_summary(reference, tmp_path):
    out = tmp_path / "run"
    summary = run_eval_command(BASE + [f"output={out}", "limit=5"], echo=_quiet)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["run"]["strategy"]["name"] == "beam"
    assert cfg["run"]["budget"]["max_generated_tokens"] == 1024
    assert cfg["dataset"]["name"] == "sim_mixed" and cfg["seed"] == 0
    assert summary["problems"] == 5
    assert json.loads((out / "summary.json").read_text())["problems"] == 5
    assert len(reference) == 24


def test_injected_crash_then_resume_equals_uninterrupted(reference, tmp_path):
    out = tmp_path / "run"
    seen = []

    def crash_after_seven(record):
        seen.append(record["id"])
        if len(seen) == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_eval_command(BASE + [f"output={out}"], echo=_quiet, on_record=crash_after_seven)
    assert len(read_results(out / "results.jsonl")) == 7
    rerun_ids = []
    run_eval_command(BASE + [f"output={out}"], echo=_quiet,
                     on_record=lambda r: rerun_ids.append(r["id"]))
    assert len(rerun_ids) == 24 - 7 and not set(rerun_ids) & set(seen)
    assert _stable(read_results(out / "results.jsonl")) == reference


def test_sigkill_at_a_random_point_then_resume_equals_uninterrupted(reference, tmp_path):
    out = tmp_path / "run"
    results = out / "results.jsonl"
    rng = random.Random(os.getpid())
    stop_after = rng.randint(1, 15)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # A slower strategy setting so the kill lands mid-run, not after it.
    proc = subprocess.Popen([sys.executable, "-m", "ttc.cli", "eval", *BASE,
                             "limit=400", f"output={out}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if results.exists() and results.read_bytes().count(b"\n") >= stop_after:
            time.sleep(rng.random() * 0.01)
            break
        time.sleep(0.002)
    assert proc.poll() is None, proc.stderr.read().decode()[-500:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    data = results.read_bytes()
    killed_lines = data.count(b"\n")
    assert 1 <= killed_lines < 400
    # Finish the first 24 problems in-process and compare with the uninterrupted run.
    # (limit differs from the killed run's: limit is not part of a run's identity.)
    run_eval_command(BASE + [f"output={out}"], echo=_quiet)
    done = _stable(read_results(results))
    assert all(line.endswith(b"}") for line in results.read_bytes().splitlines())
    assert {k: v for k, v in done.items() if k in reference} == reference


def test_partial_last_line_is_cut_and_rerun(reference, tmp_path):
    out = tmp_path / "run"
    run_eval_command(BASE + [f"output={out}", "limit=4"], echo=_quiet)
    results = out / "results.jsonl"
    with open(results, "ab") as fh:
        fh.write(b'{"id": "sim_mixed-0-4", "ans')      # a write cut by a kill
    run_eval_command(BASE + [f"output={out}", "limit=6"], echo=_quiet)
    records = read_results(results)
    assert [r["id"] for r in records] == [f"sim_mixed-0-{i}" for i in range(6)]
    assert _stable(records) == {k: reference[k] for k in _stable(records)}


def test_malformed_complete_line_is_refused_with_file_and_line(tmp_path):
    out = tmp_path / "run"
    run_eval_command(BASE + [f"output={out}", "limit=3"], echo=_quiet)
    results = out / "results.jsonl"
    lines = results.read_bytes().splitlines(keepends=True)
    lines[1] = b'{"id": broken\n'
    results.write_bytes(b"".join(lines))
    before = results.read_bytes()
    with pytest.raises(ConfigError, match=r"results.jsonl:2: malformed results line"):
        run_eval_command(BASE + [f"output={out}", "limit=5"], echo=_quiet)
    assert results.read_bytes() == before


def test_resuming_with_a_different_config_is_refused_and_nothing_is_lost(tmp_path):
    out = tmp_path / "run"
    run_eval_command(BASE + [f"output={out}", "limit=3"], echo=_quiet)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    for change in ("budget=2048", "strategy=best_of_n", "seed=1", "dataset=sim_hard",
                   "verifier.auroc=0.7"):
        with pytest.raises(ConfigError, match="different config"):
            run_eval_command(BASE + [f"output={out}", change], echo=_quiet)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_concurrent_workers_give_the_same_records(reference, tmp_path):
    out = tmp_path / "run"
    run_eval_command(BASE + [f"output={out}", "concurrency=3"], echo=_quiet)
    records = read_results(out / "results.jsonl")
    assert _stable(records) == reference


def test_cli_errors_are_one_line_and_create_nothing(tmp_path):
    runner = CliRunner()
    cases = {
        "dataset=nope": "unknown dataset 'nope'",
        "dataset=file dataset.path=" + str(tmp_path / "missing.jsonl"): "does not exist",
        "limit=0": "limit",
        "strategy=nope": "unknown strategy 'nope'",
    }
    for args, message in cases.items():
        out = tmp_path / f"out-{abs(hash(args))}"
        res = runner.invoke(app, ["eval", *args.split(), f"output={out}", "progress=false"])
        assert res.exit_code == 2, res.output
        assert message in res.output and res.output.count("\n") == 1
        assert not out.exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    res = runner.invoke(app, ["eval", "dataset=file", f"dataset.path={empty}",
                              f"output={tmp_path / 'o'}"])
    assert res.exit_code == 2 and "has no problems" in res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_unwritable_output_folder_is_a_clear_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="is not writable"):
            run_eval_command(BASE + [f"output={locked / 'run'}"], echo=_quiet)
    finally:
        locked.chmod(0o700)


def test_output_that_is_a_file_is_refused(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    with pytest.raises(ConfigError, match="not a folder"):
        run_eval_command(BASE + [f"output={target}"], echo=_quiet)
    assert target.read_text() == "keep me"


def test_output_below_a_file_is_not_writable(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    with pytest.raises(ConfigError, match="is not writable"):
        run_eval_command(BASE + [f"output={target / 'run'}"], echo=_quiet)
    assert target.read_text() == "keep me"


def test_shared_engine_runs_every_problem_through_one_engine(tmp_path, monkeypatch):
    import ttc.evals.runner as runner
    from ttc.engine.backends.simulated import SimulatedGenerator
    from ttc.sharing import Serialized

    built = []
    real = runner._shared_engine

    def shared(config):
        gen, ver = real(config)
        built.append(gen)
        return gen, ver

    monkeypatch.setattr(runner, "_shared_engine", shared)
    out = tmp_path / "run"
    run_eval_command(
        ["dataset=sim_mixed", "strategy=best_of_n", "budget.max_generated_tokens=null",
         "limit=8", "progress=false", "concurrency=4", "share_engine=true",
         f"output={out}"], echo=_quiet)
    records = read_results(out / "results.jsonl")
    assert sorted(r["id"] for r in records) == sorted(f"sim_mixed-0-{i}" for i in range(8))
    assert len(built) == 1
    # the simulator is not thread-safe: the shared engine serialises its calls
    assert isinstance(built[0], Serialized) and isinstance(built[0].inner, SimulatedGenerator)
    assert all(r["ledger"]["generated_tokens"] > 0 for r in records)


# -- failures: failed records, faults that stop a run, summaries that tell the truth ---------
def _fail_on(monkeypatch, bad_ids, exc):
    """Make Pipeline.solve raise ``exc`` for the problems in ``bad_ids``."""
    import ttc.pipeline

    real = ttc.pipeline.Pipeline.solve

    def solve(self, question, **kw):
        if getattr(question, "id", None) in bad_ids:
            raise exc
        return real(self, question, **kw)

    monkeypatch.setattr(ttc.pipeline.Pipeline, "solve", solve)


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def test_a_failing_problem_is_a_failed_record_and_the_run_goes_on(reference, tmp_path,
                                                                  monkeypatch):
    out = tmp_path / "run"
    bad = "sim_mixed-0-2"
    _fail_on(monkeypatch, {bad}, ValueError("the prompt has 900 tokens; the model's "
                                            "context is 512 tokens.\nsecond line"))
    echoed = []
    run_eval_command(BASE + [f"output={out}", "limit=5"], echo=echoed.append)
    records = read_results(out / "results.jsonl")
    assert [r["id"] for r in records] == [f"sim_mixed-0-{i}" for i in range(5)]
    failed = records[2]
    assert failed["error"] == ("ValueError: the prompt has 900 tokens; the model's context "
                               "is 512 tokens.")
    assert failed["error_type"] == "ValueError"
    assert failed["answer"] is None and failed["correct"] is None and "ledger" not in failed
    assert any(line.startswith(f"problem {bad} failed: ValueError") for line in echoed)
    ok = _stable([r for r in records if r["id"] != bad])
    assert ok == {k: reference[k] for k in ok}                  # the others are untouched
    summary = _summary(out)
    assert (summary["records"], summary["problems"], summary["failed"]) == (5, 4, 1)
    assert summary["failed_ids"] == [bad]
    assert summary["accuracy"] == sum(r["correct"] for r in ok.values()) / 4
    assert "1 failed (not scored; retry_failed=true reruns them)" in echoed[-1]

    monkeypatch.undo()
    rerun = []
    run_eval_command(BASE + [f"output={out}", "limit=5"], echo=_quiet, on_record=rerun.append)
    assert rerun == []                                          # skipped unless asked
    run_eval_command(BASE + [f"output={out}", "limit=5", "retry_failed=true"], echo=_quiet,
                     on_record=rerun.append)
    assert [r["id"] for r in rerun] == [bad]
    records = read_results(out / "results.jsonl")
    assert sorted(r["id"] for r in records) == [f"sim_mixed-0-{i}" for i in range(5)]
    assert _stable(records) == {k: reference[k] for k in _stable(records)}
    assert (_summary(out)["records"], _summary(out)["failed"]) == (5, 0)


def test_a_fault_of_the_machine_or_network_stops_the_run_and_the_rerun_resumes(
        reference, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _fail_on(monkeypatch, {"sim_mixed-0-3"}, ConnectionError("the server went away"))
    with pytest.raises(ConnectionError) as info:
        run_eval_command(BASE + [f"output={out}", "limit=6"], echo=_quiet)
    assert info.value.__notes__ == [f"3 of 6 problems are recorded in {out / 'results.jsonl'}; "
                                    f"rerun the same command to resume."]
    records = read_results(out / "results.jsonl")
    assert [r["id"] for r in records] == [f"sim_mixed-0-{i}" for i in range(3)]   # no failed
    assert _summary(out)["records"] == 3                        # the summary matches the file
    monkeypatch.undo()
    rerun = []
    run_eval_command(BASE + [f"output={out}", "limit=6"], echo=_quiet, on_record=rerun.append)
    assert [r["id"] for r in rerun] == [f"sim_mixed-0-{i}" for i in range(3, 6)]
    assert _stable(read_results(out / "results.jsonl")) == {
        k: reference[k] for k in _stable(read_results(out / "results.jsonl"))}


def test_summary_describes_every_record_in_the_file_whatever_the_limit(tmp_path):
    out = tmp_path / "run"
    run_eval_command(BASE + [f"output={out}", "limit=6"], echo=_quiet)
    echoed = []
    summary = run_eval_command(BASE + [f"output={out}", "limit=3"], echo=echoed.append)
    assert summary == _summary(out)
    assert summary["records"] == summary["problems"] == 6
    assert summary["plan"] == {"problems": 3, "recorded": 3, "outside": 3}
    assert "over 6 problems" in echoed[-1] and "3 problems beyond this limit" in echoed[-1]


def test_an_interrupted_run_leaves_a_summary_of_exactly_the_records_written(tmp_path):
    out = tmp_path / "run"
    run_eval_command(BASE + [f"output={out}", "limit=2"], echo=_quiet)
    assert _summary(out)["records"] == 2
    seen = []

    def interrupt_after_three(record):
        seen.append(record)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_eval_command(BASE + [f"output={out}", "limit=8"], echo=_quiet,
                         on_record=interrupt_after_three)
    assert _summary(out)["records"] == len(read_results(out / "results.jsonl")) == 5


def test_server_unavailable_through_eval_is_one_line_and_keeps_the_folder_resumable(tmp_path):
    # port 9 (discard): nothing listens there, and unlike a closed ephemeral port no other
    # test's server can take it meanwhile
    url = "http://127.0.0.1:9/v1"
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["eval", "dataset=sim_mixed", "limit=3", "progress=false",
                                      "backend=http", f"backend.base_url={url}",
                                      "backend.max_retries=0", "verifier=simulated",
                                      f"output={out}"])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert url in lines[0] and "backend.base_url" in lines[0]
    assert lines[0].endswith(f"0 of 3 problems are recorded in {out / 'results.jsonl'}; "
                             f"rerun the same command to resume.")
    # no failed record for a fault of the server: the rerun runs every problem
    assert (out / "results.jsonl").read_text() == ""
    assert not (out / "summary.json").exists()


def test_worker_threads_build_their_pipelines_one_at_a_time(tmp_path, monkeypatch):
    """Builds import transformers and load models; concurrent builds failed at random
    (ImportError: cannot import name 'AutoConfig'), so workers take turns."""
    import threading as _threading

    from ttc.pipeline import Pipeline

    real = Pipeline.from_config.__func__
    inside, most, lock = [0], [0], _threading.Lock()

    def counting(cls, config, **kw):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.02)
        try:
            return real(cls, config, **kw)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(Pipeline, "from_config", classmethod(counting))
    run_eval_command(["dataset=sim_mixed", "strategy=best_of_n", "limit=8", "progress=false",
                      "concurrency=4", "share_engine=false", f"output={tmp_path / 'r'}"],
                     echo=_quiet)
    assert len(read_results(tmp_path / "r" / "results.jsonl")) == 8
    assert most[0] == 1
