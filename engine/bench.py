"""Engine benchmark: native shared-prefix engine vs the HF transformers backend, same work.

Contract: ``run(quick=..., backends=..., cotenant=N)`` loads the embedded SmolLM2-135M once
(``load_model(None)``), builds a problem whose formatted prompt is exactly ``P`` tokens,
and asks each backend for ``B`` continuations of ``S`` new tokens (same
:class:`~ttc.types.SamplingParams`, through the Generator protocol: ``root`` then one
``expand``), for each shape. Reported side by side:

* ``tokens_per_s_*``: generated tokens / wall seconds of root + expand (prefill included);
* ``kv_bytes_native``: the native engine's peak resident KV (pages in use);
* ``kv_bytes_hf``: the HF backend's reported peak KV;
* ``kv_bytes_bound = (P + generated tokens) * bytes per token``: every distinct token
  stored once (the prompt once, each branch's suffix once).

Other engines on the same shapes, each skipped with a note where it is not installed:
``vllm`` (engine/vllm_bench.py, its own virtualenv) and ``llamacpp`` (llama.cpp's
``llama-batched-bench`` in the native engine's dtype, engine/llamacpp_bench.py; keys
``*_llamacpp``, ratios ``tokens_per_s_llamacpp_over_<other>``).

Shapes: full run P = 1024, S = 64, B = 16 and B = 64; quick: P = 256, S = 16, B = 4 and
B = 16. The first shape's keys carry no suffix; the others end in ``_b<B>``.

``cotenant=N`` (N > 0) also measures the native engine with N busy processes (plain
Python loops, started and killed by this module, always in a ``finally``; each also exits
when this process does) running beside it, on the same engine object, right after the
idle runs of each shape, with two thread settings: the fixed default (torch's thread
count at start) and ``threads="auto"``: the engine's own step-time tuner
(:class:`ttc.engine.native.threads.StepTuner`), started before the idle auto run and
still running when the co-tenants start. Extra keys per shape: ``tokens_per_s_native_auto``,
``tokens_per_s_native_cotenant``, ``tokens_per_s_native_auto_cotenant``; the counts
``auto`` chose by the end of each run (``threads_auto_idle``, ``threads_auto_cotenant``); the 1-minute load
average before the idle runs and with the co-tenants started (``load_avg_1m_idle``,
``load_avg_1m_cotenant``: "idle" means no co-tenant of ours, not an idle machine).
Ratios: ``tokens_per_s_cotenant_over_idle`` (fixed threads),
``tokens_per_s_cotenant_over_idle_auto``, ``tokens_per_s_auto_over_fixed_cotenant`` (what
``auto`` buys under co-tenants) and ``tokens_per_s_auto_over_fixed_idle``.
``dtype`` (``--dtype``): one dtype for every engine of the run; ``auto`` is what the
native engine picks on this machine (:mod:`ttc.engine.hardware`). Each native shape also
gets a step profile (:func:`_step_profiles`: phases, op counts, the machine's roofline).
Must NOT know: strategies, rewards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Any, Iterator

from ttc.types import BenchReport
from ttc.types import ExpandRequest, Problem, SamplingParams

_FILLER = ("In a quiet town by the sea, an old clockmaker kept a shop full of ticking "
           "wonders, and every morning the children stopped to watch the gears turn. ")


def _problem_with_prompt_tokens(format_ids, target: int) -> Problem:
    """A problem whose formatted prompt has exactly ``target`` tokens (trimmed by words)."""
    ask = " Continue this story in great detail, without stopping."
    words = (_FILLER * (target // 8 + 8)).split(" ")
    lo, hi = 1, len(words)
    while lo < hi:                     # the most words whose prompt fits in target
        mid = (lo + hi + 1) // 2
        if len(format_ids(Problem(question=" ".join(words[:mid]) + ask))) <= target:
            lo = mid
        else:
            hi = mid - 1
    question = " ".join(words[:lo]) + ask
    # Pad with single characters until the count is exact (each adds about one token).
    pads = 0
    while len(format_ids(Problem(question=question))) < target and pads < 64:
        question = "." + question
        pads += 1
    return Problem(question=question)


def _timed_run(gen: Any, problem: Problem, *, branches: int, new_tokens: int,
               params: SamplingParams) -> dict[str, float]:
    t0 = time.perf_counter()
    root = gen.root(problem)
    out = gen.expand([ExpandRequest(prefix=root, n=branches, params=params)])
    seconds = time.perf_counter() - t0
    generated = out.usage.generated_tokens
    peak = max(out.usage.peak_kv_bytes, gen.kv_bytes())
    gen.release([c.handle for c in out.continuations[0]] + [root])
    return {"seconds": seconds, "generated": generated, "peak_kv_bytes": peak,
            "prefill_tokens": out.usage.prefill_tokens}


ENGINE_BACKENDS = ("native", "hf", "vllm", "llamacpp")
FULL_SHAPES = (1024, (16, 64), 64)       # prompt tokens, branch counts, new tokens
QUICK_SHAPES = (256, (4, 16), 16)

# A co-tenant: a plain busy loop that also exits when its parent (this bench) is gone.
_BUSY_LOOP = ("import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n"
              "    for _ in range(200000):\n        pass\n")


@contextmanager
def cotenants(n: int) -> Iterator[list[subprocess.Popen]]:
    """``n`` busy Python processes for the duration of the block; killed on exit."""
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-I", "-S", "-c", _BUSY_LOOP],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
        time.sleep(0.3)                  # interpreters started and spinning
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"a co-tenant process exited at start (code {p.returncode}).")
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def _use_threads(gen: Any, n: int | str) -> None:
    """Run ``gen``'s model on ``n`` torch threads (``"auto"``: keep the engine's tuner).

    torch's count is per OS thread (engine/native/threads.py): the native engine runs the
    model on its step loop and takes the count through ``set_threads``; the count is also
    applied here, for an engine that runs the model on the thread calling ``expand``.
    """
    from ttc.engine.native.threads import apply_threads  # noqa: PLC0415

    if n == "auto":
        if getattr(gen, "tuner", None) is None:
            gen.set_threads("auto")
        return
    setter = getattr(gen, "set_threads", None)
    if callable(setter):
        setter(n)
    apply_threads(n)


def _load_avg() -> float | None:
    """The 1-minute load average (other tenants' processes count too), where known."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _suffix(index: int, branches: int) -> str:
    return "" if index == 0 else f"_b{branches}"


def run(*, quick: bool, backends: tuple[str, ...] = ENGINE_BACKENDS,
        cotenant: int = 0, dtype: str = "auto") -> BenchReport:
    """Native vs HF (vs vLLM when its environment exists) on the same work, in one run."""
    import torch  # noqa: PLC0415

    from ttc.engine.hardware import DTYPE_NAMES, choose  # noqa: PLC0415
    from ttc.engine.native.config import NativeBackendConfig  # noqa: PLC0415
    from ttc.engine.native.engine import NativeGenerator  # noqa: PLC0415
    from ttc.registry import BACKENDS  # noqa: PLC0415

    if dtype not in ("auto", "bfloat16", "float32"):
        raise ValueError(f"--dtype must be one of auto, bfloat16, float32; got {dtype!r}.")
    # One dtype for every engine in the run: auto is what the native engine picks here.
    dtype = DTYPE_NAMES[choose(device="cpu", dtype=dtype, setting="bench").dtype]
    unknown = [b for b in backends if b not in ENGINE_BACKENDS]
    if unknown or not backends:
        raise ValueError(f"--backends must be a comma list of {', '.join(ENGINE_BACKENDS)}; "
                         f"got {','.join(backends)!r}.")
    if isinstance(cotenant, bool) or not isinstance(cotenant, int) or cotenant < 0:
        raise ValueError(f"--cotenant must be a number of busy processes >= 0; got {cotenant!r}.")
    if cotenant and "native" not in backends:
        raise ValueError("--cotenant measures the native engine; add native to --backends.")
    llamacpp_bin, llamacpp_note = _find_llamacpp(backends)   # a bad $TTC_LLAMACPP_BIN fails here
    prompt_tokens, branch_counts, new_tokens = QUICK_SHAPES if quick else FULL_SHAPES
    params = SamplingParams(temperature=0.8, top_p=1.0, max_tokens=new_tokens, seed=0)
    fixed_threads = torch.get_num_threads()
    # The native engine also fixes the prompt (its tokenizer) and the KV bytes per token.
    native: NativeGenerator = BACKENDS.build(
        NativeBackendConfig(dtype=dtype, device="cpu", kv_memory_gb=1.0))
    problem = _problem_with_prompt_tokens(native.format, prompt_tokens)
    p = len(native.format(problem))
    bytes_per_token = native.model.kv_bytes_per_token()
    report = BenchReport(name="engine")
    report.metrics = {"prompt_tokens": p, "branches": list(branch_counts),
                      "max_new_tokens": new_tokens, "dtype": dtype,
                      "torch_threads": fixed_threads, "kv_bytes_per_token": bytes_per_token}
    runs: dict[str, dict] = {}
    if "native" in backends:
        runs.update(_native_runs(native, problem, branch_counts=branch_counts, params=params,
                                 fixed_threads=fixed_threads, cotenant=cotenant,
                                 report=report))
        _step_profiles(native, problem, branch_counts=branch_counts, params=params,
                       fixed_threads=fixed_threads, report=report)
    del native
    if "hf" in backends:
        runs.update(_hf_runs(problem, branch_counts=branch_counts, params=params, dtype=dtype))
    for key, r in runs.items():
        report.metrics.update({
            f"generated_tokens_{key}": r["generated"], f"seconds_{key}": round(r["seconds"], 3),
            f"tokens_per_s_{key}": round(r["generated"] / r["seconds"], 2)})
        if "auto" not in key and "cotenant" not in key:   # peaks are running maxima:
            report.metrics[f"kv_bytes_{key}"] = int(r["peak_kv_bytes"])   # first runs only
    for i, b in enumerate(branch_counts):
        _shape_ratios(report, runs, sfx=_suffix(i, b), prompt_tokens=p,
                      bytes_per_token=bytes_per_token)
    report.notes.append("wall time covers root + one expand (prompt prefill included); "
                        "same SamplingParams (temperature 0.8, seed 0) for every backend.")
    if "vllm" in backends:
        _add_vllm_column(report, problem=problem, branch_counts=branch_counts, params=params,
                         dtype=dtype)
    if "llamacpp" in backends:
        _add_llamacpp_column(report, bin_dir=llamacpp_bin, note=llamacpp_note, dtype=dtype,
                             prompt_tokens=p, branch_counts=branch_counts,
                             new_tokens=new_tokens, threads=fixed_threads)
    return report


def _native_runs(native: Any, problem: Problem, *, branch_counts: tuple[int, ...],
                 params: SamplingParams, fixed_threads: int, cotenant: int,
                 report: BenchReport) -> dict[str, dict]:
    """Native timings per shape: idle with the fixed thread count, and with ``cotenant``
    > 0 also with ``threads="auto"`` idle and both settings beside the co-tenants.

    Per shape the four runs follow each other (fixed idle, auto idle; auto, fixed with the
    co-tenants), so that a change in other tenants' load between shapes does not enter a
    ratio. ``auto`` is the engine's own :class:`~ttc.engine.native.threads.StepTuner`,
    started fresh before the idle auto run and kept running into the co-tenant one, as in
    an engine that is already serving when a co-tenant arrives (its first run includes
    the tuner's trial steps).
    """
    warm = Problem(question="Warm up.")
    warm_params = params.model_copy(update={"max_tokens": 2})

    def timed(threads: int | str, branches: int) -> dict:
        _use_threads(native, threads)
        _timed_run(native, warm, branches=2, new_tokens=2, params=warm_params)
        return _timed_run(native, problem, branches=branches,
                          new_tokens=params.max_tokens, params=params)

    runs: dict[str, dict] = {}
    for i, b in enumerate(branch_counts):
        sfx = _suffix(i, b)
        report.metrics[f"load_avg_1m_idle{sfx}"] = _load_avg()
        runs[f"native{sfx}"] = timed(fixed_threads, b)
        if not cotenant:
            continue
        native.set_threads("auto")                      # a fresh tuner for this shape
        runs[f"native_auto{sfx}"] = timed("auto", b)
        auto_idle = native.threads_in_use
        with cotenants(cotenant):
            report.metrics[f"load_avg_1m_cotenant{sfx}"] = _load_avg()
            runs[f"native_auto_cotenant{sfx}"] = timed("auto", b)
            auto_busy = native.threads_in_use
            runs[f"native_cotenant{sfx}"] = timed(fixed_threads, b)
        report.metrics.update({f"threads_auto_idle{sfx}": auto_idle,
                               f"threads_auto_cotenant{sfx}": auto_busy})
    if cotenant:
        report.metrics.update({"cotenant_processes": cotenant, "threads_fixed": fixed_threads})
        report.notes.append(
            f"co-tenants: {cotenant} busy Python loop(s) beside the cotenant runs (same engine; "
            f"per shape: fixed and auto idle, then auto and fixed with the co-tenants); "
            f"threads fixed = torch's start-up count ({fixed_threads}); auto = the engine's "
            f"step-time tuner, started before the idle auto run and still running when the "
            f"co-tenants start (threads_auto_*: its choice after each run). 'idle' means no "
            f"co-tenant of ours; other tenants' load is in load_avg_1m_*.")
    _use_threads(native, fixed_threads)
    return runs


def _step_profiles(native: Any, problem: Problem, *, branch_counts: tuple[int, ...],
                   params: SamplingParams, fixed_threads: int, report: BenchReport) -> None:
    """Per shape: ms per decode step by phase, top-level torch ops per step, and the step
    this machine allows (its matmul rate and read bandwidth, measured here and now).

    Keys per shape (suffix as elsewhere): ``decode_step_ms`` (median over the run's decode
    steps), ``profile_ms`` (per decode step: ``forward_linear``, ``forward_attention``,
    ``forward_rest`` — the forward's wall time split in proportion to the profiler's
    self-time of each — and ``logits``, ``sampling``, ``bookkeeping``: the phase clocks
    averaged over the run's steps), ``ops_per_step`` and ``ops_per_forward`` (one profiled
    steady-state step), ``limit_step_ms`` and ``limit_tokens_per_s`` (a roofline bound,
    :func:`ttc.engine.native.profile.decode_limit`, with the suffix at half the new
    tokens); ratio ``fraction_of_limit`` = limit step / median decode step.
    """
    import statistics  # noqa: PLC0415

    import torch  # noqa: PLC0415

    from ttc.engine.native.profile import decode_limit, machine_limits  # noqa: PLC0415
    from ttc.engine.native.threads import apply_threads  # noqa: PLC0415

    _use_threads(native, fixed_threads)
    before = torch.get_num_threads()
    apply_threads(fixed_threads)          # the limits run here, on the bench's thread
    try:
        limits = machine_limits(native.model.dtype)
    finally:
        apply_threads(before)
    report.metrics["machine_matmul_gflops"] = round(limits["matmul_gflops"], 1)
    report.metrics["machine_read_gb_s"] = round(limits["read_gb_s"], 1)
    model = native.model
    c = model.config
    n_params, n_embed = model.num_params()
    prompt = len(native.format(problem))
    for i, b in enumerate(branch_counts):
        sfx = _suffix(i, b)
        root = native.root(problem)
        clock = native.scheduler.clock
        clock.reset()
        out = native.expand([ExpandRequest(prefix=root, n=b, params=params)])
        native.release([ch.handle for ch in out.continuations[0]])
        step_ms = 1e3 * statistics.median(clock.decode_step_times)
        phases = clock.per_step_ms()
        # one steady-state decode step under the profiler (on the engine's loop thread)
        counts = _census_one_step(native, root, b, params)
        native.release([root])
        model_ms = counts["linear"] + counts["attention"] + counts["rest"]
        split = {k: phases["forward"] * counts[k] / model_ms if model_ms else 0.0
                 for k in ("linear", "attention", "rest")}
        report.metrics[f"decode_step_ms{sfx}"] = round(step_ms, 2)
        report.metrics[f"profile_ms{sfx}"] = {
            "forward_linear": round(split["linear"], 2),
            "forward_attention": round(split["attention"], 2),
            "forward_rest": round(split["rest"], 2), "logits": round(phases["logits"], 2),
            "sampling": round(phases["sampling"], 2),
            "bookkeeping": round(phases["bookkeeping"], 2),
            "prefill": round(phases["prefill"], 2)}
        report.metrics[f"ops_per_step{sfx}"] = counts["ops"]
        report.metrics[f"ops_per_forward{sfx}"] = counts["ops_forward"]
        limit = decode_limit(
            params=n_params, embed_params=n_embed, vocab=c.vocab_size, hidden=c.hidden_size,
            layers=c.num_layers, heads=c.num_heads, head_dim=c.head_dim,
            kv_bytes_per_token=model.kv_bytes_per_token(), dtype_bytes=model.embed.element_size(),
            branches=b, prefix_tokens=prompt, suffix_tokens=params.max_tokens // 2,
            matmul_gflops=limits["matmul_gflops"], read_gb_s=limits["read_gb_s"])
        report.metrics[f"limit_step_ms{sfx}"] = round(1e3 * limit["step_s"], 2)
        report.metrics[f"limit_tokens_per_s{sfx}"] = round(b / limit["step_s"], 1)
        report.metrics[f"decode_tokens_per_s{sfx}"] = round(1e3 * b / step_ms, 1)
        report.ratios[f"fraction_of_limit{sfx}"] = round(1e3 * limit["step_s"] / step_ms, 3)
    report.notes.append(
        "step profile: decode_step_ms is the median decode step of a separate native run; "
        "profile_ms splits its forward by the profiler's self-time per op class; the limit "
        "is max(FLOPs / large-matmul rate, bytes / read bandwidth) for one decode step, both "
        "rates measured in this run in the engine's dtype and thread count.")


def _census_one_step(native: Any, root: int, branches: int,
                     params: SamplingParams) -> dict[str, float]:
    """Profile the 4th decode step of a short expand from ``root`` (prefix cached), on
    the engine's own loop thread: the bench wraps that one ``Scheduler.step`` call."""
    from ttc.engine.native.profile import census  # noqa: PLC0415

    sched = native.scheduler
    real_step = sched.step
    seen: dict[str, Any] = {"n": 0}

    def step() -> None:
        seen["n"] += 1
        if seen["n"] == 4:
            seen["counts"] = census(real_step, native.model)
        else:
            real_step()

    sched.step = step                   # instance attribute: the loop looks it up per step
    try:
        out = native.expand([ExpandRequest(prefix=root, n=branches,
                                           params=params.model_copy(update={"max_tokens": 6}))])
    finally:
        del sched.step
    native.release([ch.handle for ch in out.continuations[0]])
    return seen["counts"]


def _hf_runs(problem: Problem, *, branch_counts: tuple[int, ...],
             params: SamplingParams, dtype: str) -> dict[str, dict]:
    from ttc.engine.backends.hf import HFBackendConfig  # noqa: PLC0415
    from ttc.registry import BACKENDS  # noqa: PLC0415

    hf = BACKENDS.build(HFBackendConfig(dtype=dtype, device="cpu"))
    _timed_run(hf, Problem(question="Warm up."), branches=2, new_tokens=2,
               params=params.model_copy(update={"max_tokens": 2}))
    # Shapes in increasing B: the backend's peak KV is a running maximum.
    return {f"hf{_suffix(i, b)}": _timed_run(hf, problem, branches=b,
                                             new_tokens=params.max_tokens, params=params)
            for i, b in enumerate(branch_counts)}


def _shape_ratios(report: BenchReport, runs: dict[str, dict], *, sfx: str,
                  prompt_tokens: int, bytes_per_token: int) -> None:
    m = report.metrics

    def ratio(name: str, num: str, den: str, digits: int = 3) -> None:
        if f"tokens_per_s_{num}{sfx}" in m and f"tokens_per_s_{den}{sfx}" in m:
            report.ratios[f"{name}{sfx}"] = round(
                m[f"tokens_per_s_{num}{sfx}"] / m[f"tokens_per_s_{den}{sfx}"], digits)

    if f"native{sfx}" in runs:
        native = runs[f"native{sfx}"]
        bound = (prompt_tokens + native["generated"]) * bytes_per_token
        m[f"kv_bytes_bound{sfx}"] = int(bound)
        report.ratios[f"kv_native_over_bound{sfx}"] = round(native["peak_kv_bytes"] / bound, 4)
    if f"native{sfx}" in runs and f"hf{sfx}" in runs:
        ratio("tokens_per_s_native_over_hf", "native", "hf")
        report.ratios[f"kv_hf_over_native{sfx}"] = round(
            runs[f"hf{sfx}"]["peak_kv_bytes"] / max(runs[f"native{sfx}"]["peak_kv_bytes"], 1), 3)
    ratio("tokens_per_s_cotenant_over_idle", "native_cotenant", "native")
    ratio("tokens_per_s_cotenant_over_idle_auto", "native_auto_cotenant", "native_auto")
    ratio("tokens_per_s_auto_over_fixed_cotenant", "native_auto_cotenant", "native_cotenant")
    ratio("tokens_per_s_auto_over_fixed_idle", "native_auto", "native")


def _add_vllm_column(report: BenchReport, *, problem: Problem,
                     branch_counts: tuple[int, ...], params: SamplingParams,
                     dtype: str) -> None:
    """vLLM (prefix caching) on the same work, run in its own environment when present."""
    from ttc.engine.loader import resolve_folder  # noqa: PLC0415
    from ttc.engine.vllm_bench import measure_vllm_shapes  # noqa: PLC0415

    figures, note = measure_vllm_shapes(
        model_dir=str(resolve_folder(None)[0]), question=problem.question,
        branch_counts=list(branch_counts), params=params.model_dump(mode="json"),
        dtype=dtype)
    report.notes.append(note)
    if figures is None:
        return
    for i, (b, vl) in enumerate(zip(branch_counts, figures)):
        sfx = _suffix(i, b)
        tps = vl["generated"] / vl["seconds"]
        report.metrics.update({
            f"generated_tokens_vllm{sfx}": vl["generated"],
            f"seconds_vllm{sfx}": round(vl["seconds"], 3), f"tokens_per_s_vllm{sfx}": round(tps, 2),
            f"prefill_tokens_vllm{sfx}": vl["prefill_tokens"],
            f"cached_tokens_vllm{sfx}": vl["cached_tokens"]})
        for other in ("native", "hf"):
            if f"tokens_per_s_{other}{sfx}" in report.metrics:
                report.ratios[f"tokens_per_s_vllm_over_{other}{sfx}"] = round(
                    tps / report.metrics[f"tokens_per_s_{other}{sfx}"], 3)
    report.notes.append(f"vLLM: {dtype}, enforce_eager, block_size 32, prefix caching, 2 OMP "
                        "threads; its KV is vLLM's own block pool (not compared).")


def _find_llamacpp(backends: tuple[str, ...]) -> tuple[Any, str]:
    """The llama.cpp build for the column, or (None, why not); checked before any timing."""
    if "llamacpp" not in backends:
        return None, ""
    from ttc.engine.llamacpp_bench import find_llamacpp  # noqa: PLC0415

    return find_llamacpp()


def _add_llamacpp_column(report: BenchReport, *, bin_dir: Any, note: str, dtype: str,
                         prompt_tokens: int, branch_counts: tuple[int, ...], new_tokens: int,
                         threads: int) -> None:
    """llama.cpp's llama-batched-bench on the same shapes (engine/llamacpp_bench.py), in the
    native engine's dtype; no build: the note says why and there is no column."""
    from ttc.engine.llamacpp_bench import gguf_type, measure_llamacpp_shapes  # noqa: PLC0415

    if bin_dir is None:
        report.notes.append(note)
        return
    report.metrics["load_avg_1m_llamacpp"] = _load_avg()   # it runs last, minutes later
    figures, note = measure_llamacpp_shapes(
        bin_dir=bin_dir, dtype=dtype, prompt_tokens=prompt_tokens,
        branch_counts=branch_counts, new_tokens=new_tokens, threads=threads)
    report.notes.append(note)
    if figures is None:
        return
    report.metrics["gguf_type_llamacpp"] = gguf_type(dtype)
    for i, (b, lc) in enumerate(zip(branch_counts, figures)):
        sfx = _suffix(i, b)
        tps = lc["generated"] / lc["seconds"]
        report.metrics.update({
            f"generated_tokens_llamacpp{sfx}": lc["generated"],
            f"seconds_llamacpp{sfx}": round(lc["seconds"], 3),
            f"tokens_per_s_llamacpp{sfx}": round(tps, 2),
            f"prefill_seconds_llamacpp{sfx}": round(lc["prefill_seconds"], 3),
            f"decode_tokens_per_s_llamacpp{sfx}": round(lc["decode_tokens_per_s"], 2)})
        for other in ("native", "hf", "vllm"):
            if f"tokens_per_s_{other}{sfx}" in report.metrics:
                report.ratios[f"tokens_per_s_llamacpp_over_{other}{sfx}"] = round(
                    tps / report.metrics[f"tokens_per_s_{other}{sfx}"], 3)
