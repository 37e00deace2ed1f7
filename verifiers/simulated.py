"""A simulated process reward model with a configurable quality (target AUROC).

Contract: scores trajectories produced by the simulated backend. It reads each step's
truth from its tag (keyed by ``world_seed``, the same as the backend's); a prefix is
"good" while every step so far is correct (errors are absorbing). The score of step t is

    sigmoid(mu * (+1 if good else -1) + z),   z ~ N(0, 1) fixed per (problem, prefix)

With equal-variance Gaussian classes separated by 2*mu, the AUROC of the logit is
Phi(2*mu / sqrt(2)), so ``mu = Phi^-1(auroc) / sqrt(2)``. With ``path_correlation``
rho > 0 the noise is an AR(1) walk along the path, ``z_t = rho z_(t-1) + sqrt(1 - rho^2)
e_t`` (e_t fixed per prefix; z_0 = e_0): still N(0, 1) at every step (the AUROC is
unchanged), but a PRM that over-rates a path early keeps over-rating it (rho = 0: the
old independent noise). ``auroc=1`` is a perfect PRM
(scores exactly 1 or 0); ``auroc=0.5`` is noise. Scores are deterministic: rescoring a
prefix gives the same numbers, so incremental and full scoring agree.
Verifier tokens are words (the simulated tokenizer); with ``incremental=True`` a prefix
scored before is served from a cache and only new steps are charged.
Must NOT know: how the trajectories were searched.
"""

from __future__ import annotations

import hashlib
import math
import re
from statistics import NormalDist
from typing import Literal, Sequence

from pydantic import Field

from ttc.engine.backends.simulated import tag_is_correct
from ttc.registry import VERIFIERS
from ttc.types import Frozen, Problem, ScoreOutput, VerifierUsage

_TAG = re.compile(r"\[([0-9a-f]{8})\]")


class SimulatedPRMConfig(Frozen):
    name: Literal["simulated"] = "simulated"
    world_seed: int = 0
    auroc: float = Field(default=0.9, ge=0.5, le=1.0)
    incremental: bool = True
    noise_seed: int = 0
    path_correlation: float = Field(default=0.0, ge=0.0, lt=1.0)


def step_is_correct(world_seed: int, step: str) -> bool:
    """A step is correct when it carries a correct tag; a bare answer step inherits."""
    tags = _TAG.findall(step)
    return all(tag_is_correct(world_seed, t) for t in tags)


class SimulatedPRM:
    def __init__(self, config: SimulatedPRMConfig | None = None) -> None:
        self.config = config or SimulatedPRMConfig()
        self.incremental = self.config.incremental
        auroc = min(self.config.auroc, 1.0 - 1e-9)
        self._mu = NormalDist().inv_cdf(auroc) / math.sqrt(2.0)
        self._cache: set[tuple[str, tuple[str, ...]]] = set()
        self.tokens_run = 0           # every token this PRM scored (a ledger adds up to it)

    def _noise(self, problem: Problem, prefix: tuple[str, ...]) -> float:
        digest = hashlib.blake2b(repr((self.config.noise_seed, problem.id, prefix)).encode(),
                                 digest_size=8).digest()
        u = (int.from_bytes(digest, "little") + 0.5) / 2**64
        return NormalDist().inv_cdf(u)

    def _path_noise(self, problem: Problem, prefix: tuple[str, ...]) -> float:
        """The noise of the last step of ``prefix``: independent, or AR(1) along the path."""
        rho = self.config.path_correlation
        if rho == 0.0:
            return self._noise(problem, prefix)
        z = self._noise(problem, prefix[:1])
        for t in range(2, len(prefix) + 1):
            z = rho * z + math.sqrt(1.0 - rho * rho) * self._noise(problem, prefix[:t])
        return z

    def _score_prefix(self, problem: Problem, prefix: tuple[str, ...], good: bool) -> float:
        if self.config.auroc >= 1.0:
            return 1.0 if good else 0.0
        z = self._mu * (1.0 if good else -1.0) + self._path_noise(problem, prefix)
        return 1.0 / (1.0 + math.exp(-z))

    def score(self, problem: Problem, trajectories: Sequence[Sequence[str]]) -> ScoreOutput:
        out: list[tuple[float, ...]] = []
        tokens = cached = 0
        for steps in trajectories:
            steps = tuple(steps)
            if any(not s.strip() for s in steps):
                raise ValueError(f"problem {problem.id!r}: a trajectory has an empty step.")
            good = True
            scores = []
            for t in range(len(steps)):
                good = good and step_is_correct(self.config.world_seed, steps[t])
                scores.append(self._score_prefix(problem, steps[: t + 1], good))
                n_tok = len(steps[t].split())
                key = (problem.id, steps[: t + 1])
                if self.incremental and key in self._cache:
                    cached += n_tok
                else:
                    tokens += n_tok
                    if self.incremental:
                        self._cache.add(key)
            out.append(tuple(scores))
        self.tokens_run += tokens
        return ScoreOutput(scores=tuple(out), usage=VerifierUsage(
            calls=len(trajectories), tokens=tokens, cached_tokens=cached))


@VERIFIERS.register(SimulatedPRMConfig)
def build_simulated_prm(config: SimulatedPRMConfig, **_: object) -> SimulatedPRM:
    return SimulatedPRM(config)
