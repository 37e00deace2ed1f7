"""Every published research page is what its committed runs give.

For each research script, ``--from-runs`` on the runs file committed under docs/ rebuilds
the page (and tables) in a temporary folder; the test fails when the committed page
differs from the rebuilt one, so a figure edited by hand, or runs replaced without
regenerating the page, cannot go unnoticed. The simulated sweep's table is rebuilt the
same way from ``docs/simulated_sweep_runs.json`` (:mod:`ttc.evals.scaling`).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# script, its runs file, the pages it writes (compared), from committed runs
PAGES = [
    ("research_strategies_i", "strategies_i_runs.json", ["strategies_i_table.md"]),
    ("research_strategies_ii", "research_strategies_ii_runs.json",
     ["research_strategies_ii.md"]),
    ("research_strategies_iii", "research_strategies_iii_runs.json",
     ["research_strategies_iii.md"]),
    ("research_strategies_iii_b", "research_strategies_iii_b_runs.json",
     ["research_strategies_iii_b.md"]),
]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module          # NOTE: dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, runs, pages", PAGES, ids=[p[0] for p in PAGES])
def test_the_page_is_rebuilt_from_its_committed_runs(name, runs, pages, tmp_path,
                                                     capsys):
    _script(name).main(["--from-runs", str(DOCS / runs), "--out", str(tmp_path)])
    capsys.readouterr()
    for page in pages:
        rebuilt = (tmp_path / page).read_text(encoding="utf-8")
        committed = (DOCS / page).read_text(encoding="utf-8")
        assert committed == rebuilt, (
            f"docs/{page} differs from what scripts/{name}.py --from-runs docs/{runs} "
            f"writes; regenerate it with that command")


def test_the_sweep_table_is_rebuilt_from_its_committed_runs():
    import json

    from ttc.evals.scaling import replace_table, sweep_table

    page = (DOCS / "simulated_sweep.md").read_text(encoding="utf-8")
    rows = json.loads((DOCS / "simulated_sweep_runs.json").read_text(encoding="utf-8"))
    assert replace_table(page, sweep_table(rows)) == page, (
        "docs/simulated_sweep.md's table differs from its runs; rebuild it with "
        "python -m ttc.evals.scaling --from-runs docs/simulated_sweep_runs.json "
        "--doc docs/simulated_sweep.md")
    # every registered strategy is in the sweep, each point with >= 10 seeds
    from ttc.registry import STRATEGIES

    assert {r["strategy"] for r in rows} == set(STRATEGIES.names())
    seeds: dict = {}
    for r in rows:
        seeds.setdefault((r["strategy"], r["point"]), set()).add(r["seed"])
    assert min(len(s) for s in seeds.values()) >= 10


def test_sweep_table_means_over_seeds_with_an_interval():
    from ttc.evals.scaling import replace_table, sweep_table

    rows = [{"strategy": "s", "point": p, "knob": "n", "seed": k, "problems": 10,
             "correct": c, "generated_tokens_per_problem": 100.0 * p}
            for p, cs in ((4, (4, 6)), (8, (8, 10))) for k, c in enumerate(cs)]
    table = sweep_table(rows)
    assert "| s | n = 4 | 2 | 0.500 [" in table and "| s | n = 8 | 2 | 0.900 [" in table
    assert "| 400 | 400 tokens (its" not in table       # reach only on the first row
    assert "<= 400 tokens (its cheapest point) | 800 tokens |" in table
    page = "intro\n<!-- sweep-table: begin (python -m ttc.evals.scaling --from-runs) -->\n" \
           "old\n<!-- sweep-table: end -->\nend\n"
    assert replace_table(page, table).count(table) == 1
    assert "old" not in replace_table(page, table)
