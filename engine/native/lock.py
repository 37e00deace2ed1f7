"""A reentrant FIFO lock: the one lock that guards a native engine's state.

Contract: :class:`TicketLock` hands the lock out in the order threads asked for it, so
the step loop (which re-takes it right after every step) cannot starve a caller waiting
to pin or release: a caller waits at most one step. A thread that holds it may take it
again (reentrant). A waiter interrupted while queued gives its turn up.
Must NOT know: engines, handles, jobs, torch. It orders threads, nothing else.
"""

from __future__ import annotations

import threading

__all__ = ["TicketLock"]


class TicketLock:
    """A reentrant FIFO lock: threads get it in the order they asked.

    ``threading.Lock`` is not fair: the step loop, re-taking it right after a step,
    would starve callers waiting to pin or release. A waiter interrupted while queued
    gives its turn up (the ticket is skipped), so a Ctrl-C never wedges the engine.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition(threading.Lock())
        self._next = 0
        self._serving = 0
        self._skipped: set[int] = set()
        self._owner: int | None = None
        self._depth = 0

    def acquire(self) -> None:
        me = threading.get_ident()
        with self._cv:
            if self._owner == me:
                self._depth += 1
                return
            ticket = self._next
            self._next += 1
            try:
                while self._serving != ticket:
                    self._cv.wait()
            except BaseException:
                if self._serving == ticket:
                    self._advance()
                else:
                    self._skipped.add(ticket)
                raise
            self._owner, self._depth = me, 1

    def release(self) -> None:
        with self._cv:
            if self._owner != threading.get_ident():
                raise RuntimeError("TicketLock released by a thread that does not hold it")
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._advance()

    def _advance(self) -> None:
        self._serving += 1
        while self._serving in self._skipped:
            self._skipped.discard(self._serving)
            self._serving += 1
        self._cv.notify_all()

    def __enter__(self) -> "TicketLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
