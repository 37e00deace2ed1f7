"""Certaindex as the early stop of MCTS and REBASE: a settled search stops, an unsettled
one runs on, and off means off."""

from __future__ import annotations

from fakes import ScriptedGenerator

from ttc.engine.backends.simulated import SimulatedBackendConfig, SimulatedGenerator
from ttc.strategies.certaindex import certaindex_check
from ttc.strategies.mcts import MCTS, MCTSConfig
from ttc.strategies.rebase import Rebase, RebaseConfig
from ttc.types import FinishReason, Problem
from ttc.verifiers.simulated import SimulatedPRM, SimulatedPRMConfig

EASY = Problem(id="easy", question="Easy one.", answer="12",
               metadata={"difficulty": 0.0, "num_steps": 4})


def _run(strategy, problem=EASY):
    return strategy.run(problem, generator=SimulatedGenerator(SimulatedBackendConfig()),
                        verifier=SimulatedPRM(SimulatedPRMConfig(auroc=0.9)))


def test_check_needs_every_configured_signal():
    rec = certaindex_check(["1", "1"], [0.2, 0.4], entropy=0.9, reward=0.5, reward_how="max")
    assert rec["entropy"] == 1.0 and rec["reward"] == 0.4 and rec["stop"] is False
    assert certaindex_check(["1", "1"], [], entropy=0.9, reward=None,
                            reward_how="mean")["stop"] is True
    assert certaindex_check(["1"], [1.0], entropy=None, reward=None,
                            reward_how="mean")["stop"] is False


def test_a_settled_mcts_stops_early():
    full = _run(MCTS(MCTSConfig(n_simulations=24, certaindex_entropy=None,
                                certaindex_reward=None)))
    early = _run(MCTS(MCTSConfig(n_simulations=24, certaindex_entropy=0.9,
                                 certaindex_reward=None, certaindex_at=2)))
    assert early.info["certaindex"]["stop"] is True
    assert early.ledger.generated_tokens < full.ledger.generated_tokens
    assert early.answer == full.answer == "12"
    assert "certaindex" not in full.info


def _early_leaves(call, request, sample):
    """Depth 0: four samples state 7 and end, the rest go on; deeper: one more step."""
    if call == 0 and sample < 4:
        return "so the answer is \\boxed{7}.", FinishReason.EOS
    return "a step\n\n", FinishReason.STOP


def test_a_settled_rebase_stops_early():
    # the simulator ends every trace of a problem at the same depth, so leaves that
    # finish early are scripted
    prm = SimulatedPRM(SimulatedPRMConfig(auroc=0.9))
    early_gen, full_gen = ScriptedGenerator(_early_leaves), ScriptedGenerator(_early_leaves)
    cfg = RebaseConfig(width=16, max_depth=3)
    full = Rebase(cfg).run(EASY, generator=full_gen, verifier=prm)
    early = Rebase(cfg.model_copy(update={"certaindex_entropy": 0.9, "certaindex_at": 4})).run(
        EASY, generator=early_gen, verifier=prm)
    assert early.info["certaindex"] == {"answers": 4.0, "entropy": 1.0, "stop": True,
                                        "depth": 1}
    assert len(early_gen.asked) == 1 < len(full_gen.asked)
    assert early.answer == "7"


def test_an_unsettled_rebase_runs_on():
    def split_leaves(call, request, sample):
        if call == 0 and sample < 4:                 # four different answers: H~ = 0
            return f"so the answer is \\boxed{{{7 + sample}}}.", FinishReason.EOS
        return "a step\n\n", FinishReason.STOP
    prm = SimulatedPRM(SimulatedPRMConfig(auroc=0.9))
    gen, plain = ScriptedGenerator(split_leaves), ScriptedGenerator(split_leaves)
    cfg = RebaseConfig(width=16, max_depth=3)
    r = Rebase(cfg.model_copy(update={"certaindex_entropy": 0.5, "certaindex_at": 4})).run(
        EASY, generator=gen, verifier=prm)
    Rebase(cfg).run(EASY, generator=plain, verifier=prm)
    assert r.info["certaindex"]["stop"] is False and r.info["certaindex"]["entropy"] == 0.0
    assert gen.asked == plain.asked                  # the same search as with it off
