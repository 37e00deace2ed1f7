#!/usr/bin/env bash
# CI stage: the interactive tree page (ttc tree -o tree.html) in a real headless browser
# (tests marked `browser`). Installs Debian's chromium package when it is missing (as
# root, or with sudo), then runs `pytest -m browser` in the project virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    make install VENV="$VENV"
fi
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo";
    else echo "ci_browser: chromium is missing and apt-get needs root (or sudo)." >&2; exit 1; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
exec "$VENV/bin/python" -m pytest -m browser -q tests "$@"
