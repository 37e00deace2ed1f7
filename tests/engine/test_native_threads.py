"""backend.threads: the torch thread count, and auto's tuner fed step times (no timing asserts)."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from ttc.engine.native import threads as th
from ttc.engine.native.config import NativeBackendConfig
from ttc.registry import BACKENDS, ConfigError


@pytest.fixture
def cpus(monkeypatch):
    """Pretend this process's affinity mask holds ``n`` CPUs."""
    def set_cpus(n: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)
    return set_cpus


class _Machine:
    """Step times as a machine would give them: ``cost[n]`` seconds per unit of work with n
    threads (no real timing: the tuner is fed these)."""

    def __init__(self, cost: dict[int, float]) -> None:
        self.cost = cost

    def run(self, tuner: th.StepTuner, steps: int, *, work: int = 16) -> list[int]:
        used = []
        for _ in range(steps):
            n = tuner.next_threads()
            used.append(n)
            tuner.record(self.cost[n] * work, work)
        return used


def test_candidates_are_all_cpus_half_and_one():
    assert th.candidates(1) == [1]
    assert th.candidates(2) == [2, 1]
    assert th.candidates(8) == [8, 4, 1]


def test_auto_keeps_all_cores_when_they_are_free(cpus):
    cpus(2)
    tuner = th.StepTuner()
    used = _Machine({2: 0.5, 1: 1.0}).run(tuner, 40)
    assert tuner.trials == 1 and tuner.current == 2
    assert set(used[:12]) == {1, 2} and set(used[12:]) == {2}   # one trial, then held


def test_auto_takes_one_thread_beside_a_co_tenant(cpus):
    cpus(2)
    tuner = th.StepTuner()
    _Machine({2: 5.0, 1: 1.0}).run(tuner, 40)
    assert tuner.current == 1
    assert tuner.history[0][1][2] == pytest.approx(5.0)


def test_a_co_tenant_arriving_later_starts_a_trial_at_once(cpus):
    cpus(2)
    tuner = th.StepTuner(hold_steps=10_000)
    _Machine({2: 0.5, 1: 1.0}).run(tuner, 30)
    assert tuner.current == 2
    busy = _Machine({2: 4.0, 1: 1.1})
    used = busy.run(tuner, 3)              # three slow held steps ...
    assert used == [2, 2, 2] and tuner.in_trial
    busy.run(tuner, 12)                    # ... a trial, and the answer changes
    assert tuner.current == 1 and tuner.trials == 2


def test_trials_repeat_so_a_co_tenant_that_leaves_gives_the_cores_back(cpus):
    cpus(2)
    tuner = th.StepTuner(hold_steps=20)
    _Machine({2: 4.0, 1: 1.0}).run(tuner, 15)
    assert tuner.current == 1
    _Machine({2: 0.5, 1: 1.0}).run(tuner, 40)
    assert tuner.current == 2 and tuner.trials >= 2


def test_a_near_tie_keeps_the_current_count_and_idle_steps_do_not_count(cpus):
    cpus(2)
    tuner = th.StepTuner()
    _Machine({2: 1.0, 1: 0.98}).run(tuner, 14)
    assert tuner.trials == 1 and tuner.current == 2       # 2% is inside th.TIE
    before = (tuner.trials, tuner.in_trial)
    for _ in range(5):
        tuner.next_threads()
        tuner.record(0.5, 0)                  # no work ran: nothing is learnt
    assert (tuner.trials, tuner.in_trial) == before


def test_one_cpu_needs_no_trial(cpus):
    cpus(1)
    tuner = th.StepTuner()
    assert not tuner.in_trial and _Machine({1: 1.0}).run(tuner, 5) == [1] * 5


def test_the_engine_tunes_from_its_own_steps():
    from fakes import ByteTokenizer, tiny_hf_model

    from ttc.engine.native.engine import NativeEngine
    from ttc.types import ExpandRequest, SamplingParams

    cfg, hf = tiny_hf_model("llama", seed=3)
    eng = NativeEngine.from_hf(cfg, hf.state_dict(), ByteTokenizer(), dtype=torch.float32,
                               attention="torch", page_size=8, kv_memory_gb=0.01,
                               threads="auto")
    assert eng.tuner is not None and eng.threads is None
    root = eng.handle_for_tokens(list(b"tune on real steps"))
    eng.expand([ExpandRequest(prefix=root, n=2, params=SamplingParams(temperature=0,
                                                                      max_tokens=20))])
    assert eng.tuner.trials >= 1 and eng.threads_in_use in eng.tuner.candidates
    eng.set_threads(1)
    assert eng.tuner is None and eng.threads_in_use == 1
    with pytest.raises(ValueError, match="set_threads needs a positive integer, 'auto' or "
                                         "None; got 0"):
        eng.set_threads(0)
    eng.close()


