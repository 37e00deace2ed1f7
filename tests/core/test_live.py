"""The live tree view: events rebuild the strategy's tree; the view shows it as it grows."""

from __future__ import annotations

import io

import pytest
from rich.console import Console
from typer.testing import CliRunner

from ttc.cli import app, run_config
from ttc.live import LiveTree, LiveView, render_text
from ttc.pipeline import Pipeline
from ttc.tree import SearchTree
from ttc.types import EventKind, ProgressEvent

SIM = ["backend=simulated", "verifier=simulated"]


def solve_with_events(strategy: str, *extra: str):
    events: list[ProgressEvent] = []
    config = run_config([*SIM, f"strategy={strategy}", *extra])
    result = Pipeline.from_config(config, progress=events.append).solve("What is 2+3?")
    return result, events


@pytest.mark.parametrize("strategy", ["beam", "best_of_n", "mcts"])
def test_events_rebuild_the_result_tree(strategy):
    result, events = solve_with_events(strategy)
    tree = SearchTree.from_json(result.tree)
    live = LiveTree("What is 2+3?")
    for event in events:
        live.apply(event)
    assert set(live.nodes) == {n.id for n in tree}
    for node in tree:
        got = live.nodes[node.id]
        assert (got.parent, got.depth, got.text, got.tokens, got.score, got.answer) == (
            node.parent, node.depth, node.text, node.num_tokens, node.score, node.answer)
        assert got.status == node.status.value
    assert live.done and live.chosen == tree.chosen is not None
    assert events[-1].kind is EventKind.CHOSEN
    assert live.generated_tokens == result.ledger.generated_tokens
    # every event keeps the fields the server and the status line read
    steps = [e.step for e in events]
    assert steps == sorted(steps) and all(e.live >= 0 for e in events)


def test_pruned_nodes_are_reported_once_and_the_chosen_path_is_starred():
    result, events = solve_with_events("beam")
    pruned = [e.node.id for e in events if e.kind is EventKind.NODE_PRUNED]
    assert pruned and len(pruned) == len(set(pruned))
    live = LiveTree("What is 2+3?", title="beam")
    for e in events:
        live.apply(e)
    text = render_text(live, width=120)
    tree = SearchTree.from_json(result.tree)
    for nid in tree.chosen_path()[1:]:
        assert f"★ #{nid} " in text
    assert "pruned leaves" in text and "done" in text
    assert f"tokens {result.ledger.generated_tokens:,} / 4,096 budget" in text
    assert max(len(line) for line in text.splitlines()) <= 120


def test_a_budget_cut_search_is_marked():
    result, events = solve_with_events("beam", "budget.max_generated_tokens=300")
    assert result.budget_exhausted
    live = LiveTree("Q")
    for e in events:
        live.apply(e)
    assert live.budget_exhausted
    cut = {n["id"] for n in result.tree["nodes"] if n["cut_by_budget"]}
    assert cut and {n.id for n in live.nodes.values() if n.cut_by_budget} == cut
    text = render_text(live)
    assert text.count("✂ cut by budget") == sum(f"#{i} " in text for i in cut)
    assert "BUDGET EXHAUSTED" in text
    # nothing is "live" once the search ended; what it left unexpanded says "open"
    assert live.counts()["live"] == 0
    left = sum(n.status == "open" for n in live.nodes.values())
    assert left and f"left open {left}" in text and "◌" in text


def test_the_view_prints_the_final_tree_whole_when_closed():
    result, events = solve_with_events("beam")
    now = [0.0]
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=True, color_system=None)
    view = LiveView("What is 2+3?", console=console, refresh_s=1.0, clock=lambda: now[0])
    for e in events:
        view.callback(e)           # the clock stands still: only the first and the last
    view.close()
    final = out.getvalue().split("question: What is 2+3?")
    assert len(final) >= 2 and "★" in final[-1]
    assert view.tree.done and len(view.tree.nodes) == len(result.tree["nodes"])


def test_solve_watch_shows_the_tree_and_refuses_quiet():
    runner = CliRunner()
    res = runner.invoke(app, ["solve", "What is 2+3?", "--watch", "--strategy", "beam",
                              "--backend", "simulated", "--verifier", "simulated"])
    assert res.exit_code == 0, res.output
    assert "question: What is 2+3?" in res.output and "★" in res.output
    assert "answer: " in res.output
    res = runner.invoke(app, ["solve", "Q", "--watch", "--quiet", "--backend", "simulated"])
    assert res.exit_code == 2 and "--watch and --quiet" in res.output
