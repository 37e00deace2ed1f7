"""The simulated compute-vs-accuracy sweep of every registered strategy.

    python -m ttc.evals.scaling --out runs/sim_sweep --figure docs/simulated_sweep.png

Contract: for every name in :data:`ttc.registry.STRATEGIES` at run time, runs
``ttc eval`` on the simulated backend at several *widths* (the strategy's own compute
knob: ``n`` for best-of-N/beam/DVTS/particles, ``width`` for REBASE/ETS,
``n_simulations`` for MCTS, ...; see :func:`scale_overrides`) under one generous
generated-token cap, once per seed ``s`` in ``range(seeds)`` (default 10): seed ``s``
draws problem set ``dataset.seed=s`` and samples with ``generation.seed=s``, so both
vary. Runs go into a sweep folder with the layout of ``ttc sweep``
(``runs/<name>/``; ``sweep.json`` says the width fields vary along a line); the report
pools the seeds of a point (accuracy interval clustered by problem), the
accuracy-vs-generated-tokens figure is copied out, and ``reach.md`` gives each
strategy's widest point and the tokens its curve needs to reach fixed accuracies
(interpolated, or "not reached within N tokens"; :func:`reach_summary`). A strategy
registered later with none of the known knobs gets one point at its defaults. Budget
forcing runs on the simulator's thinking mode and SpecReason on the simulated model
pair (``_SETUP``).

Per-seed data: after a sweep, :func:`seed_runs` reduces every run folder to one row
(strategy, point, seed, problems, correct, generated tokens per problem), written to
``<out>/seed_runs.json`` (``--runs-json`` copies it, e.g. to docs/). :func:`sweep_table`
turns those rows into the published table (per point: accuracy as the mean over seeds with
a Student-t 95% interval, tokens per problem, tokens to reach fixed accuracies on the
seed-mean curve); ``--from-runs FILE --doc PAGE`` rewrites the table between the page's
``<!-- sweep-table -->`` markers from a committed runs file, without running anything.
Must NOT know: strategy internals beyond the name of each one's width field.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from ttc.evals.stats import mean_interval, tokens_to_reach
from ttc.registry import STRATEGIES

TABLE_BEGIN = "<!-- sweep-table: begin (python -m ttc.evals.scaling --from-runs) -->"
TABLE_END = "<!-- sweep-table: end -->"

# name -> (width field, extra overrides as a function of the width)
_KNOWN = {
    "beam": ("n", lambda w: [f"strategy.width={min(4, w)}"]),
    "dvts": ("n", lambda w: [f"strategy.width={min(4, w)}"]),
    "rebase": ("width", lambda w: []),
    "ets": ("width", lambda w: []),
    "mcts": ("n_simulations", lambda w: []),
    "astar": ("max_expansions", lambda w: []),
    "adaptive": ("max_samples", lambda w: [f"strategy.first_wave={min(4, w)}"]),
    "adaptive_consistency": ("max_n", lambda w: [f"strategy.batch={min(4, w)}"]),
    "threads": ("n_threads", lambda w: []),
}
_GENERIC = ("n", "width", "n_simulations", "max_samples", "max_n", "n_threads")
# Strategies that need more than the plain simulated backend: a thinking model, a pair.
_SETUP = {
    "budget_forcing": ["backend.thinking=true"],
    "spec_reason": ["draft_backend=simulated_small"],
}


def scale_overrides(name: str, width: int) -> list[str] | None:
    """Overrides that set strategy ``name``'s compute knob to ``width`` (None: no knob)."""
    fields = STRATEGIES.config_class(name).model_fields
    if name in _KNOWN and _KNOWN[name][0] in fields:
        knob, extra = _KNOWN[name]
        value = 2 * width if knob == "max_expansions" else width
        return [f"strategy.{knob}={value}", *extra(width)]
    for knob in _GENERIC:
        if knob in fields:
            return [f"strategy.{knob}={width}"]
    return None


