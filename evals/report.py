"""``ttc report DIR``: tables and scaling plots from eval or sweep folders.

Contract: :func:`collect` reads every run under DIR (an eval folder, or a sweep's
``runs/*``), pools runs that differ only in seed (the sampling seed ``generation.seed``
and a generated dataset's problem-set seed ``dataset.seed``), and summarizes each group
with :func:`ttc.evals.metrics.summarize` (metrics over graded problems; failed records
are counted in ``failed`` and a run with none graded is left out), whose accuracy
interval is clustered by problem id: a problem seen under two sampling seeds is one
cluster, not two samples. :func:`figures` draws three matplotlib figures (Agg), one
subplot per dataset, one line per strategy (points ordered by generated tokens):

    accuracy_vs_tokens           accuracy vs generated tokens per problem (log x)
    accuracy_vs_verifier_calls   accuracy vs verifier calls per problem (symlog x)
    kv_peak_vs_accuracy          peak KV bytes (MiB) vs accuracy

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

COLUMNS = ("dataset", "strategy", "point", "budget", "seeds", "problem_seeds", "problems",
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
        rows.append({"dataset": dataset, "strategy": label, "point": point, "budget": budget,
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


def figures(rows: list[dict[str, Any]]):
    """The three figures (matplotlib, Agg), keyed by plot name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in rows})
    specs = {
        "accuracy_vs_tokens": ("generated_tokens_per_problem", "generated tokens per problem",
                               "log"),
        "accuracy_vs_verifier_calls": ("verifier_calls_per_problem",
                                       "verifier calls per problem", "symlog"),
        "kv_peak_vs_accuracy": ("kv_peak_mib", "peak KV cache (MiB, mean over problems)",
                                "log"),
    }
    out = {}
    for name, (xkey, xlabel, xscale) in specs.items():
        wide = 2.0 if len({r["strategy"] for r in rows}) > 6 else 0.0
        fig, axes = plt.subplots(1, len(datasets), figsize=(6.4 * len(datasets) + wide, 4.6),
                                 squeeze=False)
        for ax, dataset in zip(axes[0], datasets):
            by_strategy: dict[str, list[dict[str, Any]]] = defaultdict(list)
            for r in rows:
                if r["dataset"] == dataset:
                    by_strategy[r["strategy"]].append(r)
            colors = plt.get_cmap("tab20").colors
            bands = len(by_strategy) <= 4      # CI bands only while they stay readable
            for i, (label, pts) in enumerate(sorted(by_strategy.items())):
                pts = sorted(pts, key=lambda r: r["generated_tokens_per_problem"])
                xs = [(r["kv_peak_bytes_mean"] / 2**20 if xkey == "kv_peak_mib" else r[xkey])
                      for r in pts]
                ys = [r["accuracy"] for r in pts]
                (line,) = ax.plot(xs, ys, marker=_MARKS[i % len(_MARKS)], label=label,
                                  color=colors[(2 * i) % 20 + (i // 10) % 2])
                if bands:
                    ax.fill_between(xs, [r["accuracy_ci_low"] for r in pts],
                                    [r["accuracy_ci_high"] for r in pts],
                                    color=line.get_color(), alpha=0.12, linewidth=0)
            if xscale == "symlog":
                ax.set_xscale("symlog", linthresh=1.0)
            elif all(x > 0 for line in ax.get_lines() for x in line.get_xdata()):
                ax.set_xscale(xscale)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("accuracy")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(dataset)
            ax.grid(True, alpha=0.3, which="both")
            if len(by_strategy) > 6:
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
