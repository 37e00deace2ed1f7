"""Certaindex: how settled a program's answers are, in [0, 1] (docs/algorithms.md#dynasor-and-certaindex).

    answer entropy   H  = -sum_i (|C_i| / n) log(|C_i| / n)   over the n answers' classes
                     H~ = (log n - H) / log n                 1 = unanimous, 0 = all differ
    reward           R  = mean (or max) of normalised terminal rewards in [0, 1]

A program (self-consistency, a tree search) checks it at its detection point and stops
when it clears the threshold; with several signals all must pass. The same number is a
per-problem signal a dataset-level allocator can read (``Result.info["certaindex"]``):
a low value marks a problem that more samples could still change.
Samples without an answer form no class and are left out of n.
Must NOT know: engines, verifiers, strategies.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

from ttc.answers import answer_key


def answer_certaindex(answers: Sequence[str | None]) -> float:
    """H~ of the answers' classes: 1 when all agree (or only one answered), 0 when all differ.

    With no answer at all it is 0 (nothing is settled).
    """
    keys = [k for k in (answer_key(a) for a in answers) if k is not None]
    n = len(keys)
    if n == 0:
        return 0.0
    if n == 1:
        return 1.0
    counts: dict[str, int] = {}
    for k in keys:
        counts[k] = counts.get(k, 0) + 1
    h = -sum(c / n * math.log(c / n) for c in counts.values())
    return (math.log(n) - h) / math.log(n)


def reward_certaindex(rewards: Sequence[float], how: Literal["mean", "max"] = "mean") -> float:
    """The mean (MCTS) or max (REBASE) of terminal rewards in [0, 1]; 0 with none."""
    for r in rewards:
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"certaindex rewards must be in [0, 1]; got {r!r}.")
    if not rewards:
        return 0.0
    if how == "mean":
        return sum(rewards) / len(rewards)
    if how == "max":
        return max(rewards)
    raise ValueError(f"unknown reward certaindex {how!r}; allowed: mean, max.")


def certaindex_check(answers: Sequence[str | None], rewards: Sequence[float], *,
                     entropy: float | None, reward: float | None,
                     reward_how: Literal["mean", "max"]) -> dict[str, float | bool]:
    """Evaluate the configured signals; ``stop`` when every configured one passes.

    ``entropy``: stop needs H~ >= it; ``reward``: stop needs the mean/max reward >= it.
    With neither configured, ``stop`` is False (no early stop).
    """
    record: dict[str, float | bool] = {"answers": float(len(answers))}
    passed: list[bool] = []
    if entropy is not None:
        record["entropy"] = answer_certaindex(answers)
        passed.append(record["entropy"] >= entropy)
    if reward is not None:
        record["reward"] = reward_certaindex([min(1.0, max(0.0, r)) for r in rewards],
                                             reward_how)
        passed.append(record["reward"] >= reward)
    record["stop"] = bool(passed) and all(passed)
    return record
