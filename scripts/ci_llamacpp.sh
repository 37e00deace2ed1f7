#!/usr/bin/env bash
# CI stage: the llama.cpp column of `ttc bench engine` against a real llama.cpp build.
# Builds llama-batched-bench and llama-quantize outside the repository the first time
# (scripts/build_llamacpp.sh, ~5-9 minutes on 2 cores; later runs reuse the build) unless
# TTC_LLAMACPP_BIN already names a build, then runs the tests marked `llamacpp`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${TTC_LLAMACPP_BIN:-}" ]; then
    DEST="${TTC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ttc}/llamacpp"
    if [ ! -x "$DEST/build/bin/llama-batched-bench" ] || [ ! -x "$DEST/build/bin/llama-quantize" ]; then
        bash scripts/build_llamacpp.sh "$DEST"
    fi
    export TTC_LLAMACPP_BIN="$DEST/build/bin"
fi
exec .venv/bin/python -m pytest -m llamacpp -q tests/engine/test_llamacpp_bench.py "$@"
