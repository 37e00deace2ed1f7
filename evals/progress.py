"""The eval's progress display: a rich bar on a terminal, plain lines in a log.

Contract: :class:`EvalProgress` counts records as the runner accepts them (graded,
correct, generated tokens, budget-exhausted, failed) and shows

- on a terminal: one rich bar with labelled elapsed and remaining time, problems/s,
  running accuracy with its 95% Wilson interval, tokens/problem, the budget-exhausted
  and failed counts;
- elsewhere (output redirected to a cluster log): the same figures as one plain line
  every ``interval_s`` seconds while the run goes on, and one final line;
- nothing, when disabled.

Records of a resumed run's earlier sessions count towards the totals and accuracy but
not towards problems/s or the time left (they took no time in this run). A resumed run
with nothing left to do shows no bar (the summary line says it all).
Must NOT know: strategies, engines; it reads records.
"""

from __future__ import annotations

import enum
import sys
import threading
import time
from typing import Any, Callable, TextIO

from ttc.evals.metrics import is_failed
from ttc.evals.stats import wilson_interval


class Display(enum.Enum):
    BAR = "bar"        # a rich bar (a terminal)
    LINES = "lines"    # a plain line every few seconds (a log file)
    OFF = "off"


def choose_display(enabled: bool, stream: TextIO) -> Display:
    if not enabled:
        return Display.OFF
    return Display.BAR if stream.isatty() else Display.LINES


def _clock_text(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class EvalStats:
    """Running figures over the records of one eval (earlier sessions' included)."""

    def __init__(self, *, total: int, done: list[dict[str, Any]]) -> None:
        self.total = total
        self.resumed = len(done)
        self.new = 0
        self.graded = self.correct = self.tokens = self.exhausted = self.failed = 0
        for record in done:
            self._count(record)

    def _count(self, record: dict[str, Any]) -> None:
        if is_failed(record):
            self.failed += 1
            return
        self.graded += 1
        self.correct += bool(record.get("correct"))
        self.tokens += int((record.get("ledger") or {}).get("generated_tokens", 0))
        self.exhausted += bool(record.get("budget_exhausted"))

    def add(self, record: dict[str, Any]) -> None:
        self.new += 1
        self._count(record)

    @property
    def recorded(self) -> int:
        return self.graded + self.failed

    def figures(self, elapsed: float) -> str:
        """Everything but the count and times: rate, accuracy [95% CI], tokens, counts."""
        rate = self.new / elapsed if elapsed > 0 and self.new else None
        parts = [f"{rate:.2f} problems/s" if rate is not None else "– problems/s"]
        if self.graded:
            low, high = wilson_interval(self.correct, self.graded)
            parts.append(f"acc {self.correct / self.graded:.3f} [{low:.3f}, {high:.3f}]")
            parts.append(f"{self.tokens / self.graded:,.0f} tok/problem")
        else:
            parts.append("acc –")
            parts.append("– tok/problem")
        parts.append(f"budget exhausted {self.exhausted}")
        if self.failed:
            parts.append(f"failed {self.failed}")
        return " · ".join(parts)

    def remaining(self, elapsed: float) -> float | None:
        if not self.new or elapsed <= 0:
            return None
        return (self.total - self.recorded) * elapsed / self.new

    def line(self, elapsed: float) -> str:
        pct = 100.0 * self.recorded / self.total if self.total else 100.0
        return (f"eval {self.recorded}/{self.total} ({pct:.0f}%) · elapsed "
                f"{_clock_text(elapsed)} · left {_clock_text(self.remaining(elapsed))} · "
                f"{self.figures(elapsed)}")


class EvalProgress:
    """Shows an eval's progress (see the module docstring); ``advance`` per record."""

    def __init__(self, *, total: int, done: list[dict[str, Any]], display: Display,
                 stream: TextIO | None = None, interval_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic, ticker: bool = True) -> None:
        self.stats = EvalStats(total=total, done=done)
        self.display = display
        self._stream = stream if stream is not None else sys.stderr
        self._interval, self._clock = interval_s, clock
        self._start = clock()
        self._last_line = float("-inf")
        self._lines_at = -1                   # records counted at the last line
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._bar = None
        self._thread = None
        if self.stats.recorded >= total:
            self.display = Display.OFF        # a resumed run with nothing left to do
        if self.display is Display.BAR:
            self._start_bar()
        elif self.display is Display.LINES:
            self._print_line()
            if ticker and interval_s > 0:
                # A line every interval even while one slow problem runs.
                self._thread = threading.Thread(target=self._tick, name="ttc-progress",
                                                daemon=True)
                self._thread.start()

    def _start_bar(self) -> None:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        from rich.text import Text

        class TwoLines(Progress):
            """The bar and times on one line, the figures on the next (never cut)."""

            figures = ""

            def get_renderables(self):
                yield self.make_tasks_table(self.tasks)
                yield Text("  " + self.figures, overflow="fold")

        self._bar = TwoLines(TextColumn("eval"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("elapsed"), TimeElapsedColumn(),
                             TextColumn("left"), TimeRemainingColumn(),
                             console=Console(file=self._stream), transient=False)
        self._bar.figures = self.stats.figures(0.0)
        self._task = self._bar.add_task("eval", total=self.stats.total,
                                        completed=self.stats.recorded)
        self._bar.start()

    def _elapsed(self) -> float:
        return self._clock() - self._start

    def _print_line(self) -> None:
        self._last_line = self._clock()
        self._lines_at = self.stats.recorded
        self._stream.write(self.stats.line(self._elapsed()) + "\n")
        self._stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                if self._clock() - self._last_line >= self._interval:
                    self._print_line()

    def advance(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.stats.add(record)
            if self._bar is not None:
                self._bar.figures = self.stats.figures(self._elapsed())
                self._bar.update(self._task, advance=1)
            elif self.display is Display.LINES and \
                    self._clock() - self._last_line >= self._interval:
                self._print_line()

    def close(self) -> None:
        """Stop the display; the last state stays on screen (bar) or is one last line."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if self._bar is not None:
                self._bar.stop()
                self._bar = None
            elif self.display is Display.LINES:
                if self._lines_at != self.stats.recorded:   # not the line just printed
                    self._print_line()
                self.display = Display.OFF     # closing twice prints nothing more
