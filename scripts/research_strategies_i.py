"""Research check: step-level search vs weighted best-of-N at matched token budgets.

Claim under test (Snell et al. 2024, ALGORITHMS.md §3.7/§5.6): with a good PRM, at low
generation budgets and on hard problems, PRM-guided beam search and particle filtering
beat weighted best-of-N that spends the same number of generated tokens.

Set-up (all seeded): ``num_problems`` simulated problems with difficulty uniform in
``difficulty`` (the simulated backend's defaults: max_step_error 0.5, 3-7 steps, ~40
tokens a step, 6 Zipf-weighted wrong answers), the simulated PRM at ``auroc``. For each
budget N every method samples N branches per step (N whole solutions for best-of-N), so
the generated tokens match to within a few percent; the table reports the measured
means. Accuracy is exact match with the gold answer; ``±`` is one binomial standard error.

    python scripts/research_strategies_i.py                 # 200 problems, docs/ outputs
    python scripts/research_strategies_i.py --problems 500 --auroc 0.8 --out /tmp/r

Must NOT know: engine internals (it drives strategies through ``SearchStrategy.run``).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ttc.engine.backends.simulated import SimulatedBackendConfig, SimulatedGenerator, make_problems
from ttc.registry import STRATEGIES
from ttc.verifiers.simulated import SimulatedPRM, SimulatedPRMConfig

METHODS: dict[str, Callable[[int], dict]] = {
    "best-of-N (weighted)": lambda n: {"name": "best_of_n", "n": n, "selection": "weighted"},
    "beam search (M=4)": lambda n: {"name": "beam", "n": n, "width": 4},
    "particle filtering": lambda n: {"name": "particle_filtering", "n": n},
}


@dataclass(frozen=True, slots=True)
class Row:
    method: str
    n: int
    accuracy: float
    stderr: float
    tokens: float            # mean generated tokens per problem
    verifier_calls: float    # mean verifier calls per problem


def run_study(*, num_problems: int = 200, ns: tuple[int, ...] = (4, 8, 16),
              difficulty: tuple[float, float] = (0.6, 1.0), auroc: float = 0.9,
              seed: int = 0) -> list[Row]:
    """Accuracy and mean cost of every method at every budget N, on the same problems."""
    problems = make_problems(num_problems, seed=seed, difficulty=difficulty)
    rows: list[Row] = []
    for n in ns:
        for method, config in METHODS.items():
            strategy = STRATEGIES.build({**config(n), "keep_tree": False})
            gen = SimulatedGenerator(SimulatedBackendConfig(world_seed=seed))
            prm = SimulatedPRM(SimulatedPRMConfig(world_seed=seed, auroc=auroc))
            right = tokens = calls = 0
            for problem in problems:
                result = strategy.run(problem, generator=gen, verifier=prm)
                right += result.answer == problem.answer
                tokens += result.ledger.generated_tokens
                calls += result.ledger.verifier_calls
            acc = right / num_problems
            rows.append(Row(method=method, n=n, accuracy=acc,
                            stderr=math.sqrt(acc * (1 - acc) / num_problems),
                            tokens=tokens / num_problems, verifier_calls=calls / num_problems))
    return rows


def markdown_table(rows: list[Row]) -> str:
    lines = ["| N | method | accuracy | generated tokens / problem | verifier calls / problem |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.n} | {r.method} | {r.accuracy:.3f} ± {r.stderr:.3f} | "
                     f"{r.tokens:.0f} | {r.verifier_calls:.1f} |")
    return "\n".join(lines)


def plot(rows: list[Row], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in METHODS:
        pts = [r for r in rows if r.method == method]
        ax.errorbar([r.tokens for r in pts], [r.accuracy for r in pts],
                    yerr=[r.stderr for r in pts], marker="o", capsize=3, label=method)
        for r in pts:
            ax.annotate(f"N={r.n}", (r.tokens, r.accuracy), fontsize=7,
                        textcoords="offset points", xytext=(4, -10))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("generated tokens per problem (mean)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--ns", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--difficulty", type=float, nargs=2, default=[0.6, 1.0])
    parser.add_argument("--auroc", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    rows = run_study(num_problems=args.problems, ns=tuple(args.ns),
                     difficulty=tuple(args.difficulty), auroc=args.auroc, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    title = (f"{args.problems} simulated problems, difficulty {args.difficulty[0]}-"
             f"{args.difficulty[1]}, PRM AUROC {args.auroc}")
    plot(rows, args.out / "strategies_i_curve.png", title=title)
    table = markdown_table(rows)
    (args.out / "strategies_i_table.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    return rows


if __name__ == "__main__":
    main()
