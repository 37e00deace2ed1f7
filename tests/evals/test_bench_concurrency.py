"""ttc bench concurrency: plumbing on the simulated backend (keys and notes, no timings)."""

from __future__ import annotations

import threading
import time

import pytest

from ttc.bench import run_benchmark
from ttc.engine.backends.simulated import SimulatedBackendConfig, SimulatedGenerator
from ttc.evals import bench_concurrency as bc
from ttc.evals.datasets import dataset_config, load_problems


@pytest.fixture
def no_vllm(monkeypatch):
    import ttc.engine.vllm_bench as vb

    monkeypatch.setattr(vb, "vllm_python", lambda: None)


def test_quick_run_on_the_simulated_backend_reports_every_k_and_the_ratios(no_vllm):
    report = run_benchmark("concurrency", quick=True,
                           options={"backends": ("simulated", "vllm")})
    m, ks = report.metrics, bc.QUICK["ks"]
    assert m["backend"] == "simulated" and m["ks"] == list(ks)
    for k in ks:
        assert m[f"tokens_per_s_k{k}"] > 0
        for label in ("self_consistency", "beam"):
            assert m[f"generated_tokens_{label}_k{k}"] > 0
            assert m[f"expand_calls_{label}_k{k}"] >= k       # at least one call per search
            assert m[f"tokens_per_s_{label}_k{k}"] > 0
    # self-consistency: one expand of n=4 solutions per search, so K searches = K calls
    assert m["expand_calls_self_consistency_k4"] == 4
    kmax = max(ks)
    assert set(report.ratios) == {f"tokens_per_s_k{kmax}_over_k1",
                                  f"tokens_per_s_self_consistency_k{kmax}_over_k1",
                                  f"tokens_per_s_beam_k{kmax}_over_k1"}
    assert any("serialised by one lock" in n for n in report.notes)
    assert any(n.startswith("vLLM column skipped") for n in report.notes)
    assert report.machine["python"]


def test_full_settings_cover_k_1_to_8_with_at_most_96_tokens_per_call():
    assert bc.FULL["ks"] == (1, 2, 4, 8) and bc.FULL["max_step_tokens"] == 96
    specs = bc.search_specs(max_step_tokens=96, beam_steps=4)
    sc, beam = specs["self_consistency"], specs["beam"]
    assert sc["strategy"]["n"] == 4 and sc["generation"]["max_tokens"] == 96
    assert (beam["strategy"]["n"], beam["strategy"]["width"]) == (4, 4)
    assert beam["generation"]["max_step_tokens"] == 96
    assert beam["budget_tokens"] == 4 * 96 * 4       # 4 full steps of 4 children


def test_no_search_call_generates_more_than_the_step_cap_per_branch():
    gen = _CountingGenerator(thread_safe=False)
    # 128 > the simulated steps' ~40 tokens: steps end at the delimiter and beam goes on
    # (a step cut by its token cap ends the trajectory)
    _measure(gen, ks=(1,), max_step_tokens=128)
    assert gen.max_tokens_asked and max(gen.max_tokens_asked) <= 128
    assert gen.beam_calls >= 2                       # one beam search ran several steps


class _CountingGenerator(SimulatedGenerator):
    """The simulated engine, recording how many expand calls overlap."""

    def __init__(self, *, thread_safe: bool) -> None:
        super().__init__(SimulatedBackendConfig())
        self.thread_safe = thread_safe
        self.active = self.max_active = 0
        self.max_tokens_asked: list[int] = []
        self.beam_calls = 0
        self._count = threading.Lock()

    def expand(self, requests, *, token_limit=None):
        with self._count:
            self.max_tokens_asked += [r.params.max_tokens for r in requests]
            self.beam_calls += any(r.params.stop for r in requests)   # step calls stop at \n\n
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(0.002)            # widen the window in which calls could overlap
        try:
            return super().expand(requests, token_limit=token_limit)
        finally:
            with self._count:
                self.active -= 1


def _measure(gen, ks=(1, 4), *, max_step_tokens=8):
    problems = load_problems(dataset_config("gsm8k"), limit=max(ks))
    searches = bc.search_specs(max_step_tokens=max_step_tokens, beam_steps=2)
    return bc.measure(gen, problems, ks=ks, searches=searches, threads=None)


def test_an_engine_that_is_not_thread_safe_gets_one_call_at_a_time():
    gen = _CountingGenerator(thread_safe=False)
    figures = _measure(gen)
    assert figures["serialized"] is True
    assert gen.max_active == 1
    assert set(figures["runs"]) == {"self_consistency", "beam"}
    assert set(figures["runs"]["beam"]) == {1, 4}


