"""How many torch intra-op threads the native engine uses: choose the count, apply it.

Contract: :func:`choose_threads` turns the ``backend.threads`` setting into a count. A
positive int is kept as given. ``"auto"`` starts from the CPUs this process may run on
(``os.sched_getaffinity``; ``os.cpu_count()`` where that does not exist), then runs a
short probe (:func:`probe_speedup`: alternating timings of a fixed bf16 MLP workload with
n threads and with 1; ~0.1 s on free cores, up to ~1 s on loaded ones, plus torch's
one-time oneDNN set-up if nothing ran before it): when n threads do not take clearly
less time than 1 (ratio above :data:`CLEARLY_FASTER`), some of those CPUs are held by
another process and the answer is 1. :func:`apply_threads` sets the count (``torch.set_num_threads``) and
must be called on the thread that runs the model.

Why: a decode step is ~1500 small ops, and with n threads every parallel op waits at a
barrier for all n. When another process holds one of the cores, each op waits for the
thread that lost its core: measured here (2 cores, one co-tenant ``while True`` loop),
a native decode of 8 branches x 16 tokens from a 256-token prompt took 3.4-4.3 s with 2
threads against 0.57 s idle, and 0.85 s with 1 thread under the same co-tenant.

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
Must NOT know: models, engines, strategies; it sees a setting and the machine.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Literal

ThreadsSetting = int | Literal["auto"]

# "auto" keeps n threads only when they take at most this share of the 1-thread time on
# the probe. Measured on the 2-core machine: 0.59-0.66 with no other load (an earlier
# 5 ms-per-timing version of the probe); this version: 1.0-1.9 with one co-tenant loop or
# with other tenants' load average >= 3, and 2 threads chosen at load 1.6. Single
# timings of a few ms went either way under a co-tenant (0.1-30x): they can fall between
# its time slices, hence ~20 ms timings and a median.
CLEARLY_FASTER = 0.85
PROBE_PAIRS = 5           # (1-thread, n-thread) timings, alternating; the median decides
PROBE_ROWS_PER_THREAD = 16
PROBE_REPS = 80           # MLP passes per timing, divided by n (~20 ms on 1 thread here)


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


def choose_threads(setting: ThreadsSetting, *,
                   probe: Callable[[int], float] | None = None) -> int:
    """The intra-op thread count for ``setting`` (see the module docstring).

    ``probe(n)`` returns the time with n threads over the time with 1 thread on the same
    work (default :func:`probe_speedup`); tests inject one. It is called only for
    ``"auto"`` with more than one CPU available.
    """
    setting = check_threads_setting(setting)
    if setting != "auto":
        return setting
    n = available_cpus()
    if n == 1:
        return 1
    ratio = (probe or probe_speedup)(n)
    return n if ratio <= CLEARLY_FASTER else 1


def apply_threads(n: int) -> None:
    """Run this OS thread's torch ops on ``n`` intra-op threads.

    Call it on the thread that runs the model, before its first op: the count is per
    thread (module docstring), so a call made elsewhere does not reliably reach it.
    """
    import torch  # noqa: PLC0415  (importing this module must stay light)

    if n == "auto" or not is_threads_setting(n):
        raise ValueError(f"apply_threads needs a positive thread count (resolve 'auto' with "
                         f"choose_threads first); got {n!r}.")
    torch.set_num_threads(n)


def probe_speedup(n: int) -> float:
    """Median of (seconds with ``n`` threads) / (seconds with 1) over up to :data:`PROBE_PAIRS`
    alternating pairs; it stops once a majority of pairs falls on one side of
    :data:`CLEARLY_FASTER`.

    The work is a small bf16 MLP (576 -> 1536 -> 576, SmolLM2's widths) on ``16 * n``
    rows, so that free cores give a clear speed-up at any n, repeated for ~20 ms on one
    thread (several scheduler time slices: a timing of a few ms can fall between a
    co-tenant's slices and look idle). Each timing follows one untimed pass (a
    thread-count change rebuilds oneDNN's kernels). The n-thread timing stops as soon as
    it has taken as long as the 1-thread one: that pair's ratio is then a lower bound
    (>= 1), which decides the same way and keeps the probe short on contended cores.
    Runs on the calling thread and restores its thread count afterwards.
    """
    import torch  # noqa: PLC0415
    import torch.nn.functional as F  # noqa: PLC0415

    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"probe_speedup compares n >= 2 threads with 1; got n={n!r}.")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(PROBE_ROWS_PER_THREAD * n, 576, generator=g).to(torch.bfloat16)
    w_up = torch.randn(1536, 576, generator=g).to(torch.bfloat16)
    w_down = torch.randn(576, 1536, generator=g).to(torch.bfloat16)
    reps = max(4, PROBE_REPS // n)          # ~the same 1-thread time at any n

    def seconds(threads: int, *, stop_after: float = float("inf")) -> float:
        torch.set_num_threads(threads)
        F.linear(F.silu(F.linear(x, w_up)), w_down)            # untimed warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            F.linear(F.silu(F.linear(x, w_up)), w_down)
            if time.perf_counter() - t0 > stop_after:
                break
        return time.perf_counter() - t0

    before = torch.get_num_threads()
    ratios: list[float] = []
    try:
        with torch.inference_mode():
            for _ in range(PROBE_PAIRS):
                one = seconds(1)
                ratios.append(seconds(n, stop_after=one) / one)
                fast = sum(r <= CLEARLY_FASTER for r in ratios)
                if max(fast, len(ratios) - fast) > PROBE_PAIRS // 2:
                    break           # a majority already fixes the median's side
    finally:
        torch.set_num_threads(before)
    return statistics.median(ratios)
