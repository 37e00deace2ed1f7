"""Research checks for budget forcing, SpecReason and composed pipelines on the simulator.

Three questions, each over ``--seeds`` replicates (default 10). Replicate ``s`` draws its
own problem set (problem seed ``base + s``; bases 31, 32, 33) and samples in its own world
(backend and PRM ``world_seed=s``); within a replicate every method sees the same problems
and world (paired). Effects are means over seeds with Student-t 95% intervals
(:func:`ttc.evals.stats.mean_interval`); accuracies are pooled over seeds with Wilson 95%
intervals.

1. Budget forcing (docs/algorithms.md#budget-forcing) on the thinking-mode simulator: accuracy and thinking tokens
   with a cap of 32 / 64 / 128 thinking tokens and with 1 / 2 / 4 "Wait" extensions,
   against the model's natural thinking length (no control).
2. SpecReason (docs/algorithms.md#specreason) vs the large model alone: modelled latency (both engines'
   ``modelled_seconds``: prefill rate and per-decode-step cost of each model) and
   accuracy, at judge thresholds 5 / 7 / 9; the small model alone for reference.
3. A composed pipeline (docs/algorithms.md#archon: generate 8 with self-consistency -> rank top 4 with the
   PRM -> fuse 1) vs its best single layer at matched compute: self-consistency and
   best-of-N (the rank layer alone) at N = 6, 8, 10, 12, 16, their accuracy interpolated
   at the pipeline's generated tokens on each seed; the better of the two is "best single
   layer". Run with the simulator's fuser skill 1 (the fuser favours the right quoted
   answer 2:1) and 0 (it only counts quotes), since that knob decides the result.

Usage::

    python scripts/research_strategies_iii_b.py            # full run, writes docs/
    python scripts/research_strategies_iii_b.py --quick    # small problem sets, 10 seeds
    python scripts/research_strategies_iii_b.py --quick --json out.json

Writes ``research_strategies_iii_b.md``, ``.png`` and ``_runs.json`` into ``--out``.
``check_forcing``, ``check_spec_reason`` and ``check_archon`` return plain dicts whose
``estimates`` hold :class:`ttc.evals.stats.Estimate` values;
``tests/strategies/test_research_iii_b.py`` runs quick versions and asserts only what
their intervals support.
Must NOT know: engine internals (it drives strategies through their ``run``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ttc.config import GenerationConfig
from ttc.engine.backends.simulated import (SimulatedBackendConfig, SimulatedGenerator,
                                           small_model_config)
from ttc.evals.stats import Estimate, mean_interval
from ttc.evals.research import (accuracy_cell, error_bars, estimate_cell, interval_verdict,
                                markdown_table, pooled as pooled_points)
from ttc.evals.tasks import make_problems
from ttc.registry import STRATEGIES
from ttc.types import Problem
from ttc.verifiers.simulated import SimulatedPRM, SimulatedPRMConfig

SEEDS = 10
PRM_AUROC = 0.8
CAPS = (32, 64, 128)
EXTENDS = (1, 2, 4)
THRESHOLDS = (5, 7, 9)
BASELINE_NS = (6, 8, 10, 12, 16)
FUSE_SKILLS = (1.0, 0.0)
PIPELINE = {"name": "archon", "keep_tree": False, "layers": [
    {"kind": "generate", "generators": [{"strategy": {"name": "self_consistency", "n": 8}}]},
    {"kind": "rank", "top_k": 4},
    {"kind": "fuse", "fusers": 1}]}
Echo = Callable[[str], None]


def _problems(base: int, seed: int, quick: bool | int, difficulty=(0.2, 0.9)
              ) -> list[Problem]:
    """The seed's problem set: 100 problems, 30 with ``quick``, or ``quick`` if a number."""
    n = quick if not isinstance(quick, bool) else (30 if quick else 100)
    return make_problems(n, seed=base + seed, difficulty=difficulty)