def reach_summary(rows: list[dict], *, targets: tuple[float, ...] = (0.5, 0.9)) -> str:
    """Markdown: per (dataset, strategy) line of report rows, its widest point's accuracy
    [95% CI] and tokens, and the tokens its curve needs to reach each target."""
    lines = ["| dataset | strategy | points | accuracy at the widest point [95% CI] | "
             "tokens there | " + " | ".join(f"tokens to reach {t:g}" for t in targets) + " |",
             "|" + "---|" * (5 + len(targets))]
    lines_of: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        lines_of.setdefault((r["dataset"], r["strategy"]), []).append(r)
    for (dataset, strategy), pts in sorted(lines_of.items()):
        pts = sorted(pts, key=lambda r: r["generated_tokens_per_problem"])
        top = pts[-1]
        curve = [(r["generated_tokens_per_problem"], r["accuracy"]) for r in pts]
        lines.append(
            f"| {dataset} | {strategy} | {len(pts)} | {top['accuracy']:.3f} "
            f"[{top['accuracy_ci_low']:.3f}, {top['accuracy_ci_high']:.3f}] | "
            f"{top['generated_tokens_per_problem']:,.0f} | "
            + " | ".join(tokens_to_reach(curve, t).describe() for t in targets) + " |")
    return "\n".join(lines) + "\n"


def seed_runs(root: Path) -> list[dict]:
    """One row per run folder of a sweep: strategy, point (its knob's value, 0 = its
    defaults), seed, graded problems, correct answers, generated tokens per problem."""
    from ttc.evals.metrics import summarize
    from ttc.evals.report import run_dirs
    from ttc.evals.runner import CONFIG, RESULTS, read_results

    rows = []
    for d in run_dirs(Path(root)):
        identity = json.loads((d / CONFIG).read_text(encoding="utf-8"))
        summary = summarize(read_results(d / RESULTS))
        name = identity["run"]["strategy"]["name"]
        knob = _knob(name)
        rows.append({"strategy": name,
                     "point": int(identity["run"]["strategy"][knob]) if knob else 0,
                     "knob": knob or "", "seed": int(identity["seed"]),
                     "problems": int(summary.get("problems", 0)),
                     "correct": int(round(summary.get("accuracy", 0.0)
                                          * summary.get("problems", 0))),
                     "generated_tokens_per_problem": round(
                         float(summary.get("generated_tokens_per_problem", 0.0)), 3)})
    return sorted(rows, key=lambda r: (r["strategy"], r["point"], r["seed"]))


def _knob(name: str) -> str | None:
    """The field that :func:`scale_overrides` varies for strategy ``name`` (None: none)."""
    overrides = scale_overrides(name, 1)
    return overrides[0].split("=")[0].removeprefix("strategy.") if overrides else None


