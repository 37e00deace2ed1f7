"""How many torch intra-op threads the native engine uses: the setting, the tuner, applying it.

Contract: ``backend.threads`` is a positive int (kept as given) or ``"auto"``. For
``"auto"`` the engine's step loop asks a :class:`StepTuner` before every step which count
to run on, and tells it how long the step took and how much work it did. The tuner
chooses from the engine's OWN steps, not from a one-off probe: a trial runs a few steps
at each candidate count (the CPUs of this process's affinity mask, 1, and half of them
when there are 4 or more), interleaved (A, B, A, B, so that a change in other tenants'
load hits both), each timing after one untimed step (a thread-count change rebuilds
oneDNN's kernels); a count :data:`DROP` times slower than another stops being measured
(beside a co-tenant its steps are the costly ones); the count with the least time per
unit of work wins (ties within :data:`TIE` keep the current count; a count below all the
CPUs must be :data:`FEWER` faster than them). Then it holds for :data:`HOLD_STEPS` steps and
trials again; a held count whose steps turn :data:`SLOWDOWN` times slower than at its
trial (a co-tenant arrived) starts a trial at once. A trial whose steps' work changes by
more than a third (a call started or ended) starts over: costs per token of unlike
batches do not compare. :func:`apply_threads` sets a count
and must be called on the thread that runs the model.

Why: a decode step is hundreds of ops, and with n threads every parallel op waits at a
barrier for all n. When another process holds one of the cores, each op waits for the
thread that lost its core: measured here (2 cores, one co-tenant ``while True`` loop),
a native decode of 8 branches x 16 tokens from a 256-token prompt took 3.4-4.3 s with 2
threads against 0.57 s idle, and 0.85 s with 1 thread under the same co-tenant. The
earlier one-off probe (a synthetic MLP timed once at start) chose 1 thread in one run and
2 in the next for the same shape and lost to the fixed setting in 3 of 4 shapes: a
co-tenant that comes later, or a workload unlike the probe's, fooled it.

Scope of the setting (measured on torch 2.13 CPU, libgomp + MKL + oneDNN; the
experiment is ``scripts/torch_threads_scope.py``): the count is per OS thread, not
per process. ``torch.set_num_threads`` sets the calling thread's OpenMP count (used by
oneDNN, i.e. the bf16 linears, and by ATen's ``parallel_for``) and its MKL thread-local
count, and records the value process-wide; another thread adopts that recorded value only
when torch first initialises threading in it (its first ``torch.get_num_threads()`` or
ATen ``parallel_for``). Before that, a new thread's oneDNN/MKL matmuls run on every core:
after ``set_num_threads(1)`` on the main thread, a fresh thread's bf16 ``F.linear`` kept
2 cores busy; a thread that had already initialised keeps its own count when another
thread changes it later. Hence: call :func:`apply_threads` first thing in the thread that
runs the model (the engine's step loop), not once in ``from_config``.
Must NOT know: models, engines, strategies; it sees a setting, step times and the machine.
"""

from __future__ import annotations

import os
import statistics
from collections import deque
from typing import Literal

ThreadsSetting = int | Literal["auto"]

TIE = 0.05            # a candidate must be this much faster (per unit of work) to switch
FEWER = 0.15          # ... and a count below all CPUs this much more (see StepTuner._decide)
HOLD_STEPS = 400      # steps between trials
SLOWDOWN = 1.6        # a held count this much slower than at its trial: trial at once
TIMED_PER_TURN = 2    # timed steps per candidate per turn (after one untimed step)
TURNS = 2             # turns through the candidates per trial (A, B, A, B)
DROP = 1.5            # a count this much slower than another in a trial stops being measured


def is_threads_setting(value: object) -> bool:
    """A positive int (not a bool) or the string ``"auto"``."""
    if isinstance(value, str):
        return value == "auto"
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_threads_setting(value: object, *, setting: str = "backend.threads") -> ThreadsSetting:
    """``value`` if it is a positive int or ``"auto"``; else a one-line ``ValueError``."""
    if not is_threads_setting(value):
        raise ValueError(f"{setting} must be a positive integer or 'auto'; got {value!r}.")
    return value  # type: ignore[return-value]


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:          # no sched_getaffinity (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def apply_threads(n: int) -> None:
    """Run this OS thread's torch ops on ``n`` intra-op threads.

    Call it on the thread that runs the model, before its first op: the count is per
    thread (module docstring), so a call made elsewhere does not reliably reach it.
    """
    import torch  # noqa: PLC0415  (importing this module must stay light)

    if n == "auto" or not is_threads_setting(n):
        raise ValueError(f"apply_threads needs a positive thread count ('auto' is a "
                         f"StepTuner's job); got {n!r}.")
    torch.set_num_threads(n)


