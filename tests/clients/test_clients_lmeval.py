"""lm-evaluation-harness 0.4 against ``ttc serve`` on the embedded model, with its default
arguments: ``local-chat-completions`` on GSM8K read from the shipped JSONL (a strategy
model; lm-eval's own ``####`` system prompt reaches the model), and ``local-completions``
loglikelihood on a shipped multiple-choice file (``raw``: echo, prompt log-probs, the
server's tokenizer endpoints). Own CI stage (scripts/ci_lmeval.sh, marker ``lmeval``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lmeval
REPO = Path(__file__).parents[2]
TASKS = Path(__file__).parent / "lmeval"
GSM8K_LIMIT = 5


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    log = (tmp_path_factory.mktemp("serve") / "stderr.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "ttc.cli", "serve", "--port", "0",
                             "strategy=self_consistency", "verifier=none"],
                            stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO)
    try:
        line = proc.stdout.readline()
        assert line.startswith("ttc serve: http://127.0.0.1:"), line
        yield line.split()[2].removesuffix("/v1")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def lm_eval(args: list[str], out: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "lm_eval", *args, "--include_path",
                           str(TASKS), "--output_path", str(out), "--log_samples"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    print(proc.stdout[-2000:])
    found = sorted(out.rglob("results_*.json"))
    assert found, f"no results under {out}"
    return json.loads(found[-1].read_text())


def test_local_chat_completions_scores_gsm8k(url, tmp_path):
    res = lm_eval(["--model", "local-chat-completions", "--model_args",
                   f"model=self_consistency-2,base_url={url}/v1/chat/completions,"
                   f"num_concurrent=2", "--apply_chat_template", "--tasks", "gsm8k_local",
                   "--limit", str(GSM8K_LIMIT)], tmp_path)
    scores = res["results"]["gsm8k_local"]
    strict, flexible = scores["exact_match,strict-match"], scores["exact_match,flexible-extract"]
    assert 0.0 <= strict <= 1.0 and 0.0 <= flexible <= 1.0
    samples = [json.loads(line) for p in tmp_path.rglob("samples_gsm8k_local_*.jsonl")
               for line in p.read_text().splitlines()]
    assert {s["doc_id"] for s in samples} == set(range(GSM8K_LIMIT))   # a row per filter
    replies = [s["resps"][0][0] for s in samples]
    assert all(isinstance(r, str) for r in replies) and any(r.strip() for r in replies)
    print(f"gsm8k_local (limit {GSM8K_LIMIT}): strict {strict:.3f}, flexible {flexible:.3f}")


def test_local_completions_loglikelihood_scores_multiple_choice(url, tmp_path):
    res = lm_eval(["--model", "local-completions", "--model_args",
                   f"model=raw,base_url={url}/v1/completions", "--tasks", "arith_mc_local",
                   "--batch_size", "4"], tmp_path)
    scores = res["results"]["arith_mc_local"]
    assert 0.0 <= scores["acc,none"] <= 1.0 and 0.0 <= scores["acc_norm,none"] <= 1.0
    samples = [json.loads(line) for p in tmp_path.rglob("samples_arith_mc_local_*.jsonl")
               for line in p.read_text().splitlines()]
    assert {s["doc_id"] for s in samples} == set(range(12))
    for s in samples:                    # four log-likelihoods per question, all real
        lls = [float(r[0][0]) for r in s["resps"]]
        assert len(lls) == 4 and all(ll < 0 for ll in lls)
    print(f"arith_mc_local (12 questions): acc {scores['acc,none']:.3f}, "
          f"acc_norm {scores['acc_norm,none']:.3f}")