def test_available_cpus_without_sched_getaffinity_uses_cpu_count(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert th.available_cpus() == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert th.available_cpus() == 1


@pytest.mark.parametrize("bad", [0, -2, True, 2.0, "4", "Auto", None, [2]])
def test_bad_settings_are_rejected_with_one_line(bad):
    with pytest.raises(ValueError, match=r"backend.threads must be a positive integer or "
                                         r"'auto'; got "):
        th.check_threads_setting(bad)
    with pytest.raises(ConfigError) as err:
        BACKENDS.build({"name": "native", "threads": bad})   # fails before loading a model
    assert str(err.value) == (f"backend.threads: must be a positive integer or 'auto'; "
                              f"got {bad!r}.")


def test_config_default_is_auto_and_takes_counts():
    assert NativeBackendConfig().threads == "auto"
    assert NativeBackendConfig(threads=4).threads == 4


@pytest.mark.parametrize("bad", [0, "auto", True, 1.5])
def test_apply_threads_needs_a_count(bad):
    with pytest.raises(ValueError, match="apply_threads needs a positive thread count"):
        th.apply_threads(bad)


def test_apply_threads_sets_the_calling_thread_only():
    """The documented scope (torch 2.13 CPU): the count is per OS thread. A thread that has
    already initialised torch threading keeps its count when another thread applies one."""
    main_before = torch.get_num_threads()
    seen: dict[str, int] = {}
    ready, done = threading.Event(), threading.Event()

    def worker() -> None:
        torch.get_num_threads()                  # initialise this thread's count
        ready.wait()
        th.apply_threads(main_before + 1)
        seen["worker"] = torch.get_num_threads()
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    try:
        ready.set()
        done.wait(timeout=30)
        seen["main"] = torch.get_num_threads()
    finally:
        t.join()
        torch.set_num_threads(main_before)       # also resets the recorded value
    assert seen == {"worker": main_before + 1, "main": main_before}


def test_a_clearly_slower_count_stops_being_measured(cpus):
    """Beside a co-tenant each 2-thread step is the expensive one: once 1 thread's first
    timed step shows 2 threads 5x slower, the trial measures 2 threads no more and ends
    (5 steps instead of 12)."""
    cpus(2)
    tuner = th.StepTuner()
    used = _Machine({2: 5.0, 1: 1.0}).run(tuner, 8)
    assert tuner.trials == 1 and tuner.current == 1
    assert used == [2, 2, 2, 1, 1, 1, 1, 1]


def test_fewer_threads_must_win_clearly(cpus):
    """On free cores a trial's few steps can favour one thread by a little; all CPUs stay
    unless one thread is more than FEWER faster (beside a co-tenant it is far more)."""
    cpus(2)
    slight = th.StepTuner()
    _Machine({2: 1.0, 1: 0.9}).run(slight, 14)
    assert slight.current == 2
    clear = th.StepTuner()
    _Machine({2: 1.0, 1: 0.7}).run(clear, 14)
    assert clear.current == 1


def test_a_trial_starts_over_when_the_batch_changes_under_it(cpus):
    """A small warm-up call at 2 threads then a big call at 1 thread: per-token costs of
    unlike batches would favour 1 thread; the trial restarts on the big batch instead."""
    cpus(2)
    tuner = th.StepTuner()
    small, big = {2: 3.0, 1: 4.0}, {2: 0.5, 1: 1.0}     # per token: small batches cost more
    for _ in range(3):                                   # the warm-up call: 2 rows
        n = tuner.next_threads()
        tuner.record(small[n] * 2, 2)
    for _ in range(20):                                  # the real call: 16 rows
        n = tuner.next_threads()
        tuner.record(big[n] * 16, 16)
    assert tuner.current == 2 and tuner.trials == 1