def candidates(cpus: int) -> list[int]:
    """Thread counts a trial compares: all CPUs, 1, and half of them from 4 CPUs on."""
    out = [cpus]
    if cpus >= 4:
        out.append(cpus // 2)
    if cpus > 1:
        out.append(1)
    return out


class StepTuner:
    """Chooses the step loop's thread count from the loop's own step times (see the module
    docstring). Not thread-safe: the step loop alone calls it.

    ``next_threads()`` before a step, ``record(seconds, work)`` after it (``work``: tokens
    the step ran through the model; steps with no work are not recorded).
    """

    def __init__(self, cpus: int | None = None, *, hold_steps: int = HOLD_STEPS) -> None:
        self.candidates = candidates(cpus or available_cpus())
        self.hold_steps = hold_steps
        self.current = self.candidates[0]
        self.trials = 0                  # trials completed
        # (chosen, cost per count) of the latest trials (bounded: one every HOLD_STEPS steps)
        self.history: deque[tuple[int, dict[int, float]]] = deque(maxlen=64)
        self._plan: list[tuple[int, bool]] = []    # (threads, timed) for the trial's steps
        self._costs: dict[int, list[float]] = {}
        self._held = 0
        self._baseline: float | None = None        # cost per work of the held count
        self._slow = 0
        self._pending: tuple[int, bool] | None = None
        self._trial_work: int | None = None
        self._restarts = 0
        self._start_trial()

    def _start_trial(self) -> None:
        if len(self.candidates) == 1:
            self._plan = []
            return
        order = [self.current] + [c for c in self.candidates if c != self.current]
        self._plan = [(c, timed) for _ in range(TURNS) for c in order
                      for timed in [False] + [True] * TIMED_PER_TURN]
        self._costs = {c: [] for c in self.candidates}
        self._trial_work: int | None = None

    @property
    def in_trial(self) -> bool:
        return bool(self._plan)

    def next_threads(self) -> int:
        if self._plan:
            self._pending = self._plan[0]
            return self._pending[0]
        self._pending = None
        return self.current

    def record(self, seconds: float, work: int) -> None:
        if work <= 0:
            return                        # nothing ran: the plan waits for a real step
        cost = seconds / work
        if self._pending is not None and self._plan:
            if self._trial_work is None:
                self._trial_work = work
            elif not 0.75 <= work / self._trial_work <= 1.33 and self._restarts < 3:
                # the batch changed under the trial (a call started or ended): costs per
                # token of unlike batches do not compare, so the trial starts over (three
                # times at most: a server whose batch never settles still gets an answer)
                self._start_trial()
                self._trial_work = work
                self._restarts += 1
            threads, timed = self._plan.pop(0)
            if timed:
                self._costs[threads].append(cost)
                self._drop_losers()
            if not self._plan:
                self._decide()
            return
        self._held += 1
        if self._baseline is not None and cost > SLOWDOWN * self._baseline:
            self._slow += 1
        else:
            self._slow = 0
        if self._held >= self.hold_steps or self._slow >= 3:
            self._start_trial()

    def _drop_losers(self) -> None:
        """Stop measuring a count already :data:`DROP` times slower than another (beside a
        co-tenant, each n-thread step is costly), and end the trial when one is left."""
        best = {c: min(v) for c, v in self._costs.items() if v}
        if len(best) < 2:
            return
        floor = min(best.values())
        losers = {c for c, v in best.items() if v > DROP * floor}
        if losers:
            self._plan = [(c, t) for c, t in self._plan if c not in losers]
        if len({c for c, _ in self._plan}) <= 1 and all(
                self._costs[c] for c in {c for c, _ in self._plan}):
            self._plan = []

    def _decide(self) -> None:
        self._restarts = 0
        med = {c: statistics.median(v) for c, v in self._costs.items() if v}
        # fewer threads than the machine has must win clearly (FEWER): on free cores the
        # trial's few steps can favour one thread by chance, and that costs ~1.3x on every
        # step until the next trial; beside a co-tenant all threads lose by far more
        most = max(self.candidates)
        score = {c: m * (1.0 if c == most else 1.0 + FEWER) for c, m in med.items()}
        best = min(score, key=score.get)
        if best != self.current and score[best] < (1 - TIE) * score.get(self.current,
                                                                        float("inf")):
            self.current = best
        self._baseline = med.get(self.current)
        self.trials += 1
        self.history.append((self.current, med))
        self._held = self._slow = 0
