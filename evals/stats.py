"""Intervals for research claims: seed replicates, clustered proportions, tokens to reach.

Contract: pure functions of numbers (no I/O, no randomness).

* :func:`mean_interval` -- mean and Student-t interval over independent replicates (one
  value per seed: each seed draws a new problem set AND new sampling, so replicates are
  independent and the t interval is honest about seed-to-seed variation).
* :func:`wilson_interval` -- a single proportion; never collapses to [1, 1] at 3/3.
* :func:`clustered_proportion_interval` -- a proportion over records that repeat
  problems (one problem under two seeds is one cluster, not two samples): the Wilson
  interval at the effective sample size ``n / deff``, where the design effect ``deff``
  compares the cluster-robust variance of the mean with the binomial one (Korn and
  Graubard 1998). With no problem repeated it is exactly :func:`wilson_interval`.
* :func:`tokens_to_reach` -- the tokens at which an accuracy-vs-tokens curve first
  reaches a target, linearly interpolated between the two points that bracket it;
  a curve that never reaches the target says so (``not reached within N tokens``), and
  :func:`reach_ratio` refuses a ratio unless both curves reached the target.

Must NOT know: strategies, engines, verifiers, file formats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Hashable, Sequence

from scipy import stats as _st


@dataclass(frozen=True, slots=True)
class Estimate:
    """A mean with its interval over ``n`` replicates (``sd``: their standard deviation)."""

    mean: float
    low: float
    high: float
    n: int
    sd: float

    def fmt(self, digits: int = 3, *, signed: bool = False, suffix: str = "") -> str:
        sign = "+" if signed else ""
        return (f"{self.mean:{sign}.{digits}f}{suffix} [{self.low:{sign}.{digits}f}, "
                f"{self.high:{sign}.{digits}f}]")

    def excludes(self, value: float) -> bool:
        """Is ``value`` outside the interval (the effect is not luck at this level)?"""
        return not self.low <= value <= self.high


def mean_interval(values: Sequence[float], *, level: float = 0.95) -> Estimate:
    """Mean of independent replicates with a two-sided Student-t interval.

    One value is not an interval: it raises, so no claim rests on one seed.
    """
    xs = [float(v) for v in values]
    if len(xs) < 2:
        raise ValueError(f"an interval needs at least 2 replicates; got {len(xs)}.")
    if any(math.isnan(v) for v in xs):
        raise ValueError("replicates must be numbers; got NaN (drop unmatched seeds first).")
    n = len(xs)
    mean = sum(xs) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in xs) / (n - 1))
    half = float(_st.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return Estimate(mean=mean, low=mean - half, high=mean + half, n=n, sd=sd)


def wilson_interval(successes: float, n: float, *, level: float = 0.95
                    ) -> tuple[float, float]:
    """Wilson score interval for ``successes`` out of ``n`` (non-integer n allowed)."""
    if n <= 0:
        raise ValueError(f"a proportion needs n > 0; got n={n!r}.")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n]; got {successes!r} of {n!r}.")
    z = float(_st.norm.ppf(0.5 + level / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # NOTE: at p = 0 (p = 1) the lower (upper) end is exactly 0 (1); rounding may not say so.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def clustered_proportion_interval(correct: Sequence[bool | float],
                                  clusters: Sequence[Hashable], *, level: float = 0.95
                                  ) -> tuple[float, float]:
    """Wilson interval for the share of ``correct``, counting each cluster's records as
    correlated (a problem seen under several seeds is one cluster).

    ``n_eff = p(1-p) / V_cluster`` with the cluster-robust (CR1) variance of the mean,
    clipped to [1, n]. When p is 0 or 1 the correlation cannot be estimated and each
    cluster counts once (``n_eff`` = number of clusters), the conservative choice.
    """
    ys = [float(c) for c in correct]
    if len(ys) != len(clusters):
        raise ValueError(f"correct and clusters must be the same length; got {len(ys)} "
                         f"and {len(clusters)}.")
    n = len(ys)
    if n == 0:
        raise ValueError("a proportion needs at least one record.")
    sums: dict[Hashable, list[float]] = {}
    for y, c in zip(ys, clusters):
        acc = sums.setdefault(c, [0.0, 0.0])
        acc[0] += y
        acc[1] += 1
    m = len(sums)
    p = sum(ys) / n
    if m == n:
        return wilson_interval(sum(ys), n, level=level)
    if p in (0.0, 1.0) or m < 2:
        n_eff = float(m)
    else:
        # NOTE: CR1 variance of a ratio mean: residual sums per cluster, m/(m-1) correction.
        v_cluster = m / (m - 1) * sum((s - k * p) ** 2 for s, k in sums.values()) / n ** 2
        n_eff = n if v_cluster <= 0 else p * (1 - p) / v_cluster
        n_eff = min(float(n), max(1.0, n_eff))
    return wilson_interval(p * n_eff, n_eff, level=level)


class ReachKind(Enum):
    INTERPOLATED = "interpolated"      # between two measured points that bracket the target
    AT_FIRST_POINT = "at_first_point"  # the cheapest point already reaches it: an upper bound
    NOT_REACHED = "not_reached"        # no point reaches it


@dataclass(frozen=True, slots=True)
class Reach:
    """Where a curve first reaches a target accuracy."""

    kind: ReachKind
    tokens: float | None        # None when not reached
    max_tokens: float           # the most tokens any point of the curve spent

    @property
    def reached(self) -> bool:
        return self.kind is not ReachKind.NOT_REACHED

    def describe(self) -> str:
        if self.kind is ReachKind.NOT_REACHED:
            return f"not reached within {self.max_tokens:,.0f} tokens"
        if self.kind is ReachKind.AT_FIRST_POINT:
            return f"<= {self.tokens:,.0f} tokens (its cheapest point)"
        return f"{self.tokens:,.0f} tokens"


def tokens_to_reach(points: Sequence[tuple[float, float]], target: float) -> Reach:
    """First crossing of ``target`` on a curve of ``(tokens, accuracy)`` points.

    Points are ordered by tokens; the answer interpolates linearly between the last
    point below the target and the first point at or above it. Accuracy may dip
    between points (noise); the first crossing is what "tokens to reach" means.
    """
    if not points:
        raise ValueError("tokens_to_reach needs at least one point.")
    pts = sorted((float(x), float(y)) for x, y in points)
    max_tokens = pts[-1][0]
    if pts[0][1] >= target:
        return Reach(ReachKind.AT_FIRST_POINT, pts[0][0], max_tokens)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if y1 >= target:            # y0 < target here (else an earlier pair returned)
            return Reach(ReachKind.INTERPOLATED, x0 + (x1 - x0) * (target - y0) / (y1 - y0),
                         max_tokens)
    return Reach(ReachKind.NOT_REACHED, None, max_tokens)


def reach_ratio(slow: Reach, fast: Reach) -> float | None:
    """``slow.tokens / fast.tokens`` when both were interpolated; otherwise None (a curve
    that never reaches the target has no token count to divide, and a cheapest point
    that already reaches it is only an upper bound)."""
    if slow.kind is ReachKind.INTERPOLATED and fast.kind is ReachKind.INTERPOLATED:
        return slow.tokens / fast.tokens
    return None
