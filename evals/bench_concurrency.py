"""``ttc bench concurrency``: K searches at once on ONE shared engine, generated tokens/s per K.

Contract: ``run(quick=..., backends=...)`` loads the in-process engine once (``native``:
the default native backend config, i.e. the embedded SmolLM2-135M; ``simulated`` for
plumbing checks) and the first GSM8K test questions shipped with ttc
(``ttc.evals.datasets``). For each strategy (self-consistency n=4; beam search n=4,
width 4; at most 96 new tokens per branch per call, see :func:`search_specs`) and each K
(1, 2, 4, 8; ``--quick``: 1, 2, 4 and 64 tokens) it starts K
threads; thread k runs one search on question k with
``strategy.run(problem, generator=engine, verifier=..., budget=...)``, which meters the
engine through its own ledger as the pipeline does, and all K share the one engine.
Reported side by side in one run:

    tokens_per_s_<strategy>_k<K>   generated tokens of the K searches / wall seconds of the K
    tokens_per_s_k<K>              both strategies' tokens / both phases' wall seconds
    ratios tokens_per_s_k<Kmax>_over_k1 (and per strategy): what concurrency buys

plus ``generated_tokens_*``, ``seconds_*``, ``expand_calls_*`` and the mean search latency.
With ``vllm`` in ``backends`` the same work runs on ``backend: vllm`` in the vLLM
environment (``ttc.engine.vllm_bench.vllm_python``) as ``*_vllm_*`` keys, skipped with a
note when there is none; in the native engine's dtype (what ``auto`` chose on this
machine; bfloat16 beside ``simulated``), each phase from a cold prefix cache. Right after
each phase, the vLLM requests it made are replayed straight on the same ``vllm.LLM``
(``llm.generate``, one call per round of the K searches' calls): the ``*_vllm_direct_*``
keys, what vLLM itself reaches on the same work, and ``ratios.vllm_scaling_over_direct_*``
(ttc's K_max / K=1 over the direct one: 1.0 = ttc's concurrent searches batch as well as
vLLM called directly).

Thread safety: an engine whose ``thread_safe`` attribute is not true (the native engine
before its continuous-batching step loop, vLLM's offline ``LLM``, the simulated backend)
is wrapped so that each call runs alone under one lock, and the report says so; its K
figures then measure the searches' interleaving on a serialised engine, not batching.
Such an engine runs the model on the calling thread, so each search thread first applies
the native ``threads`` setting (torch's count is per OS thread).
Verifier: beam needs step scores; it gets the simulated PRM (no model: deterministic
pseudo-scores of the text), so the figures measure generation only.
Must NOT know: strategy internals, engine internals (beyond ``thread_safe`` and the
native ``threads`` helpers).
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, ContextManager, Iterator, Sequence

from ttc.types import BenchReport
from ttc.sharing import shared_generator

BACKENDS_ALLOWED = ("native", "simulated", "vllm")
FULL = {"ks": (1, 2, 4, 8), "max_step_tokens": 96, "beam_steps": 4}
QUICK = {"ks": (1, 2, 4), "max_step_tokens": 64, "beam_steps": 2}


def search_specs(*, max_step_tokens: int, beam_steps: int) -> dict[str, dict[str, Any]]:
    """The searches run K at a time, by report label: strategy config, generation
    settings and generated-token budget of one search (plain dicts: they travel as JSON).

    No call generates more than ``max_step_tokens`` per branch: self-consistency samples
    4 whole solutions of at most that many tokens; beam search (4 children of the 1 kept
    beam per step) steps of at most that many, until its budget of ``beam_steps`` full
    steps is spent (its last, whole-solution iteration is never reached).
    """
    t = max_step_tokens
    return {
        "self_consistency": {
            "strategy": {"name": "self_consistency", "n": 4, "keep_tree": False},
            "generation": {"max_tokens": t, "seed": 0}, "budget_tokens": 4 * t},
        "beam": {
            "strategy": {"name": "beam", "n": 4, "width": 4, "keep_tree": False},
            "generation": {"max_step_tokens": t, "seed": 0},
            "budget_tokens": 4 * t * beam_steps}}


def measure(generator: Any, problems: Sequence[Any], *, ks: Sequence[int],
            searches: dict[str, dict[str, Any]], threads: int | None,
            around_phase: Callable[[str, int], ContextManager[Any]] | None = None
            ) -> dict[str, Any]:
    """Run each search of ``searches`` (:func:`search_specs`) K at a time, for each K, on
    ``generator``.

    Returns ``{"serialized": bool, "runs": {label: {K: figures}}}`` with figures
    ``{"seconds", "generated", "expand_calls", "search_seconds_mean"}``. ``threads``:
    the torch thread count each search thread applies when the engine runs the model on
    the calling thread (None: leave it). ``around_phase(label, k)``, when given, is a
    context manager entered just before each (strategy, K) phase's clock starts and left
    after it stops (the vLLM column records the phase's engine requests with it).
    """
    from ttc.config import GenerationConfig  # noqa: PLC0415
    from ttc.ledger import Budget  # noqa: PLC0415
    from ttc.registry import STRATEGIES, VERIFIERS  # noqa: PLC0415

    if max(ks) > len(problems):
        raise ValueError(f"K={max(ks)} needs {max(ks)} problems; got {len(problems)}.")
    serialized = not getattr(generator, "thread_safe", False)
    shared = shared_generator(generator)         # ttc.sharing: a lock per call if unsafe

    def one_search(label: str, problem: Any) -> tuple[Any, float]:
        if serialized and threads is not None:
            from ttc.engine.native.threads import apply_threads  # noqa: PLC0415

            apply_threads(threads)
        spec = searches[label]
        strategy = STRATEGIES.build(
            spec["strategy"], generation=GenerationConfig.model_validate(spec["generation"]))
        verifier = VERIFIERS.build({"name": "simulated"}, generator=shared)
        t0 = time.perf_counter()
        result = strategy.run(problem, generator=shared, verifier=verifier,
                              budget=Budget(max_generated_tokens=spec["budget_tokens"]))
        return result, time.perf_counter() - t0

    # Warm-up (first-call costs stay out of K=1): a short self-consistency search.
    STRATEGIES.build({"name": "self_consistency", "n": 2, "keep_tree": False},
                     generation=GenerationConfig(max_tokens=4)).run(
        problems[0], generator=shared, verifier=VERIFIERS.build({"name": "none"}),
        budget=Budget(max_generated_tokens=16))
    runs: dict[str, dict[int, dict[str, float]]] = {}
    for label in searches:
        runs[label] = {}
        for k in ks:
            phase = around_phase(label, k) if around_phase is not None else nullcontext()
            with phase, ThreadPoolExecutor(max_workers=k,
                                           thread_name_prefix=f"bench-{label}") as pool:
                t0 = time.perf_counter()
                futures = [pool.submit(one_search, label, problems[i]) for i in range(k)]
                outcomes = [f.result() for f in futures]     # re-raises a search's error
                seconds = time.perf_counter() - t0
            runs[label][k] = {
                "seconds": seconds,
                "generated": sum(r.ledger.generated_tokens for r, _ in outcomes),
                "expand_calls": sum(r.ledger.lm_calls for r, _ in outcomes),
                "search_seconds_mean": sum(s for _, s in outcomes) / k}
    return {"serialized": serialized, "runs": runs}


def add_figures(report: BenchReport, figures: dict[str, Any], *, ks: Sequence[int],
                infix: str = "") -> None:
    """Per-(strategy, K) and per-K metrics plus the K_max / K=1 ratios; ``infix`` names a
    column (``"vllm_"``) so that several backends share one report."""
    m, kmax = report.metrics, max(ks)
    totals = {k: [0, 0.0] for k in ks}
    for label, per_k in figures["runs"].items():
        for k, f in per_k.items():
            k = int(k)                                   # JSON keys come back as strings
            key = f"{infix}{label}_k{k}"
            m[f"generated_tokens_{key}"] = f["generated"]
            m[f"seconds_{key}"] = round(f["seconds"], 3)
            m[f"tokens_per_s_{key}"] = round(f["generated"] / f["seconds"], 2)
            m[f"expand_calls_{key}"] = f["expand_calls"]
            m[f"search_seconds_mean_{key}"] = round(f["search_seconds_mean"], 3)
            totals[k][0] += f["generated"]
            totals[k][1] += f["seconds"]
        if 1 in ks and kmax != 1:
            report.ratios[f"tokens_per_s_{infix}{label}_k{kmax}_over_k1"] = round(
                m[f"tokens_per_s_{infix}{label}_k{kmax}"] / m[f"tokens_per_s_{infix}{label}_k1"], 3)
    for k, (generated, seconds) in totals.items():
        m[f"tokens_per_s_{infix}k{k}"] = round(generated / seconds, 2)
    if 1 in ks and kmax != 1:
        report.ratios[f"tokens_per_s_{infix}k{kmax}_over_k1"] = round(
            m[f"tokens_per_s_{infix}k{kmax}"] / m[f"tokens_per_s_{infix}k1"], 3)


def run(*, quick: bool, backends: tuple[str, ...] = ("native", "vllm")) -> BenchReport:
    """K concurrent searches on one engine (and on vLLM when its environment exists)."""
    from ttc.evals.datasets import dataset_config, load_problems  # noqa: PLC0415
    from ttc.registry import BACKENDS  # noqa: PLC0415

    local = [b for b in backends if b != "vllm"]
    if any(b not in BACKENDS_ALLOWED for b in backends) or len(local) != 1:
        raise ValueError(f"--backends for concurrency must be native or simulated, optionally "
                         f"with vllm (e.g. native,vllm); got {','.join(backends)!r}.")
    shape = QUICK if quick else FULL
    ks = shape["ks"]
    searches = search_specs(max_step_tokens=shape["max_step_tokens"],
                            beam_steps=shape["beam_steps"])
    problems = load_problems(dataset_config("gsm8k"), limit=max(ks))
    report = BenchReport(name="concurrency")
    report.metrics = {"backend": local[0], "ks": list(ks), "dataset": "gsm8k",
                      "max_new_tokens_per_step": shape["max_step_tokens"],
                      "searches": searches, "verifier": "simulated"}
    threads = None
    if local[0] == "native":
        from ttc.engine.native.config import NativeBackendConfig  # noqa: PLC0415
        config = NativeBackendConfig()
        generator = BACKENDS.build(config)
        # the engine's step loop runs the model and chooses its own count (threads=auto);
        # only a serialised engine's callers would apply one
        report.metrics["torch_threads"] = str(config.threads)
        # vLLM runs in what the native engine chose for this machine: one dtype for both.
        dtype = str(generator.model.dtype).removeprefix("torch.")
        report.metrics["dtype"] = dtype
    else:
        generator = BACKENDS.build({"name": "simulated"})
        dtype = "bfloat16"
    report.metrics["load_avg_1m_start"] = round(os.getloadavg()[0], 2)
    figures = measure(generator, problems, ks=ks, searches=searches, threads=threads)
    if local[0] == "native":
        report.metrics["torch_threads_chosen"] = generator.threads_in_use
    report.metrics["load_avg_1m_end"] = round(os.getloadavg()[0], 2)
    add_figures(report, figures, ks=ks)
    report.notes.append(_lock_note(local[0], figures["serialized"], threads))
    report.notes.append("K threads each run one search (question k of GSM8K test) on one "
                        "shared engine; tokens/s = the K searches' generated tokens / the "
                        "phase's wall seconds; beam uses the simulated PRM (no model).")
    del generator
    if "vllm" in backends:
        _add_vllm_column(report, problems=problems, ks=ks, searches=searches, dtype=dtype)
    return report


def _lock_note(backend: str, serialized: bool, threads: int | None) -> str:
    if not serialized:
        return f"{backend}: the engine is thread-safe (thread_safe=True): no lock."
    note = (f"{backend}: the engine is not thread-safe (no thread_safe=True), so its calls "
            f"are serialised by one lock: K threads interleave whole calls, they do not "
            f"batch together")
    if threads is not None:
        note += f"; each search thread applies {threads} torch thread(s) (backend.threads)"
    return note + "."


def _add_vllm_column(report: BenchReport, *, problems: Sequence[Any], ks: Sequence[int],
                     searches: dict[str, dict[str, Any]], dtype: str = "bfloat16",
                     timeout_s: float = 3600.0) -> None:
    """The same work on ``backend: vllm`` in the vLLM environment, as ``*_vllm_*`` keys,
    and the same requests replayed straight on vLLM, as ``*_vllm_direct_*`` keys."""
    import subprocess  # noqa: PLC0415

    from ttc.engine.loader import resolve_folder  # noqa: PLC0415
    from ttc.engine.vllm_bench import CPU_ENV, vllm_python  # noqa: PLC0415

    python = vllm_python()
    if python is None:
        report.notes.append("vLLM column skipped: no vLLM environment (set TTC_VLLM_PYTHON or "
                            "create .venv-vllm).")
        return
    job = json.dumps({"model_dir": str(resolve_folder(None)[0]), "ks": list(ks),
                      "problems": [p.model_dump(mode="json") for p in problems],
                      "searches": searches, "dtype": dtype})
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in CPU_ENV.items()}}
    try:
        proc = subprocess.run([python, "-m", "ttc.evals.bench_concurrency"], input=job,
                              text=True, capture_output=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        report.notes.append(f"vLLM column skipped: the vLLM run took over {timeout_s:.0f} s.")
        return
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{"concurrency":')]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        report.notes.append(f"vLLM column failed (exit {proc.returncode}): {tail}")
        return
    figures = json.loads(lines[-1])["concurrency"]
    add_figures(report, figures, ks=ks, infix="vllm_")
    for k in ks:
        report.ratios[f"tokens_per_s_vllm_over_native_k{k}"] = round(
            report.metrics[f"tokens_per_s_vllm_k{k}"] / report.metrics[f"tokens_per_s_k{k}"], 3)
    if "direct" in figures:
        add_direct_figures(report, figures["direct"], ks=ks)
    report.notes.append(f"vLLM via {python}: {dtype}, enforce_eager, block_size 32, prefix "
                        f"caching, a cold prefix cache at the start of each phase; "
                        + _lock_note("vllm", figures["serialized"], None))


def add_direct_figures(report: BenchReport, direct: dict[str, dict[Any, dict[str, Any]]], *,
                       ks: Sequence[int]) -> None:
    """The direct reference (each phase's vLLM requests replayed on ``llm.generate``, one
    call per round of the K searches' calls) as ``*_vllm_direct_*`` keys, and how ttc's
    scaling compares with it: ``ratios.vllm_scaling_over_direct*`` = (ttc's vLLM
    K_max / K=1) / (direct K_max / K=1); 1.0 means ttc's concurrent searches scale as well
    as vLLM called directly on the same work."""
    add_figures(report, {"runs": {label: {k: {
        "seconds": f["seconds"], "generated": f["generated"],
        "expand_calls": f["generate_calls"], "search_seconds_mean": f["seconds"]}
        for k, f in per_k.items()} for label, per_k in direct.items()}}, ks=ks,
        infix="vllm_direct_")
    m, kmax = report.metrics, max(ks)
    for label in direct:         # the direct replay has no per-search latency: drop it
        for k in ks:
            m.pop(f"search_seconds_mean_vllm_direct_{label}_k{k}", None)
            m[f"generate_calls_vllm_direct_{label}_k{k}"] = m.pop(
                f"expand_calls_vllm_direct_{label}_k{k}")
    if 1 in ks and kmax != 1:
        for part in [""] + [f"{label}_" for label in direct]:
            ttc = report.ratios.get(f"tokens_per_s_vllm_{part}k{kmax}_over_k1")
            ref = report.ratios.get(f"tokens_per_s_vllm_direct_{part}k{kmax}_over_k1")
            if ttc is not None and ref:
                report.ratios[f"vllm_scaling_over_direct_{part}k{kmax}"] = round(ttc / ref, 3)
    report.notes.append(
        "vllm_direct: each phase's vLLM requests (recorded as ttc sent them, same prompts and "
        "seeds) replayed straight on the same vllm.LLM with llm.generate, round r = every "
        "search's r-th call in one generate, from a cold prefix cache; "
        "vllm_scaling_over_direct_* = ttc's vLLM K_max/K1 over the direct K_max/K1.")


def _main() -> None:
    """The vLLM column's worker: read the job on stdin, print one JSON line.

    Right after each K-search phase it replays that phase's recorded vLLM requests
    straight on the same ``vllm.LLM`` (:func:`ttc.engine.vllm_bench.replay_direct`): the
    direct reference, under ``"direct"``."""
    from ttc.engine.backends.vllm import VLLMBackendConfig, VLLMGenerator  # noqa: PLC0415
    from ttc.engine.vllm_bench import phase_recorder, replay_direct  # noqa: PLC0415
    from ttc.types import Problem  # noqa: PLC0415

    job = json.loads(sys.stdin.read())
    gen = VLLMGenerator.from_config(VLLMBackendConfig(model=job["model_dir"],
                                                      dtype=job.get("dtype", "bfloat16")))
    problems = [Problem.model_validate(p) for p in job["problems"]]
    phases: dict[tuple[str, int], Any] = {}
    record = phase_recorder(gen, phases)
    direct: dict[str, dict[int, dict[str, Any]]] = {}

    @contextmanager
    def around(label: str, k: int) -> Iterator[None]:
        with record(label, k):
            yield
        # Right after the phase it mirrors, so that both see the same background load.
        direct.setdefault(label, {})[k] = replay_direct(gen.llm, phases.pop((label, k)))

    figures = measure(gen, problems, ks=job["ks"], searches=job["searches"], threads=None,
                      around_phase=around)
    figures["direct"] = direct
    print(json.dumps({"concurrency": figures}), flush=True)


if __name__ == "__main__":
    _main()
