"""Fixtures for strategy tests (helpers live in strategy_helpers.py)."""

import pytest

from strategy_helpers import Run


@pytest.fixture
def run():
    return Run
