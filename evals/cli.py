"""The logic behind ``ttc eval``, ``ttc sweep``, ``ttc report`` and ``ttc tree``.

Contract: ``ttc.cli`` declares the commands and :mod:`ttc.compose` composes the configs
(groups, shorthands such as ``budget=N`` and ``seed=N``, merging, sweep axes); this module
turns them into validated plans and runs them.

Sweep folder layout (``ttc sweep ... output=DIR``)::

    DIR/sweep.json                 axes, fixed overrides, and one entry per run
    DIR/runs/<run name>/           one ``ttc eval`` output folder per combination:
        config.json results.jsonl summary.json
    DIR/report.md DIR/report.csv   written by ``ttc report DIR``
    DIR/plots/*.png                accuracy_vs_tokens, accuracy_vs_verifier_calls,
                                   kv_peak_vs_accuracy

A run's name joins its swept values in axis order, e.g.
``dataset=sim_hard,strategy=beam,budget=32,seed=0``. Sweep axes use Hydra's override
grammar (``a,b,c``, ``range(0,3)``); every combination is validated before any folder is
created, and each run is resumable, so rerunning a killed sweep finishes it.
Must NOT know: strategy or engine internals.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ttc.atomic import write_text_atomic
from ttc.compose import compose_eval, sweep_axes
from ttc.registry import ConfigError

_SHORT = {"budget.max_generated_tokens": "budget", "generation.seed": "seed"}


def run_eval_command(overrides: list[str], *, echo: Callable[[str], None] = print,
                     on_record: Callable[[dict[str, Any]], None] | None = None
                     ) -> dict[str, Any]:
    """``ttc eval``: validate everything, then run (resuming) and print a summary line."""
    from ttc.evals.runner import prepare_eval, run_eval

    plan = prepare_eval(compose_eval(overrides))
    echo(f"eval {plan.settings.dataset.name} · {plan.config.strategy.name} · "
         f"{len(plan.problems)} problems → {plan.output}")
    summary = run_eval(plan, on_record=on_record, echo=echo)
    echo(summary_line(summary))
    return summary


def summary_line(s: dict[str, Any]) -> str:
    """One line over the summary: the whole results file, failures and limit included."""
    if not s:
        return "no records."
    failed = (f" · {s['failed']} failed (not scored; retry_failed=true reruns them)"
              if s.get("failed") else "")
    plan = s.get("plan") or {}
    outside = (f" · results.jsonl also holds {plan['outside']} problems beyond this limit"
               if plan.get("outside") else "")
    if not s.get("problems"):
        return f"no problem was graded{failed}{outside}"
    return (f"accuracy {s['accuracy']:.3f} [{s['accuracy_ci_low']:.3f}, "
            f"{s['accuracy_ci_high']:.3f}] over {s['problems']} problems{failed}{outside} · "
            f"{s['generated_tokens_per_problem']:,.0f} generated tokens/problem · "
            f"{s['verifier_calls_per_problem']:,.1f} verifier calls/problem")


# -- sweeps -------------------------------------------------------------------------------
def run_name(combo: list[str], axes: dict[str, list[str]]) -> str:
    parts = []
    for item in combo:
        key, _, value = item.partition("=")
        if key in axes:
            parts.append(f"{_SHORT.get(key, key)}={value}".replace("/", "_"))
    return ",".join(parts) or "run"


def run_sweep_command(overrides: list[str], *, echo: Callable[[str], None] = print
                      ) -> Path:
    """``ttc sweep``: validate every combination, then run each as a resumable eval."""
    from ttc.evals.runner import prepare_eval, run_eval

    out_items = [o for o in overrides if o.partition("=")[0] == "output"]
    if not out_items:
        raise ConfigError("ttc sweep needs output=DIR (the results folder).")
    root = Path(out_items[-1].partition("=")[2]).expanduser()
    rest = [o for o in overrides if o.partition("=")[0] != "output"]
    axes, fixed, combos = sweep_axes(rest)
    plans = []
    for combo in combos:
        name = run_name(combo, axes)
        plans.append((name, combo, prepare_eval(compose_eval(combo),
                                                output=root / "runs" / name)))
    names = [n for n, _, _ in plans]
    if len(set(names)) != len(names):
        raise ConfigError("two sweep combinations share a run name; give each axis "
                          "distinct values.")
    root.mkdir(parents=True, exist_ok=True)
    _write_sweep_json(root, axes, fixed, [(n, c) for n, c, _ in plans])
    for i, (name, _, plan) in enumerate(plans, start=1):
        echo(f"[{i}/{len(plans)}] {name}: {len(plan.problems)} problems")
        summary = run_eval(plan, echo=echo)
        echo(f"    {summary_line(summary)}")
    echo(f"sweep done: {len(plans)} runs in {root}; `ttc report {root}` draws the figures.")
    return root


def _write_sweep_json(root: Path, axes: dict[str, list[str]], fixed: list[str],
                      runs: list[tuple[str, list[str]]]) -> None:
    path = root / "sweep.json"
    known: dict[str, Any] = {}
    if path.exists():
        try:
            known = {r["name"]: r for r in json.loads(path.read_text())["runs"]}
        except (json.JSONDecodeError, KeyError, TypeError):
            known = {}
    for name, combo in runs:
        known[name] = {"name": name, "dir": f"runs/{name}", "overrides": combo}
    data = {"axes": axes, "fixed": fixed, "runs": list(known.values())}
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")
