"""The decode-step profile (engine/native/profile.py): phase clocks, the op census, the
roofline bound, and the bench's --dtype choice."""

from __future__ import annotations

import pytest
import torch
from fakes import ByteTokenizer, tiny_hf_model

from ttc.engine.native.engine import NativeEngine
from ttc.engine.native.profile import StepClock, decode_limit
from ttc.types import ExpandRequest, SamplingParams


def test_clock_splits_steps_into_phases_and_bookkeeping():
    clock = StepClock()
    clock.add("forward", 0.010)
    clock.add("sampling", 0.002)
    clock.end_step(0.015, decoded=True)
    clock.end_step(0.005, decoded=False)
    ms = clock.per_step_ms()
    assert ms["forward"] == pytest.approx(5.0) and ms["sampling"] == pytest.approx(1.0)
    assert ms["bookkeeping"] == pytest.approx((20 - 12) / 2)
    assert list(clock.decode_step_times) == [0.015] and clock.decode_steps == 1
    clock.reset()
    assert clock.steps == 0 and clock.seconds["forward"] == 0.0


def test_decode_limit_is_the_larger_of_compute_and_memory():
    kw = dict(params=1000, embed_params=100, vocab=10, hidden=10, layers=2, heads=2,
              head_dim=4, kv_bytes_per_token=8, dtype_bytes=2, branches=4,
              prefix_tokens=16, suffix_tokens=2)
    lim = decode_limit(**kw, matmul_gflops=1e-6, read_gb_s=1.0)
    flops = 2 * 900 * 4 + 2 * 10 * 10 * 4 + 4 * 2 * 4 * 18 * 2 * 4
    assert lim["flops"] == flops
    assert lim["bytes"] == 1000 * 2 + (16 + 4 * 2) * 8
    assert lim["step_s"] == lim["compute_s"] == pytest.approx(flops / 1e3)
    fast = decode_limit(**kw, matmul_gflops=1e9, read_gb_s=1e-6)
    assert fast["step_s"] == fast["memory_s"] > fast["compute_s"]


def test_the_engine_clock_and_census_see_a_real_decode():
    cfg, hf = tiny_hf_model("llama", seed=2)
    eng = NativeEngine.from_hf(cfg, hf.state_dict(), ByteTokenizer(), dtype=torch.float32,
                               attention="torch", page_size=8, kv_memory_gb=0.01)
    root = eng.handle_for_tokens(list(b"a shared prompt of some length"))
    params = SamplingParams(temperature=0.0, max_tokens=5)
    out = eng.expand([ExpandRequest(prefix=root, n=3, params=params)])
    # NOTE: the job settles inside its last step, before that step is clocked; the loop
    # holds the engine lock for the whole step, so taking it waits for the clock.
    with eng._lock:
        clock = eng.scheduler.clock
        assert clock.decode_steps >= 5 and clock.seconds["forward"] > 0
        assert clock.seconds["logits"] > 0 and clock.total >= sum(clock.seconds.values())
    eng.release([c.handle for c in out.continuations[0]])

    from ttc.engine.bench import _census_one_step

    # the profiler sees the thread it runs on: the census wraps one step of the loop thread
    counts = _census_one_step(eng, root, 3, params)
    assert counts["linear"] > 0 and counts["attention"] > 0 and counts["rest"] > 0
    assert 0 < counts["ops_forward"] < counts["ops"]
    assert "label" not in vars(eng.model)                 # the no-op label is back
    eng.close()


def test_bench_refuses_an_unknown_dtype():
    from ttc.engine import bench

    with pytest.raises(ValueError, match="--dtype must be one of auto, bfloat16, float32; "
                                         "got 'fp8'"):
        bench.run(quick=True, backends=("native",), dtype="fp8")
