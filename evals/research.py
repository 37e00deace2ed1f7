"""What the research scripts (``scripts/research_strategies_*.py``) share to report a check.

Contract: plain functions over per-seed points (dicts with ``correct``, ``problems`` and
cost keys) and :class:`~ttc.evals.stats.Estimate` values:

    pooled(points, costs)        pooled accuracy with its Wilson interval, mean costs
    markdown_table(rows, header) a Markdown table (floats to 3 digits)
    accuracy_cell(point)         "0.634 [0.601, 0.666]"
    estimate_cell(e, ...)        an Estimate, or "no seed matched"
    interval_verdict(e, t)       where the 95% interval lies relative to t, in words
    error_bars(ax, xs, points)   accuracy with its interval on a matplotlib axis

Must NOT know: strategies, engines, which check is being reported.
"""

from __future__ import annotations

from typing import Any, Sequence

from ttc.evals.stats import Estimate, wilson_interval


def pooled(points: Sequence[dict[str, float]], costs: Sequence[str] = ("tokens",)
           ) -> dict[str, float]:
    """One configuration over seeds: pooled accuracy (Wilson) and the mean of each cost."""
    correct = sum(p["correct"] for p in points)
    total = sum(p["problems"] for p in points)
    lo, hi = wilson_interval(correct, total)
    out = {"accuracy": correct / total, "low": lo, "high": hi, "problems": total}
    for key in costs:
        out[key] = sum(p[key] for p in points) / len(points)
    return out


def markdown_table(rows: list[list[Any]], header: list[str]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        out.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v)
                                     for v in r) + " |")
    return "\n".join(out)


def accuracy_cell(point: dict[str, float]) -> str:
    return f"{point['accuracy']:.3f} [{point['low']:.3f}, {point['high']:.3f}]"


def estimate_cell(e: Estimate | None, **fmt: Any) -> str:
    return "no seed matched" if e is None else e.fmt(**fmt)


def interval_verdict(e: Estimate | None, threshold: float, *, subject: str = "the interval"
                     ) -> str:
    """Where the 95% interval lies relative to ``threshold``, in words."""
    if e is None:
        return "cannot be estimated (no seed matched)"
    if e.low > threshold:
        return f"{subject} lies above {threshold:g}"
    if e.high < threshold:
        return f"{subject} lies below {threshold:g}"
    return f"{subject} contains {threshold:g}"


def error_bars(ax: Any, xs: Sequence[float], points: Sequence[dict[str, float]], fmt: str,
               label: str) -> None:
    ax.errorbar(xs, [p["accuracy"] for p in points],
                yerr=[[p["accuracy"] - p["low"] for p in points],
                      [p["high"] - p["accuracy"] for p in points]],
                fmt=fmt, capsize=2, label=label)
