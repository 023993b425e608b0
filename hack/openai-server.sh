#!/usr/bin/env bash
# Install the real OpenAI-compatible server the chat agent is tested against:
# llama.cpp's server as packaged by llama-cpp-python (PyPI sdist: it compiles
# llama.cpp), in a venv of its own under $CACHE_DIR/tools keyed by version, and
# a tiny random-weights model it can serve (no model hub is reachable here).
# Built once; a warm run does nothing.
#
#   hack/openai-server.sh          # prints the tool directory
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=hack/versions.env
source "$ROOT/hack/versions.env"
CACHE_DIR=${AGENTEXEC_CACHE_DIR:-$ROOT/.cache}
# The real path: a venv records where it was made, and .cache may be a link.
mkdir -p "$CACHE_DIR" && CACHE_DIR=$(cd "$CACHE_DIR" && pwd -P)
PYTHON=${PYTHON:-python3}
TOOL=$CACHE_DIR/tools/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION-r$LLAMA_CPP_BUILD_REV
WHEELS=$CACHE_DIR/wheels/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION-r$LLAMA_CPP_BUILD_REV

log() { printf 'openai-server: %s\n' "$*" >&2; }

if [ -f "$TOOL/.installed" ]; then
  echo "$TOOL"
  exit 0
fi

mkdir -p "$WHEELS"
rm -rf "$WHEELS.tmp"  # what an interrupted build left
if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  # Portable (no -march=native: the cache may move between machines), CPU
  # only, no multimodal library, no tests or examples: the server needs none.
  # Every core by default (CI builds it once per clean machine); set
  # CMAKE_BUILD_PARALLEL_LEVEL=1 on a shared machine.
  log "compiling llama-cpp-python $LLAMA_CPP_PYTHON_VERSION (llama.cpp) once; this takes minutes"
  start=$(date +%s)
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAVA_BUILD=OFF -DMTMD_BUILD=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    "$PYTHON" -m pip wheel --quiet --no-deps --no-binary llama-cpp-python \
      -w "$WHEELS.tmp" "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION"
  mv "$WHEELS.tmp"/llama_cpp_python-*.whl "$WHEELS"/
  rmdir "$WHEELS.tmp"
  log "compiled in $(($(date +%s) - start)) s"
fi

rm -rf "$TOOL"
"$PYTHON" -m venv "$TOOL"
"$TOOL/bin/pip" install --quiet --upgrade pip
wheel=$(ls "$WHEELS"/llama_cpp_python-*.whl | head -1)
"$TOOL/bin/pip" install --quiet "${wheel}[server]" "gguf==$GGUF_VERSION"
"$TOOL/bin/python" "$ROOT/hack/tiny_gguf.py" "$TOOL/tiny-llama.gguf"
touch "$TOOL/.installed"
log "installed in $TOOL"
echo "$TOOL"
