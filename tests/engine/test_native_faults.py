"""Native-engine faults a user can cause: each is refused early or ends in one line.

Covers: a KV pool beyond the machine's memory (refused before allocating), a search that
does not fit the pool (KVCacheFull: one line from the CLI), a problem longer than the
model's context in an eval (a failed record; the run goes on), and per-problem peak KV.
"""

from __future__ import annotations

import pytest
import torch
from native_helpers import ByteTokenizer, tiny_hf_model

import ttc.engine.native.memory as memory
from ttc.engine.native.engine import NativeEngine
from ttc.registry import ConfigError


@pytest.fixture(scope="module")
def tiny():
    return tiny_hf_model("llama", seed=5)


def _engine(tiny, **kw):
    cfg, hf = tiny
    kw.setdefault("page_size", 8)
    return NativeEngine.from_hf(cfg, hf.state_dict(), ByteTokenizer(), dtype=torch.float32,
                                attention="torch", **kw)


def test_a_pool_beyond_available_memory_is_refused_before_allocating(tiny, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 256 << 20)   # 0.25 GB
    allocated = []
    monkeypatch.setattr("ttc.engine.native.engine.ModelRunner",
                        lambda *a, **k: allocated.append(1))
    with pytest.raises(ConfigError) as info:
        _engine(tiny, kv_memory_gb=1.0)
    msg = str(info.value)
    assert msg.startswith("backend.kv_memory_gb=1.0 asks for a 1.00 GB KV pool but only "
                          "0.25 GB of cpu memory is available; lower backend.kv_memory_gb "
                          "to 0.2 or less.")
    assert "\n" not in msg and allocated == []
    assert _engine(tiny, kv_memory_gb=0.2).pool.num_pages > 0     # what it suggests fits


def test_a_pool_beyond_this_machine_fails_at_once_with_the_setting(tiny):
    # 100,000 GB: before the check, ~50 s and ~15 GB of page bookkeeping, then ENOMEM.
    assert memory.available_bytes(torch.device("cpu")) < 100_000 * memory.GIB
    with pytest.raises(ConfigError, match=r"backend.kv_memory_gb=100000.0 asks for a "
                                          r"100,000.00 GB KV pool but only [\d,.]+ GB"):
        _engine(tiny, kv_memory_gb=100_000.0)


def test_available_bytes_reads_meminfo_on_cpu():
    got = memory.available_bytes(torch.device("cpu"))
    meminfo = open("/proc/meminfo").read() if memory.Path("/proc/meminfo").exists() else ""
    if "MemAvailable:" in meminfo:
        kb = int(meminfo.split("MemAvailable:")[1].split()[0])
        assert abs(got - kb * 1024) < 512 << 20        # two reads, moments apart
    assert memory.available_bytes("meta") is None       # unknown device: not checked
