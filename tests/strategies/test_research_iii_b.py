"""Quick versions of the research checks in scripts/research_strategies_iii_b.py.

10 seeds each (a problem set and a sampling world per seed) on small problem sets;
asserts only what the 95% interval over seeds supports. docs/research_strategies_iii_b.md
has the full run. The budget-forcing signs are built into the simulator (its answers
converge with thinking tokens), so these checks test that the control reaches the model
(a cap that did not fire, or a "Wait" that was ignored, would leave no gap). Not asserted:
a latency gain of SpecReason at theta 7 (the full run's interval is near 1x), and any
gain of the composed pipeline (the full run's interval at fuse_skill 1 contains 0).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from ttc.evals.stats import mean_interval

_PATH = Path(__file__).resolve().parents[2] / "scripts" / "research_strategies_iii_b.py"


@pytest.fixture(scope="module")
def research():
    spec = importlib.util.spec_from_file_location("research_strategies_iii_b", _PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_a_cap_lowers_and_waits_raise_accuracy_with_exact_thinking(research):
    per_seed = [research.forcing_seed(s, quick=12) for s in range(10)]
    out = research.summarize_forcing(per_seed)
    est = out["estimates"]
    assert est["gain cap 32"].high < 0, est["gain cap 32"]
    assert est["gain extend 4"].low > 0, est["gain extend 4"]
    rows = out["rows"]
    assert rows["cap 32"]["thinking"] <= 32
    assert rows["extend 4"]["thinking"] > rows["extend 1"]["thinking"] \
        > rows["natural"]["thinking"]


def test_spec_reason_is_faster_than_the_large_model_at_theta_5_and_not_less_accurate(
        research):
    per_seed = [research.spec_seed(s, quick=12) for s in range(10)]
    out = research.summarize_spec(per_seed)
    est = out["estimates"]
    assert est["speedup SpecReason theta=5"].low > 1.0, est["speedup SpecReason theta=5"]
    assert est["gain SpecReason theta=7"].low > 0, est["gain SpecReason theta=7"]
    small = mean_interval([d["small alone"]["accuracy"] - d["large alone"]["accuracy"]
                           for d in per_seed])
    assert small.high < 0, small            # the pair really differs in accuracy


@pytest.mark.slow
def test_composed_pipeline_quick_check_runs_and_matches_compute(research):
    per_seed = [research.archon_seed(s, quick=10) for s in range(10)]
    out = research.summarize_archon(per_seed)
    key = "pipeline fuse_skill=0"
    assert out["matched_seeds"][key] >= 2
    # A fuser that only counts quotes cannot beat the best single layer here.
    assert out["estimates"][f"gain {key}"].low < 0.05
