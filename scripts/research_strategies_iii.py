"""Research checks for DeepConf, Dynasor-CoT and the simulator's new signals.

Three questions on the simulated backend with token log-probs that carry signal
(``logprob_auroc``: a correct step's mean token confidence beats a wrong step's with
that probability), each over ``--seeds`` replicates (default 10). Replicate ``s`` draws
its own problem set (problem seed ``base + s``) and samples in its own world
(``world_seed=s``); within a replicate every method sees the same problems (paired).
Effects are means over seeds with Student-t 95% intervals; accuracies are pooled over
seeds with Wilson 95% intervals.

1. DeepConf online (warm-up 16, budget 64 traces, window 32 tokens, consensus tau 0.95)
   vs self-consistency: tokens saved against the same 64 traces run to completion, the
   accuracy change, and tokens saved at equal accuracy (self-consistency's seed-averaged
   curve over n = 8, 16, 32, 64 interpolated at DeepConf's accuracy; bootstrap interval).
2. Dynasor-CoT vs full-length chains: one chain per problem, probes every T tokens,
   exit when the last w probed answers agree: tokens saved (probe tokens included) and
   the accuracy change.
3. RPC, adaptive consistency and first-finish search re-checked against
   self-consistency (n = 16) in the old world (hash-noise log-probs) and the new one.

Usage::

    python scripts/research_strategies_iii.py            # full run, writes docs/
    python scripts/research_strategies_iii.py --quick    # small problem sets, still 10 seeds
    python scripts/research_strategies_iii.py --quick --json   # the summary as JSON

Writes ``research_strategies_iii.md``, ``research_strategies_iii.png`` and
``research_strategies_iii_runs.json`` into ``--out``.
Must NOT know: engine internals (it drives strategies through their ``run``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ttc.engine.backends.simulated import SimulatedBackendConfig, SimulatedGenerator
from ttc.evals.stats import Estimate, ReachKind, mean_interval, tokens_to_reach
from ttc.evals.research import accuracy_cell, pooled as pooled_points
from ttc.evals.tasks import make_problems
from ttc.strategies.adaptive_consistency import AdaptiveConsistency, AdaptiveConsistencyConfig
from ttc.strategies.deepconf import DeepConf, DeepConfConfig
from ttc.strategies.dynasor import Dynasor, DynasorConfig
from ttc.strategies.first_finish import FirstFinish, FirstFinishConfig
from ttc.strategies.rpc import RPC, RPCConfig
from ttc.strategies.self_consistency import SelfConsistency, SelfConsistencyConfig
from ttc.types import Problem
from ttc.verifiers.none import NoVerifier

SEEDS = 10
LOGPROB_AUROC = 0.75
DIFFICULTY = (0.3, 1.0)
SC_NS = (8, 16, 32, 64)
DEEPCONF = {"DeepConf-high (eta=90)": 90.0, "DeepConf-low (eta=10)": 10.0}
DYNASOR = {"T=32, w=2": (32, 2, 2.0), "T=32, w=3": (32, 3, 2.0), "T=64, w=3": (64, 3, 2.0),
           "T=32, w=2, probes know earlier (f^1)": (32, 2, 1.0)}
BOOTSTRAP = 2000
Echo = Callable[[str], None]


def world(seed: int, auroc: float | None = LOGPROB_AUROC, probe_exponent: float = 2.0
          ) -> SimulatedGenerator:
    return SimulatedGenerator(SimulatedBackendConfig(world_seed=seed, logprob_auroc=auroc,
                                                     probe_exponent=probe_exponent))


def evaluate(strategy: Any, problems: Sequence[Problem], *, seed: int,
             auroc: float | None = LOGPROB_AUROC, probe_exponent: float = 2.0
             ) -> dict[str, float]:
    """Correct count, accuracy and mean generated tokens per problem (one fresh world)."""
    gen = world(seed, auroc, probe_exponent)
    correct = tokens = 0
    extra: dict[str, float] = {}
    for p in problems:
        r = strategy.run(p, generator=gen, verifier=NoVerifier())
        correct += int(r.answer == p.answer)
        tokens += r.ledger.generated_tokens
        dc = r.info.get("deepconf")
        if dc:
            extra["traces"] = extra.get("traces", 0) + dc["traces"]
            extra["stopped"] = extra.get("stopped", 0) + dc["stopped"]
            extra["stopped_tokens"] = extra.get("stopped_tokens", 0) + dc["stopped_tokens"]
        for chain in r.info.get("dynasor", ()):
            extra["exits"] = extra.get("exits", 0) + (chain["end"] == "probe_exit")
            extra["probe_tokens"] = extra.get("probe_tokens", 0) + sum(
                len(t.split()) for t in chain["texts"])
    n = len(problems)
    return {"correct": correct, "problems": n, "accuracy": correct / n, "tokens": tokens / n,
            **{k: v / n for k, v in extra.items()}}


def pooled(points: Sequence[dict[str, float]]) -> dict[str, float]:
    return pooled_points(points)


# -- 1. DeepConf online vs self-consistency -------------------------------------------------
def deepconf_seed(seed: int, *, quick: bool) -> dict[str, Any]:
    problems = make_problems(20 if quick else 60, seed=31 + seed, difficulty=DIFFICULTY)
    sc = {n: evaluate(SelfConsistency(SelfConsistencyConfig(n=n, keep_tree=False)), problems,
                      seed=seed) for n in SC_NS}
    dc = {name: evaluate(DeepConf(DeepConfConfig(traces=64, warmup=16, wave=8, eta=eta,
                                                 window=32, top_k=20, tau=0.95,
                                                 keep_tree=False)), problems, seed=seed)
          for name, eta in DEEPCONF.items()}
    return {"sc": sc, "dc": dc}


def summarize_deepconf(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"sc": {n: pooled([s["sc"][n] for s in per_seed]) for n in SC_NS},
                           "methods": {}}
    for name in DEEPCONF:
        rows = [s["dc"][name] for s in per_seed]
        full = [s["sc"][64] for s in per_seed]
        saved = [1 - r["tokens"] / f["tokens"] for r, f in zip(rows, full)]
        delta = [r["accuracy"] - f["accuracy"] for r, f in zip(rows, full)]
        out["methods"][name] = {
            "pooled": pooled(rows),
            "saved_vs_sc64": mean_interval(saved), "accuracy_vs_sc64": mean_interval(delta),
            "equal_accuracy": equal_accuracy_bootstrap(per_seed, name),
            "stopped_share": mean_interval([r["stopped"] / max(1, r["traces"] - 16)
                                            for r in rows]),
            "traces": sum(r["traces"] for r in rows) / len(rows)}
    return out


def _saved_at_equal(seeds: Sequence[dict[str, Any]], name: str) -> tuple[ReachKind, float | None]:
    """1 - DeepConf tokens / SC tokens at DeepConf's accuracy, on the seed-averaged curves."""
    k = len(seeds)
    curve = [(sum(s["sc"][n]["tokens"] for s in seeds) / k,
              sum(s["sc"][n]["accuracy"] for s in seeds) / k) for n in SC_NS]
    acc = sum(s["dc"][name]["accuracy"] for s in seeds) / k
    tok = sum(s["dc"][name]["tokens"] for s in seeds) / k
    reach = tokens_to_reach(curve, acc)
    if reach.kind is ReachKind.INTERPOLATED:
        return reach.kind, 1 - tok / reach.tokens
    return reach.kind, None