def test_a_thread_safe_engine_is_not_locked():
    gen = _CountingGenerator(thread_safe=True)
    figures = _measure(gen, ks=(1,))
    assert figures["serialized"] is False
    report = bc.BenchReport(name="concurrency")
    bc.add_figures(report, figures, ks=(1,))
    assert report.ratios == {}                  # no K > 1: nothing to compare
    assert "tokens_per_s_k1" in report.metrics


def test_vllm_figures_read_back_from_json_keep_their_own_keys():
    figures = {"serialized": True, "runs": {"beam": {"1": {"seconds": 2.0, "generated": 10,
                                                            "expand_calls": 1,
                                                            "search_seconds_mean": 2.0},
                                                      "2": {"seconds": 2.0, "generated": 30,
                                                            "expand_calls": 2,
                                                            "search_seconds_mean": 1.5}}}}
    report = bc.BenchReport(name="concurrency")
    bc.add_figures(report, figures, ks=(1, 2), infix="vllm_")
    assert report.metrics["tokens_per_s_vllm_k2"] == 15.0
    assert report.ratios == {"tokens_per_s_vllm_beam_k2_over_k1": 3.0,
                             "tokens_per_s_vllm_k2_over_k1": 3.0}


@pytest.mark.parametrize("backends", [("hf",), ("vllm",), ("native", "simulated"), ()])
def test_bad_backends_are_one_line_errors(backends):
    with pytest.raises(ValueError, match="--backends for concurrency must be native or "
                                         "simulated"):
        bc.run(quick=True, backends=backends)


def test_too_few_problems_for_k_is_an_error():
    problems = load_problems(dataset_config("gsm8k"), limit=2)
    with pytest.raises(ValueError, match="K=4 needs 4 problems; got 2"):
        bc.measure(SimulatedGenerator(SimulatedBackendConfig()), problems, ks=(1, 4),
                   searches=bc.search_specs(max_step_tokens=8, beam_steps=1), threads=None)


def test_around_phase_wraps_every_phase_and_sees_its_calls():
    gen = _CountingGenerator(thread_safe=True)
    seen: list[tuple[str, int, int, int]] = []       # label, k, calls before, calls after
    from contextlib import contextmanager

    @contextmanager
    def around(label, k):
        before = len(gen.max_tokens_asked)
        yield
        seen.append((label, k, before, len(gen.max_tokens_asked)))

    problems = load_problems(dataset_config("gsm8k"), limit=4)
    bc.measure(gen, problems, ks=(1, 4), threads=None, around_phase=around,
               searches=bc.search_specs(max_step_tokens=8, beam_steps=2))
    assert [(label, k) for label, k, _, _ in seen] == [
        ("self_consistency", 1), ("self_consistency", 4), ("beam", 1), ("beam", 4)]
    # self-consistency asks once per search: 1 request, then 4 (the warm-up came before)
    assert [after - before for _, _, before, after in seen[:2]] == [1, 4]
    assert all(after > before for _, _, before, after in seen[2:])


def test_the_direct_reference_is_reported_beside_ttcs_vllm_figures():
    report = bc.BenchReport(name="concurrency")
    runs = {"beam": {"1": {"seconds": 2.0, "generated": 10, "expand_calls": 3,
                           "search_seconds_mean": 2.0},
                     "2": {"seconds": 2.0, "generated": 30, "expand_calls": 6,
                           "search_seconds_mean": 1.5}}}
    bc.add_figures(report, {"serialized": False, "runs": runs}, ks=(1, 2), infix="vllm_")
    direct = {"beam": {"1": {"seconds": 1.0, "generated": 10, "generate_calls": 3},
                       "2": {"seconds": 1.0, "generated": 40, "generate_calls": 3}}}
    bc.add_direct_figures(report, direct, ks=(1, 2))
    m = report.metrics
    assert (m["tokens_per_s_vllm_direct_beam_k1"], m["tokens_per_s_vllm_direct_beam_k2"]) == (10, 40)
    assert m["generate_calls_vllm_direct_beam_k2"] == 3
    assert "search_seconds_mean_vllm_direct_beam_k2" not in m
    r = report.ratios
    assert r["tokens_per_s_vllm_direct_beam_k2_over_k1"] == 4.0
    assert r["tokens_per_s_vllm_beam_k2_over_k1"] == 3.0
    assert r["vllm_scaling_over_direct_beam_k2"] == 0.75     # 3.0 / 4.0
    assert r["vllm_scaling_over_direct_k2"] == 0.75
    assert report.notes[-1].startswith("vllm_direct: each phase's vLLM requests")
