"""ttc sweep makes the documented layout; ttc report draws valid PNGs with every series."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ttc.cli import app
from ttc.compose import sweep_axes
from ttc.evals.cli import run_sweep_command
from ttc.evals.report import PLOTS, collect, figures, seed_list, write_report
from ttc.evals.runner import read_results
from ttc.evals.stats import clustered_proportion_interval
from ttc.evals.treeview import draw_tree, find_record, layout
from ttc.registry import ConfigError
from ttc.tree import SearchTree

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep") / "s"
    run_sweep_command(["strategy=beam,best_of_n", "budget=256,1024", "seed=0,1",
                       "dataset=sim_hard", "limit=6", "save_tree=true", "progress=false",
                       f"output={root}"], echo=lambda _m: None)
    return root


def test_sweep_makes_the_documented_layout(sweep_dir):
    meta = json.loads((sweep_dir / "sweep.json").read_text())
    assert meta["axes"] == {"strategy": ["beam", "best_of_n"],
                            "budget.max_generated_tokens": ["256", "1024"],
                            "generation.seed": ["0", "1"]}
    names = sorted(r["name"] for r in meta["runs"])
    assert len(names) == 8
    assert "strategy=beam,budget=256,seed=0" in names
    for name in names:
        run = sweep_dir / "runs" / name
        assert {p.name for p in run.iterdir()} == {"config.json", "results.jsonl",
                                                   "summary.json"}
        assert len((run / "results.jsonl").read_text().splitlines()) == 6
        cfg = json.loads((run / "config.json").read_text())
        assert f"strategy={cfg['run']['strategy']['name']}" in name


def test_report_pools_seeds_and_writes_tables_and_pngs(sweep_dir):
    rows = collect(sweep_dir)
    assert {(r["strategy"], r["budget"]) for r in rows} == {
        ("beam", 256), ("beam", 1024), ("best_of_n", 256), ("best_of_n", 1024)}
    assert all(r["problems"] == 12 and r["seeds"] == "0,1" for r in rows)
    for r in rows:
        # 6 problems under 2 sampling seeds: 6 clusters, not 12 independent samples
        assert r["distinct_problems"] == 6 and r["problem_seeds"] == "0"
        recs = [rec for seed in (0, 1) for rec in read_results(
            sweep_dir / "runs" / f"strategy={r['strategy']},budget={r['budget']},seed={seed}"
            / "results.jsonl")]
        ci = clustered_proportion_interval([x["correct"] for x in recs], [x["id"] for x in recs])
        assert (r["accuracy_ci_low"], r["accuracy_ci_high"]) == pytest.approx(ci)
    figs = figures(rows)
    assert set(figs) == set(PLOTS)
    for name, fig in figs.items():
        (ax,) = fig.axes[:1]
        labels = sorted(line.get_label() for line in ax.get_lines())
        assert labels == ["beam", "best_of_n"], name
        for line in ax.get_lines():
            assert len(line.get_xdata()) == 2
    assert figs["accuracy_vs_tokens"].axes[0].get_xscale() == "log"
    paths = write_report(sweep_dir)
    for name in PLOTS:
        assert paths[name].read_bytes()[:8] == PNG
    csv_lines = paths["csv"].read_text().splitlines()
    assert csv_lines[0].startswith("dataset,strategy,point,budget") and len(csv_lines) == 5
    assert "| sim_hard | beam | 1024 |" in paths["md"].read_text()


def test_sweep_validates_every_combination_before_writing(tmp_path):
    root = tmp_path / "s"
    with pytest.raises(ConfigError, match="unknown strategy 'nope'"):
        run_sweep_command(["strategy=beam,nope", "dataset=sim_hard", "limit=2",
                           f"output={root}"], echo=lambda _m: None)
    assert not root.exists()
    with pytest.raises(ConfigError, match="needs output=DIR"):
        run_sweep_command(["strategy=beam"], echo=lambda _m: None)


def test_sweep_axes_use_hydra_grammar():
    axes, fixed, combos = sweep_axes(["seed=range(0,3)", "budget=8,32", "limit=2"])
    assert axes == {"generation.seed": ["0", "1", "2"],
                    "budget.max_generated_tokens": ["8", "32"]}
    assert fixed == ["limit=2"] and len(combos) == 6


def test_tree_view_draws_a_stored_tree(sweep_dir, tmp_path):
    results = sweep_dir / "runs" / "strategy=beam,budget=1024,seed=0" / "results.jsonl"
    record = find_record(results, "sim_hard-0-2")
    tree = SearchTree.from_json(record["tree"])
    pos = layout(tree)
    assert set(pos) == {n.id for n in tree}
    for node in tree:
        assert pos[node.id][1] == -node.depth
        if node.children:
            xs = [pos[c][0] for c in node.children]
            assert min(xs) <= pos[node.id][0] <= max(xs)
    res = CliRunner().invoke(app, ["tree", str(results), "--problem", "sim_hard-0-2",
                                   "-o", str(tmp_path / "t.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "t.png").read_bytes()[:8] == PNG
    fig = draw_tree(record, tmp_path / "t.svg")
    assert (tmp_path / "t.svg").read_text().lstrip().startswith("<?xml")
    assert fig.axes[0].get_title().startswith("problem sim_hard-0-2")
    res = CliRunner().invoke(app, ["tree", str(results), "--problem", "nope"])
    assert res.exit_code == 2 and "not in" in res.output


def test_report_on_an_empty_folder_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "no results.jsonl" in res.output


def test_seed_lists_are_compact():
    assert seed_list([3, 0, 1, 2, 2, 7, 9, 8]) == "0-3,7-9"
    assert seed_list(["1", "0"]) == "0,1"
