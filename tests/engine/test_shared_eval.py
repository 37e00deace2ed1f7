"""`ttc eval` on the native engine: concurrent problems share one continuous-batching engine."""

from __future__ import annotations

import json

from fakes import save_tiny

from ttc.evals.cli import run_eval_command


def _records(path):
    rows = [json.loads(line) for line in (path / "results.jsonl").read_text().splitlines()]
    keep = ("id", "answer", "candidate_answers")
    return sorted(({k: r[k] for k in keep} | {"generated": r["ledger"]["generated_tokens"]}
                   for r in rows), key=lambda r: r["id"])


def test_concurrent_problems_on_one_native_engine_match_one_at_a_time(tmp_path):
    save_tiny(tmp_path / "m")
    common = ["dataset=sim_mixed", "limit=6", "progress=false", "backend=native",
              f"backend.model={tmp_path / 'm'}", "backend.dtype=float32",
              "backend.kv_memory_gb=0.05", "verifier=none", "strategy=self_consistency",
              "strategy.n=3", "generation.max_tokens=24", "budget.max_generated_tokens=60"]
    one = run_eval_command(common + ["concurrency=1", f"output={tmp_path / 'one'}"],
                           echo=lambda *_: None)
    four = run_eval_command(common + ["concurrency=4", f"output={tmp_path / 'four'}"],
                            echo=lambda *_: None)
    assert _records(tmp_path / "one") == _records(tmp_path / "four")
    # one engine served all four workers (the default for non-simulated backends), and
    # its decode steps were shared: fewer steps than the one-at-a-time run needed
    assert four["shared_engine"]["steps"] < one["shared_engine"]["steps"]
    assert all(r["generated"] <= 60 for r in _records(tmp_path / "four"))
