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
    paths = write_report(sweep_dir)
    for name in PLOTS:
        assert paths[name].read_bytes()[:8] == PNG
    csv_lines = paths["csv"].read_text().splitlines()
    assert csv_lines[0].startswith("dataset,strategy,point,budget,backend,verifier")
    assert len(csv_lines) == 5
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
        assert pos[node.id][1] == node.depth
        if node.children:
            xs = [pos[c][0] for c in node.children]
            assert min(xs) <= pos[node.id][0] <= max(xs)
    res = CliRunner().invoke(app, ["tree", str(results), "--problem", "sim_hard-0-2",
                                   "-o", str(tmp_path / "t.png")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "t.png").read_bytes()[:8] == PNG
    fig = draw_tree(record, tmp_path / "t.svg")
    assert (tmp_path / "t.svg").read_text().lstrip().startswith("<?xml")
    assert any(t.get_text().startswith("problem sim_hard-0-2") for t in fig.texts)
    res = CliRunner().invoke(app, ["tree", str(results), "--problem", "nope"])
    assert res.exit_code == 2 and "not in" in res.output


def test_report_on_an_empty_folder_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "no results.jsonl" in res.output


def test_seed_lists_are_compact():
    assert seed_list([3, 0, 1, 2, 2, 7, 9, 8]) == "0-3,7-9"
    assert seed_list(["1", "0"]) == "0,1"


# -- what the views must show (issue: ticks, bars, budgets, titles; trees) ----------------
def _tick_labels(ax):
    import matplotlib.pyplot as plt

    ax.figure.canvas.draw()
    return [t.get_text() for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]


def test_report_plots_have_plain_ticks_interval_bars_budgets_and_full_titles(sweep_dir):
    from matplotlib.collections import LineCollection

    rows = collect(sweep_dir)
    figs = figures(rows)
    for name, fig in figs.items():
        ax = fig.axes[0]
        labels = _tick_labels(ax)
        assert len(labels) >= 3, (name, labels)
        for text in labels:       # plain numbers: no 10^k mathtext, no empty labels
            assert "$" not in text and "^" not in text
            float(text.replace(",", "").replace("\u2212", "-"))
        bars = [c for c in ax.collections if isinstance(c, LineCollection)]
        assert sum(len(c.get_segments()) for c in bars) == 4        # one per point
        budgets = sorted(a.get_text() for a in ax.texts)
        assert budgets == ["b=1,024", "b=1,024", "b=256", "b=256"], name
        title = ax.get_title()
        assert "sim_hard" in title and "backend simulated" in title
        assert "verifier simulated" in title and "seeds 0,1" in title
        assert "95% CI" in ax.get_ylabel()
    # the bars are the clustered intervals collect() computed
    ax = figs["accuracy_vs_tokens"].axes[0]
    lows = sorted(round(float(y), 6) for c in ax.collections if isinstance(c, LineCollection)
                  for (_, y), _top in c.get_segments())
    assert lows == sorted(round(r["accuracy_ci_low"], 6) for r in rows)


def test_log_axis_ticks_are_plain_and_never_alone():
    from ttc.evals.report import _nice_ticks

    narrow = _nice_ticks(915, 1320)       # the example: one decade, 1.4x
    assert len(narrow) >= 3 and all(915 <= t <= 1320 for t in narrow)
    assert _nice_ticks(100, 2000) == [100.0, 200.0, 500.0, 1000.0, 2000.0]
    assert _nice_ticks(1, 40, zero=True)[0] == 0.0


def _budget_cut_record(sweep_dir):
    results = sweep_dir / "runs" / "strategy=beam,budget=256,seed=0" / "results.jsonl"
    records = read_results(results)
    cut = [r for r in records if r["budget_exhausted"] and r.get("tree")]
    assert cut, "the 256-token beam runs are cut by their budget"
    return cut[0]


def test_tree_png_labels_do_not_overprint_and_depth_goes_down(sweep_dir, tmp_path):
    from ttc.evals.treeview import CHOSEN_COLOR, label_boxes

    results = sweep_dir / "runs" / "strategy=beam,budget=1024,seed=0" / "results.jsonl"
    for record in read_results(results)[:3]:
        fig = draw_tree(record, tmp_path / "t.png")
        boxes = label_boxes(fig)
        assert boxes
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert not a.overlaps(b)
        ax = fig.axes[0]
        low, high = ax.get_ylim()
        assert high < low and abs(high) < 1        # depth 0 at the top, growing down
        assert [int(t) for t in ax.get_yticks()] == list(range(int(low) + 1))
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert {"answer correct", "answer wrong", "chosen path", "pruned"} <= set(legend)
        tree = SearchTree.from_json(record["tree"])
        if record["answer"] is not None:
            path = tree.chosen_path()
            assert len(path) >= 2 and tree[path[-1]].answer == record["answer"]
            thick = [c for c in ax.collections if hasattr(c, "get_segments")
                     and len(c.get_segments()) == len(path) - 1
                     and tuple(c.get_colors()[0][:3]) == tuple(
                         int(CHOSEN_COLOR[i:i + 2], 16) / 255 for i in (1, 3, 5))]
            assert thick
            texts = "\n".join(t.get_text() for t in fig.texts)
            assert "chosen path, step text:" in texts
            assert " ".join(tree[path[1]].text.split())[:30] in texts


def test_tree_png_correct_answers_are_green_and_a_budget_cut_is_marked(sweep_dir, tmp_path):
    from ttc.evals.treeview import CORRECT_COLOR, WRONG_COLOR

    record = _budget_cut_record(sweep_dir)
    fig = draw_tree(record, tmp_path / "cut.png")
    assert any(t.get_text().startswith("BUDGET EXHAUSTED") for t in fig.texts)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "step cut by budget" in legend
    box = fig.axes[0].get_legend().get_window_extent(fig.canvas.get_renderer())
    assert 0 <= box.x0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1   # all on the page
    results = sweep_dir / "runs" / "strategy=beam,budget=1024,seed=0" / "results.jsonl"
    graded = [r for r in read_results(results) if r["correct"] and r.get("tree")]
    fig = draw_tree(graded[0], tmp_path / "ok.png")
    tree = SearchTree.from_json(graded[0]["tree"])
    answer_texts = [t for t in fig.axes[0].texts if t.get_text() and
                    t.get_text() == str(tree[tree.chosen].answer)[:10]]
    assert answer_texts and answer_texts[0].get_color() == CORRECT_COLOR != WRONG_COLOR


def test_tree_html_is_one_self_contained_page_with_the_chosen_path(sweep_dir, tmp_path):
    import re

    results = sweep_dir / "runs" / "strategy=beam,budget=1024,seed=0" / "results.jsonl"
    record = next(r for r in read_results(results) if r["answer"] is not None)
    out = tmp_path / "tree.html"
    res = CliRunner().invoke(app, ["tree", str(results), "-p", str(record["id"]),
                                   "-o", str(out)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)   # no network
    assert "<script src" not in page and "<link" not in page
    data = json.loads(re.search(r'<script id="tree-data" type="application/json">(.*?)'
                                r"</script>", page, re.S).group(1))
    tree = SearchTree.from_json(record["tree"])
    assert len(data["nodes"]) == len(tree)
    assert [n["id"] for n in data["nodes"] if n["chosen"]] == tree.chosen_path()
    for node in data["nodes"]:
        assert node["text"] == tree[node["id"]].text
        assert node["status"] in {"live", "expanded", "finished", "pruned"}
    assert 'id="search"' in page and "details" in page
    cut = tmp_path / "cut.html"
    from ttc.evals.treeview import write_tree_html

    record = _budget_cut_record(sweep_dir)
    write_tree_html(record, cut)
    assert '"budget_exhausted": true' in cut.read_text()
    page = json.loads(re.search(r'<script id="tree-data" type="application/json">(.*?)'
                                r"</script>", cut.read_text(), re.S).group(1))
    assert [n["id"] for n in page["nodes"] if n["cut_by_budget"]] == [
        n["id"] for n in record["tree"]["nodes"] if n.get("cut_by_budget")]
    res = CliRunner().invoke(app, ["tree", str(results), "-p", "x", "-o",
                                   str(tmp_path / "t.txt")])
    assert res.exit_code == 2 and ".png, .svg, .html" in res.output
