"""Research check (Snell et al.): with a good PRM, at low matched token budgets on hard
problems, beam search and particle filtering beat weighted best-of-N.

Runs ``scripts/research_strategies_i.py`` on 200 seeded simulated problems (difficulty
0.6-1.0, PRM AUROC 0.9, N = 4 and 8); docs/research_strategies_i.md has the full curve.
"""

import importlib.util
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "research_strategies_i.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("research_strategies_i", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up by name
    spec.loader.exec_module(module)
    rows = module.run_study(num_problems=200, ns=(4, 8), difficulty=(0.6, 1.0), auroc=0.9,
                            seed=0)
    return {(r.method, r.n): r for r in rows}


@pytest.mark.parametrize("method", ["beam search (M=4)", "particle filtering"])
@pytest.mark.parametrize("n", [4, 8])
def test_search_beats_weighted_best_of_n_at_matched_tokens(study, method, n):
    bon = study[("best-of-N (weighted)", n)]
    search = study[(method, n)]
    # matched budgets: the same generated tokens within 5%
    assert abs(search.tokens - bon.tokens) <= 0.05 * bon.tokens
    # better by more than two standard errors of the difference
    margin = 2 * math.sqrt(search.stderr ** 2 + bon.stderr ** 2)
    assert search.accuracy - bon.accuracy > margin, (search, bon)
