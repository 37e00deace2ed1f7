"""Is torch's intra-op thread count per OS thread or per process? (engine/native/threads.py)

Run: ``.venv/bin/python scripts/torch_threads_scope.py`` on a machine with >= 2 cores.
For each case it prints ``torch.get_num_threads()`` on the calling thread and how many OS
threads of this process burned CPU while that thread ran ~1 s of bf16 ``F.linear`` and of
fp32 matmuls (from /proc/self/task/*/stat, so Linux only): the threads its ops really ran
on. Result on torch 2.13.0+cpu (libgomp, MKL, oneDNN), 2 cores:

    main after set_num_threads(1)                     get=1 busy: bf16=1 fp32=1
    new thread, no torch query before its ops         get=1 busy: bf16=2 fp32=2
    new thread, get_num_threads() before its ops      get=1 busy: bf16=1 fp32=1
    worker after its own set_num_threads(2)           get=2 busy: bf16=2 fp32=2
    main, after the worker set 2                      get=1 busy: bf16=1 fp32=1

So the count is per thread; a new thread adopts the last value set anywhere only once
torch initialises threading in it, and until then its matmuls use every core.
Must NOT know: ttc (plain torch).
"""

from __future__ import annotations

import os
import threading
import time

import torch
import torch.nn.functional as F


def _task_ticks() -> dict[str, int]:
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[tid] = int(fields[11]) + int(fields[12])      # utime + stime, clock ticks
    return out


def _busy_threads(fn) -> int:
    """OS threads of this process busy >10% of ~1 s while the calling thread runs ``fn``."""
    for _ in range(3):
        fn()
    before, t0 = _task_ticks(), time.perf_counter()
    while time.perf_counter() - t0 < 1.0:
        fn()
    after, hz = _task_ticks(), os.sysconf("SC_CLK_TCK")
    return sum((after[t] - before.get(t, 0)) / hz > 0.1 for t in after)


def main() -> None:
    x = torch.randn(64, 576).bfloat16()
    w = torch.randn(1536, 576).bfloat16()
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)

    def report(tag: str, *, query_first: bool = False) -> None:
        if query_first:
            torch.get_num_threads()
        bf16 = _busy_threads(lambda: F.linear(x, w))
        fp32 = _busy_threads(lambda: a @ b)
        print(f"{tag:50s} get={torch.get_num_threads()} busy: bf16={bf16} fp32={fp32}")

    def in_thread(fn) -> None:
        t = threading.Thread(target=fn)
        t.start()
        t.join()

    print(f"torch {torch.__version__}, {len(os.sched_getaffinity(0))} CPUs")
    torch.set_num_threads(1)
    report("main after set_num_threads(1)")
    in_thread(lambda: report("new thread, no torch query before its ops"))
    in_thread(lambda: report("new thread, get_num_threads() before its ops", query_first=True))
    ready, go = threading.Event(), threading.Event()

    def worker() -> None:
        torch.set_num_threads(2)
        report("worker after its own set_num_threads(2)")
        ready.set()
        go.wait()

    t = threading.Thread(target=worker)
    t.start()
    ready.wait()
    report("main, after the worker set 2")
    go.set()
    t.join()


if __name__ == "__main__":
    main()
