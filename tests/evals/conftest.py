"""tests/evals uses the simulated-world helpers of tests/strategies (sim_helpers_ii), which
pytest puts on the import path only once it collects a file there; evals are collected
first, so the folder is added here."""

import sys
from pathlib import Path

_STRATEGY_HELPERS = str(Path(__file__).resolve().parents[1] / "strategies")
if _STRATEGY_HELPERS not in sys.path:
    sys.path.insert(0, _STRATEGY_HELPERS)
