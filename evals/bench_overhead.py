"""``ttc bench overhead``: ttc's own orchestration time per search step vs generation time.

Contract: runs a few registered strategies (best_of_n, beam, astar, dvts where
registered) on simulated problems. Per problem the ledger splits wall time into
``generate`` / ``verify`` / ``orchestrate`` (everything outside generator and verifier
calls: the strategy loop, the search tree, metering, selection). A search step is one
``expand`` call (``lm_calls``). The simulated engine accumulates ``modelled_seconds``,
what its work would take on a real engine (prefill rate, per-decode-step cost growing with
batch). Reported per strategy:

    orchestration_ms_per_step       ledger orchestrate seconds / expand calls
    modelled_generation_ms_per_step modelled engine seconds / expand calls
    ratio overhead_<strategy>       orchestration / modelled generation (lower is better)

A ratio well below 1 means the search layer would not be the bottleneck on a real engine.
The simulated engine's own Python time is reported too (``simulator_ms_per_step``), but
it is not part of ttc's overhead.
Must NOT know: strategy internals.
"""

from __future__ import annotations

import time

from ttc.types import BenchReport
from ttc.config import GenerationConfig
from ttc.ledger import Budget
from ttc.registry import STRATEGIES

CANDIDATES = ("best_of_n", "beam", "astar", "dvts")


def run(*, quick: bool) -> BenchReport:
    from ttc.engine.backends.simulated import SimulatedBackendConfig, SimulatedGenerator
    from ttc.evals.tasks import make_problems
    from ttc.verifiers.simulated import SimulatedPRMConfig, build_simulated_prm

    problems = make_problems(8 if quick else 40, seed=11, difficulty=(0.2, 0.8))
    budget = Budget(max_generated_tokens=2048 if quick else 4096)
    generation = GenerationConfig()
    report = BenchReport(name="overhead")
    report.notes.append(f"{len(problems)} simulated problems, budget "
                        f"{budget.max_generated_tokens} generated tokens, default "
                        f"strategy configs; step = one expand call")
    for name in CANDIDATES:
        if name not in STRATEGIES:
            report.notes.append(f"{name}: not registered, skipped")
            continue
        strategy = STRATEGIES.build(name, generation=generation)
        generator = SimulatedGenerator(SimulatedBackendConfig())
        verifier = build_simulated_prm(SimulatedPRMConfig(), generator=generator)
        orchestrate = generate = verify = 0.0
        steps = 0
        t0 = time.perf_counter()
        for problem in problems:
            result = strategy.run(problem, generator=generator, verifier=verifier,
                                  budget=budget)
            wall = result.ledger.wall_seconds
            orchestrate += wall.get("orchestrate", 0.0)
            generate += wall.get("generate", 0.0)
            verify += wall.get("verify", 0.0)
            steps += result.ledger.lm_calls
        elapsed = time.perf_counter() - t0
        steps = max(steps, 1)
        orch_ms = 1e3 * orchestrate / steps
        modelled_ms = 1e3 * generator.modelled_seconds / steps
        report.metrics[f"{name}.steps"] = steps
        report.metrics[f"{name}.orchestration_ms_per_step"] = round(orch_ms, 4)
        report.metrics[f"{name}.modelled_generation_ms_per_step"] = round(modelled_ms, 4)
        report.metrics[f"{name}.simulator_ms_per_step"] = round(1e3 * generate / steps, 4)
        report.metrics[f"{name}.verifier_ms_per_step"] = round(1e3 * verify / steps, 4)
        report.metrics[f"{name}.wall_seconds"] = round(elapsed, 3)
        report.ratios[f"overhead_{name}"] = round(orch_ms / modelled_ms, 5) if modelled_ms else float("nan")
    return report
