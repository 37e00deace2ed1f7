"""``ttc report DIR``: tables and scaling plots from eval or sweep folders.

Contract: :func:`collect` reads every run under DIR (an eval folder, or a sweep's
``runs/*``), pools runs that differ only in seed (the sampling seed ``generation.seed``
and a generated dataset's problem-set seed ``dataset.seed``), and summarizes each group
with :func:`ttc.evals.metrics.summarize` (metrics over graded problems; failed records
are counted in ``failed`` and a run with none graded is left out), whose accuracy
interval is clustered by problem id: a problem seen under two sampling seeds is one
cluster, not two samples. :func:`figures` draws three matplotlib figures (Agg), one
subplot per dataset, one line per strategy (points ordered by generated tokens), each
point with its 95% interval bar and its token budget written beside it, titles naming
dataset, backend, verifier and seeds:

    accuracy_vs_tokens           accuracy vs generated tokens per problem
    accuracy_vs_verifier_calls   accuracy vs verifier calls per problem
    kv_peak_vs_accuracy          peak KV bytes (MiB) vs accuracy

An x axis is linear while its points span less than 8x, else log (symlog when it holds
zeros), always with plain-number tick labels.

:func:`write_report` saves ``report.md``, ``report.csv`` and ``plots/<name>.png``.
Must NOT know: strategy or engine internals.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path
from typing import Any

from ttc.evals.metrics import is_failed, summarize
from ttc.evals.runner import CONFIG, RESULTS, read_results
from ttc.registry import ConfigError

COLUMNS = ("dataset", "strategy", "point", "budget", "backend", "verifier", "seeds", "problem_seeds", "problems",
           "distinct_problems", "failed", "accuracy",
           "accuracy_ci_low", "accuracy_ci_high", "pass@1", "majority@8",
           "generated_tokens_per_problem", "verifier_calls_per_problem",
           "kv_peak_bytes_mean", "wall_seconds_per_problem")
_MARKS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h")
PLOTS = ("accuracy_vs_tokens", "accuracy_vs_verifier_calls", "kv_peak_vs_accuracy")


def run_dirs(root: Path) -> list[Path]:
    if not root.is_dir():
        raise ConfigError(f"results folder {str(root)!r} does not exist.")
    if (root / RESULTS).exists():
        return [root]
    dirs = sorted(p.parent for p in root.glob(f"runs/*/{RESULTS}"))
    if not dirs:
        dirs = sorted(p.parent for p in root.glob(f"*/{RESULTS}"))
    if not dirs:
        raise ConfigError(f"no {RESULTS} under {str(root)!r}; point ttc report at an eval "
                          f"output folder or a sweep folder.")
    return dirs


def _label(run: dict[str, Any], varying: dict[str, set[str]]) -> str:
    strat = run["strategy"]
    extras = [f"{k}={strat[k]}" for k in sorted(varying.get(strat["name"], ()))
              if k != "name"]
    text = strat["name"] + (f"({', '.join(extras)})" if extras else "")
    return text


def collect(root: str | Path, *, points_over: tuple[str, ...] | None = None
            ) -> list[dict[str, Any]]:
    """One summary row per (dataset, strategy variant, budget), seeds pooled.

    Strategy fields that vary between runs become part of a line's label, except those
    in ``points_over`` (default: the sweep folder's ``sweep.json`` "points_over", else
    none), which vary *along* a line, like the budget does.
    """
    import json

    if points_over is None:
        meta = Path(root) / "sweep.json"
        points_over = ()
        if meta.exists():
            points_over = tuple(json.loads(meta.read_text(encoding="utf-8"))
                                .get("points_over", ()))
    runs = []
    for d in run_dirs(Path(root)):
        cfg_path = d / CONFIG
        if not cfg_path.exists():
            raise ConfigError(f"{d} has {RESULTS} but no {CONFIG}.")
        identity = json.loads(cfg_path.read_text(encoding="utf-8"))
        records = read_results(d / RESULTS)
        if any(not is_failed(r) for r in records):     # a run with graded problems
            runs.append({"dir": d, "identity": identity, "records": records,
                         "strategy": identity["run"]["strategy"]})
    if not runs:
        raise ConfigError(f"no finished problems under {str(root)!r}.")
    # Strategy fields that vary between runs of one strategy name become part of the label.
    values: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for r in runs:
        for k, v in r["strategy"].items():
            values[r["strategy"]["name"]][k].add(json.dumps(v, sort_keys=True))
    varying = {name: {k for k, vs in fields.items() if len(vs) > 1 and k not in points_over}
               for name, fields in values.items()}
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        ident = r["identity"]
        key_ident = json.loads(json.dumps(ident))
        key_ident["run"]["generation"].pop("seed", None)
        key_ident.pop("seed", None)
        key_ident.get("dataset", {}).pop("seed", None)
        key = (ident["dataset"]["name"], _label(r, varying),
               ident["run"]["budget"]["max_generated_tokens"],
               json.dumps(key_ident, sort_keys=True))
        groups[key].append(r)
    rows = []
    for (dataset, label, budget, _), members in sorted(
            groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] or 0)):
        records = [rec for m in members for rec in m["records"]]
        summary = summarize(records)
        strat = members[0]["strategy"]
        point = ",".join(f"{k}={strat[k]}" for k in points_over if k in strat)
        run = members[0]["identity"]["run"]
        rows.append({"dataset": dataset, "strategy": label, "point": point, "budget": budget,
                     "backend": run["backend"]["name"], "verifier": run["verifier"]["name"],
                     "seeds": seed_list(m["identity"]["seed"] for m in members),
                     "problem_seeds": seed_list(m["identity"]["dataset"].get("seed", 0)
                                                for m in members),
                     "distinct_problems": len({rec["id"] for rec in records}),
                     **summary})
    rows.sort(key=lambda r: (r["dataset"], r["strategy"], r["budget"] or 0,
                             r["generated_tokens_per_problem"]))
    return rows


def seed_list(seeds) -> str:
    """Distinct seeds, sorted, runs of three or more consecutive integers as ``a-b``."""
    values = sorted({int(x) for x in seeds})
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{values[i]}-{values[j]}")
        else:
            parts.extend(str(v) for v in values[i:j + 1])
        i = j + 1
    return ",".join(parts)


def _nice_ticks(lo: float, hi: float, *, zero: bool = False) -> list[float]:
    """Plain tick values for a log (or symlog) axis over [lo, hi]: powers of ten, or
    1, 2, 5 x 10^k, or finer steps (the first giving three ticks), then evenly spaced round numbers, when that leaves fewer than three
    ticks; 0 first when ``zero``."""
    import math

    lo, hi = max(lo, 1e-9), max(hi, 1e-9)
    ticks: list[float] = []
    for mantissas in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 4, 5, 6, 7, 8, 9)):
        ticks = sorted({m * 10.0 ** k
                        for k in range(math.floor(math.log10(lo)) - 1,
                                       math.ceil(math.log10(hi)) + 2)
                        for m in mantissas if lo <= m * 10.0 ** k <= hi})
        if len(ticks) >= 3:
            break
    if len(ticks) < 3:                  # less than a decade: evenly spaced round numbers
        from matplotlib.ticker import MaxNLocator

        ticks = [float(t) for t in MaxNLocator(nbins=6, steps=[1, 2, 5, 10]).tick_values(lo, hi) if lo <= t <= hi]
    while len(ticks) > 8:
        ticks = ticks[::2]
    return ([0.0] if zero else []) + ticks


def _plain(value: float, _pos: Any = None) -> str:
    return f"{value:,.0f}" if abs(value) >= 10 or value == int(value) else f"{value:g}"


def _set_x_axis(ax, xs: list[float], *, allow_zero: bool) -> None:
    """Linear when the points span less than 8x; log (symlog with zeros) beyond, with
    plain-number ticks (never 10^3-style labels or one lone tick)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter, NullLocator

    positive = [x for x in xs if x > 0]
    has_zero = any(x <= 0 for x in xs)
    if not positive or max(positive) < 8 * min(positive):
        ax.xaxis.set_major_formatter(FuncFormatter(_plain))
        return
    if has_zero and allow_zero:
        ax.set_xscale("symlog", linthresh=1.0)
    else:
        ax.set_xscale("log")
    ticks = _nice_ticks(min(positive), max(positive), zero=has_zero and allow_zero)
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(FuncFormatter(_plain))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _names(rows: list[dict[str, Any]], key: str) -> str:
    return ", ".join(sorted({str(r.get(key) or "?") for r in rows}))


