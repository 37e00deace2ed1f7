"""Where a decode step's time goes: cheap phase clocks, a one-step op census, machine limits.

Contract: :class:`StepClock` is always on (a few ``perf_counter`` calls per step): the
scheduler adds the seconds of each phase of a step — ``prefill`` (extend forwards),
``forward`` (the decode forward), ``logits`` (the LM head), ``sampling`` (drawing the
tokens) — and the step's total; ``bookkeeping`` is the rest (pages, groups, stops,
rules, streams, callbacks). :func:`census` runs a callable under ``torch.profiler`` and
splits the CPU self-time of the model forward's ops (the ``ttc::forward`` range) into
``linear`` (the linear layers' matmuls), ``attention`` (the ``ttc::attention`` ranges)
and ``rest``, with everything outside the forward (LM head, sampling) apart, and counts
the torch ops dispatched at top level (views included), in all and in the forward.
:func:`machine_limits` measures this machine's large-matmul FLOP/s in a dtype and its
streaming-read GB/s, on the calling thread's torch thread count; :func:`decode_limit`
turns them into the shortest possible decode step for a shape (roofline: the larger of
compute time and memory time).
Must NOT know: handles, strategies, rewards.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

PHASES = ("prefill", "forward", "logits", "sampling")
LINEAR_OPS = ("mkldnn::_linear_pointwise", "aten::mm", "aten::addmm", "aten::linear",
              "aten::matmul")
ATTENTION_RANGE = "ttc::attention"
FORWARD_RANGE = "ttc::forward"


@dataclass
class StepClock:
    """Seconds per phase summed over steps (see the module docstring)."""

    steps: int = 0
    decode_steps: int = 0
    total: float = 0.0
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    # the latest steps with a decode (bounded: a server's loop runs for days)
    decode_step_times: deque[float] = field(default_factory=lambda: deque(maxlen=4096))

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] += seconds

    def end_step(self, seconds: float, *, decoded: bool) -> None:
        self.steps += 1
        self.total += seconds
        if decoded:
            self.decode_steps += 1
            self.decode_step_times.append(seconds)

    def reset(self) -> None:
        self.__init__()

    def per_step_ms(self) -> dict[str, float]:
        """Milliseconds per step of each phase and of bookkeeping, over all steps."""
        n = max(self.steps, 1)
        out = {p: 1e3 * s / n for p, s in self.seconds.items()}
        out["bookkeeping"] = 1e3 * (self.total - sum(self.seconds.values())) / n
        out["step"] = 1e3 * self.total / n
        return out


def census(fn: Callable[[], Any], model: Any) -> dict[str, float]:
    """Run ``fn`` under torch.profiler with ``model``'s attention labelled: CPU self-time
    (ms) of linear / attention / rest ops and the number of top-level torch ops (``ops``)."""
    from torch.profiler import ProfilerActivity, profile, record_function  # noqa: PLC0415

    model.label = record_function
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
    finally:
        del model.label                  # back to the class-level no-op
    split = {"linear": 0.0, "attention": 0.0, "rest": 0.0, "outside_forward": 0.0}
    ops = ops_forward = 0
    for ev in prof.events():
        if not ev.name.startswith(("aten::", "mkldnn::")):
            continue
        parent, ranges, nested = ev.cpu_parent, set(), False
        while parent is not None:
            if parent.name.startswith("ttc::"):
                ranges.add(parent.name)
            elif parent.name.startswith(("aten::", "mkldnn::")):
                nested = True
            parent = parent.cpu_parent
        if not nested:
            ops += 1
            ops_forward += FORWARD_RANGE in ranges
        ms = ev.self_cpu_time_total / 1e3
        if FORWARD_RANGE not in ranges:
            split["outside_forward"] += ms
        elif ATTENTION_RANGE in ranges:
            split["attention"] += ms
        elif ev.name in LINEAR_OPS or (nested and _under_linear(ev)):
            split["linear"] += ms
        else:
            split["rest"] += ms
    return {**split, "ops": ops, "ops_forward": ops_forward}


def _under_linear(ev: Any) -> bool:
    parent = ev.cpu_parent
    while parent is not None:
        if parent.name in LINEAR_OPS:
            return True
        parent = parent.cpu_parent
    return False


def machine_limits(dtype: torch.dtype, *, seconds: float = 0.3) -> dict[str, float]:
    """This machine's large-matmul rate in ``dtype`` (GFLOP/s, a 1024 x 1024 x 1024
    product) and streaming-read bandwidth (GB/s, summing a 256 MB float32 tensor), best of
    repeated timings over about ``seconds`` each, on the calling thread's torch threads."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1024, 1024, generator=g).to(dtype)
    b = torch.randn(1024, 1024, generator=g).to(dtype)
    flops = 2 * 1024 ** 3

    def best(fn: Callable[[], Any]) -> float:
        fn()
        times, start = [], time.perf_counter()
        while time.perf_counter() - start < seconds or len(times) < 3:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    with torch.inference_mode():
        mm = best(lambda: torch.mm(a, b))
        big = torch.ones(64 * 1024 * 1024)          # 256 MB: far beyond every cache
        read = best(lambda: big.sum())
    return {"matmul_gflops": flops / mm / 1e9, "read_gb_s": big.numel() * 4 / read / 1e9}


def decode_limit(*, params: int, embed_params: int, vocab: int, hidden: int, layers: int,
                 heads: int, head_dim: int, kv_bytes_per_token: int, dtype_bytes: int,
                 branches: int, prefix_tokens: int, suffix_tokens: int,
                 matmul_gflops: float, read_gb_s: float) -> dict[str, float]:
    """The shortest decode step this machine allows for a shape (a roofline bound).

    FLOPs: ``2 * (params - embed_params) * branches`` for the layers' weights, ``2 * vocab
    * hidden * branches`` for the LM head, and ``4 * heads * head_dim * context`` per
    layer and branch for attention (scores and values). Bytes: every weight once (the
    tied LM head reads the embedding table) plus the KV read (the shared prefix once,
    each branch's suffix once). Returns seconds for each and ``step_s``, their maximum.
    """
    context = prefix_tokens + suffix_tokens
    flops = (2 * (params - embed_params) * branches + 2 * vocab * hidden * branches
             + 4 * heads * head_dim * context * layers * branches)
    weight_bytes = params * dtype_bytes
    kv_bytes = (prefix_tokens + branches * suffix_tokens) * kv_bytes_per_token
    compute_s = flops / (matmul_gflops * 1e9)
    memory_s = (weight_bytes + kv_bytes) / (read_gb_s * 1e9)
    return {"flops": float(flops), "bytes": float(weight_bytes + kv_bytes),
            "compute_s": compute_s, "memory_s": memory_s, "step_s": max(compute_s, memory_s)}