def _run(config: dict, problems: Sequence[Problem], gen, prm=None, *, draft=None,
         engines: Sequence[SimulatedGenerator] = ()) -> dict[str, float]:
    """Correct count, mean generated tokens, thinking tokens, modelled seconds per problem."""
    strategy = STRATEGIES.build(config, generation=GenerationConfig())
    engines = list(engines) or [gen]
    t0 = sum(e.modelled_seconds for e in engines)
    correct = tokens = thinking = calls = prefill = from_small = steps = 0
    for p in problems:
        pair = {} if draft is None else {"draft": draft}
        r = strategy.run(p, generator=gen, verifier=prm, **pair)
        from_small += r.info.get("accepted", 0)
        steps += r.info.get("accepted", 0) + r.info.get("steps_by_target", 0)
        correct += int(r.answer == p.answer)
        tokens += r.ledger.generated_tokens
        prefill += r.ledger.prefill_tokens
        calls += r.ledger.verifier_calls
        thinking += sum(r.info.get("thinking_tokens", [0]))
    q = len(problems)
    seconds = sum(e.modelled_seconds for e in engines) - t0
    return {"correct": correct, "problems": q, "accuracy": correct / q, "tokens": tokens / q,
            "prefill": prefill / q, "verifier_calls": calls / q, "thinking": thinking / q,
            "seconds": seconds / q, "small_share": from_small / steps if steps else 0.0}


def pooled(points: Sequence[dict[str, float]]) -> dict[str, float]:
    return pooled_points(points, ("tokens", "prefill", "verifier_calls", "thinking", "seconds",
                                  "small_share"))


# -- 1. budget forcing ---------------------------------------------------------------------
def forcing_seed(seed: int, *, quick: bool) -> dict[str, Any]:
    problems = _problems(31, seed, quick)
    runs: dict[str, dict] = {}
    # "natural": a cap far above any natural length never fires (checked: forced_ends 0).
    settings = [("natural", {"cap": 1000, "extend": 0})] \
        + [(f"cap {c}", {"cap": c, "extend": 0}) for c in CAPS] \
        + [(f"extend {k}", {"cap": None, "extend": k}) for k in EXTENDS]
    for label, knobs in settings:
        gen = SimulatedGenerator(SimulatedBackendConfig(world_seed=seed, thinking=True))
        runs[label] = _run({"name": "budget_forcing", "n": 1, **knobs}, problems, gen)
    return runs


def summarize_forcing(per_seed: list[dict]) -> dict[str, Any]:
    labels = list(per_seed[0])
    est = {f"gain {k}": mean_interval([d[k]["accuracy"] - d["natural"]["accuracy"]
                                       for d in per_seed]) for k in labels if k != "natural"}
    return {"seeds": len(per_seed), "problems": per_seed[0]["natural"]["problems"],
            "rows": {k: pooled([d[k] for d in per_seed]) for k in labels},
            "estimates": est}


# -- 2. SpecReason ---------------------------------------------------------------------------
def spec_seed(seed: int, *, quick: bool) -> dict[str, Any]:
    problems = _problems(32, seed, quick)
    large_cfg = SimulatedBackendConfig(world_seed=seed)
    runs: dict[str, dict] = {}
    large = SimulatedGenerator(large_cfg)
    runs["large alone"] = _run({"name": "self_consistency", "n": 1}, problems, large)
    small = SimulatedGenerator(small_model_config(large_cfg))
    runs["small alone"] = _run({"name": "self_consistency", "n": 1}, problems, small)
    for theta in THRESHOLDS:
        large = SimulatedGenerator(large_cfg)
        small = SimulatedGenerator(small_model_config(large_cfg), peer=large)
        runs[f"SpecReason theta={theta}"] = _run(
            {"name": "spec_reason", "threshold": theta}, problems, large, draft=small,
            engines=(large, small))
    return runs


def summarize_spec(per_seed: list[dict]) -> dict[str, Any]:
    labels = list(per_seed[0])
    est: dict[str, Estimate] = {}
    for k in labels:
        if k.startswith("SpecReason"):
            est[f"speedup {k}"] = mean_interval(
                [d["large alone"]["seconds"] / d[k]["seconds"] for d in per_seed])
            est[f"gain {k}"] = mean_interval(
                [d[k]["accuracy"] - d["large alone"]["accuracy"] for d in per_seed])
    return {"seeds": len(per_seed), "problems": per_seed[0]["large alone"]["problems"],
            "rows": {k: pooled([d[k] for d in per_seed]) for k in labels},
            "estimates": est}


# -- 3. composed pipeline ------------------------------------------------------------------
def archon_seed(seed: int, *, quick: bool) -> dict[str, Any]:
    problems = _problems(33, seed, quick, difficulty=(0.3, 1.0))
    out: dict[str, Any] = {}

    def world(skill: float = 1.0):
        return (SimulatedGenerator(SimulatedBackendConfig(world_seed=seed, fuse_skill=skill)),
                SimulatedPRM(SimulatedPRMConfig(world_seed=seed, auroc=PRM_AUROC)))

    for skill in FUSE_SKILLS:
        gen, prm = world(skill)
        out[f"pipeline fuse_skill={skill:g}"] = _run(PIPELINE, problems, gen, prm)
    for name in ("self_consistency", "best_of_n"):
        for n in BASELINE_NS:
            gen, prm = world()
            out[f"{name} N={n}"] = _run({"name": name, "n": n, "keep_tree": False},
                                        problems, gen, prm)
    return out