def figures(rows: list[dict[str, Any]]):
    """The three figures (matplotlib, Agg), keyed by plot name.

    Each point is one (strategy, budget) group with a 95% interval bar (clustered by
    problem, from :func:`collect`) and its token budget written beside it; each
    subplot's title names the dataset, backend, verifier and seeds.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows})
    specs = {
        "accuracy_vs_tokens": ("generated_tokens_per_problem", "generated tokens per problem"),
        "accuracy_vs_verifier_calls": ("verifier_calls_per_problem",
                                       "verifier calls per problem"),
        "kv_peak_vs_accuracy": ("kv_peak_mib", "peak KV cache (MiB, mean over problems)"),
    }
    out = {}
    for name, (xkey, xlabel) in specs.items():
        many = len({r["strategy"] for r in rows}) > 6
        fig, axes = plt.subplots(1, len(datasets),
                                 figsize=(6.8 * len(datasets) + (2.0 if many else 0.0), 5.0),
                                 squeeze=False)
        for ax, dataset in zip(axes[0], datasets):
            here = [r for r in rows if r["dataset"] == dataset]
            by_strategy: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in here:
                by_strategy[r["strategy"]].append(r)
            colors = plt.get_cmap("tab20").colors
            every_x: list[float] = []
            for i, (label, pts) in enumerate(sorted(by_strategy.items())):
                pts = sorted(pts, key=lambda r: r["generated_tokens_per_problem"])
                xs = [(r["kv_peak_bytes_mean"] / 2**20 if xkey == "kv_peak_mib" else r[xkey])
                      for r in pts]
                ys = [r["accuracy"] for r in pts]
                every_x.extend(xs)
                color = colors[(2 * i) % 20 + (i // 10) % 2]
                ax.plot(xs, ys, marker=_MARKS[i % len(_MARKS)], label=label, color=color)
                # NOTE: capsize=0: caps would be Line2D objects among the axes' lines, which
                # callers read as one line per strategy; the bars are one LineCollection.
                ax.errorbar(xs, ys, yerr=[[y - r["accuracy_ci_low"] for y, r in zip(ys, pts)],
                                          [r["accuracy_ci_high"] - y for y, r in zip(ys, pts)]],
                            fmt="none", ecolor=color, elinewidth=1.8, capsize=0, alpha=0.6)
                if not many:
                    for x, y, r in zip(xs, ys, pts):
                        # Above the point near the floor, below it elsewhere; one row per
                        # strategy so points at one spot keep their labels apart.
                        dy = 4 + 8 * i if y < 0.15 else -10 - 8 * i
                        ax.annotate(f"b={r['budget']:,}" if r["budget"] else "b=∞", (x, y),
                                    textcoords="offset points", xytext=(5, dy),
                                    fontsize=6.5, color=color)
            _set_x_axis(ax, every_x, allow_zero=(xkey == "verifier_calls_per_problem"))
            ax.set_xlabel(xlabel)
            ax.set_ylabel("accuracy (bars: 95% CI, clustered by problem)")
            ax.set_ylim(-0.02, 1.05)
            ax.set_title(f"{dataset} · backend {_names(here, 'backend')} · verifier "
                         f"{_names(here, 'verifier')}\nseeds {_names(here, 'seeds')} · "
                         f"problem sets {_names(here, 'problem_seeds')} · "
                         f"b = token budget", fontsize=9)
            ax.grid(True, alpha=0.3)
            if many:
                ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
            else:
                ax.legend(fontsize=8)
        fig.tight_layout()
        out[name] = fig
    return out


def write_report(root: str | Path, *, out: str | Path | None = None) -> dict[str, Path]:
    """Write report.md, report.csv and plots/*.png; return their paths."""
    import matplotlib.pyplot as plt

    root = Path(root)
    rows = collect(root)
    dest = Path(out) if out is not None else root
    (dest / "plots").mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _fmt(r.get(k)) for k in COLUMNS})
    paths["csv"] = dest / "report.csv"
    paths["csv"].write_text(buf.getvalue(), encoding="utf-8")
    paths["md"] = dest / "report.md"
    paths["md"].write_text(markdown_table(rows), encoding="utf-8")
    for name, fig in figures(rows).items():
        paths[name] = dest / "plots" / f"{name}.png"
        fig.savefig(paths[name], dpi=110)
        plt.close(fig)
    return paths


def _fmt(v: Any) -> Any:
    return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else v)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| dataset | strategy | budget | seeds (sampling / problem set) | problems "
            "(distinct) | accuracy [95% CI] | "
            "pass@1 | maj@8 | gen tokens/problem | verifier calls/problem | "
            "KV peak MiB | s/problem |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        def opt(k: str) -> str:
            return f"{r[k]:.3f}" if k in r else "–"
        name = f"{r['strategy']} ({r['point']})" if r.get("point") else r["strategy"]
        lines.append(
            f"| {r['dataset']} | {name} | {r['budget'] or '∞'} | {r['seeds']} / "
            f"{r['problem_seeds']} | {r['problems']} ({r['distinct_problems']}) | "
            f"{r['accuracy']:.3f} [{r['accuracy_ci_low']:.3f}, "
            f"{r['accuracy_ci_high']:.3f}] | {opt('pass@1')} | {opt('majority@8')} | "
            f"{r['generated_tokens_per_problem']:,.0f} | "
            f"{r['verifier_calls_per_problem']:,.1f} | "
            f"{r['kv_peak_bytes_mean'] / 2**20:,.2f} | {r['wall_seconds_per_problem']:.3f} |")
    return "\n".join(lines) + "\n"
