"""Research check: step-level search vs weighted best-of-N at matched token budgets.

Claim under test (Snell et al. 2024, docs/algorithms.md#beam-search, #particle-filtering): with a good PRM, at low
generation budgets and on hard problems, PRM-guided beam search and particle filtering
beat weighted best-of-N that spends the same number of generated tokens.

Set-up (all seeded): ``--seeds`` replicates (default 10); replicate ``s`` draws its own
problem set (``make_problems(num_problems, seed=s)``, difficulty uniform in
``difficulty``) and samples in its own world (backend and PRM ``world_seed=s``), so both
the problems and the sampling change between seeds. Within a seed every method runs on
the same problems in the same world (a paired comparison). The simulated backend keeps
its defaults (max_step_error 0.5, 3-7 steps, ~40 tokens a step, 6 Zipf-weighted wrong
answers); the simulated PRM reads steps at ``auroc``. For each budget N every method
samples N branches a step (N whole solutions for best-of-N), so generated tokens match
to within a few percent.

Reported: accuracy pooled over seeds with a Wilson 95% interval (every problem is seen
once, so problems are independent); the search-minus-best-of-N accuracy gain as the mean
over seeds with a Student-t 95% interval (one paired difference per seed); tokens to
reach fixed accuracy targets, interpolated on each method's seed-mean curve, or "not
reached within N tokens".

    python scripts/research_strategies_i.py                 # 10 seeds x 200 problems -> docs/
    python scripts/research_strategies_i.py --ns 4 16 --auroc 0.7 --out /tmp/r
    python scripts/research_strategies_i.py --from-runs docs/strategies_i_runs.json  # redraw

Writes ``strategies_i_runs.json`` (one row per seed, method and N), then
``strategies_i_table.md`` and ``strategies_i_curve.png``, into ``--out``.

Must NOT know: engine internals (it drives strategies through ``SearchStrategy.run``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ttc.engine.backends.simulated import SimulatedBackendConfig, SimulatedGenerator
from ttc.evals.tasks import make_problems
from ttc.evals.stats import Estimate, mean_interval, tokens_to_reach, wilson_interval
from ttc.registry import STRATEGIES
from ttc.verifiers.simulated import SimulatedPRM, SimulatedPRMConfig

BASELINE = "best-of-N (weighted)"
METHODS: dict[str, Callable[[int], dict]] = {
    BASELINE: lambda n: {"name": "best_of_n", "n": n, "selection": "weighted"},
    "beam search (M=4)": lambda n: {"name": "beam", "n": n, "width": 4},
    "particle filtering": lambda n: {"name": "particle_filtering", "n": n},
}


@dataclass(frozen=True, slots=True)
class Run:
    """One method at one budget N on one seed's problem set."""

    method: str
    n: int
    seed: int
    problems: int
    correct: int
    tokens: float            # mean generated tokens per problem
    verifier_calls: float    # mean verifier calls per problem

    @property
    def accuracy(self) -> float:
        return self.correct / self.problems


@dataclass(frozen=True, slots=True)
class Row:
    """One method at one budget N, pooled over seeds."""

    method: str
    n: int
    seeds: int
    accuracy: float                  # pooled over every seed's problems
    ci: tuple[float, float]          # Wilson 95%
    tokens: float                    # mean over seeds of mean tokens per problem
    verifier_calls: float
    gain: Estimate | None            # accuracy minus best-of-N's at this N (None: baseline)
    token_gap: float                 # largest |tokens / best-of-N tokens - 1| over seeds


def run_seed(*, seed: int, num_problems: int, ns: tuple[int, ...],
             difficulty: tuple[float, float], auroc: float) -> list[Run]:
    """Every method at every N on one seed's problems and world."""
    problems = make_problems(num_problems, seed=seed, difficulty=difficulty)
    runs: list[Run] = []
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
            runs.append(Run(method=method, n=n, seed=seed, problems=num_problems,
                            correct=right, tokens=tokens / num_problems,
                            verifier_calls=calls / num_problems))
    return runs


def run_study(*, seeds: int = 10, num_problems: int = 200, ns: tuple[int, ...] = (4, 8, 16),
              difficulty: tuple[float, float] = (0.6, 1.0), auroc: float = 0.9,
              echo: Callable[[str], None] = lambda _m: None) -> list[Run]:
    """:func:`run_seed` for seeds ``0 .. seeds-1``."""
    if seeds < 2:
        raise ValueError(f"seeds must be at least 2 (an interval needs replicates); got {seeds}.")
    runs: list[Run] = []
    for s in range(seeds):
        runs += run_seed(seed=s, num_problems=num_problems, ns=ns, difficulty=difficulty,
                         auroc=auroc)
        echo(f"seed {s} done")
    return runs


