"""The step loop: one background thread that runs the scheduler's steps while there is work.

Contract: :class:`StepLoop` is the part of :class:`~ttc.engine.native.engine.NativeEngine`
that owns the loop thread. Callers queue work under the engine lock, then call
:meth:`StepLoop._notify`, which starts the thread on first use (or after it died) and wakes
it. :meth:`StepLoop._loop` is the whole loop::

    wait until the scheduler has work (or the engine is closed)
    apply the torch thread count (the tuner's next choice under ``threads=auto``), on
        this thread (torch's count is per OS thread)
    with the engine lock: scheduler.step(); if it raises, fail_all(err)
    the tuner records the step's time and work

The lock is held for one step at a time, so a caller's ``pin`` or ``release`` waits at most
one step. ``close`` fails pending work and stops the thread; loops still running at
interpreter exit are stopped first (a thread killed mid-step can abort the process).
Must NOT know: handles, jobs, prompts, what a step does (the scheduler decides).
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from typing import TYPE_CHECKING

import torch

from ttc.engine.native.threads import StepTuner, apply_threads, is_threads_setting

if TYPE_CHECKING:
    from ttc.engine.native.lock import TicketLock
    from ttc.engine.native.scheduler import Scheduler

__all__ = ["StepLoop"]


class StepLoop:
    """The loop thread of an engine (a mixin: the engine sets the attributes below)."""

    scheduler: Scheduler
    threads: int | None                  # torch threads for the model; None: torch's default
    tuner: StepTuner | None              # threads=auto: chooses the count from step times
    _lock: TicketLock                    # the engine's state lock, held for one step at a time
    _wake: threading.Condition           # work arrived, or the engine closed
    _thread: threading.Thread | None
    _closed: bool

    def _notify(self) -> None:
        with self._wake:
            if self._thread is None or not self._thread.is_alive():
                if self._closed:
                    raise RuntimeError("the engine is closed")
                self._thread = threading.Thread(target=self._loop, name="ttc-engine",
                                                daemon=True)
                self._thread.start()
                _register_loop(self)
            self._wake.notify_all()

    def _loop(self) -> None:
        applied = None
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._closed and not self.scheduler.has_work():
                        self._wake.wait()
                    if self._closed:
                        return
                tuner = self.tuner
                threads = tuner.next_threads() if tuner is not None else self.threads
                if threads is not None and threads != applied:
                    # NOTE: torch's thread count is per OS thread (engine/native/threads.py):
                    # it must be set here, on the thread that runs the model.
                    apply_threads(threads)
                    applied = threads
                with self._lock:
                    start = time.perf_counter()
                    try:
                        work = self.scheduler.step()
                    except Exception as err:  # noqa: BLE001  (a step broke: fail its work)
                        self.scheduler.fail_all(err)
                        continue
                if tuner is not None:
                    tuner.record(time.perf_counter() - start, work)

    def set_threads(self, n: int | str | None) -> None:
        """Run the model on ``n`` torch threads from the next step on; ``"auto"``: a fresh
        :class:`~ttc.engine.native.threads.StepTuner` chooses from the engine's own steps;
        None: torch's default."""
        if n is not None and not is_threads_setting(n):
            raise ValueError(f"set_threads needs a positive integer, 'auto' or None; "
                             f"got {n!r}.")
        self.tuner = StepTuner() if n == "auto" else None
        self.threads = None if n == "auto" else n

    @property
    def threads_in_use(self) -> int | None:
        """The count the step loop runs on now (the tuner's choice under ``auto``)."""
        return self.tuner.current if self.tuner is not None else self.threads

    def close(self) -> None:
        """Stop the step loop (pending work fails); the engine cannot be used after."""
        with self._lock:
            self.scheduler.fail_all(RuntimeError("the engine was closed"))
        self._stop_loop(timeout=10)

    def _stop_loop(self, *, timeout: float) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)


_LOOPS: "weakref.WeakSet[StepLoop]" = weakref.WeakSet()


def _register_loop(engine: StepLoop) -> None:
    """Stop step loops before the interpreter tears torch down (a loop thread killed
    mid-step at exit can abort the process)."""
    if not _LOOPS:
        atexit.register(_stop_all_loops)
    _LOOPS.add(engine)


def _stop_all_loops() -> None:
    for engine in list(_LOOPS):
        engine._stop_loop(timeout=2)
