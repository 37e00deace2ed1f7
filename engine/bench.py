"""Engine benchmark: native shared-prefix engine vs the HF transformers backend, same work.

Contract: ``run(quick=...)`` loads the embedded SmolLM2-135M once (``load_model(None)``),
builds a problem whose formatted prompt is exactly ``P`` tokens, and asks each backend
for ``B`` continuations of ``S`` new tokens (same :class:`~ttc.types.SamplingParams`,
through the Generator protocol: ``root`` then one ``expand``). Reported side by side:

* ``tokens_per_s_*``: generated tokens / wall seconds of root + expand (prefill included);
* ``kv_bytes_native``: the native engine's peak resident KV (pages in use);
* ``kv_bytes_hf``: the HF backend's reported peak KV;
* ``kv_bytes_bound = (P + generated tokens) * bytes per token``: every distinct token
  stored once (the prompt once, each branch's suffix once).

Full run: P = 1024, B = 16, S = 64; quick: P = 256, B = 4, S = 16.
Must NOT know: strategies, rewards.
"""

from __future__ import annotations

import time
from typing import Any

from ttc.bench import BenchReport
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


ENGINE_BACKENDS = ("native", "hf", "vllm")


def run(*, quick: bool, backends: tuple[str, ...] = ENGINE_BACKENDS) -> BenchReport:
    """Native vs HF (vs vLLM when its environment exists) on the same work, in one run."""
    import torch  # noqa: PLC0415

    from ttc.engine.backends.hf import HFBackendConfig  # noqa: PLC0415
    from ttc.engine.native.engine import NativeGenerator  # noqa: PLC0415
    from ttc.engine.native.config import NativeBackendConfig  # noqa: PLC0415
    from ttc.registry import BACKENDS  # noqa: PLC0415

    unknown = [b for b in backends if b not in ENGINE_BACKENDS]
    if unknown or not backends:
        raise ValueError(f"--backends must be a comma list of {', '.join(ENGINE_BACKENDS)}; "
                         f"got {','.join(backends)!r}.")
    prompt_tokens, branches, new_tokens = (256, 4, 16) if quick else (1024, 16, 64)
    params = SamplingParams(temperature=0.8, top_p=1.0, max_tokens=new_tokens, seed=0)
    warm = Problem(question="Warm up.")
    warm_params = params.model_copy(update={"max_tokens": 2})
    # The native engine also fixes the prompt (its tokenizer) and the KV bytes per token.
    native: NativeGenerator = BACKENDS.build(
        NativeBackendConfig(dtype="bfloat16", device="cpu", kv_memory_gb=1.0))
    problem = _problem_with_prompt_tokens(native.format, prompt_tokens)
    p = len(native.format(problem))
    bytes_per_token = native.model.kv_bytes_per_token()
    report = BenchReport(name="engine")
    report.metrics = {"prompt_tokens": p, "branches": branches, "max_new_tokens": new_tokens,
                      "dtype": "bfloat16", "torch_threads": torch.get_num_threads(),
                      "kv_bytes_per_token": bytes_per_token}
    runs: dict[str, dict] = {}
    if "native" in backends:
        _timed_run(native, warm, branches=2, new_tokens=2, params=warm_params)
        runs["native"] = _timed_run(native, problem, branches=branches,
                                    new_tokens=new_tokens, params=params)
    del native
    if "hf" in backends:
        hf = BACKENDS.build(HFBackendConfig(dtype="bfloat16", device="cpu"))
        _timed_run(hf, warm, branches=2, new_tokens=2, params=warm_params)
        runs["hf"] = _timed_run(hf, problem, branches=branches, new_tokens=new_tokens,
                                params=params)
        del hf
    for name, r in runs.items():
        report.metrics.update({
            f"generated_tokens_{name}": r["generated"], f"seconds_{name}": round(r["seconds"], 3),
            f"tokens_per_s_{name}": round(r["generated"] / r["seconds"], 2),
            f"kv_bytes_{name}": int(r["peak_kv_bytes"])})
    if "native" in runs:
        bound = (p + runs["native"]["generated"]) * bytes_per_token
        report.metrics["kv_bytes_bound"] = int(bound)
        report.ratios["kv_native_over_bound"] = round(runs["native"]["peak_kv_bytes"] / bound, 4)
    if "native" in runs and "hf" in runs:
        report.ratios["tokens_per_s_native_over_hf"] = round(
            report.metrics["tokens_per_s_native"] / report.metrics["tokens_per_s_hf"], 3)
        report.ratios["kv_hf_over_native"] = round(
            runs["hf"]["peak_kv_bytes"] / max(runs["native"]["peak_kv_bytes"], 1), 3)
    report.notes.append("wall time covers root + one expand (prompt prefill included); "
                        "same SamplingParams (temperature 0.8, seed 0) for every backend.")
    if "vllm" in backends:
        _add_vllm_column(report, problem=problem, branches=branches, params=params)
    return report


def _add_vllm_column(report: BenchReport, *, problem: Problem, branches: int,
                     params: SamplingParams) -> None:
    """vLLM (prefix caching) on the same work, run in its own environment when present."""
    from ttc.engine.loader import resolve_folder  # noqa: PLC0415
    from ttc.engine.vllm_bench import measure_vllm  # noqa: PLC0415

    vl, note = measure_vllm(model_dir=str(resolve_folder(None)[0]), question=problem.question,
                            branches=branches, params=params.model_dump(mode="json"))
    report.notes.append(note)
    if vl is None:
        return
    tps = vl["generated"] / vl["seconds"]
    report.metrics.update({
        "generated_tokens_vllm": vl["generated"], "seconds_vllm": round(vl["seconds"], 3),
        "tokens_per_s_vllm": round(tps, 2), "prefill_tokens_vllm": vl["prefill_tokens"],
        "cached_tokens_vllm": vl["cached_tokens"]})
    for other in ("native", "hf"):
        if f"tokens_per_s_{other}" in report.metrics:
            report.ratios[f"tokens_per_s_vllm_over_{other}"] = round(
                tps / report.metrics[f"tokens_per_s_{other}"], 3)
    report.notes.append("vLLM: bf16, enforce_eager, block_size 32, prefix caching, 2 OMP "
                        "threads; its KV is vLLM's own block pool (not compared).")
