#!/usr/bin/env bash
# CI stage: distributed evals on a local Ray cluster (tests marked `ray`).
# Installs the `ray` extra into the project virtualenv (.venv by default; VENV=... to
# choose another) and runs `pytest -m ray`. Ray adds ~80 MB and no upgrades.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    make install VENV="$VENV"
fi
"$VENV/bin/python" -c "import ray" 2>/dev/null || "$VENV/bin/pip" install --quiet -e ".[ray]"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"   # a throwaway local cluster
exec "$VENV/bin/python" -m pytest -m ray -q tests "$@"