def _interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    pts = sorted(points)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / max(1e-9, x1 - x0)
    return None


def matched_gain(d: dict, pipeline: str) -> tuple[float | None, str | None]:
    """Pipeline accuracy minus the better single layer's at the pipeline's tokens."""
    best, which = None, None
    for name in ("self_consistency", "best_of_n"):
        curve = [(d[f"{name} N={n}"]["tokens"], d[f"{name} N={n}"]["accuracy"])
                 for n in BASELINE_NS]
        acc = _interpolate(curve, d[pipeline]["tokens"])
        if acc is not None and (best is None or acc > best):
            best, which = acc, name
    return (None, None) if best is None else (d[pipeline]["accuracy"] - best, which)


def summarize_archon(per_seed: list[dict]) -> dict[str, Any]:
    labels = list(per_seed[0])
    est, matched, winners = {}, {}, {}
    for skill in FUSE_SKILLS:
        key = f"pipeline fuse_skill={skill:g}"
        pairs = [matched_gain(d, key) for d in per_seed]
        gains = [g for g, _ in pairs if g is not None]
        matched[key] = len(gains)
        winners[key] = sorted({w for _, w in pairs if w})
        if len(gains) >= 2:
            est[f"gain {key}"] = mean_interval(gains)
    return {"seeds": len(per_seed), "problems": per_seed[0][labels[0]]["problems"],
            "rows": {k: pooled([d[k] for d in per_seed]) for k in labels},
            "estimates": est, "matched_seeds": matched, "best_single": winners}


# -- driving and the report ----------------------------------------------------------------
CHECKS = {"forcing": (forcing_seed, summarize_forcing),
          "spec_reason": (spec_seed, summarize_spec),
          "archon": (archon_seed, summarize_archon)}


def run_checks(*, quick: bool, seeds: int = SEEDS, only: Sequence[str] = tuple(CHECKS),
               echo: Echo = lambda _m: None) -> tuple[dict, dict]:
    per_seed: dict[str, list] = {}
    for name in only:
        seed_fn, _ = CHECKS[name]
        per_seed[name] = []
        for s in range(seeds):
            per_seed[name].append(seed_fn(s, quick=quick))
            echo(f"{name}: seed {s + 1}/{seeds}")
    return per_seed, {name: CHECKS[name][1](per_seed[name]) for name in per_seed}


def _verdict(e: Estimate | None, threshold: float) -> str:
    return interval_verdict(e, threshold, subject="its interval")