def equal_accuracy_bootstrap(per_seed: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """Tokens saved at equal accuracy with a 95% bootstrap interval over seeds.

    Per-seed curves are too noisy to interpolate (accuracy steps of 1/problems), so the
    curves are averaged over seeds; resampling the seeds (BOOTSTRAP times) gives the
    interval. Resamples where self-consistency never reaches DeepConf's accuracy within
    n = 64 (or already has it at n = 8) have no ratio and are counted instead.
    """
    import random

    kind, point = _saved_at_equal(per_seed, name)
    rng = random.Random(0)
    values: list[float] = []
    kinds: dict[str, int] = {}
    for _ in range(BOOTSTRAP):
        sample = [per_seed[rng.randrange(len(per_seed))] for _ in per_seed]
        k, v = _saved_at_equal(sample, name)
        kinds[k.value] = kinds.get(k.value, 0) + 1
        if v is not None:
            values.append(v)
    values.sort()
    lo = values[int(0.025 * len(values))] if values else None
    hi = values[min(len(values) - 1, int(0.975 * len(values)))] if values else None
    return {"kind": kind.value, "saved": point, "low": lo, "high": hi, "resamples": kinds}


# -- 2. Dynasor-CoT vs full-length chains ---------------------------------------------------
def dynasor_seed(seed: int, *, quick: bool) -> dict[str, Any]:
    problems = make_problems(60 if quick else 300, seed=41 + seed, difficulty=DIFFICULTY)
    full = evaluate(SelfConsistency(SelfConsistencyConfig(n=1, keep_tree=False)), problems,
                    seed=seed)
    dyn = {name: evaluate(Dynasor(DynasorConfig(chunk_tokens=t, window=w, keep_tree=False)),
                          problems, seed=seed, probe_exponent=e)
           for name, (t, w, e) in DYNASOR.items()}
    return {"full": full, "dynasor": dyn}


def summarize_dynasor(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"full": pooled([s["full"] for s in per_seed]), "methods": {}}
    # NOTE: the full-chain baseline is the same for every row; the f^1 row's world differs
    # only in what probes say (chains are drawn identically), so it pairs with it too.
    for name in DYNASOR:
        rows = [s["dynasor"][name] for s in per_seed]
        full = [s["full"] for s in per_seed]
        out["methods"][name] = {
            "pooled": pooled(rows),
            "saved": mean_interval([1 - r["tokens"] / f["tokens"] for r, f in zip(rows, full)]),
            "accuracy_delta": mean_interval([r["accuracy"] - f["accuracy"]
                                             for r, f in zip(rows, full)]),
            "exit_share": sum(r.get("exits", 0) for r in rows) / len(rows),
            "probe_tokens": sum(r.get("probe_tokens", 0) for r in rows) / len(rows)}
    return out


# -- 3. RPC, adaptive consistency, first-finish: old world vs new -------------------------
RECHECK = {"RPC": lambda: RPC(RPCConfig(n=16, keep_tree=False)),
           "adaptive consistency": lambda: AdaptiveConsistency(AdaptiveConsistencyConfig(
               max_n=16, batch=4, keep_tree=False)),
           "first-finish": lambda: FirstFinish(FirstFinishConfig(n=16, keep_tree=False))}
WORLDS = {"hash-noise log-probs (old)": None, f"log-prob AUROC {LOGPROB_AUROC} (new)":
          LOGPROB_AUROC}


def recheck_seed(seed: int, *, quick: bool) -> dict[str, Any]:
    problems = make_problems(20 if quick else 60, seed=51 + seed, difficulty=DIFFICULTY)
    out: dict[str, Any] = {}
    for wname, auroc in WORLDS.items():
        sc = evaluate(SelfConsistency(SelfConsistencyConfig(n=16, keep_tree=False)), problems,
                      seed=seed, auroc=auroc)
        out[wname] = {"sc": sc, **{m: evaluate(make(), problems, seed=seed, auroc=auroc)
                                   for m, make in RECHECK.items()}}
    return out


def summarize_recheck(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for wname in WORLDS:
        rows = [s[wname] for s in per_seed]
        res = {"sc": pooled([r["sc"] for r in rows])}
        for m in RECHECK:
            res[m] = {"pooled": pooled([r[m] for r in rows]),
                      "accuracy_delta": mean_interval([r[m]["accuracy"] - r["sc"]["accuracy"]
                                                       for r in rows]),
                      "tokens_ratio": mean_interval([r[m]["tokens"] / r["sc"]["tokens"]
                                                     for r in rows])}
        out[wname] = res
    return out


# -- report ---------------------------------------------------------------------------------
def _est(e: Estimate | None, *, pct: bool = False, signed: bool = False) -> str:
    if e is None:
        return "n/a"
    if pct:
        return (f"{100 * e.mean:{'+' if signed else ''}.1f}% [{100 * e.low:.1f}, "
                f"{100 * e.high:.1f}]")
    return e.fmt(3, signed=signed)


def report(dc: dict[str, Any], dy: dict[str, Any], rc: dict[str, Any], *, command: str,
           seeds: int, quick: bool) -> str:
    lines = [
        "# Research checks III: DeepConf, Dynasor-CoT, and the simulator with token signals",
        "",
        "![DeepConf and Dynasor on the simulator](research_strategies_iii.png)",
        "",
        f"Command: `{command}` ({seeds} seeds; {'quick' if quick else 'full'} problem sets).",
        "Per-seed rows are in `research_strategies_iii_runs.json`. Simulated backend with "
        f"`logprob_auroc={LOGPROB_AUROC}` (a correct step's mean token confidence beats a "
        "wrong step's with that probability; errors are absorbing, so a wrong trace is "
        "low-confidence from its first error on), problem difficulty uniform in "
        f"{list(DIFFICULTY)}, steps of ~40 tokens, traces of ~120-300 tokens. Effects are "
        "seed-paired means with Student-t 95% intervals; accuracies are pooled over seeds "
        "(Wilson 95%).",
        "",
        "## 1. DeepConf online vs self-consistency",
        "",
        "DeepConf: 16 warm-up traces, at most 64, waves of 8, window n = 32 tokens (the "
        "paper's 2,048 is ~10% of a real trace; 32 is ~10-25% of a simulated one), k = 20, "
        "consensus stop tau = 0.95, lowest-group score. Self-consistency at n = 8..64 is the "
        "baseline curve; savings are quoted against the same 64 traces run to completion "
        "(the paper's 'full parallel thinking') and, at equal accuracy, against "
        "self-consistency's curve (averaged over seeds) interpolated at DeepConf's accuracy, "
        "with a 95% bootstrap interval over seeds.",
        "",
        "| method | accuracy (pooled) | tokens / problem | vs SC@64: tokens saved | vs SC@64: "
        "accuracy | tokens saved at equal accuracy | traces run | later traces stopped |",
        "|---|---|---|---|---|---|---|---|"]
    for n, p in dc["sc"].items():
        lines.append(f"| self-consistency n={n} | {accuracy_cell(p)} | {p['tokens']:,.0f} | | | | {n} | |")
    for name, m in dc["methods"].items():
        e = m["equal_accuracy"]
        if e["saved"] is None:
            eq = ("SC never reaches it within n=64" if e["kind"] == "not_reached"
                  else "SC has it already at n=8")
        else:
            eq = f"{100 * e['saved']:.1f}%"
        miss = BOOTSTRAP - e["resamples"].get("interpolated", 0)
        if miss:
            eq += f" ({miss} of {BOOTSTRAP} seed resamples have no crossing"
            eq += (f"; the others: [{100 * e['low']:.1f}, {100 * e['high']:.1f}])"
                   if e["low"] is not None else ")")
        elif e["low"] is not None:
            eq += f" [{100 * e['low']:.1f}, {100 * e['high']:.1f}] (bootstrap over seeds)"
        lines.append(f"| {name} | {accuracy_cell(m['pooled'])} | {m['pooled']['tokens']:,.0f} | "
                     f"{_est(m['saved_vs_sc64'], pct=True)} | "
                     f"{_est(m['accuracy_vs_sc64'], signed=True)} | {eq} | "
                     f"{m['traces']:.1f} | {_est(m['stopped_share'], pct=True)} |")
    lines += [
        "",
        "## 2. Dynasor-CoT vs full-length chains",
        "",
        "One chain per problem; a probe (the reference suffix, 20 tokens at most) after "
        "every T tokens; exit when the last w probed answers agree and none hedges. Tokens "
        "include every chain token and every probe's answer tokens (probe suffixes are "
        "prefill, not counted here). The simulated probe states the answer the trace holds "
        "with probability (steps done / steps needed)^2, else hedges or guesses.",
        "",
        "| method | accuracy (pooled) | tokens / problem | tokens saved vs full | accuracy vs "
        "full | chains exited by probes | probe tokens / problem |",
        "|---|---|---|---|---|---|---|",
        f"| full-length chain | {accuracy_cell(dy['full'])} | {dy['full']['tokens']:,.0f} | | | | |"]
    for name, m in dy["methods"].items():
        lines.append(f"| Dynasor {name} | {accuracy_cell(m['pooled'])} | {m['pooled']['tokens']:,.0f} | "
                     f"{_est(m['saved'], pct=True)} | {_est(m['accuracy_delta'], signed=True)} "
                     f"| {100 * m['exit_share']:.0f}% | {m['probe_tokens']:.1f} |")
    lines += [
        "",
        "## 3. RPC, adaptive consistency and first-finish re-checked",
        "",
        "Each against self-consistency n = 16 on the same problems, in the old world "
        "(hash-noise token log-probs) and the new one. RPC n = 16, adaptive consistency "
        "max_n = 16 in waves of 4 (threshold 0.95), first-finish n = 16.",
        "",
        "| world | method | accuracy (pooled) | accuracy - SC | tokens / SC tokens |",
        "|---|---|---|---|---|"]
    for wname, res in rc.items():
        lines.append(f"| {wname} | self-consistency n=16 | {accuracy_cell(res['sc'])} | | |")
        for m in RECHECK:
            r = res[m]
            lines.append(f"| {wname} | {m} | {accuracy_cell(r['pooled'])} | "
                         f"{_est(r['accuracy_delta'], signed=True)} | "
                         f"{_est(r['tokens_ratio'])} |")
    lines += ["", "## Reading it", ""] + reading(dc, dy, rc) + ["", *CANNOT_SHOW]
    return "\n".join(lines) + "\n"


def _verdict(e: Estimate) -> str:
    if e.low > 0:
        return "above zero"
    if e.high < 0:
        return "below zero"
    return "includes zero"


def reading(dc: dict[str, Any], dy: dict[str, Any], rc: dict[str, Any]) -> list[str]:
    out = []
    for name, m in dc["methods"].items():
        s, a = m["saved_vs_sc64"], m["accuracy_vs_sc64"]
        out.append(f"* {name}: {_est(s, pct=True)} fewer tokens than the same 64 traces run "
                   f"to completion (paper: 43-85% on real models), accuracy change "
                   f"{_est(a, signed=True)} (interval {_verdict(a)}); "
                   f"{_est(m['stopped_share'], pct=True)} of the traces after warm-up "
                   f"were stopped by the window rule; {m['traces']:.1f} of at most 64 traces "
                   "run per problem (fewer only where the consensus stop fired).")
    for name, m in dy["methods"].items():
        s, a = m["saved"], m["accuracy_delta"]
        out.append(f"* Dynasor {name}: {_est(s, pct=True)} tokens saved vs full chains "
                   f"(interval {_verdict(s)}; paper: 11-29% at equal accuracy), accuracy "
                   f"change {_est(a, signed=True)} (interval {_verdict(a)}).")
    for wname, res in rc.items():
        parts = [f"{m} {_est(res[m]['accuracy_delta'], signed=True)}" for m in RECHECK]
        out.append(f"* {wname}: accuracy minus self-consistency n=16: " + "; ".join(parts)
                   + ".")
    return out


CANNOT_SHOW = [
    "## What this simulator cannot show",
    "",
    "* DeepConf: token confidence here is a designed signal. Each step's mean confidence "
    f"separates right from wrong steps with AUROC {LOGPROB_AUROC}, and errors are absorbing, "
    "so a wrong trace stays low-confidence from its first error on. Confidently-wrong "
    "traces exist only as the AUROC's overlap; real models have systematic ones (the paper "
    "reports DeepConf-low losing accuracy in 8 of 20 settings). The accuracy gains above "
    "follow from the chosen AUROC and are not evidence about real models. The token saving "
    "comes from the same two mechanisms as the paper's (traces cut by the window rule, and "
    "the consensus stop), but at a different scale: simulated traces have ~120-300 tokens "
    "and a 32-token window, real ones 10k-30k tokens and a 2,048-token window.",
    "* Dynasor: a simulated trace ends as soon as it states its answer. Real reasoning "
    "models keep checking after they already know it: on AMC23 the median chain is 2.7k "
    "tokens while probes are right by a median 830. That tail is where Dynasor saves on "
    "real models, and it does not exist here, so only the steps before the last can be "
    "saved. A probe of a trace that is still right states the gold answer with probability "
    "(progress)^2 (or progress, in the f^1 row), so an early exit can also escape a later "
    "error. Any accuracy change is a property of this probe model.",
    "* Cost is generated tokens only: no wall-clock, no warm-up barrier latency, and probes "
    "are not run concurrently with the chain (Dynasor's probes add latency here that a "
    "batched engine would hide). Probe suffixes are prefill and are not in the token "
    "columns.",
    "* The re-check: adaptive consistency and first-finish read no log-probs, and the new "
    "signals do not change the sampling draws, so their rows are identical in both worlds "
    "and their earlier conclusions hold unchanged. Only RPC reads log-probs (mean token "
    "log-prob per path), so it is the only method the new world can move. Greedy errors "
    "(`greedy_can_err`) and path-correlated PRM noise (`path_correlation`) are available in "
    "the simulator but none of these methods uses greedy decoding or a PRM.",
]


def plot(dc: dict[str, Any], dy: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = [p["tokens"] for p in dc["sc"].values()]
    ys = [p["accuracy"] for p in dc["sc"].values()]
    a.plot(xs, ys, "o-", label="self-consistency (n=8..64)")
    for name, m in dc["methods"].items():
        p = m["pooled"]
        a.errorbar([p["tokens"]], [p["accuracy"]],
                   yerr=[[p["accuracy"] - p["low"]], [p["high"] - p["accuracy"]]], fmt="s",
                   label=name)
    a.set_xscale("log")
    a.set_xlabel("generated tokens per problem")
    a.set_ylabel("accuracy (pooled, 95% Wilson)")
    a.set_title("DeepConf online vs self-consistency")
    a.legend(fontsize=8)
    names = ["full chain"] + [f"Dynasor {n}" for n in dy["methods"]]
    rows = [dy["full"]] + [m["pooled"] for m in dy["methods"].values()]
    b.errorbar([r["tokens"] for r in rows], [r["accuracy"] for r in rows],
               yerr=[[r["accuracy"] - r["low"] for r in rows],
                     [r["high"] - r["accuracy"] for r in rows]], fmt="o")
    for name, r in zip(names, rows):
        b.annotate(name, (r["tokens"], r["accuracy"]), fontsize=8, xytext=(4, 4),
                   textcoords="offset points")
    b.set_xlabel("generated tokens per problem (probes included)")
    b.set_ylabel("accuracy (pooled, 95% Wilson)")
    b.set_title("Dynasor-CoT vs full-length chains")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _jsonable(x: Any) -> Any:
    if isinstance(x, Estimate):
        return {"mean": x.mean, "low": x.low, "high": x.high, "n": x.n}
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def run_all(*, quick: bool, seeds: int = SEEDS, echo: Echo = lambda _m: None
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """All three checks; returns (summaries, per-seed runs)."""
    runs: dict[str, Any] = {"deepconf": [], "dynasor": [], "recheck": []}
    for s in range(seeds):
        runs["deepconf"].append(deepconf_seed(s, quick=quick))
        runs["dynasor"].append(dynasor_seed(s, quick=quick))
        runs["recheck"].append(recheck_seed(s, quick=quick))
        echo(f"seed {s} done")
    runs["quick"] = quick
    return summarize(runs), runs


def summarize(runs: dict[str, Any]) -> dict[str, Any]:
    return {"deepconf": summarize_deepconf(runs["deepconf"]),
            "dynasor": summarize_dynasor(runs["dynasor"]),
            "recheck": summarize_recheck(runs["recheck"])}


def load_runs(path: Path) -> dict[str, Any]:
    """Per-seed runs saved by a full run (JSON object keys back to the n they were)."""
    runs = json.loads(path.read_text(encoding="utf-8"))
    for seed in runs["deepconf"]:
        seed["sc"] = {int(n): v for n, v in seed["sc"].items()}
    return runs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small problem sets (still 10 seeds)")
    ap.add_argument("--seeds", type=int, default=SEEDS)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON, write "
                    "nothing")
    ap.add_argument("--from-runs", type=Path, default=None, help="rebuild the report from a "
                    "saved research_strategies_iii_runs.json instead of running")
    args = ap.parse_args(argv)
    if args.seeds < 2:
        ap.error(f"--seeds must be at least 2 (an interval needs replicates); got {args.seeds}.")
    echo = (lambda m: print(m, file=sys.stderr))
    if args.from_runs is not None:
        runs = load_runs(args.from_runs)
        summary = summarize(runs)
        args.seeds = len(runs["deepconf"])
    else:
        summary, runs = run_all(quick=args.quick, seeds=args.seeds, echo=echo)
    if args.json:
        print(json.dumps(_jsonable(summary), indent=1, sort_keys=True))
        return summary
    given = list(argv if argv is not None else sys.argv[1:])
    if args.from_runs is not None and "command" in runs:   # the command that made the runs
        command = runs["command"]
    else:
        for flag in ("--from-runs", "--out"):   # where files go does not reproduce them
            if flag in given:
                i = given.index(flag)
                given = given[:i] + given[i + 2:]
        if args.from_runs is not None:      # an older runs file without its command
            given += ["--quick"] if runs.get("quick") and "--quick" not in given else []
        command = ("python scripts/research_strategies_iii.py " + " ".join(
            shlex.quote(a) for a in given)).strip()
        runs["command"] = command
    args.out.mkdir(parents=True, exist_ok=True)
    text = report(summary["deepconf"], summary["dynasor"], summary["recheck"],
                  command=command, seeds=args.seeds, quick=args.quick or bool(runs.get("quick")))
    plot(summary["deepconf"], summary["dynasor"], args.out / "research_strategies_iii.png")
    (args.out / "research_strategies_iii_runs.json").write_text(
        json.dumps(_jsonable(runs), sort_keys=True) + "\n", encoding="utf-8")
    (args.out / "research_strategies_iii.md").write_text(text, encoding="utf-8")
    print(text)
    return summary


if __name__ == "__main__":
    main()
