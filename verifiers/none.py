"""The ``none`` verifier: for strategies that need no verifier; scoring with it is an error.

Contract: ``score`` raises :class:`~ttc.registry.ConfigError` naming the calling
situation and how to fix it (``verifier=judge``, ``verifier=simulated``...), rather than
returning a constant that would pass as a score while costing nothing.
Must NOT know: which strategy is calling (the message cannot name it; the metered view
or pipeline may add it).
"""

from __future__ import annotations

from typing import Literal, Sequence

from ttc.registry import VERIFIERS, ConfigError
from ttc.types import Frozen, Problem, ScoreOutput


class NoVerifierConfig(Frozen):
    name: Literal["none"] = "none"


class NoVerifier:
    incremental = False

    def score(self, problem: Problem, trajectories: Sequence[Sequence[str]]) -> ScoreOutput:
        raise ConfigError("this strategy needs a verifier but verifier=none; set verifier=... "
                          "(e.g. verifier=judge, verifier=simulated or a PRM such as "
                          "verifier=qwen_prm).")


@VERIFIERS.register(NoVerifierConfig)
def build_none(config: NoVerifierConfig, **_: object) -> NoVerifier:
    return NoVerifier()
