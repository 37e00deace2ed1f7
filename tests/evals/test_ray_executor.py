"""``ttc eval ... executor=ray`` on a local Ray cluster (own CI stage: scripts/ci_ray.sh)."""

from __future__ import annotations

import json
import threading

import pytest

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray")

from ttc.evals.cli import run_eval_command  # noqa: E402
from ttc.evals.runner import read_results  # noqa: E402

BASE = ["dataset=sim_mixed", "strategy=beam", "budget=1024", "limit=8", "progress=false"]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _stable(records):
    out = {}
    for r in records:
        r = json.loads(json.dumps(r))
        r.pop("wall_seconds")
        r["ledger"].pop("wall_seconds")
        out[r["id"]] = r
    return out


def _quiet(_msg):
    pass


def test_ray_run_writes_the_same_records_as_a_local_run(tmp_path):
    local = run_eval_command(BASE + [f"output={tmp_path / 'local'}"], echo=_quiet)
    seen = []
    dist = run_eval_command(BASE + [f"output={tmp_path / 'ray'}", "executor=ray",
                                    "concurrency=2"], echo=_quiet, on_record=seen.append)
    assert len(seen) == 8
    a = _stable(read_results(tmp_path / "local" / "results.jsonl"))
    b = _stable(read_results(tmp_path / "ray" / "results.jsonl"))
    assert a == b and len(a) == 8
    assert local["accuracy"] == dist["accuracy"]


def test_ray_run_resumes_only_missing_problems(tmp_path):
    out = tmp_path / "run"
    run_eval_command(BASE + [f"output={out}", "executor=ray", "concurrency=2"], echo=_quiet)
    path = out / "results.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:5]) + "\n")
    seen = []
    run_eval_command(BASE + [f"output={out}", "executor=ray", "concurrency=2"], echo=_quiet,
                     on_record=seen.append)
    assert len(seen) == 3
    assert len(read_results(path)) == 8


def test_unreachable_server_keeps_written_records_and_resumes(tmp_path):
    from ttc.config import load_run_config
    from ttc.engine.backends.http import ServerUnavailable
    from ttc.server import make_server

    cfg = load_run_config({"backend": "simulated", "verifier": "simulated", "strategy": "beam"})
    server = make_server(cfg, port=0)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    args = BASE + [f"output={tmp_path / 'http'}", "executor=ray", "concurrency=2",
                   "backend=http", f"backend.base_url=http://127.0.0.1:{port}/v1",
                   "backend.model=raw", "backend.max_retries=1", "backend.backoff_s=0.01",
                   "backend.connect_timeout_s=1"]
    seen = []

    def stop_after_two(record):
        seen.append(record)
        if len(seen) == 2:
            server.shutdown()
            server.server_close()

    with pytest.raises(Exception) as info:
        run_eval_command(args, echo=_quiet, on_record=stop_after_two)
    assert "ServerUnavailable" in repr(info.value) or isinstance(info.value, ServerUnavailable)
    kept = read_results(tmp_path / "http" / "results.jsonl")
    assert len(kept) >= 2
    again = make_server(cfg, port=port)
    threading.Thread(target=again.serve_forever, daemon=True).start()
    try:
        rest = []
        run_eval_command(args, echo=_quiet, on_record=rest.append)
        assert len(rest) == 8 - len(kept)
        assert len(read_results(tmp_path / "http" / "results.jsonl")) == 8
    finally:
        again.shutdown()
        again.server_close()
