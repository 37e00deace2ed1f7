"""RPC: perplexity consistency with reasoning pruning (docs/algorithms.md#rpc; Zhou et al.).

    paths = LM.sample(x, n=N)                       # ONE expand call, with log-probs
    p = [exp(mean token log-prob of path) for path in paths]
    (w1, k1, l1, k2, l2) = fit 2-component Weibull mixture to p by max likelihood,
                           init (0.5, 1, 1, 1.5, 2), w1 in [0.2, 0.8]
    component 1 := the one with the larger mean
    keep = [i : not (post1(p_i) < post2(p_i) and p_i < mean(p))]       # reasoning pruning
    score[a] = sum(p(t) for distinct path texts t in keep with answer a) # perplexity consistency
    return argmax_a score[a]                        # confidence = score[a] / sum(score)

A path is pruned only when the low-probability component explains it better *and* it is
below the mean probability; identical texts count once. No verifier calls. The fit,
the pruned paths and the answer scores are kept in ``Result.info["rpc"]``.
Must NOT know: engine internals.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

from pydantic import Field, PositiveInt

from ttc.answers import answer_key
from ttc.strategies.base import SearchContext, SearchStrategy, StrategyConfig, register
from ttc.strategies.common import first_step_guard, mark_step_done
from ttc.types import Candidate


class RPCConfig(StrategyConfig):
    name: Literal["rpc"] = "rpc"
    n: PositiveInt = Field(default=8, description="N: sampled reasoning paths")
    prune: bool = Field(default=True, description="reasoning pruning (Weibull mixture)")


def _weibull_logpdf(x, k: float, scale: float):
    # x: [num_paths] > 0 -> [num_paths]; log of k/l (x/l)^(k-1) exp(-(x/l)^k)
    import numpy as np

    z = np.log(x) - np.log(scale)
    return np.log(k) - np.log(scale) + (k - 1.0) * z - np.exp(np.clip(k * z, -700.0, 700.0))


def fit_weibull_mixture(p: Sequence[float]) -> tuple[float, float, float, float, float]:
    """Max-likelihood 2-component Weibull mixture (w1, k1, l1, k2, l2), component 1 the
    one with the larger mean. ``p`` are path probabilities in (0, 1]."""
    import numpy as np
    from scipy.optimize import minimize

    x = np.clip(np.asarray(p, dtype=float), 1e-12, None)

    def nll(theta: np.ndarray) -> float:
        w1, k1, l1, k2, l2 = theta
        a = np.log(w1) + _weibull_logpdf(x, k1, l1)
        b = np.log(1.0 - w1) + _weibull_logpdf(x, k2, l2)
        return float(-np.logaddexp(a, b).sum())

    res = minimize(nll, x0=np.array([0.5, 1.0, 1.0, 1.5, 2.0]), method="L-BFGS-B",
                   bounds=[(0.2, 0.8), (0.05, 500.0), (1e-3, 10.0), (0.05, 500.0),
                           (1e-3, 10.0)])
    w1, k1, l1, k2, l2 = (float(v) for v in res.x)
    if _weibull_mean(k1, l1) < _weibull_mean(k2, l2):
        w1, k1, l1, k2, l2 = 1.0 - w1, k2, l2, k1, l1
    return w1, k1, l1, k2, l2


def _weibull_mean(k: float, scale: float) -> float:
    return scale * math.gamma(1.0 + 1.0 / k)


def prune_mask(p: Sequence[float], fit: tuple[float, float, float, float, float]) -> list[bool]:
    """True for paths kept: not (post_low > post_high and p_i < mean(p))."""
    import numpy as np

    w1, k1, l1, k2, l2 = fit
    x = np.clip(np.asarray(p, dtype=float), 1e-12, None)
    high = np.log(w1) + _weibull_logpdf(x, k1, l1)      # log w1 f1(p_i)
    low = np.log(1.0 - w1) + _weibull_logpdf(x, k2, l2)
    mean_p = float(x.mean())
    return [not (h < lo and pi < mean_p) for h, lo, pi in zip(high, low, x)]


def perplexity_consistency(texts: Sequence[str], answers: Sequence[str | None],
                           p: Sequence[float], keep: Sequence[bool]) -> dict[str, float]:
    """score[a] = sum of p over distinct kept path texts with answer class a."""
    seen: set[str] = set()
    score: dict[str, float] = {}
    for text, ans, pi, k in zip(texts, answers, p, keep):
        key = answer_key(ans)
        if not k or key is None or text in seen:
            continue
        seen.add(text)
        score[key] = score.get(key, 0.0) + pi
    return score


@register(RPCConfig)
class RPC(SearchStrategy):
    config: RPCConfig

    def search(self, ctx: SearchContext) -> None:
        cfg = self.config
        with first_step_guard(ctx, branches=cfg.n):
            (paths,) = ctx.expand([ctx.root], n=cfg.n,
                                  params=ctx.solution_params(ctx.seed("rpc")))
            mark_step_done(ctx, paths)
        cands = [ctx.offer(node) for node in paths]
        ctx.release(paths, prune=False)
        p = [math.exp(c.mean_logprob) if c.mean_logprob is not None else 0.0 for c in cands]
        fit = None
        keep = [True] * len(p)
        if cfg.prune and len(p) >= 2 and len(set(p)) > 1:
            fit = fit_weibull_mixture(p)
            keep = prune_mask(p, fit)
        scores = perplexity_consistency([c.text for c in cands], [c.answer for c in cands],
                                        p, keep)
        total = sum(scores.values())
        ctx.info["rpc"] = {"p": p, "keep": keep, "fit": fit, "scores": scores,
                           "confidence": (max(scores.values()) / total) if total else None}
        ctx.emit(step=1, live=0, best_score=ctx.info["rpc"]["confidence"],
                 note=f"{len(p) - sum(keep)} pruned")

    def choose(self, ctx: SearchContext) -> Candidate | None:
        info = ctx.info.get("rpc")
        if not info or not info["scores"]:
            return super().choose(ctx)
        winner = max(info["scores"], key=lambda k: info["scores"][k])
        members = [(pi, c) for c, pi in zip(ctx.candidates, info["p"])
                   if answer_key(c.answer) == winner]
        return max(members, key=lambda m: m[0])[1]