def plot(summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    f = summary["forcing"]["rows"]
    ax = axes[0]
    caps = ["cap 32", "cap 64", "cap 128", "natural"]
    ext = ["natural", "extend 1", "extend 2", "extend 4"]
    error_bars(ax, [f[k]["thinking"] for k in caps], [f[k] for k in caps], "o-", "cap")
    error_bars(ax, [f[k]["thinking"] for k in ext], [f[k] for k in ext], "s-", "extend (Wait)")
    for k in set(caps + ext):
        ax.annotate(k, (f[k]["thinking"], f[k]["accuracy"]), fontsize=7)
    ax.set(xlabel="thinking tokens per problem", ylabel="accuracy (pooled, Wilson 95%)",
           title="Budget forcing (thinking-mode simulator)")
    ax.legend(fontsize=7)
    s = summary["spec_reason"]["rows"]
    ax = axes[1]
    for k, v in s.items():
        error_bars(ax, [v["seconds"]], [v], "o" if "alone" in k else "s", k)
    ax.set(xlabel="modelled seconds per problem", ylabel="accuracy", title="SpecReason")
    ax.legend(fontsize=7)
    a = summary["archon"]["rows"]
    ax = axes[2]
    for name, fmt in (("self_consistency", "o-"), ("best_of_n", "s-")):
        pts = [a[f"{name} N={n}"] for n in BASELINE_NS]
        error_bars(ax, [p["tokens"] for p in pts], pts, fmt, name)
    for skill in FUSE_SKILLS:
        v = a[f"pipeline fuse_skill={skill:g}"]
        error_bars(ax, [v["tokens"]], [v], "D", f"generate->rank->fuse (fuse_skill {skill:g})")
    ax.set(xlabel="generated tokens per problem", ylabel="accuracy",
           title="Composed pipeline vs single layers")
    ax.legend(fontsize=7)
    fig.suptitle(f"{summary['forcing']['seeds']} seeds each (a problem set and a sampling "
                 "world per seed)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(summary: dict, command: str) -> str:
    f, s, a = summary["forcing"], summary["spec_reason"], summary["archon"]
    fe, se, ae = f["estimates"], s["estimates"], a["estimates"]
    lines = [
        "# Research checks: budget forcing, SpecReason, composed pipelines (simulator)", "",
        f"Reproduce: `{command}` (writes this file, the figure and the per-seed runs).", "",
        "Each check runs 10 seeds; a seed is a new problem set *and* a new sampling world; "
        "within a seed all methods see the same problems (paired). Accuracies are pooled "
        "over seeds with Wilson 95% intervals; effects are means over seeds with Student-t "
        "95% intervals.", "",
        "![figure](research_strategies_iii_b.png)", "",
        f"## 1. Budget forcing ({f['seeds']} seeds x {f['problems']} problems, thinking mode)",
        "",
        markdown_table([[k, accuracy_cell(v), v["thinking"], v["tokens"]] for k, v in f["rows"].items()],
               ["control", "accuracy [95% CI]", "thinking tokens", "generated tokens"]), "",
        markdown_table([[k.removeprefix("gain "), estimate_cell(e, signed=True)] for k, e in fe.items()],
               ["control", "accuracy minus natural's (mean over seeds [95% CI])"]), "",
        "The cap is exact (the thinking tokens above equal the cap whenever the natural "
        "length is longer; `tests/strategies/test_budget_forcing.py` checks it is forced "
        "inside the one engine call, with no restart and no re-prefill) and each \"Wait\" "
        "adds one thinking step. **What the simulator cannot show:** its answer converges "
        "with thinking tokens by construction (`q(t) = p_max (1 - exp(-t / tau))`, "
        "engine/backends/simulated.py), so the sign of both effects is built in; their size "
        "follows from `converge_tokens`. Whether a real model's answers improve after a "
        "forced \"Wait\" (s1: 50% -> 57% on AIME24) or loop (s1 pitfall 1) is not modelled; "
        "nor is a mid-sentence cut.", "",
        f"## 2. SpecReason vs the large model alone ({s['seeds']} seeds x {s['problems']} "
        "problems)", "",
        markdown_table([[k, accuracy_cell(v), v["seconds"], v["tokens"], v["prefill"], v["small_share"]]
                for k, v in s["rows"].items()],
               ["method", "accuracy [95% CI]", "modelled s / problem", "generated tokens",
                "prefill tokens", "steps kept from the small model"]), "",
        markdown_table([[k.removeprefix("speedup "), estimate_cell(se[k], suffix="x"),
                 estimate_cell(se["gain " + k.removeprefix("speedup ")], signed=True)]
                for k in se if k.startswith("speedup")],
               ["method", "large-alone latency / its latency", "accuracy minus large alone's"]),
        "",
        "**Reading.** " + " ".join(
            f"{k.removeprefix('speedup ')}: latency ratio {estimate_cell(se[k], suffix='x')} "
            f"({_verdict(se[k], 1.0)}), accuracy {estimate_cell(se['gain ' + k.removeprefix('speedup ')], signed=True)}"
            f" ({_verdict(se['gain ' + k.removeprefix('speedup ')], 0.0)});"
            for k in se if k.startswith("speedup")) + " Latency falls only where the judge "
        "keeps most drafts: every rejected step costs a draft, a judge probe and the large "
        "model's own step. The accuracy gain is the judge's: it filters the wrong steps of "
        "both models' drafts with knowledge of the truth plus noise, which a real judge "
        "has only as far as it is calibrated.", "",
        "Modelled latency adds both engines' modelled seconds (prefill at each model's rate; "
        "each decode step a fixed cost plus a per-branch cost; the small model 5x cheaper "
        "on both, with 1.6x the large model's step error). The paper reports 1.4-3.0x lower "
        "latency and +0.4 to +9.0 points. **What the simulator cannot show:** models "
        "alternate strictly and each step is its own call, so the per-call overhead and the "
        "judge's prefill count fully; the small model's terseness (part of the paper's "
        "accuracy gain) is absent because both models write equally long steps; the judge "
        "reads the truth of the trajectory with Gaussian noise (`judge_noise` 0.2), not a "
        "real model's calibration (its means, 0.85 for a right trajectory and 0.35 for a wrong one, are a choice: at theta 7 it keeps about 74% of right steps and 3% of wrong ones).", "",
        f"## 3. A composed pipeline vs its best single layer ({a['seeds']} seeds x "
        f"{a['problems']} problems)", "",
        "Pipeline: generate 8 (self-consistency samples) -> rank top 4 with the PRM (AUROC "
        f"{PRM_AUROC}) -> fuse 1. Single layers: self-consistency (generate alone) and "
        "best-of-N (generate + rank alone) at N = " + ", ".join(map(str, BASELINE_NS)) + ".",
        "",
        markdown_table([[k, accuracy_cell(v), v["tokens"], v["prefill"], v["verifier_calls"]]
                for k, v in a["rows"].items()],
               ["method", "accuracy [95% CI]", "generated tokens", "prefill tokens",
                "verifier calls"]), "",
        markdown_table([[k, estimate_cell(ae.get(f"gain {k}"), signed=True), f"{a['matched_seeds'][k]}/"
                 f"{a['seeds']}", ", ".join(a["best_single"][k])]
                for k in a["matched_seeds"]],
               ["pipeline", "accuracy minus the best single layer's at its generated tokens",
                "seeds matched", "best single layer (per seed)"]), "",
        "**Reading.** " + " ".join(
            f"{k}: {estimate_cell(ae.get(f'gain {k}'), signed=True)} against the best single layer "
            f"({_verdict(ae.get(f'gain {k}'), 0.0)});" for k in a["matched_seeds"]) +
        " The rank layer's PRM scores are used to cut to four and then dropped: the fuser "
        "chooses among four answers by count (and, with fuse_skill 1, a 2:1 preference for "
        "the right one), while best-of-N's weighted vote uses all eight scores, and the "
        "fuser's own solution costs generated tokens.", "",
        "Compute is matched on generated tokens (each seed: the single layers' accuracy "
        "interpolated at the pipeline's tokens); the pipeline also prefills its long fuser "
        "prompt, shown above and not matched. **What the simulator cannot show:** a fuser "
        "that writes a better answer than any it was shown, or advice from critiques (the "
        "simulated fuser picks one of the quoted answers, favouring the right one "
        "`1 + fuse_skill` to 1; critiques have no effect). With `fuse_skill` 0 the fuser is "
        "a vote over the top 4; with 1 it is a better-than-voting chooser by construction. "
        "The paper's gains come from real fusers and critics (fuser +8.9%, critic +11.5 "
        "points) and are not reproduced here.", ""]
    return "\n".join(lines)


def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x):
        return dataclasses.asdict(x)
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small problem sets (still all seeds)")
    ap.add_argument("--seeds", type=int, default=SEEDS)
    ap.add_argument("--json", type=Path, default=None, help="also write the summary as JSON")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    ap.add_argument("--from-runs", type=Path, default=None,
                    help="redraw from a research_strategies_iii_b_runs.json instead of running")
    args = ap.parse_args(argv)
    if args.seeds < 2:
        ap.error("--seeds must be at least 2 (an interval needs replicates).")
    argv = sys.argv[1:] if argv is None else argv
    cmd = " ".join(["python scripts/research_strategies_iii_b.py", *map(shlex.quote, argv)])
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_runs is not None:      # the command that made the runs, not this one
        runs = json.loads(args.from_runs.read_text(encoding="utf-8"))
        cmd = runs.pop("command")
        summary = {name: CHECKS[name][1](per) for name, per in runs.items()}
    else:
        per_seed, summary = run_checks(quick=args.quick, seeds=args.seeds,
                                       echo=lambda m: print(m, file=sys.stderr, flush=True))
        # the raw per-seed numbers first, so nothing below can lose a long run
        (args.out / "research_strategies_iii_b_runs.json").write_text(
            json.dumps({"command": cmd, **per_seed}) + "\n", encoding="utf-8")
    plot(summary, args.out / "research_strategies_iii_b.png")
    (args.out / "research_strategies_iii_b.md").write_text(report(summary, cmd),
                                                           encoding="utf-8")
    if args.json is not None:
        args.json.write_text(json.dumps(_jsonable(summary), indent=1) + "\n", encoding="utf-8")
    for name, part in summary.items():
        for key, est in part["estimates"].items():
            print(f"{name}: {key}: {est.fmt(signed=True)}")


if __name__ == "__main__":
    main()
