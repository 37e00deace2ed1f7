"""Quick versions of the research checks in scripts/research_strategies_iii.py (slow stage).

10 seeds on small problem sets; asserts only what the 95% intervals over seeds support
(docs/research_strategies_iii.md has the full run): DeepConf-low generates far fewer
tokens than 64 traces run to completion; the simulated Dynasor with early-knowing probes
saves tokens; adaptive consistency and first-finish, which read no log-probs, give the
same results in the old and the new world (the new signals leave the draws alone).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[2] / "scripts" / "research_strategies_iii.py"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def summary():
    spec = importlib.util.spec_from_file_location("research_strategies_iii", _PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    out, runs = mod.run_all(quick=True)
    assert len(runs["deepconf"]) == 10
    return out


def test_deepconf_low_saves_tokens_against_full_parallel_thinking(summary):
    low = summary["deepconf"]["methods"]["DeepConf-low (eta=10)"]
    assert low["saved_vs_sc64"].low > 0.3, low["saved_vs_sc64"]
    assert low["stopped_share"].low > 0.5, low["stopped_share"]


def test_dynasor_with_early_knowing_probes_saves_tokens(summary):
    m = summary["dynasor"]["methods"]["T=32, w=2, probes know earlier (f^1)"]
    assert m["saved"].low > 0, m["saved"]


def test_log_prob_free_methods_are_unchanged_by_the_new_signals(summary):
    old, new = summary["recheck"].values()
    for method in ("adaptive consistency", "first-finish"):
        assert old[method]["pooled"] == new[method]["pooled"], method
    assert old["sc"] == new["sc"]
