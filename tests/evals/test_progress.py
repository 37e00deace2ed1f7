"""The eval's progress: labelled figures, plain lines when not a terminal, no double bar."""

from __future__ import annotations

import io
import re

from ttc.evals.cli import run_eval_command
from ttc.evals.progress import Display, EvalProgress, EvalStats, choose_display
from ttc.evals.stats import wilson_interval


def rec(i: int, *, correct: bool = True, tokens: int = 100, cut: bool = False,
        failed: bool = False) -> dict:
    if failed:
        return {"id": str(i), "correct": None, "error": "ValueError: x", "answer": None}
    return {"id": str(i), "correct": correct, "ledger": {"generated_tokens": tokens},
            "budget_exhausted": cut}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_line_has_every_labelled_figure():
    stats = EvalStats(total=10, done=[rec(0), rec(1, correct=False, cut=True)])
    stats.add(rec(2, tokens=400))
    stats.add(rec(3, failed=True))
    line = stats.line(elapsed=4.0)
    low, high = wilson_interval(2, 3)
    assert line == (f"eval 4/10 (40%) · elapsed 0:00:04 · left 0:00:12 · 0.50 problems/s · "
                    f"acc 0.667 [{low:.3f}, {high:.3f}] · 200 tok/problem · "
                    f"budget exhausted 1 · failed 1")


def test_not_a_terminal_prints_a_plain_line_every_interval_and_one_at_the_end():
    out, clock = io.StringIO(), Clock()
    progress = EvalProgress(total=6, done=[], display=choose_display(True, out), stream=out,
                            interval_s=5.0, clock=clock, ticker=False)
    assert progress.display is Display.LINES        # StringIO is not a terminal
    for i in range(6):
        clock.now += 2.0
        progress.advance(rec(i))
    progress.close()
    progress.close()                                 # closing twice prints nothing more
    lines = out.getvalue().splitlines()
    # at start, after 6 s (3 records) and 12 s (6 records: the last line, not repeated)
    assert [re.match(r"eval (\d+)/6", ln).group(1) for ln in lines] == ["0", "3", "6"]
    assert "\x1b" not in out.getvalue()              # no terminal control codes in a log
    assert lines[-1].startswith("eval 6/6 (100%) · elapsed 0:00:12 · left 0:00:00 · "
                                "0.50 problems/s")


def test_the_ticker_prints_while_a_slow_problem_runs():
    out = io.StringIO()
    progress = EvalProgress(total=2, done=[], display=Display.LINES, stream=out,
                            interval_s=0.01)
    # no record arrives; the ticker thread still writes lines until closed
    import time

    deadline = time.monotonic() + 10
    while out.getvalue().count("\n") < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    progress.close()
    assert out.getvalue().count("eval 0/2") >= 3


def test_a_resumed_run_with_nothing_left_prints_no_bar_and_a_partial_one_counts_only_new():
    out = io.StringIO()
    done = [rec(i) for i in range(4)]
    EvalProgress(total=4, done=done, display=Display.LINES, stream=out, ticker=False).close()
    assert out.getvalue() == ""
    out, clock = io.StringIO(), Clock()
    progress = EvalProgress(total=6, done=done, display=Display.LINES, stream=out,
                            clock=clock, ticker=False)
    clock.now += 10.0
    progress.advance(rec(4))
    progress.close()
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("eval 5/6 (83%) · elapsed 0:00:10 · left 0:00:10 · 0.10 problems/s")


def test_a_terminal_gets_one_bar_with_labels(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    progress = EvalProgress(total=3, done=[rec(0)], display=choose_display(True, out),
                            stream=out, ticker=False)
    assert progress.display is Display.BAR
    progress.advance(rec(1, cut=True))
    progress.close()
    text = " ".join(out.getvalue().split())
    assert "elapsed" in text and "left" in text and "problems/s" in text
    assert "budget exhausted 1" in text and "tok/problem" in text
    assert choose_display(False, out) is Display.OFF


def test_eval_into_a_log_writes_progress_lines(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["dataset=sim_mixed", "strategy=best_of_n", "limit=4", f"output={out}"]
    run_eval_command(args, echo=lambda _m: None)
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("eval 0/4 (0%) · elapsed 0:00:00")
    assert err.splitlines()[-1].startswith("eval 4/4 (100%)")
    run_eval_command(args, echo=lambda _m: None)            # resumed, nothing left to do
    assert capsys.readouterr().err == ""
