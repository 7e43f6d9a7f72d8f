#!/usr/bin/env bash
# Sets everything up (system libraries, .venv, packages) and runs the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash packaging/bootstrap.sh --test
export QT_QPA_PLATFORM=offscreen
echo "== import contracts (core never imports Qt or app)"
.venv/bin/lint-imports
echo "== tests"
exec .venv/bin/python -m pytest -q "$@"
