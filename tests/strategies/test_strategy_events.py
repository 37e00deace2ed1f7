"""Strategies report progress (step, live branches, best score) for the CLI."""

import pytest

from ttc.types import EventKind

NAMES = ["beam", "dvts", "particle_filtering", "first_finish", "adaptive_consistency", "rpc"]


@pytest.mark.parametrize("name", NAMES)
def test_progress_events_count_steps(run, name):
    r = run({"name": name}, difficulty=0.5, num_steps=5)
    assert r.events[-1].kind is EventKind.CHOSEN            # tree events come too
    steps = [e.step for e in r.events]
    assert steps == sorted(steps)                           # and repeat the latest step
    events = r.step_events
    steps = [e.step for e in events]
    assert steps and steps == sorted(steps) and steps[-1] >= 1
    assert all(e.live >= 0 for e in events)
    if name in ("beam", "dvts", "particle_filtering"):
        assert len(events) >= 4                 # one per search step
        assert all(e.best_score is not None for e in events)
        assert max(e.live for e in events) >= 1