def sweep_table(rows: list[dict], *, targets: tuple[float, ...] = (0.5, 0.9)) -> str:
    """Markdown: per strategy and point, accuracy (mean over seeds, 95% Student-t
    interval clipped to [0, 1]), tokens per problem (mean over seeds), and per strategy the tokens its
    seed-mean curve needs to reach each target accuracy."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["strategy"], r["point"]), []).append(r)
    lines = ["| strategy | knob = point | seeds | accuracy, mean over seeds [95% CI] | "
             "generated tokens / problem | "
             + " | ".join(f"tokens to reach {t:g}" for t in targets) + " |",
             "|" + "---|" * (5 + len(targets))]
    curves: dict[str, list[tuple[float, float]]] = {}
    for (name, point), members in sorted(groups.items()):
        acc = mean_interval([m["correct"] / m["problems"] for m in members])
        tokens = sum(m["generated_tokens_per_problem"] for m in members) / len(members)
        curves.setdefault(name, []).append((tokens, acc.mean))
    for (name, point), members in sorted(groups.items()):
        acc = mean_interval([m["correct"] / m["problems"] for m in members])
        tokens = sum(m["generated_tokens_per_problem"] for m in members) / len(members)
        knob = members[0]["knob"]
        first = min(p for (n, p) in groups if n == name) == point
        reach = ([tokens_to_reach(curves[name], t).describe() for t in targets] if first
                 else [""] * len(targets))
        lines.append(f"| {name} | {f'{knob} = {point}' if knob else 'defaults'} | "
                     f"{len(members)} | {acc.mean:.3f} [{max(0.0, acc.low):.3f}, "
                     f"{min(1.0, acc.high):.3f}] | "
                     f"{tokens:,.0f} | " + " | ".join(reach) + " |")
    return "\n".join(lines) + "\n"


def replace_table(page: str, table: str) -> str:
    """``page`` with the text between its sweep-table markers replaced by ``table``."""
    if TABLE_BEGIN not in page or TABLE_END not in page:
        raise ValueError(f"the page has no table markers; put {TABLE_BEGIN!r} and "
                         f"{TABLE_END!r} around the table.")
    head, rest = page.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    return f"{head}{TABLE_BEGIN}\n{table}{TABLE_END}{tail}"


def run_scaling(out: Path, *, widths: tuple[int, ...] = (4, 8, 16), limit: int = 24,
                dataset: str = "sim_hard", budget: int = 16384, seeds: int = 10,
                echo=print) -> Path:
    """Run the sweep into ``out`` and return the accuracy-vs-tokens PNG."""
    from ttc.compose import compose_eval
    from ttc.evals.cli import _write_sweep_json, summary_line
    from ttc.evals.report import write_report
    from ttc.evals.runner import prepare_eval, run_eval

    if seeds < 1:
        raise ValueError(f"seeds must be a positive integer; got {seeds!r}.")
    base = [f"dataset={dataset}", f"limit={limit}", f"budget={budget}", "progress=false"]
    plans, knobs = [], set()
    for name in STRATEGIES.names():
        points = [(w, scale_overrides(name, w)) for w in widths]
        if points[0][1] is None:
            points = [(0, [])]
        for width, extra in points:
            knobs.update(o.split("=")[0].removeprefix("strategy.") for o in extra)
            for seed in range(seeds):
                combo = base + [f"strategy={name}", *extra, *_SETUP.get(name, []),
                                f"dataset.seed={seed}", f"seed={seed}"]
                run = (f"strategy={name},width={width}" if width else f"strategy={name}"
                       ) + f",seed={seed}"
                plans.append((run, combo, prepare_eval(compose_eval(combo),
                                                       output=out / "runs" / run)))
    out.mkdir(parents=True, exist_ok=True)
    _write_sweep_json(out, {"strategy": STRATEGIES.names(), "width": [str(w) for w in widths],
                            "seed": [str(s) for s in range(seeds)]},
                      base, [(n, c) for n, c, _ in plans])
    meta = json.loads((out / "sweep.json").read_text())
    meta["points_over"] = sorted(knobs)
    (out / "sweep.json").write_text(json.dumps(meta, indent=1) + "\n")
    t0 = time.perf_counter()
    for i, (run, _, plan) in enumerate(plans, start=1):
        summary = run_eval(plan)
        echo(f"[{i}/{len(plans)}] {run}: {summary_line(summary)} "
             f"({time.perf_counter() - t0:.0f} s)")
    paths = write_report(out)
    from ttc.evals.report import collect

    (out / "seed_runs.json").write_text(json.dumps(seed_runs(out), indent=0) + "\n",
                                        encoding="utf-8")
    (out / "reach.md").write_text(reach_summary(collect(out)), encoding="utf-8")
    return paths["accuracy_vs_tokens"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/sim_sweep"))
    parser.add_argument("--figure", type=Path, default=None,
                        help="copy the accuracy-vs-tokens PNG here")
    parser.add_argument("--limit", type=int, default=24)
    parser.add_argument("--widths", default="4,8,16")
    parser.add_argument("--dataset", default="sim_hard")
    parser.add_argument("--seeds", type=int, default=10,
                        help="seeds 0..S-1, each a problem set and a sampling seed")
    parser.add_argument("--runs-json", type=Path, default=None,
                        help="copy the per-seed rows (seed_runs.json) here")
    parser.add_argument("--from-runs", type=Path, default=None,
                        help="run nothing: rebuild the table from a per-seed runs file")
    parser.add_argument("--doc", type=Path, default=None,
                        help="with --from-runs: rewrite the table between this page's "
                        "sweep-table markers (else print it)")
    args = parser.parse_args(argv)
    if args.from_runs is not None:
        table = sweep_table(json.loads(args.from_runs.read_text(encoding="utf-8")))
        if args.doc is None:
            print(table, end="")
        else:
            args.doc.write_text(replace_table(args.doc.read_text(encoding="utf-8"), table),
                                encoding="utf-8")
        return
    widths = tuple(int(w) for w in args.widths.split(","))
    png = run_scaling(args.out, widths=widths, limit=args.limit, dataset=args.dataset,
                      seeds=args.seeds)
    if args.runs_json is not None:
        shutil.copyfile(args.out / "seed_runs.json", args.runs_json)
    if args.figure is not None:
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, args.figure)
        print(f"figure: {args.figure}")
    print(f"report: {args.out / 'report.md'}; widest points and tokens to reach: "
          f"{args.out / 'reach.md'}")


if __name__ == "__main__":
    main()
