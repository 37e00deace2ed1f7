"""Metrics over eval records: accuracy, majority@k, unbiased pass@k, compute, CIs.

Contract: pure functions of the per-problem records ``ttc eval`` writes (see
:mod:`ttc.evals.runner`). pass@k is the unbiased estimator of Chen et al. (2021),

    pass@k = 1 - C(n - c, k) / C(n, k)      n candidates, c of them correct,

computed as a stable product ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``; majority@k is the
share of problems whose majority vote over the first ``k`` candidates is correct.
Accuracy's interval is a Wilson interval clustered by problem id
(:func:`ttc.evals.stats.clustered_proportion_interval`): a problem seen under several
seeds is one cluster, not several independent samples, and 3/3 does not give [1, 1].
:func:`bootstrap_ci` (percentile bootstrap over values, seeded) serves other means.
Failed records (a problem whose solve raised: ``error`` is set, see
:mod:`ttc.evals.runner`) have no answer and no ledger; :func:`summarize` counts them
(``failed``, ``failed_ids``) and computes every metric over the other records
(``problems``), so a failure is never scored as a wrong answer nor silently dropped.
Must NOT know: strategies, engines, file formats.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Sequence

import numpy as np

from ttc.answers import answer_key
from ttc.evals.stats import clustered_proportion_interval


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples of which ``c`` are correct."""
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n; got n={n}, c={c}.")
    if k <= 0 or k > n:
        raise ValueError(f"pass@k needs 1 <= k <= n; got k={k}, n={n}.")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> bool:
    """Is the most common answer class among the first ``k`` candidates correct?
    Ties go to the class seen first; candidates without an answer do not vote."""
    counts: Counter[str] = Counter()
    first_ok: dict[str, bool] = {}
    for ans, ok in zip(list(answers)[:k], list(correct)[:k]):
        if ans is None:
            continue
        key = answer_key(ans)
        counts[key] += 1
        first_ok.setdefault(key, ok)
    if not counts:
        return False
    best = max(counts.values())
    winner = next(key for key in first_ok if counts[key] == best)
    return first_ok[winner]


def bootstrap_ci(values: Sequence[float], *, stat: Callable[[np.ndarray], float] = np.mean,
                 resamples: int = 1000, level: float = 0.95, seed: int = 0
                 ) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over ``values`` (resampled with replacement)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(resamples, arr.size))
    stats = np.array([stat(arr[row]) for row in idx]) if stat is not np.mean else arr[idx].mean(1)
    alpha = (1 - level) / 2
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def is_failed(record: dict[str, Any]) -> bool:
    """A record written for a problem whose solve raised (it carries ``error``)."""
    return record.get("error") is not None


def summarize(records: Sequence[dict[str, Any]], *, ks: Sequence[int] = (1, 4, 8)
              ) -> dict[str, Any]:
    """Accuracy with a CI, pass@k/majority@k where candidates allow, mean compute, over the
    records that were graded; failed records are counted (``records`` = both).

    The accuracy interval clusters records by their problem ``id`` (records without one
    count as distinct problems).
    """
    if not records:
        raise ValueError("no records to summarize.")
    failed = [str(r["id"]) for r in records if is_failed(r)]
    head: dict[str, Any] = {"records": len(records), "failed": len(failed),
                            "failed_ids": failed}
    records = [r for r in records if not is_failed(r)]
    if not records:
        return {"problems": 0, **head}
    correct = np.array([1.0 if r["correct"] else 0.0 for r in records])
    led = [r["ledger"] for r in records]
    tokens = np.array([x["generated_tokens"] for x in led], dtype=float)
    clusters = [r.get("id", ("record", i)) for i, r in enumerate(records)]
    lo, hi = clustered_proportion_interval(correct, clusters)
    out: dict[str, Any] = {
        "problems": len(records),
        "accuracy": float(correct.mean()), "accuracy_ci_low": lo, "accuracy_ci_high": hi,
        "generated_tokens_per_problem": float(tokens.mean()),
        "prefill_tokens_per_problem": float(np.mean([x["prefill_tokens"] for x in led])),
        "verifier_calls_per_problem": float(np.mean([x["verifier_calls"] for x in led])),
        "kv_peak_bytes_mean": float(np.mean([x["peak_kv_bytes"] for x in led])),
        "kv_peak_bytes_max": int(max(x["peak_kv_bytes"] for x in led)),
        "wall_seconds_per_problem": float(np.mean([r.get("wall_seconds", 0.0) for r in records])),
        "budget_exhausted_share": float(np.mean([bool(r.get("budget_exhausted")) for r in records])),
        "ungradable_problems": int(sum(bool(r.get("ungradable")) for r in records)),
        **head,
    }
    n_min = min(len(r.get("candidate_answers", [])) for r in records)
    for k in ks:
        if k <= n_min:
            out[f"pass@{k}"] = float(np.mean([
                pass_at_k(len(r["candidate_correct"]), sum(r["candidate_correct"]), k)
                for r in records]))
            out[f"majority@{k}"] = float(np.mean([
                majority_correct(r["candidate_answers"], r["candidate_correct"], k)
                for r in records]))
    return out
