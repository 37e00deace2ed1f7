"""The simulated scaling sweep covers every registered strategy."""

from __future__ import annotations

import json

from ttc.evals.report import collect, figures
from ttc.evals.scaling import reach_summary, run_scaling, scale_overrides
from ttc.registry import STRATEGIES


def test_every_registered_strategy_has_valid_width_overrides():
    for name in STRATEGIES.names():
        for width in (4, 32):
            fields = {"name": name}
            for item in scale_overrides(name, width) or []:
                key, _, value = item.partition("=")
                fields[key.removeprefix("strategy.")] = int(value)
            config = STRATEGIES.make_config(fields)
            assert config.name == name


def test_scaling_sweep_draws_one_line_per_registered_strategy(tmp_path):
    png = run_scaling(tmp_path / "s", widths=(4,), limit=1, budget=2048, seeds=2,
                      echo=lambda _m: None)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert "n" in meta["points_over"]
    rows = collect(tmp_path / "s")
    # each seed is its own problem set and sampling seed, pooled into one point
    assert all(r["seeds"] == "0,1" and r["problem_seeds"] == "0,1" and r["problems"] == 2
               and r["distinct_problems"] == 2 for r in rows)
    reach = (tmp_path / "s" / "reach.md").read_text().splitlines()
    assert len(reach) == 2 + len(STRATEGIES.names())
    ax = figures(rows)["accuracy_vs_tokens"].axes[0]
    labels = sorted(line.get_label() for line in ax.get_lines())
    assert labels == STRATEGIES.names()
    # one per-seed row per run, every strategy, both seeds
    seeds = json.loads((tmp_path / "s" / "seed_runs.json").read_text())
    assert {r["strategy"] for r in seeds} == set(STRATEGIES.names())
    assert sorted({r["seed"] for r in seeds}) == [0, 1]
    assert all(r["problems"] == 1 and 0 <= r["correct"] <= 1 for r in seeds)


def test_reach_summary_interpolates_or_says_not_reached():
    def row(strategy, tokens, acc):
        return {"dataset": "d", "strategy": strategy, "generated_tokens_per_problem": tokens,
                "accuracy": acc, "accuracy_ci_low": acc - 0.1, "accuracy_ci_high": acc + 0.05}
    rows = [row("a", 100, 0.2), row("a", 300, 0.6), row("b", 100, 0.3), row("b", 800, 0.45)]
    text = reach_summary(rows, targets=(0.5,))
    assert "| d | a | 2 | 0.600 [0.500, 0.650] | 300 | 250 tokens |" in text
    assert "| d | b | 2 | 0.450 [0.350, 0.500] | 800 | not reached within 800 tokens |" in text
