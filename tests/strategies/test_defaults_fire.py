"""Every adaptive strategy's mechanism fires at its registered defaults.

Each test builds the strategy from its name alone (``STRATEGIES.make_config({"name": ...})``,
the defaults ``ttc strategies`` shows), with the default generation settings and the
default budget, on the simulated engine, and checks that the mechanism the strategy
exists for did something: DeepConf stops traces online, Dynasor exits a chain early,
budget forcing inserts "Wait", self-evaluation stops sampling before its cap, MCTS's
certaindex stops the search, SpecReason's judge rejects some drafts and keeps others.
A default that silently disables its own mechanism (a window longer than any trace,
``extend: 0``) fails here.
"""

from __future__ import annotations

from fakes import model_pair, thinking_engine, world
from ttc.config import GenerationConfig
from ttc.engine.backends.simulated import SimulatedBackendConfig, SimulatedGenerator
from ttc.ledger import Budget
from ttc.registry import STRATEGIES
from ttc.types import Problem
from ttc.verifiers.none import NoVerifier


def _defaults(name: str, gen, *, problem: Problem, verifier=None, draft=None):
    config = STRATEGIES.make_config({"name": name})
    strategy = STRATEGIES.build(config, generation=GenerationConfig())
    return strategy.run(problem, generator=gen, verifier=verifier or NoVerifier(),
                        budget=Budget(), draft=draft)


def _problem(difficulty: float, num_steps: int = 5, pid: str = "d") -> Problem:
    return Problem(id=pid, question=f"Simulated defaults problem {pid}.", answer="321",
                   metadata={"difficulty": difficulty, "num_steps": num_steps})


def test_deepconf_stops_traces_online_at_its_defaults():
    stopped = 0
    for seed in range(3):
        gen = SimulatedGenerator(SimulatedBackendConfig(world_seed=seed, logprob_auroc=0.75))
        r = _defaults("deepconf", gen, problem=_problem(0.7, pid=f"dc{seed}"))
        info = r.info["deepconf"]
        assert info["window"] <= GenerationConfig().max_tokens
        assert info["traces"] > info["warmup"]          # an online phase ran
        stopped += info["stopped"]
    assert stopped > 0


def test_dynasor_exits_early_at_its_defaults():
    ends = []
    for seed in range(8):
        gen = SimulatedGenerator(SimulatedBackendConfig(world_seed=seed))
        r = _defaults("dynasor", gen, problem=_problem(0.2, num_steps=12, pid=f"dy{seed}"))
        ends += [c["end"] for c in r.info["dynasor"]]
    assert "probe_exit" in ends


def test_budget_forcing_inserts_wait_at_its_defaults():
    r = _defaults("budget_forcing", thinking_engine(), problem=_problem(0.5))
    assert r.info["waits"] == 1
    assert "Wait" in r.candidates[0].text
    assert r.ledger.forced_tokens >= 1


def test_self_eval_stops_sampling_before_its_cap_at_its_defaults():
    gen, prm = world(auroc=0.95)
    config = STRATEGIES.make_config({"name": "self_eval"})
    r = _defaults("self_eval", gen, problem=_problem(0.1), verifier=prm)
    assert r.info["stopped_by"] == "threshold"
    assert r.info["samples"] < config.max_samples


def test_mcts_certaindex_stops_at_its_defaults():
    gen, prm = world(auroc=0.95)
    config = STRATEGIES.make_config({"name": "mcts"})
    r = _defaults("mcts", gen, problem=_problem(0.05, num_steps=3), verifier=prm)
    assert r.info["certaindex"]["stop"] is True
    assert r.info["certaindex"]["simulations"] < config.n_simulations


def test_spec_reason_judge_keeps_and_rejects_at_its_defaults():
    large, small = model_pair()
    kept = rewritten = 0
    for pid in ("s1", "s2", "s3"):
        r = _defaults("spec_reason", large, problem=_problem(0.6, pid=pid), draft=small)
        kept += r.info["accepted"]
        rewritten += r.info["rewritten"]
    assert kept > 0 and rewritten > 0


def test_ttc_strategies_shows_the_paper_defaults():
    from typer.testing import CliRunner

    from ttc.cli import app

    out = CliRunner().invoke(app, ["strategies"], env={"COLUMNS": "400"}).output
    lines = {line.split("│")[1].strip(): line for line in out.splitlines()
             if line.count("│") >= 3 and line.split("│")[1].strip()}
    assert "traces=256" in lines["deepconf"] and "temperature=0.6" in out
    assert "extend=1" in lines["budget_forcing"]        # s1's NUM_IGNORE = 1
    assert "threshold=7" in lines["spec_reason"]
    assert "certaindex_entropy=0.99" in out