def pool(runs: list[Run]) -> list[Row]:
    """One row per (method, N): pooled accuracy, seed-paired gain over best-of-N."""
    by = {(r.method, r.n, r.seed): r for r in runs}
    seeds = sorted({r.seed for r in runs})
    rows = []
    for n in sorted({r.n for r in runs}):
        for method in METHODS:
            mine = [by[(method, n, s)] for s in seeds]
            base = [by[(BASELINE, n, s)] for s in seeds]
            correct = sum(r.correct for r in mine)
            total = sum(r.problems for r in mine)
            gain = None if method == BASELINE else mean_interval(
                [a.accuracy - b.accuracy for a, b in zip(mine, base)])
            rows.append(Row(
                method=method, n=n, seeds=len(seeds), accuracy=correct / total,
                ci=wilson_interval(correct, total),
                tokens=sum(r.tokens for r in mine) / len(mine),
                verifier_calls=sum(r.verifier_calls for r in mine) / len(mine), gain=gain,
                token_gap=max(abs(a.tokens / b.tokens - 1) for a, b in zip(mine, base))))
    return rows


def reach_table(rows: list[Row], targets: tuple[float, ...]) -> str:
    """Tokens each method's seed-mean curve needs to reach each target accuracy."""
    lines = ["| method | " + " | ".join(f"accuracy {t:.2f}" for t in targets) + " |",
             "|---|" + "---|" * len(targets)]
    for method in METHODS:
        curve = [(r.tokens, r.accuracy) for r in rows if r.method == method]
        cells = [tokens_to_reach(curve, t).describe() for t in targets]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_table(rows: list[Row]) -> str:
    lines = ["| N | method | accuracy [95% CI] | gain over best-of-N [95% CI] | "
             "generated tokens / problem | verifier calls / problem |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        gain = "–" if r.gain is None else r.gain.fmt(signed=True)
        lines.append(f"| {r.n} | {r.method} | {r.accuracy:.3f} [{r.ci[0]:.3f}, {r.ci[1]:.3f}]"
                     f" | {gain} | {r.tokens:.0f} | {r.verifier_calls:.1f} |")
    return "\n".join(lines)


def report(rows: list[Row], *, command: str, targets: tuple[float, ...]) -> str:
    """The generated part of docs/research_strategies_i.md (tables, no interpretation)."""
    seeds = rows[0].seeds
    gap = max(r.token_gap for r in rows)
    return "\n".join([
        f"Command: `{command}`", "",
        f"{seeds} seeds (problem set and sampling world both change with the seed). "
        "Accuracy: pooled over every seed's problems, Wilson 95% interval. Gain: accuracy "
        "minus weighted best-of-N's on the same problems and world, mean over seeds with a "
        f"Student-t 95% interval. Generated tokens per seed match best-of-N's within "
        f"{100 * gap:.1f}% in every seed.", "",
        markdown_table(rows), "",
        "Tokens to reach an accuracy (linear interpolation on the seed-mean curve between "
        "the two budgets that bracket it):", "",
        reach_table(rows, targets), ""])


def plot(rows: list[Row], path: Path, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for method in METHODS:
        pts = [r for r in rows if r.method == method]
        ax.errorbar([r.tokens for r in pts], [r.accuracy for r in pts],
                    yerr=[[max(0.0, r.accuracy - r.ci[0]) for r in pts],
                          [max(0.0, r.ci[1] - r.accuracy) for r in pts]],
                    marker="o", capsize=3, label=method)
        for r in pts:
            ax.annotate(f"N={r.n}", (r.tokens, r.accuracy), fontsize=7,
                        textcoords="offset points", xytext=(4, -10))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("generated tokens per problem (mean over seeds)")
    ax.set_ylabel("accuracy (pooled, Wilson 95%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--problems", type=int, default=200, help="problems per seed")
    parser.add_argument("--ns", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--difficulty", type=float, nargs=2, default=[0.6, 1.0])
    parser.add_argument("--auroc", type=float, default=0.9)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--from-runs", type=Path, default=None,
                        help="redraw from a strategies_i_runs.json instead of running")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    command = " ".join(["python scripts/research_strategies_i.py", *map(shlex.quote, argv)])
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_runs is not None:      # the command that made the runs, not this one
        saved = json.loads(args.from_runs.read_text(encoding="utf-8"))
        command, runs = saved["command"], [Run(**r) for r in saved["runs"]]
    else:
        runs = run_study(seeds=args.seeds, num_problems=args.problems, ns=tuple(args.ns),
                         difficulty=tuple(args.difficulty), auroc=args.auroc,
                         echo=lambda m: print(m, file=sys.stderr))
        # the raw per-seed numbers first, so nothing below can lose a long run
        (args.out / "strategies_i_runs.json").write_text(
            json.dumps({"command": command, "runs": [asdict(r) for r in runs]}, indent=0)
            + "\n", encoding="utf-8")
    rows = pool(runs)
    title = (f"{args.seeds} seeds x {args.problems} simulated problems, difficulty "
             f"{args.difficulty[0]}-{args.difficulty[1]}, PRM AUROC {args.auroc}")
    plot(rows, args.out / "strategies_i_curve.png", title=title)
    text = report(rows, command=command, targets=tuple(args.targets))
    (args.out / "strategies_i_table.md").write_text(text, encoding="utf-8")
    print(text)
    return rows


if __name__ == "__main__":
    main()
