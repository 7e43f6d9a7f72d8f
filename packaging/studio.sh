#!/usr/bin/env bash
# Sets everything up (system libraries, .venv, packages) and runs Quant Studio.
# With no argument it works on the built-in demo model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash packaging/bootstrap.sh
exec .venv/bin/quant-studio "$@"
