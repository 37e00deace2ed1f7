#!/usr/bin/env bash
# CI stage: the bounded soak of `ttc serve` on the native engine with a small KV pool
# (tests marked `soak`, ~2.5 minutes: TTC_SOAK_SECONDS of mixed traffic, 90 by default,
# plus set-up and checks). Uses the project virtualenv (.venv by default; VENV=... to
# choose another), made by `make install` when missing. Prints the soak's figures.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    make install VENV="$VENV"
fi
exec "$VENV/bin/python" -m pytest -m soak -q -s tests/core/test_server_soak.py "$@"
