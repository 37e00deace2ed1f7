"""The logic behind ``ttc eval``, ``ttc sweep``, ``ttc report`` and ``ttc tree``.

Contract: ``ttc.cli`` declares the commands and composes Hydra configs; this module turns
overrides into validated plans and runs them. Shorthands on top of ``ttc.cli``'s
(``budget=N``/``budget.tokens=N`` mean ``budget.max_generated_tokens=N``):
``seed=N`` means ``generation.seed=N``.

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

import itertools
import json
from pathlib import Path
from typing import Any, Callable

from ttc.registry import ConfigError

GROUPS = ("backend", "verifier", "strategy", "generation", "budget", "dataset")
_SHORT = {"budget.max_generated_tokens": "budget", "generation.seed": "seed"}


def eval_overrides(overrides: list[str]) -> list[str]:
    """Shorthands expanded, group choices first (a later choice of one group wins)."""
    from ttc.cli import expand_shorthands

    merged: list[str] = []
    for item in expand_shorthands(list(overrides)):
        key, sep, value = item.partition("=")
        if key == "seed" and sep:
            item = f"generation.seed={value}"
            key = "generation.seed"
        if key in GROUPS:
            merged = [m for m in merged if m.partition("=")[0] != key]
        merged.append(item)
    return sorted(merged, key=lambda m: 0 if m.partition("=")[0] in GROUPS else 1)


def compose_eval(overrides: list[str]) -> dict[str, Any]:
    from ttc.cli import compose

    return compose(eval_overrides(overrides), config_name="eval", groups=GROUPS)


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
def expand_sweep(overrides: list[str]) -> tuple[dict[str, list[str]], list[str],
                                                list[list[str]]]:
    """(axes, fixed overrides, one override list per combination), via Hydra's grammar."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    items = eval_overrides(overrides)
    try:
        parsed = OverridesParser.create().parse_overrides(items)
    except HydraException as err:
        raise ConfigError(str(err).splitlines()[0]) from err
    axes: dict[str, list[str]] = {}
    fixed: list[str] = []
    for item, ov in zip(items, parsed):
        if ov.is_sweep_override():
            values = list(ov.sweep_string_iterator())
            if not values:
                raise ConfigError(f"sweep axis {ov.key_or_group!r} has no values.")
            axes[ov.key_or_group] = values
        else:
            fixed.append(item)
    combos = [fixed + [f"{k}={v}" for k, v in zip(axes, values)]
              for values in itertools.product(*axes.values())]
    return axes, fixed, combos


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
    axes, fixed, combos = expand_sweep(rest)
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
    tmp = path.with_name(".sweep.json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
