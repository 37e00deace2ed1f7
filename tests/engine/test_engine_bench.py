"""ttc bench engine --cotenant: co-tenant processes always end; ratio keys (no timings)."""

from __future__ import annotations

import pytest

from ttc.types import BenchReport
from ttc.engine import bench as eb


def test_cotenants_run_during_the_block_and_are_killed_after_it():
    with eb.cotenants(2) as procs:
        assert len(procs) == 2
        assert all(p.poll() is None for p in procs)          # spinning
    assert all(p.poll() is not None for p in procs)


def test_cotenants_are_killed_when_the_block_raises():
    with pytest.raises(RuntimeError, match="boom"):
        with eb.cotenants(1) as procs:
            raise RuntimeError("boom")
    assert procs[0].poll() is not None


def test_zero_cotenants_start_nothing():
    with eb.cotenants(0) as procs:
        assert procs == []


def _run(generated: int, seconds: float, kv: int = 1000) -> dict:
    return {"generated": generated, "seconds": seconds, "peak_kv_bytes": kv}


def test_shape_ratios_compare_idle_cotenant_auto_and_fixed_runs():
    report = BenchReport(name="engine")
    runs = {"native_b64": _run(100, 1.0, kv=1100), "native_auto_b64": _run(100, 0.5),
            "native_cotenant_b64": _run(100, 4.0), "native_auto_cotenant_b64": _run(100, 1.0),
            "hf_b64": _run(100, 2.0, kv=4400)}
    for key, r in runs.items():
        report.metrics[f"tokens_per_s_{key}"] = r["generated"] / r["seconds"]
    eb._shape_ratios(report, runs, sfx="_b64", prompt_tokens=10, bytes_per_token=10)
    assert report.ratios == {
        "kv_native_over_bound_b64": 1.0,                  # (10 + 100) tokens x 10 bytes
        "tokens_per_s_native_over_hf_b64": 2.0, "kv_hf_over_native_b64": 4.0,
        "tokens_per_s_cotenant_over_idle_b64": 0.25,
        "tokens_per_s_cotenant_over_idle_auto_b64": 0.5,
        "tokens_per_s_auto_over_fixed_cotenant_b64": 4.0,
        "tokens_per_s_auto_over_fixed_idle_b64": 2.0}


def test_without_cotenant_runs_there_are_no_cotenant_ratios():
    report = BenchReport(name="engine")
    runs = {"native": _run(64, 1.0, kv=1000)}
    report.metrics["tokens_per_s_native"] = 64.0
    eb._shape_ratios(report, runs, sfx="", prompt_tokens=36, bytes_per_token=10)
    assert report.ratios == {"kv_native_over_bound": 1.0}


def test_suffix_names_every_shape_but_the_first():
    assert eb._suffix(0, 16) == "" and eb._suffix(1, 64) == "_b64"
    assert eb.FULL_SHAPES == (1024, (16, 64), 64)
