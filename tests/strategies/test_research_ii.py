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
    out = research.check_ets(quick=True)
    assert out["best_equal_accuracy"] is not None
    assert out["kv_ratio"] >= 1.8


def test_allocation_beats_uniform_at_matched_budget(research):
    out = research.check_allocation(quick=True)
    assert out["gains_at_matched_budget"]
    assert out["mean_gain"] > 0
