"""Native-engine faults a user can cause: each is refused early or ends in one line.

Covers: a KV pool beyond the machine's memory (refused before allocating), a search that
does not fit the pool (KVCacheFull: one line from the CLI), a problem longer than the
model's context in an eval (a failed record; the run goes on), and per-problem peak KV.
"""

from __future__ import annotations

import pytest
import torch
from fakes import ByteTokenizer, tiny_hf_model

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
    if "MemTotal:" in meminfo:      # CPU pools commit as they fill: physical memory bounds them
        kb = int(meminfo.split("MemTotal:")[1].split()[0])
        assert got == kb * 1024
    assert memory.available_bytes("meta") is None       # unknown device: not checked


# -- through the CLI and ttc eval, on a tiny saved model ------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from fakes import save_tiny

    folder = tmp_path_factory.mktemp("tiny") / "m"
    save_tiny(folder)                  # max_position_embeddings=256
    return folder


def _cli(args):
    from typer.testing import CliRunner

    from ttc.cli import app

    result = CliRunner().invoke(app, args)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return result.exit_code, lines[0]


def test_cli_a_search_that_does_not_fit_the_pool_is_one_line_exit_1(model_dir):
    code, line = _cli(["solve", "What is 3 + 5?", "--strategy", "best_of_n", "strategy.n=64",
                       f"backend.model={model_dir}", "backend.dtype=float32",
                       "backend.kv_memory_gb=0.0002", "verifier=none",
                       "generation.max_tokens=64"])
    assert code == 1
    assert "KV cache" in line and "raise backend.kv_memory_gb" in line


def test_cli_a_pool_beyond_the_machine_is_one_line_exit_2(model_dir):
    code, line = _cli(["solve", "What is 3 + 5?", f"backend.model={model_dir}",
                       "backend.kv_memory_gb=100000"])
    assert code == 2
    assert line.startswith("error: backend.kv_memory_gb=100000.0 asks for a 100,000.00 GB KV "
                           "pool but only ")


def _eval(tmp_path, model_dir, questions, *extra):
    import json

    from ttc.evals.cli import run_eval_command

    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": "8"}) + "\n"
                            for q in questions))
    out = tmp_path / "run"
    run_eval_command(["dataset=file", f"dataset.path={data}", "progress=false",
                      "backend=native", f"backend.model={model_dir}", "backend.dtype=float32",
                      "backend.kv_memory_gb=0.05", "verifier=none",
                      "strategy=self_consistency", "strategy.n=3",
                      "generation.max_tokens=16", f"output={out}", *extra],
                     echo=lambda *_: None)
    from ttc.evals.runner import read_results

    return read_results(out / "results.jsonl"), json.loads((out / "summary.json").read_text())


def test_eval_an_over_long_problem_is_a_failed_record_naming_the_limit(tmp_path, model_dir):
    long = "What is 3 + 5? " + "Think about it. " * 200          # far past 256 tokens
    records, summary = _eval(tmp_path, model_dir, ["What is 3 + 5?", long, "What is 4 + 4?"])
    assert [r["index"] for r in records] == [0, 1, 2]              # the run went on
    assert [r.get("error") is None for r in records] == [True, False, True]
    assert records[1]["error_type"] == "ValueError"
    assert "tokens; the model's context is 256 tokens" in records[1]["error"]
    assert (summary["problems"], summary["failed"]) == (2, 1)


def test_eval_peak_kv_is_each_problems_own(tmp_path, model_dir):
    questions = ["What is 3 + 5? " * 12, "What is 4 + 4?", "Add 2 and 6."]   # biggest first
    shared, _ = _eval(tmp_path / "shared", model_dir, questions, "share_engine=true")
    alone, _ = _eval(tmp_path / "alone", model_dir, questions, "share_engine=false",
                     "fresh_engine=true")                 # a new engine per problem
    peaks = {r["index"]: r["ledger"]["peak_kv_bytes"] for r in shared}
    assert peaks == {r["index"]: r["ledger"]["peak_kv_bytes"] for r in alone}
    assert peaks[0] > peaks[1] > 0                         # not the engine's running maximum
