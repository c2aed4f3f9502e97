#!/usr/bin/env bash
# The README's main-job command: install torch (CPU build) and dcm into .venv, then run `dcm demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[all]"
exec dcm demo "$@"
