#!/usr/bin/env bash
# Builds llama.cpp's `llama-batched-bench` and `llama-quantize` outside the repository, for
# the llama.cpp column of `ttc bench engine --backends ...,llamacpp` (engine/llamacpp_bench.py).
# Not part of the default test run (scripts/ci_llamacpp.sh calls it); nothing of llama.cpp
# is committed to ttc.
#
#   scripts/build_llamacpp.sh [DEST]
#
# DEST defaults to <cache>/llamacpp, where the bench looks when $TTC_LLAMACPP_BIN is unset
# (<cache>: $TTC_CACHE_DIR, else $XDG_CACHE_HOME/ttc, else ~/.cache/ttc).
#
# Source: the llama.cpp vendored in the llama-cpp-python 0.3.36 sdist (a fixed, known-good
# revision, fetched through pip from the package index). Needs cmake and a C++ compiler;
# ~5-9 minutes on 2 cores. Afterwards point the bench at the binaries:
#
#   export TTC_LLAMACPP_BIN=DEST/build/bin
set -euo pipefail
DEST="${1:-${TTC_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ttc}/llamacpp}"
VERSION="0.3.36"
SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"   # the PyPI sdist
PYTHON="${PYTHON:-python3}"
JOBS="${JOBS:-2}"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
SDIST="$DEST/dl/llama_cpp_python-$VERSION.tar.gz"
if [ ! -f "$SDIST" ]; then
    "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: \
        "llama-cpp-python==$VERSION" -d "$DEST/dl"
fi
if ! echo "$SHA256  $SDIST" | sha256sum --check --status; then
    echo "build_llamacpp.sh: $SDIST does not have the expected sha256 $SHA256" >&2
    exit 1
fi
SRC="$DEST/llama_cpp_python-$VERSION"
if [ ! -d "$SRC/vendor/llama.cpp" ]; then
    tar -xzf "$SDIST" -C "$DEST"
fi
# The build folder is $DEST/build so that the binaries land in $DEST/build/bin.
cmake -S "$SRC/vendor/llama.cpp" -B "$DEST/build" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF > "$DEST/cmake.log"
cmake --build "$DEST/build" --target llama-batched-bench llama-quantize -j "$JOBS"
for tool in llama-batched-bench llama-quantize; do
    if [ ! -x "$DEST/build/bin/$tool" ]; then
        echo "build_llamacpp.sh: $DEST/build/bin/$tool was not built" >&2
        exit 1
    fi
done
echo "built: $DEST/build/bin (export TTC_LLAMACPP_BIN=$DEST/build/bin)"
