"""Fast versions of the research checks in scripts/research_strategies_ii.py."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "scripts" / "research_strategies_ii.py"


@pytest.fixture(scope="module")
def research():
    spec = importlib.util.spec_from_file_location("research_strategies_ii", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_astar_matches_best_of_n_with_3x_fewer_tokens(research):
    out = research.check_astar(quick=True)
    assert out["token_ratio"] >= 3.0
    assert out["astar"]["k=4"]["accuracy"] >= out["bon"][16]["accuracy"]


def test_ets_keeps_fewer_kv_tokens_than_rebase_at_equal_accuracy(research):
    # The paper's 1.8x does not reproduce reliably here (see docs/research_strategies_ii.md);
    # what must hold: fewer KV tokens at every width, and at equal accuracy on average.
    out = research.check_ets(quick=True)
    assert all(r > 1.0 for r in out["same_width_ratio"].values())
    assert out["matched"] and out["kv_ratio_mean"] > 1.0


def test_allocation_beats_uniform_at_matched_budget(research):
    out = research.check_allocation(quick=True)
    assert out["gains_at_matched_budget"]
    assert out["mean_gain"] > 0
