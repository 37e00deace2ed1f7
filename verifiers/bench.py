"""``ttc bench prm``: incremental prefix-cached PRM scoring vs whole-trajectory rescoring.

Measures, in one run, the trace of a beam search (8 steps, 16 live beams: the 4 best
beams each get 4 children per step, selected by the PRM's last-step score) scored by a
Qwen2.5-Math-PRM-format PRM (``<extra_0>`` tags, Qwen2 backbone + 2-class head) of the
shape of SmolLM2-135M (30 layers, hidden 576, 9 heads, 3 KV heads, the SmolLM2 tokenizer
with ``<extra_0>`` added) with random weights, in bfloat16 on CPU (float32 on CUDA):

* ``incremental``: the trace as a search runs it, each call reusing the prefix KV
  (verifier tokens ~ sum of new steps);
* ``full``: the same calls replayed by a scorer without a cache (each call runs every
  trajectory from its first token, as search-and-learn does).

Metrics: PRM tokens run and wall seconds of each; the largest score difference between
the two (they must agree); ratios ``prm_tokens_full_over_incremental`` and
``wall_full_over_incremental``. Steps are synthetic arithmetic sentences (~40 tokens);
``quick`` uses shorter steps and a shorter question.
Must NOT know: strategies (the beam trace is written out here).
"""

from __future__ import annotations

import random
import time
from typing import Any

from ttc.types import BenchReport
from ttc.types import Problem

BEAMS, KEEP, DEPTH = 16, 4, 8


def _step(rng: random.Random, t: int, quick: bool) -> str:
    a, b = rng.randint(10, 99), rng.randint(2, 9)
    if quick:
        return f"Step {t}: {a} * {b} = {a * b}.\n\n"
    c = rng.randint(100, 999)
    return (f"Step {t}: multiply {a} by {b} to get {a * b}, then add {c} to reach "
            f"{a * b + c}, which we carry into the next step.\n\n")


def _prm(*, incremental: bool, parts: tuple[Any, Any, Any]):
    from ttc.verifiers.qwen_prm import QwenPRM, RewardHead

    tok, backbone, head = parts
    return QwenPRM(backbone, RewardHead(*head), tok, incremental=incremental,
                   max_cache_tokens=1 << 20)


def _parts():
    import torch
    from transformers import Qwen2Config, Qwen2Model

    from ttc.engine.loader import load_hf_model  # the embedded model's tokenizer

    _, tok = load_hf_model(None, dtype=torch.bfloat16, device="cpu")
    tok.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float32 if device == "cuda" else torch.bfloat16
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=576, intermediate_size=1536,
                      num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                      max_position_embeddings=8192, tie_word_embeddings=True)
    backbone = Qwen2Model(cfg).to(device=device, dtype=dtype).eval()
    g = torch.Generator().manual_seed(1)
    head = [torch.randn(576, 576, generator=g) * 0.05, torch.zeros(576),
            torch.randn(2, 576, generator=g) * 0.05, torch.zeros(2)]
    return tok, backbone, [h.to(device) for h in head]


def run(*, quick: bool) -> BenchReport:
    parts = _parts()
    rng = random.Random(0)
    question = ("A shop sells pencils in boxes of 12. " * (1 if quick else 3)
                + "How many pencils are in 7 boxes?")
    problem = Problem(id="bench", question=question)

    inc = _prm(incremental=True, parts=parts)
    full = _prm(incremental=False, parts=parts)
    warm = Problem(id="warm", question="Warm-up.")
    for scorer in (inc, full):      # first-call allocations are not part of either figure
        scorer.score(warm, [[_step(random.Random(1), 1, True)]])
    inc.scorer.clear()
    trace: list[list[list[str]]] = []
    beams: list[list[str]] = [[]]
    inc_tokens = inc_cached = 0
    inc_scores: list[tuple[tuple[float, ...], ...]] = []
    t0 = time.perf_counter()
    for depth in range(1, DEPTH + 1):
        per_parent = BEAMS // len(beams)
        call = [b + [_step(rng, depth, quick)] for b in beams for _ in range(per_parent)]
        trace.append(call)
        out = inc.score(problem, call)
        inc_scores.append(out.scores)
        inc_tokens += out.usage.tokens
        inc_cached += out.usage.cached_tokens
        ranked = sorted(range(len(call)), key=lambda i: -out.scores[i][-1])
        beams = [call[i] for i in ranked[:KEEP]]
    inc_wall = time.perf_counter() - t0

    full_tokens = 0
    max_diff = 0.0
    t0 = time.perf_counter()
    for call, want in zip(trace, inc_scores):
        out = full.score(problem, call)
        full_tokens += out.usage.tokens
        for a, b in zip(out.scores, want):
            max_diff = max(max_diff, max(abs(x - y) for x, y in zip(a, b)))
    full_wall = time.perf_counter() - t0

    return BenchReport(
        name="prm",
        metrics={"beams": BEAMS, "depth": DEPTH, "calls": DEPTH * BEAMS,
                 "prm_tokens_incremental": inc_tokens, "prm_cached_tokens_incremental": inc_cached,
                 "prm_tokens_full": full_tokens, "wall_s_incremental": round(inc_wall, 3),
                 "wall_s_full": round(full_wall, 3), "max_abs_score_diff": max_diff,
                 "dtype": str(next(parts[1].parameters()).dtype).replace("torch.", ""),
                 "model": "Qwen2.5-Math-PRM format, SmolLM2-135M shape, random weights"},
        ratios={"prm_tokens_full_over_incremental": round(full_tokens / max(inc_tokens, 1), 3),
                "wall_full_over_incremental": round(full_wall / max(inc_wall, 1e-9), 3)},
        notes=["same beam trace scored both ways in one run; scores agree within "
               f"{max_diff:.2e} (bf16 rounding on CPU)"],
    )
