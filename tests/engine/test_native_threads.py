"""backend.threads: choosing the torch thread count (measurement injected, no timing asserts)."""

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


class _Probe:
    """A stand-in for the timing probe: returns a fixed n-threads / 1-thread time ratio."""

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self.calls: list[int] = []

    def __call__(self, n: int) -> float:
        self.calls.append(n)
        return self.ratio


@pytest.mark.parametrize("n", [1, 3, 64])
def test_explicit_counts_are_kept_without_probing(n, cpus):
    cpus(2)
    probe = _Probe(5.0)
    assert th.choose_threads(n, probe=probe) == n
    assert probe.calls == []


def test_auto_uses_the_affinity_mask_when_the_cores_are_free(cpus):
    cpus(6)
    probe = _Probe(0.3)
    assert th.choose_threads("auto", probe=probe) == 6
    assert probe.calls == [6]          # the probe compares all mask CPUs with one


def test_auto_falls_back_to_one_thread_when_more_threads_are_not_clearly_faster(cpus):
    cpus(2)
    assert th.choose_threads("auto", probe=_Probe(1.7)) == 1
    # at the threshold itself n threads are kept; just above it, not
    assert th.choose_threads("auto", probe=_Probe(th.CLEARLY_FASTER)) == 2
    assert th.choose_threads("auto", probe=_Probe(th.CLEARLY_FASTER + 0.01)) == 1


def test_auto_with_one_cpu_is_one_thread_and_skips_the_probe(cpus):
    cpus(1)
    probe = _Probe(0.1)
    assert th.choose_threads("auto", probe=probe) == 1
    assert probe.calls == []


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
        th.choose_threads(bad)
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


def test_probe_rejects_fewer_than_two_threads():
    with pytest.raises(ValueError, match="n >= 2"):
        th.probe_speedup(1)


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


def test_probe_restores_the_calling_threads_count():
    before = torch.get_num_threads()
    ratio = th.probe_speedup(2)
    assert ratio > 0
    assert torch.get_num_threads() == before
